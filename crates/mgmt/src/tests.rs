//! Router tests through `oneshot` (no socket).

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::connect_info::MockConnectInfo;
use axum::http::{header, Request, StatusCode};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;
use warren_core::broker::{BrokerSettings, DefaultUser};

use super::*;

pub(crate) struct Api {
    pub(crate) broker: Arc<Broker>,
    pub(crate) app: Router,
}

pub(crate) fn api() -> Api {
    let broker = Broker::in_memory(BrokerSettings {
        default_users: vec![DefaultUser {
            name: "admin".into(),
            password: "secret".into(),
            tags: vec!["administrator".into()],
        }],
        ..Default::default()
    });
    let loopback: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let app = router(broker.clone()).layer(MockConnectInfo(loopback));
    Api { broker, app }
}

fn basic(user: &str, password: &str) -> String {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    format!("Basic {token}")
}

impl Api {
    pub(crate) async fn call_as(
        &self,
        auth: Option<(&str, &str)>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        let (status, _, value) = self.call_full(auth, method, path, body).await;
        (status, value)
    }

    pub(crate) async fn call_full(
        &self,
        auth: Option<(&str, &str)>,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some((u, p)) = auth {
            req = req.header(header::AUTHORIZATION, basic(u, p));
        }
        let req = req
            .body(body.map(|b| Body::from(b.to_owned())).unwrap_or_default())
            .unwrap();
        let response = self.app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = match bytes.is_empty() {
            true => Value::Null,
            false => serde_json::from_slice(&bytes).unwrap(),
        };
        (status, headers, value)
    }

    pub(crate) async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (StatusCode, Value) {
        self.call_as(Some(("admin", "secret")), method, path, body)
            .await
    }

    pub(crate) async fn user_with_tags(&self, name: &str, tags: &str) {
        let body = json!({"password": "pw", "tags": tags}).to_string();
        let (s, _) = self
            .admin("PUT", &format!("/api/users/{name}"), Some(&body))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
}

#[tokio::test]
async fn auth_is_required_and_checked() {
    let api = api();
    let req = Request::get("/api/whoami").body(Body::empty()).unwrap();
    let response = api.app.clone().oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        response.headers()[header::WWW_AUTHENTICATE],
        "Basic realm=\"RabbitMQ Management\""
    );
    let (s, body) = api
        .call_as(Some(("admin", "wrong")), "GET", "/api/whoami", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "not_authorised");
    let (s, _) = api
        .call_as(Some(("nobody", "x")), "GET", "/api/whoami", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, body) = api.admin("GET", "/api/whoami", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, json!({"name": "admin", "tags": ["administrator"]}));
}

#[tokio::test]
async fn a_user_without_management_tags_is_forbidden() {
    let api = api();
    api.user_with_tags("plain", "").await;
    let (s, body) = api
        .call_as(Some(("plain", "pw")), "GET", "/api/whoami", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "not_authorised");
}

