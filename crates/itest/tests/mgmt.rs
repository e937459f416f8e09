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

/// Every byte but ASCII letters and digits as `%XX` (a channel name holds ' ', '#', '>').
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b.is_ascii_alphanumeric() {
            true => (b as char).to_string(),
            false => format!("%{b:02X}"),
        })
        .collect()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Queues, channels and consumers over a real socket: a queue declared over HTTP fills from
/// lapin publishes, its consumer and the consumer's channel (with its prefetch) are listed,
/// and purge and a conditional delete act on it.
#[tokio::test]
async fn queue_made_over_http_is_filled_consumed_purged_and_deleted() {
    use warren_itest::lapin::options::{
        BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    };
    use warren_itest::lapin::BasicProperties;
    const MESSAGES: u64 = 7;
    const PREFETCH: u16 = 3;

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

    let (s, body) = http(
        addr,
        "PUT",
        "/api/queues/%2F/q",
        admin,
        r#"{"durable":false}"#,
    )
    .await;
    assert_eq!(s, 201, "{body}");
    let (conn, ch) = b.channel().await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..MESSAGES {
        let confirm = ch
            .basic_publish(
                "".into(),
                "q".into(),
                BasicPublishOptions::default(),
                format!("m{i}").as_bytes(),
                BasicProperties::default(),
            )
            .await
            .unwrap();
        confirm.await.unwrap();
    }
    // The queue actor publishes its metrics after each batch of commands.
    eventually("messages_ready reaches N", || async {
        let (_, body) = http(addr, "GET", "/api/queues/%2F/q", admin, "").await;
        json(&body)["messages_ready"] == MESSAGES
    })
    .await;
    let (_, body) = http(addr, "GET", "/api/queues/%2F/q", admin, "").await;
    let q = json(&body);
    assert_eq!(q["message_stats"]["publish"], MESSAGES);
    assert_eq!(q["messages"], MESSAGES);

    // A consumer with a prefetch: listed with its channel.
    let consumer_ch = conn.create_channel().await.unwrap();
    consumer_ch
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .unwrap();
    let _consumer = consumer_ch
        .basic_consume(
            "q".into(),
            "the-consumer".into(),
            BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let (s, body) = http(addr, "GET", "/api/consumers", admin, "").await;
    assert_eq!(s, 200);
    let consumers = json(&body);
    let c = &consumers[0];
    assert_eq!(c["consumer_tag"], "the-consumer");
    assert_eq!(c["queue"], serde_json::json!({"name": "q", "vhost": "/"}));
    assert_eq!(c["ack_required"], true);
    assert_eq!(c["prefetch_count"], PREFETCH);
    assert_eq!(c["channel_details"]["user"], "guest");
    let channel_name = c["channel_details"]["name"].as_str().unwrap().to_owned();
    let (s, body) = http(addr, "GET", "/api/channels", admin, "").await;
    assert_eq!(s, 200);
    let channels = json(&body);
    let listed = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == channel_name.as_str())
        .unwrap_or_else(|| panic!("{channel_name} not in {channels}"));
    assert_eq!(listed["prefetch_count"], PREFETCH);
    assert_eq!(listed["consumer_count"], 1);
    assert_eq!(listed["user"], "guest");
    assert_eq!(channels.as_array().unwrap().len(), 2);
    // The publishing channel's message_stats: what it published and had confirmed.
    let publisher = channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] != channel_name.as_str())
        .unwrap();
    assert_eq!(
        publisher["message_stats"]["publish"], MESSAGES,
        "{publisher}"
    );
    assert_eq!(
        publisher["message_stats"]["confirm"], MESSAGES,
        "{publisher}"
    );
    assert_eq!(publisher["message_stats"]["deliver_get"], 0, "{publisher}");
    let (_, body) = http(addr, "GET", "/api/connections", admin, "").await;
    let connection = &json(&body)[0];
    assert_eq!(connection["channels"], 2);
    assert_eq!(
        connection["client_properties"]["product"], "lapin",
        "{connection}"
    );
    assert_eq!(connection["auth_mechanism"], "PLAIN");
    assert_eq!(connection["ssl"], false);
    assert!(connection["recv_oct"].as_u64().unwrap() > 0, "{connection}");
    assert!(connection["send_oct"].as_u64().unwrap() > 0, "{connection}");
    assert!(connection["recv_oct_details"]["rate"].is_number());
    let (_, body) = http(addr, "GET", "/api/queues/%2F/q", admin, "").await;
    let details = &json(&body)["consumer_details"];
    assert_eq!(details[0]["consumer_tag"], "the-consumer");
    assert_eq!(details[0]["channel_details"]["name"], channel_name.as_str());
    let (s, _) = http(
        addr,
        "GET",
        &format!("/api/channels/{}", percent_encode(&channel_name)),
        admin,
        "",
    )
    .await;
    assert_eq!(s, 200);
    let (_, body) = http(addr, "GET", "/api/overview", admin, "").await;
    let overview = json(&body);
    assert_eq!(overview["object_totals"]["channels"], 2);
    assert_eq!(overview["object_totals"]["consumers"], 1);
    // Publisher counters: counted by the connection before its confirms went out.
    let stats = &overview["message_stats"];
    assert_eq!(stats["publish"], MESSAGES, "{stats}");
    assert_eq!(stats["confirm"], MESSAGES, "{stats}");
    assert_eq!(stats["return_unroutable"], 0);
    assert!(stats["confirm_details"]["rate"].is_number());
    eventually("the prefetch's worth is unacknowledged", || async {
        let (_, body) = http(addr, "GET", "/api/queues/%2F/q", admin, "").await;
        json(&body)["messages_unacknowledged"] == PREFETCH
    })
    .await;
    // ... and written to the consumer's channel, which counts them.
    let channel_path = format!("/api/channels/{}", percent_encode(&channel_name));
    eventually("the consumer's channel counts its deliveries", || async {
        let (_, body) = http(addr, "GET", &channel_path, admin, "").await;
        json(&body)["message_stats"]["deliver"] == PREFETCH
    })
    .await;
    let (_, body) = http(addr, "GET", &channel_path, admin, "").await;
    assert_eq!(json(&body)["message_stats"]["publish"], 0);

    // The consumer goes; its deliveries return. Purge empties, then if-empty succeeds.
    consumer_ch.close(200, "bye".into()).await.unwrap();
    let (s, body) = http(addr, "DELETE", "/api/queues/%2F/q?if-empty=true", admin, "").await;
    assert_eq!(s, 400, "{body}");
    assert!(json(&body)["reason"]
        .as_str()
        .unwrap()
        .starts_with("PRECONDITION_FAILED"));
    let (s, _) = http(addr, "DELETE", "/api/queues/%2F/q/contents", admin, "").await;
    assert_eq!(s, 204);
    eventually("the queue is empty", || async {
        let (_, body) = http(addr, "GET", "/api/queues/%2F/q", admin, "").await;
        json(&body)["messages"] == 0
    })
    .await;
    let (s, body) = http(addr, "DELETE", "/api/queues/%2F/q?if-empty=true", admin, "").await;
    assert_eq!(s, 204, "{body}");
    let (s, _) = http(addr, "GET", "/api/queues/%2F/q", admin, "").await;
    assert_eq!(s, 404);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    b.stop().await;
}

