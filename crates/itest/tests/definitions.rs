//! Definitions import and export in RabbitMQ's JSON format, checked with a real RabbitMQ
//! 3.10.8 export (crates/core/tests/fixtures) through real clients: its users log in with
//! their old passwords, its vhosts, permissions, limits and policies apply, and a bad document
//! changes nothing.

use warren_core::definitions_json;
use warren_itest::lapin::options::QueueDeclareOptions;
use warren_itest::lapin::types::FieldTable;
use warren_itest::*;

const RABBITMQ_EXPORT: &str = include_str!("../../core/tests/fixtures/rabbitmq-definitions.json");

fn url(b: &TestBroker, user: &str, pw: &str, vhost: &str) -> String {
    b.url_with(user, pw, vhost, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_export_loads_and_its_users_log_in_with_their_passwords() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let broker = b.broker().unwrap();
    let defs = definitions_json::parse(RABBITMQ_EXPORT).unwrap();
    let report = within("import", broker.import_definitions(&defs))
        .await
        .unwrap();
    assert!(
        report
            .skipped
            .iter()
            .any(|s| s.contains("federation-upstream")),
        "{:?}",
        report.skipped
    );
    // Idempotent: the same document again changes nothing and does not fail.
    within("import again", broker.import_definitions(&defs))
        .await
        .unwrap();

    // Old passwords, in every hashing the export used (UTF-8 one percent-encoded).
    connect(&url(&b, "admin", "admin-pw-1", "prod")).await;
    let app = connect(&url(&b, "app", "p%C3%A4ssw%C3%B6rd-4", "prod")).await;
    expect_code(
        try_connect(&url(&b, "app", "wrong", "prod"), Default::default()).await,
        403,
    );
    expect_code(
        try_connect(
            &url(&b, "nopass", "temporary-pw", "prod"),
            Default::default(),
        )
        .await,
        403,
    );
    // The app's permissions: configure only on ^app\..*.
    let ch = app.create_channel().await.unwrap();
    let refused = within(
        "queue.declare",
        ch.queue_declare(
            "other".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        ),
    )
    .await;
    expect_code(refused, 403);
    // A queue from the export exists, with its policy applied (operator policy op-limits
    // caps max-length at 5000 in prod): passive declare finds it.
    let ch = app.create_channel().await.unwrap();
    within(
        "passive declare",
        ch.queue_declare(
            "app.orders".into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ),
    )
    .await
    .unwrap();
    // The vhost limit from the export: max-connections 10 in prod.
    let info = broker
        .vhosts()
        .into_iter()
        .find(|v| v.name == "prod")
        .unwrap();
    assert_eq!(info.limits.max_connections, Some(10));
    assert_eq!(info.limits.max_queues, Some(5));
    let app_user = broker.user("app").unwrap();
    assert_eq!(app_user.limits.max_channels, Some(4));
    assert!(broker.user("proxy").unwrap().has_tag("impersonator"));

    // Export, then import into a fresh broker: the same users log in there.
    let exported = definitions_json::to_json(&broker.export_definitions());
    let again = definitions_json::parse(&exported).unwrap();
    let Some(b2) = start_broker_with(|_| {}).await else {
        return;
    };
    within(
        "import export",
        b2.broker().unwrap().import_definitions(&again),
    )
    .await
    .unwrap();
    connect(&url(&b2, "monitor", "monitor-pw-2", "prod")).await;
    let exported_again = b2.broker().unwrap().export_definitions();
    assert_eq!(exported_again.users.len(), again.users.len());
    assert_eq!(exported_again.policies.len(), again.policies.len());
    assert_eq!(exported_again.queues.len(), again.queues.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_entry_is_named_and_nothing_is_applied() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let broker = b.broker().unwrap();
    let cases = [
        (
            r#"{"users":[{"name":"ok","password_hash":"","tags":[]}],
                "vhosts":[{"name":"v"}],
                "permissions":[{"user":"ok","vhost":"v","configure":"(","write":"","read":""}]}"#,
            "permissions[0] (\"ok\" in vhost \"v\")",
        ),
        (
            r#"{"users":[{"name":"ok","password_hash":"","tags":[]}],
                "vhosts":[{"name":"v"}],
                "policies":[{"vhost":"v","name":"p","pattern":".*","definition":{"max-lenght":1}}]}"#,
            "policies[0] (\"p\" in vhost \"v\")",
        ),
        (
            r#"{"users":[{"name":"ok","password_hash":"","tags":[]}],
                "vhosts":[{"name":"v"}],
                "queues":[{"name":"q","vhost":"v","durable":true,"auto_delete":false,
                           "arguments":{"x-max-length":"ten"}}]}"#,
            "queues[0] (\"q\" in vhost \"v\")",
        ),
        (
            r#"{"users":[{"name":"ok","password_hash":"not base64!","tags":[]}], "vhosts":[{"name":"v"}]}"#,
            "users[0] (\"ok\")",
        ),
        (
            r#"{"users":[{"name":"ok","password_hash":"","tags":[]}],
                "permissions":[{"user":"ok","vhost":"missing","configure":".*","write":".*","read":".*"}]}"#,
            "no vhost 'missing'",
        ),
    ];
    for (doc, named) in cases {
        let defs = definitions_json::parse(doc).unwrap();
        let err = within("import", broker.import_definitions(&defs))
            .await
            .unwrap_err();
        assert_eq!(err.http_status(), 400, "{err}");
        assert!(err.text().contains(named), "{named} not in: {err}");
        assert!(broker.user("ok").is_none(), "half applied: {doc}");
        assert!(
            !broker.vhosts().iter().any(|v| v.name == "v"),
            "half applied: {doc}"
        );
    }
    let err = definitions_json::parse("{\"users\": [").unwrap_err();
    assert!(err.text().contains("line"), "{err}");
}
