//! The management HTTP API end to end: requests over a real socket create a user, a vhost
//! and permissions, and a lapin client then logs in with them over AMQP.

use warren_itest::*;

#[tokio::test]
async fn user_vhost_and_permissions_made_over_http_log_in_over_amqp() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let broker = b.broker().expect("in-process").clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(warren_mgmt::serve(listener, broker, async {
        let _ = stopped.await;
    }));
    let admin = ("guest", "guest");

    let (s, _) = http(addr, "PUT", "/api/vhosts/e2e%2Fvh", admin, "").await;
    assert_eq!(s, 201);
    let user = r#"{"password":"s3cret","tags":"management"}"#;
    let (s, _) = http(addr, "PUT", "/api/users/alice", admin, user).await;
    assert_eq!(s, 201);
    let (s, _) = http(addr, "GET", "/api/whoami", ("alice", "s3cret"), "").await;
    assert_eq!(s, 200);
    let perms = r#"{"configure":".*","write":".*","read":".*"}"#;
    let (s, body) = http(addr, "PUT", "/api/permissions/e2e%2Fvh/alice", admin, perms).await;
    assert_eq!(s, 201, "{body}");

    let conn = connect(&b.url_with("alice", "s3cret", "e2e%2Fvh", "")).await;
    let channel = conn.create_channel().await.unwrap();
    channel
        .queue_declare(
            "made-by-alice".into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();

    // The connection is listed under its vhost and closed by DELETE with a reason.
    let (s, body) = http(addr, "GET", "/api/connections", admin, "").await;
    assert_eq!(s, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["user"] == "alice")
        .expect("alice's connection")
        .clone();
    assert_eq!(entry["vhost"], "e2e/vh");
    let (s, body) = http(addr, "GET", "/api/overview", admin, "").await;
    assert_eq!(s, 200, "{body}");

    let name = entry["name"].as_str().unwrap();
    let id = name.rsplit('#').next().unwrap();
    let mut ev = events(&conn);
    let (s, _) = http(addr, "DELETE", &format!("/api/connections/{id}"), admin, "").await;
    assert_eq!(s, 204);
    // The broker closes it with 320 CONNECTION_FORCED: awaited, not polled.
    expect_error_event(&mut ev, 320).await;

    // Deleting the user over HTTP stops its logins.
    let (s, _) = http(addr, "DELETE", "/api/users/alice", admin, "").await;
    assert_eq!(s, 204);
    let refused = lapin::Connection::connect(
        &b.url_with("alice", "s3cret", "e2e%2Fvh", ""),
        lapin::ConnectionProperties::default(),
    )
    .await;
    assert!(refused.is_err());

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    b.stop().await;
}