/// Exchange `message_stats`: `publish_in` counts what clients published to an exchange,
/// `publish_out` the queue copies its routing made; an exchange nobody published to has
/// none (as RabbitMQ); the default exchange counts too; a vhost's `message_stats` sums its
/// queues'.
#[tokio::test]
async fn exchanges_and_vhosts_report_message_stats() {
    let Some(b) = start_broker_with(|_| {}).await else {
        return;
    };
    let (addr, _stop) = serve_mgmt(b.broker().expect("in-process").clone()).await;
    let admin = ("guest", "guest");
    let conn = b.connect().await;
    let ch = confirm_channel(&conn).await;
    for name in ["xs.fan", "xs.quiet"] {
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Fanout,
            lapin::options::ExchangeDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    }
    for q in ["xs.a", "xs.b"] {
        declare_queue(&ch, q).await;
        ch.queue_bind(
            q.into(),
            "xs.fan".into(),
            "".into(),
            lapin::options::QueueBindOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let props = lapin::BasicProperties::default;
    for _ in 0..5 {
        publish_confirmed(&ch, "xs.fan", "", b"m", props()).await;
    }
    for _ in 0..3 {
        publish_confirmed(&ch, "", "xs.a", b"m", props()).await;
        // Routed nowhere: in, not out.
        publish_confirmed(&ch, "", "xs.nowhere", b"m", props()).await;
    }

    let (s, fan) = http_json(addr, "GET", "/api/exchanges/%2F/xs.fan", admin, "").await;
    assert_eq!(s, 200, "{fan}");
    assert_eq!(fan["message_stats"]["publish_in"], 5, "{fan}");
    assert_eq!(fan["message_stats"]["publish_out"], 10, "{fan}");
    assert!(fan["message_stats"]["publish_in_details"]["rate"].is_number());
    let (_, quiet) = http_json(addr, "GET", "/api/exchanges/%2F/xs.quiet", admin, "").await;
    assert_eq!(quiet["name"], "xs.quiet");
    assert!(quiet.get("message_stats").is_none(), "{quiet}");
    let (_, default) = http_json(addr, "GET", "/api/exchanges/%2F/amq.default", admin, "").await;
    assert_eq!(default["message_stats"]["publish_in"], 6, "{default}");
    assert_eq!(default["message_stats"]["publish_out"], 3, "{default}");
    // The listing carries the same figures, and sorts by them.
    let (_, list) = http_json(
        addr,
        "GET",
        "/api/exchanges/%2F?sort=message_stats.publish_in&sort_reverse=true&columns=name,message_stats.publish_in",
        admin,
        "",
    )
    .await;
    assert_eq!(list[0]["name"], "", "{list}");
    assert_eq!(list[1]["name"], "xs.fan", "{list}");

    // A passive declare is answered after the queue published its metrics.
    assert_eq!(queue_counts(&ch, "xs.a").await.0, 8);
    assert_eq!(queue_counts(&ch, "xs.b").await.0, 5);
    let (_, vhost) = http_json(addr, "GET", "/api/vhosts/%2F", admin, "").await;
    // Five to each of xs.a and xs.b through the fanout, three more to xs.a.
    assert_eq!(vhost["message_stats"]["publish"], 13, "{vhost}");
}