#[tokio::test]
async fn loopback_users_are_refused_from_other_hosts() {
    let broker = Broker::in_memory(BrokerSettings {
        default_users: vec![DefaultUser {
            name: "guest".into(),
            password: "guest".into(),
            tags: vec!["administrator".into()],
        }],
        loopback_users: vec!["guest".into()],
        ..Default::default()
    });
    let remote: SocketAddr = "192.0.2.7:40000".parse().unwrap();
    let app = router(broker).layer(MockConnectInfo(remote));
    let req = Request::get("/api/whoami")
        .header(header::AUTHORIZATION, basic("guest", "guest"))
        .body(Body::empty())
        .unwrap();
    let response = app.oneshot(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn tag_rules() {
    let api = api();
    api.user_with_tags("mgmt", "management").await;
    api.user_with_tags("mon", "monitoring").await;
    api.user_with_tags("pm", "policymaker").await;
    api.admin("PUT", "/api/vhosts/other", None).await;
    api.admin("PUT", "/api/vhosts/mine", None).await;
    let perms = r#"{"configure":".*","write":".*","read":".*"}"#;
    for user in ["mgmt", "pm"] {
        let (s, _) = api
            .admin("PUT", &format!("/api/permissions/mine/{user}"), Some(perms))
            .await;
        assert_eq!(s, StatusCode::CREATED);
    }
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap().to_owned())
            .collect()
    };
    // management sees its own vhosts only; monitoring all.
    let (_, v) = api
        .call_as(Some(("mgmt", "pw")), "GET", "/api/vhosts", None)
        .await;
    assert_eq!(names(&v), ["mine"]);
    let (s, _) = api
        .call_as(Some(("mgmt", "pw")), "GET", "/api/vhosts/other", None)
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, v) = api
        .call_as(Some(("mon", "pw")), "GET", "/api/vhosts", None)
        .await;
    assert_eq!(names(&v), ["/", "mine", "other"]);
    // Only administrators change users and vhosts, and list users.
    for who in ["mgmt", "mon", "pm"] {
        let (s, _) = api
            .call_as(Some((who, "pw")), "PUT", "/api/vhosts/x", None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{who}");
        let (s, _) = api
            .call_as(Some((who, "pw")), "GET", "/api/users", None)
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED, "{who}");
    }
    // policymaker sets policies where it has permissions, not elsewhere; management never.
    let policy = r#"{"pattern":"^q","definition":{"max-length":5}}"#;
    let (s, _) = api
        .call_as(
            Some(("pm", "pw")),
            "PUT",
            "/api/policies/mine/p",
            Some(policy),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api
        .call_as(
            Some(("pm", "pw")),
            "PUT",
            "/api/policies/other/p",
            Some(policy),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = api
        .call_as(
            Some(("mgmt", "pw")),
            "PUT",
            "/api/policies/mine/p2",
            Some(policy),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, v) = api
        .call_as(Some(("mgmt", "pw")), "GET", "/api/policies", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names(&v), ["p"]);
}

#[tokio::test]
async fn vhosts_crud_with_percent_encoded_names() {
    let api = api();
    let (s, v) = api.admin("GET", "/api/vhosts/%2F", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "/");
    let body = r#"{"description":"d","tags":"a,b","default_queue_type":"quorum"}"#;
    let (s, _) = api.admin("PUT", "/api/vhosts/a%2Fb%25c", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = api.admin("GET", "/api/vhosts/a%2Fb%25c", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["name"], "a/b%c");
    assert_eq!(v["tags"], json!(["a", "b"]));
    assert_eq!(v["default_queue_type"], "quorum");
    let (s, _) = api.admin("PUT", "/api/vhosts/a%2Fb%25c", Some(body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(api.broker.vhost("a/b%c").is_some());
    let (s, _) = api.admin("DELETE", "/api/vhosts/a%2Fb%25c", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.admin("GET", "/api/vhosts/a%2Fb%25c", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "not_found");
    let (s, _) = api.admin("DELETE", "/api/vhosts/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn users_crud() {
    let api = api();
    let (s, _) = api
        .admin(
            "PUT",
            "/api/users/bob",
            Some(r#"{"password":"pw","tags":["monitoring"]}"#),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = api.admin("GET", "/api/users/bob", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["tags"], json!(["monitoring"]));
    assert_eq!(v["hashing_algorithm"], "rabbit_password_hashing_sha256");
    // A hash moves a password between brokers.
    let hash = v["password_hash"].as_str().unwrap().to_owned();
    let body = json!({"password_hash": hash, "tags": "management"}).to_string();
    let (s, _) = api.admin("PUT", "/api/users/carol", Some(&body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api
        .call_as(Some(("carol", "pw")), "GET", "/api/whoami", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = api.admin("GET", "/api/users", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 3);
    let (s, v) = api
        .admin("PUT", "/api/users/bob", Some(r#"{"password_hash":"!!"}"#))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert_eq!(v["error"], "bad_request");
    let (s, _) = api
        .admin("PUT", "/api/users/bob", Some(r#"{"tags":""}"#))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.admin("DELETE", "/api/users/bob", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.admin("GET", "/api/users/bob", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.admin("GET", "/api/users/bob/permissions", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn bad_bodies() {
    let api = api();
    let (s, v) = api.admin("PUT", "/api/users/x", Some("{not json")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["reason"].as_str().unwrap().contains("malformed JSON"));
    let (s, _) = api.admin("PUT", "/api/users/x", Some("[1]")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .admin("PUT", "/api/users/x", Some(r#"{"tags":5}"#))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let big = format!("{{\"description\":\"{}\"}}", "x".repeat(BODY_BYTES_MAX));
    let (s, v) = api.admin("PUT", "/api/vhosts/big", Some(&big)).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(v["error"], "payload_too_large");
    assert!(api.broker.vhost("big").is_none());
    let (s, v) = api.admin("GET", "/api/nothing-here", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_eq!(v["error"], "not_found");
    let (s, v) = api.admin("POST", "/api/vhosts/%2F", None).await;
    assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(v["error"], "method_not_allowed");
}

#[tokio::test]
async fn permissions_and_topic_permissions() {
    let api = api();
    api.user_with_tags("u", "").await;
    let body = r#"{"configure":"^c","write":"^w","read":"^r"}"#;
    let (s, _) = api.admin("PUT", "/api/permissions/%2F/u", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api.admin("PUT", "/api/permissions/%2F/u", Some(body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.admin("GET", "/api/permissions/%2F/u", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        v,
        json!({"user":"u","vhost":"/","configure":"^c","write":"^w","read":"^r"})
    );
    let (_, v) = api.admin("GET", "/api/users/u/permissions", None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (_, v) = api.admin("GET", "/api/vhosts/%2F/permissions", None).await;
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (s, v) = api
        .admin(
            "PUT",
            "/api/permissions/%2F/u",
            Some(r#"{"configure":"(","write":"","read":""}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _) = api
        .admin("PUT", "/api/permissions/nope/u", Some(body))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .admin("PUT", "/api/permissions/%2F/nobody", Some(body))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .admin(
            "PUT",
            "/api/permissions/%2F/u",
            Some(r#"{"configure":".*"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api.admin("DELETE", "/api/permissions/%2F/u", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.admin("DELETE", "/api/permissions/%2F/u", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let topic = r#"{"exchange":"amq.topic","write":"^a","read":"^b"}"#;
    let (s, _) = api
        .admin("PUT", "/api/topic-permissions/%2F/u", Some(topic))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, v) = api.admin("GET", "/api/topic-permissions/%2F/u", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v[0]["exchange"], "amq.topic");
    let (_, v) = api.admin("GET", "/api/topic-permissions", None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, _) = api
        .admin("DELETE", "/api/topic-permissions/%2F/u", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.admin("GET", "/api/topic-permissions/%2F/u", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn policies_and_operator_policies() {
    let api = api();
    let body = r#"{"pattern":"^q","definition":{"max-length":5},"priority":1,"apply-to":"queues"}"#;
    let (s, _) = api.admin("PUT", "/api/policies/%2F/p", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = api.admin("PUT", "/api/policies/%2F/p", Some(body)).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = api.admin("GET", "/api/policies/%2F/p", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["vhost"], "/");
    assert_eq!(v["apply-to"], "queues");
    assert_eq!(v["definition"]["max-length"], 5);
    let (_, v) = api.admin("GET", "/api/policies/%2F", None).await;
    assert_eq!(v.as_array().unwrap().len(), 1);
    let (s, v) = api
        .admin(
            "PUT",
            "/api/policies/%2F/bad",
            Some(r#"{"pattern":"(","definition":{}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["reason"].as_str().unwrap().contains("'bad'"), "{v}");
    let (s, v) = api
        .admin(
            "PUT",
            "/api/policies/%2F/odd",
            Some(r#"{"pattern":".*","definition":{"no-such-key":1}}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("'odd'") && reason.contains("no-such-key"),
        "{v}"
    );
    let (s, _) = api.admin("PUT", "/api/policies/nope/p", Some(body)).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.admin("GET", "/api/policies/%2F/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api.admin("DELETE", "/api/policies/%2F/p", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.admin("DELETE", "/api/policies/%2F/p", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let op = r#"{"pattern":".*","definition":{"max-length":100},"apply-to":"queues"}"#;
    let (s, _) = api
        .admin("PUT", "/api/operator-policies/%2F/cap", Some(op))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, v) = api.admin("GET", "/api/operator-policies", None).await;
    assert_eq!(v[0]["name"], "cap");
    let (_, v) = api.admin("GET", "/api/policies", None).await;
    assert_eq!(v, json!([]));
}

#[tokio::test]
async fn limits() {
    let api = api();
    let (s, _) = api
        .admin(
            "PUT",
            "/api/vhost-limits/%2F/max-queues",
            Some(r#"{"value":10}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = api.admin("GET", "/api/vhost-limits", None).await;
    assert_eq!(v, json!([{"vhost":"/","value":{"max-queues":10}}]));
    let (_, v) = api.admin("GET", "/api/vhost-limits/%2F", None).await;
    assert_eq!(v, json!([{"vhost":"/","value":{"max-queues":10}}]));
    let (s, v) = api
        .admin(
            "PUT",
            "/api/vhost-limits/%2F/max-bananas",
            Some(r#"{"value":1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(v["reason"].as_str().unwrap().contains("max-bananas"));
    let (s, _) = api
        .admin(
            "PUT",
            "/api/vhost-limits/nope/max-queues",
            Some(r#"{"value":1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = api
        .admin("DELETE", "/api/vhost-limits/%2F/max-queues", None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = api.admin("GET", "/api/vhost-limits", None).await;
    assert_eq!(v, json!([]));

    let (s, _) = api
        .admin(
            "PUT",
            "/api/user-limits/admin/max-channels",
            Some(r#"{"value":3}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = api.admin("GET", "/api/user-limits/admin", None).await;
    assert_eq!(v, json!([{"user":"admin","value":{"max-channels":3}}]));
    let (s, _) = api
        .admin(
            "PUT",
            "/api/user-limits/admin/max-channels",
            Some(r#"{"value":-1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = api.admin("GET", "/api/user-limits", None).await;
    assert_eq!(v, json!([]));
    let (s, _) = api
        .admin(
            "PUT",
            "/api/user-limits/admin/max-channels",
            Some(r#"{"value":"x"}"#),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api
        .admin(
            "PUT",
            "/api/user-limits/nobody/max-channels",
            Some(r#"{"value":1}"#),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn definitions_round_trip() {
    let api = api();
    api.admin("PUT", "/api/vhosts/v1", None).await;
    let policy = r#"{"pattern":"^q","definition":{"max-length":5}}"#;
    api.admin("PUT", "/api/policies/v1/p", Some(policy)).await;
    let (s, whole) = api.admin("GET", "/api/definitions", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(whole["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "admin"));
    assert!(whole["vhosts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|v| v["name"] == "v1"));
    let (s, one) = api.admin("GET", "/api/definitions/v1", None).await;
    assert_eq!(s, StatusCode::OK);
    assert!(one.get("users").is_none());
    assert_eq!(one["policies"][0]["name"], "p");
    assert!(one["policies"][0].get("vhost").is_none());

    // The per-vhost document imports into another vhost.
    api.admin("PUT", "/api/vhosts/v2", None).await;
    let (s, _) = api
        .admin("POST", "/api/definitions/v2", Some(&one.to_string()))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = api.admin("GET", "/api/policies/v2/p", None).await;
    assert_eq!(s, StatusCode::OK);

    let doc = json!({"users": [{"name": "imported", "password_hash": "", "tags": ""}],
                     "vhosts": [{"name": "v3"}]});
    let (s, v) = api
        .admin("POST", "/api/definitions", Some(&doc.to_string()))
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    assert!(api.broker.user("imported").is_some());
    assert!(api.broker.vhost("v3").is_some());
    let (s, _) = api.admin("POST", "/api/definitions", Some("{")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = api.admin("GET", "/api/definitions/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn overview_and_empty_connections() {
    let api = api();
    let (s, v) = api.admin("GET", "/api/overview", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["product_name"], "Warren");
    assert_eq!(v["object_totals"]["connections"], 0);
    assert!(
        v["object_totals"]["exchanges"].as_u64().unwrap() >= 1,
        "{v}"
    );
    let (s, v) = api.admin("GET", "/api/connections", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v, json!([]));
    let (s, _) = api.admin("DELETE", "/api/connections/42", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}
