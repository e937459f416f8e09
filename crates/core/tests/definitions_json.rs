//! RabbitMQ's definitions JSON: a real RabbitMQ 3.10.8 export and a hand-made legacy file
//! (tests/fixtures/README.md says how each was made and their users' passwords).

use serde_json::json;
use warren_core::access::password::{HashingAlgorithm, PasswordHash};
use warren_core::admin::AdminError;
use warren_core::definitions_json::{
    parse, to_json, ApplyTo, Definitions, DestinationType, Limits, Parameter, Policy,
};

const EXPORT: &str = include_str!("fixtures/rabbitmq-definitions.json");
const LEGACY: &str = include_str!("fixtures/rabbitmq-definitions-legacy.json");

fn limits(pairs: &[(&str, i64)]) -> Limits {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

fn error_text(text: &str) -> String {
    match parse(text) {
        Err(AdminError::BadRequest(t)) => t,
        other => panic!("expected a bad request, got {other:?}"),
    }
}

#[test]
fn the_rabbitmq_export_parses() {
    let d = parse(EXPORT).unwrap();
    assert_eq!(d.version(), Some("3.10.8"));
    assert_eq!(d.rabbit_version.as_deref(), Some("3.10.8"));
    assert_eq!(d.product_name, None);
    assert_eq!(
        (d.users.len(), d.vhosts.len(), d.permissions.len()),
        (6, 4, 8)
    );
    assert_eq!((d.topic_permissions.len(), d.parameters.len()), (2, 4));
    assert_eq!((d.global_parameters.len(), d.policies.len()), (1, 4));
    assert_eq!(
        (d.queues.len(), d.exchanges.len(), d.bindings.len()),
        (10, 5, 6)
    );
    assert!(d.extra.is_empty());

    let user = |n: &str| d.users.iter().find(|u| u.name == n).unwrap();
    assert_eq!(user("monitor").tags, ["monitoring", "policymaker"]);
    assert_eq!(user("proxy").tags, ["impersonator", "billing-team"]);
    assert!(user("nopass").tags.is_empty());
    assert_eq!(
        user("app").limits,
        limits(&[("max-connections", 3), ("max-channels", 4)])
    );

    let vhost = |n: &str| d.vhosts.iter().find(|v| v.name == n).unwrap();
    let prod = vhost("prod");
    assert_eq!(prod.description, "Production orders");
    assert_eq!(prod.tags, ["production", "eu"]);
    assert_eq!(prod.default_queue_type.as_deref(), Some("classic"));
    assert_eq!(
        prod.limits,
        limits(&[("max-connections", 10), ("max-queues", 5)])
    );
    assert_eq!(
        vhost("staging").default_queue_type.as_deref(),
        Some("quorum")
    );
    // Made without options: RabbitMQ writes "tags": "" and no default_queue_type.
    let bare = vhost("bare");
    assert!(bare.tags.is_empty() && bare.description.is_empty());
    assert_eq!(bare.default_queue_type, None);
    assert_eq!(vhost("/").description, "Default virtual host");

    let monitor = d.permissions.iter().find(|p| p.user == "monitor").unwrap();
    assert_eq!(
        (monitor.configure.as_str(), monitor.write.as_str()),
        ("", "")
    );
    let topic = &d.topic_permissions[0];
    assert_eq!(topic.exchange, "app.topic");
    assert_eq!(topic.write, "^{username}\\..*");

    let policy = d.policies.iter().find(|p| p.name == "app-queues").unwrap();
    assert_eq!((policy.apply_to, policy.priority), (ApplyTo::Queues, 1));
    assert_eq!(policy.definition["overflow"], json!("reject-publish"));
    assert_eq!(policy.definition["max-length"], json!(1000));

    let orders = d.queues.iter().find(|q| q.name == "app.orders").unwrap();
    assert_eq!(orders.arguments["x-max-length"], json!(200));
    assert_eq!(orders.queue_type.as_deref(), Some("classic"));
    let transient = d.queues.iter().find(|q| q.name == "transient.q").unwrap();
    assert!(!transient.durable);
    let events = d.exchanges.iter().find(|x| x.name == "app.events").unwrap();
    assert_eq!(
        events.arguments["alternate-exchange"],
        json!("app.unrouted")
    );
    assert!(!events.internal);
    let headers = d
        .bindings
        .iter()
        .find(|b| b.source == "app.headers")
        .unwrap();
    assert_eq!(headers.arguments["x-match"], json!("all"));
    assert!(d
        .bindings
        .iter()
        .any(|b| b.destination_type == DestinationType::Exchange));
}

#[test]
fn every_exported_hash_verifies_with_its_password() {
    let d = parse(EXPORT).unwrap();
    for (name, password) in [
        ("guest", "guest"),
        ("admin", "admin-pw-1"),
        ("monitor", "monitor-pw-2"),
        ("proxy", "proxy-pw-3"),
        ("app", "pässwörd-4"),
    ] {
        let user = d.users.iter().find(|u| u.name == name).unwrap();
        let algorithm = user.hashing_algorithm.as_deref().unwrap();
        assert_eq!(algorithm, "rabbit_password_hashing_sha256");
        let hash = PasswordHash::parse(&user.password_hash, algorithm).unwrap();
        assert!(hash.verify(password), "{name}");
        assert!(!hash.verify("wrong"), "{name}");
        assert_eq!(user.password(d.version()).unwrap(), Some(hash));
    }
    let nopass = d.users.iter().find(|u| u.name == "nopass").unwrap();
    assert_eq!(nopass.password_hash, "");
    assert_eq!(nopass.password(d.version()).unwrap(), None);
}

#[test]
fn operator_policies_and_vhost_limits_come_from_parameters() {
    let d = parse(EXPORT).unwrap();
    // RabbitMQ writes the operator policy's definition as a list of [key, value] pairs, and
    // its importer refuses that: parse makes it an object, so Warren's export loads.
    assert!(EXPORT.contains(r#""definition":[["max-length",5000],["message-ttl",86400000]]"#));
    assert_eq!(
        d.parameters[0].value["definition"],
        json!({"max-length": 5000, "message-ttl": 86400000})
    );
    let ops = d.operator_policies().unwrap();
    assert_eq!(ops.len(), 1);
    let op = &ops[0];
    assert_eq!((op.vhost.as_str(), op.name.as_str()), ("prod", "op-limits"));
    assert_eq!(
        (op.pattern.as_str(), op.apply_to, op.priority),
        (".*", ApplyTo::Queues, 2)
    );
    assert_eq!(
        serde_json::Value::Object(op.definition.clone()),
        json!({"max-length": 5000, "message-ttl": 86400000})
    );
    assert_eq!(
        d.vhost_limits().unwrap(),
        [(
            "prod".to_string(),
            limits(&[("max-connections", 10), ("max-queues", 5)])
        )]
    );
    let unsupported: Vec<_> = d
        .unsupported_parameters()
        .map(|p| (p.component.as_str(), p.name.as_str()))
        .collect();
    assert_eq!(
        unsupported,
        [("federation-upstream", "origin"), ("shovel", "move-jobs")]
    );
    assert_eq!(d.global_parameters[0].value, json!("made for the fixture"));
}

#[test]
fn operator_policy_and_vhost_limit_parameters_read_back() {
    let d = parse(EXPORT).unwrap();
    let op = &d.operator_policies().unwrap()[0];
    let param = Parameter::operator_policy(op);
    assert_eq!(param.component, "operator_policy");
    assert_eq!(&param.as_operator_policy().unwrap(), op);
    let lim = limits(&[("max-queues", 5)]);
    let param = Parameter::vhost_limits("prod", &lim);
    assert_eq!(
        (param.component.as_str(), param.name.as_str()),
        ("vhost-limits", "limits")
    );
    assert_eq!(param.as_vhost_limits().unwrap(), lim);

    let mut bad = param.clone();
    bad.component = "operator_policy".into();
    bad.value = json!({"pattern": ".*", "definition": 5});
    let mut with_bad = Definitions::default();
    with_bad.parameters.push(bad);
    let err = with_bad.operator_policies().unwrap_err().to_string();
    assert!(
        err.contains(
            "parameters[0] (\"limits\" in vhost \"prod\"): value.definition: invalid type"
        ),
        "{err}"
    );
}

#[test]
fn parse_to_json_parse_is_identity() {
    for text in [EXPORT, LEGACY] {
        let first = parse(text).unwrap();
        let written = to_json(&first);
        let second = parse(&written).unwrap();
        assert_eq!(first, second);
        // And writing is stable: the second write is the first.
        assert_eq!(to_json(&second), written);
    }
}

#[test]
fn tags_are_written_as_lists_and_vhost_fields_in_both_places() {
    let d = parse(LEGACY).unwrap();
    let written: serde_json::Value = serde_json::from_str(&to_json(&d)).unwrap();
    assert_eq!(
        written["users"][0]["tags"],
        json!(["administrator", "management"])
    );
    assert_eq!(written["users"][2]["tags"], json!([]));
    // No hashing_algorithm was read, none is invented.
    assert!(written["users"][0].get("hashing_algorithm").is_none());
    let prod = &serde_json::from_str::<serde_json::Value>(&to_json(&parse(EXPORT).unwrap()))
        .unwrap()["vhosts"][2];
    assert_eq!(prod["name"], json!("prod"));
    assert_eq!(prod["description"], json!("Production orders"));
    assert_eq!(prod["metadata"]["tags"], json!(["production", "eu"]));
    assert_eq!(prod["metadata"]["default_queue_type"], json!("classic"));
    assert_eq!(
        prod["limits"],
        json!({"max-connections": 10, "max-queues": 5})
    );
}

#[test]
fn the_legacy_file_parses_with_rabbitmqs_old_defaults() {
    let d = parse(LEGACY).unwrap();
    assert_eq!(d.version(), Some("3.5.7"));
    assert_eq!(d.users[0].tags, ["administrator", "management"]);
    assert_eq!(d.users[1].tags, ["monitoring"]);
    assert!(d.users[2].tags.is_empty());
    assert_eq!(d.vhosts[0].description, "");
    assert_eq!(d.vhosts[1].tracing, Some(false));
    assert_eq!(d.policies[0].apply_to, ApplyTo::All);
    assert!(d.topic_permissions.is_empty());
    assert!(d.exchanges[0].durable && !d.exchanges[0].internal);

    // Fixed salts (README): the file's hashes are what PasswordHash computes.
    for (i, algorithm, salt, password) in [
        (0, HashingAlgorithm::Md5, [1, 2, 3, 4], "legacy-admin-pw"),
        (
            1,
            HashingAlgorithm::Sha512,
            [0xde, 0xad, 0xbe, 0xef],
            "legacy-sha512-pw",
        ),
        (
            2,
            HashingAlgorithm::Md5,
            [0x00, 0xff, 0x10, 0x20],
            "legacy-md5-pw",
        ),
    ] {
        let user = &d.users[i];
        let expected = PasswordHash::with_salt(algorithm, salt, password);
        assert_eq!(user.password_hash, expected.to_base64(), "{}", user.name);
        // legacy-admin names no algorithm: a 3.5 export means MD5.
        let hash = user.password(d.version()).unwrap().unwrap();
        assert_eq!(hash.algorithm(), algorithm, "{}", user.name);
        assert!(
            hash.verify(password) && !hash.verify("legacy"),
            "{}",
            user.name
        );
    }
    // The same entry in a newer document would mean SHA-256 (and then not verify).
    assert!(d.users[0].password(Some("3.6.0")).is_err());
}

#[test]
fn unknown_fields_are_kept_and_written_back() {
    let text = r#"{
        "rabbitmq_version": "4.0.0",
        "product_name": "RabbitMQ",
        "product_version": "4.0.0",
        "explanation": {"from": "a future version"},
        "users": [{"name": "u", "password_hash": "", "tags": [], "avatar": "🐇"}],
        "vhosts": [{"name": "v", "protected_from_deletion": true}],
        "queues": [{"name": "q", "vhost": "v", "durable": true, "auto_delete": false,
                    "arguments": {}, "node": "rabbit@a", "leader": "rabbit@a"}]
    }"#;
    let d = parse(text).unwrap();
    assert_eq!(d.product_name.as_deref(), Some("RabbitMQ"));
    assert_eq!(d.extra["explanation"], json!({"from": "a future version"}));
    assert_eq!(d.users[0].extra["avatar"], json!("🐇"));
    assert_eq!(d.vhosts[0].extra["protected_from_deletion"], json!(true));
    assert_eq!(d.queues[0].extra.len(), 2);
    let written: serde_json::Value = serde_json::from_str(&to_json(&d)).unwrap();
    assert_eq!(written["explanation"]["from"], json!("a future version"));
    assert_eq!(written["product_version"], json!("4.0.0"));
    assert_eq!(written["users"][0]["avatar"], json!("🐇"));
    assert_eq!(written["vhosts"][0]["protected_from_deletion"], json!(true));
    assert_eq!(written["queues"][0]["leader"], json!("rabbit@a"));
    assert_eq!(parse(&to_json(&d)).unwrap(), d);
}

#[test]
fn lenient_readers_take_rabbitmqs_other_shapes() {
    let d = parse(
        r#"{"users": [{"name": "a", "password_hash": "", "tags": " x , ,y ", "limits": []}],
            "queues": [{"name": "q", "vhost": "/", "arguments": []}],
            "policies": [{"vhost": "/", "name": "p", "pattern": ".*",
                          "definition": [["max-length", 1]], "apply-to": "quorum_queues"}]}"#,
    )
    .unwrap();
    assert_eq!(d.users[0].tags, ["x", "y"]);
    assert!(d.users[0].limits.is_empty());
    // Missing durable/auto_delete: a durable, non-auto-delete queue.
    assert!(d.queues[0].durable && !d.queues[0].auto_delete);
    assert!(d.queues[0].arguments.is_empty());
    assert_eq!(d.policies[0].apply_to, ApplyTo::QuorumQueues);
    assert_eq!(d.policies[0].definition["max-length"], json!(1));
    // An empty document is an empty set of definitions.
    assert_eq!(parse("{}").unwrap(), Definitions::default());
}

#[test]
fn errors_name_the_entry() {
    // A missing field: category, index and the entry's name.
    let text = r#"{"users": [
        {"name": "alice", "password_hash": "", "tags": []},
        {"name": "carol", "password_hash": "", "tags": []},
        {"name": "bob", "tags": []}]}"#;
    assert_eq!(
        error_text(text),
        "users[2] (\"bob\"): missing field `password_hash`"
    );
    // A missing name: the index alone.
    assert_eq!(
        error_text(r#"{"vhosts": [{"description": "x"}]}"#),
        "vhosts[0]: missing field `name`"
    );
    // A wrong type: the field too, and the vhost of a vhost-scoped entry.
    assert_eq!(
        error_text(r#"{"queues": [{"name": "q", "vhost": "/", "durable": "yes"}]}"#),
        "queues[0] (\"q\" in vhost \"/\").durable: invalid type: string \"yes\", expected a boolean"
    );
    assert_eq!(
        error_text(
            r#"{"permissions": [{"user": "u", "vhost": "v", "configure": 1, "write": "", "read": ""}]}"#
        ),
        "permissions[0] (user \"u\" in vhost \"v\").configure: invalid type: integer `1`, expected a string"
    );
    assert_eq!(
        error_text(
            r#"{"bindings": [{"source": "s", "vhost": "v", "destination": "d", "destination_type": "topic"}]}"#
        ),
        "bindings[0] (\"s\" -> \"d\" in vhost \"v\").destination_type: unknown variant `topic`, expected `queue` or `exchange`"
    );
    let apply_to = error_text(
        r#"{"policies": [{"vhost": "/", "name": "p", "pattern": "", "definition": {}, "apply-to": "streamz"}]}"#,
    );
    assert!(
        apply_to
            .starts_with("policies[0] (\"p\" in vhost \"/\").apply-to: unknown variant `streamz`"),
        "{apply_to}"
    );
    assert_eq!(
        error_text(r#"{"users": [{"name": "a", "password_hash": "", "tags": [1]}]}"#),
        "users[0] (\"a\").tags[0]: invalid type: integer `1`, expected a string"
    );
    assert_eq!(
        error_text(r#"{"users": {"name": "a"}}"#),
        "users: invalid type: map, expected a sequence"
    );
    assert_eq!(error_text("[]"), "definitions: expected a JSON object");
    // Malformed JSON: line and column.
    let bad = error_text("{\n  \"users\": [\n    {\"name\": \"a\",}\n  ]\n}");
    assert!(
        bad.starts_with("definitions are not valid JSON: ") && bad.ends_with("at line 3 column 18"),
        "{bad}"
    );
}

#[test]
fn an_unknown_hashing_algorithm_is_reported_when_the_hash_is_read() {
    let d = parse(
        r#"{"users": [{"name": "a", "password_hash": "AAAA", "hashing_algorithm": "Bcrypt"}]}"#,
    )
    .unwrap();
    let err = d.users[0].password(d.version()).unwrap_err();
    assert!(err.contains("unknown hashing_algorithm 'Bcrypt'"), "{err}");
}

#[test]
fn a_policy_written_by_warren_reads_back() {
    let mut definition = serde_json::Map::new();
    definition.insert("max-length".into(), json!(10));
    let policy = Policy {
        vhost: "/".into(),
        name: "p".into(),
        pattern: "^q$".into(),
        apply_to: ApplyTo::Queues,
        priority: 3,
        definition,
        extra: Default::default(),
    };
    let d = Definitions {
        policies: vec![policy.clone()],
        parameters: vec![Parameter::operator_policy(&policy)],
        ..Definitions::default()
    };
    let back = parse(&to_json(&d)).unwrap();
    assert_eq!(back.policies, std::slice::from_ref(&policy));
    assert_eq!(back.operator_policies().unwrap(), [policy]);
}
