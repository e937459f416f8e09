//! Router tests without a socket (`oneshot`) over an in-memory broker.

use std::collections::HashSet;
use std::time::Instant;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;
use warren_core::broker::{BrokerSettings, DEFAULT_VHOST};
use warren_core::queue::QueueDef;
use warren_core::Broker;

use super::*;

fn declare(broker: &Broker, name: &str) {
    let vhost = broker.vhost(DEFAULT_VHOST).unwrap();
    vhost
        .declare_queue(
            QueueDef {
                name: name.into(),
                durable: false,
                exclusive_owner: None,
                auto_delete: false,
                arguments: Default::default(),
            },
            false,
        )
        .unwrap();
}

async fn get(app: &Router, uri: &str) -> (StatusCode, String, String) {
    let response = app
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

/// Every `# TYPE` once, and every sample under the family its HELP/TYPE opened.
fn check_well_formed(text: &str) {
    let mut seen = HashSet::new();
    let mut current = String::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let name = rest.split(' ').next().unwrap().to_owned();
            assert!(seen.insert(name.clone()), "{name} typed twice");
            current = name;
        } else if !line.starts_with('#') {
            let name = line.split(['{', ' ']).next().unwrap();
            assert_eq!(name, current, "sample outside its family: {line}");
        }
    }
}

fn value(text: &str, sample: &str) -> u64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
        .unwrap_or_else(|| panic!("no {sample} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn aggregated_per_object_and_detailed() {
    let broker = Broker::in_memory(BrokerSettings::default());
    declare(&broker, "plain");
    declare(&broker, "odd \"name\"\\\n");
    let app = router(broker.clone(), Node::new(None, Instant::now()));

    let (status, content_type, text) = get(&app, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(content_type, "text/plain; version=0.0.4; charset=utf-8");
    check_well_formed(&text);
    assert_eq!(value(&text, "rabbitmq_queues"), 2);
    assert_eq!(value(&text, "rabbitmq_queues_declared_total"), 2);
    assert_eq!(value(&text, "rabbitmq_queues_created_total"), 2);
    assert_eq!(value(&text, "rabbitmq_channel_messages_published_total"), 0);
    assert!(text.contains("rabbitmq_identity_info{rabbitmq_node=\"warren@"));
    assert!(text.contains("rabbitmq_build_info{rabbitmq_version=\""));
    assert!(
        !text.contains("queue=\""),
        "aggregated: no per-queue labels"
    );

    let (_, _, text) = get(&app, "/metrics/per-object").await;
    check_well_formed(&text);
    assert_eq!(
        value(
            &text,
            "rabbitmq_queue_messages{vhost=\"/\",queue=\"plain\"}"
        ),
        0
    );
    assert!(
        text.contains("queue=\"odd \\\"name\\\"\\\\\\n\"}"),
        "escaped label value:\n{text}"
    );

    let (_, _, text) = get(
        &app,
        "/metrics/detailed?family=queue_coarse_metrics&family=queue_consumer_count\
         &family=queue_info&family=exchange_names&family=vhost_status&vhost=%2F",
    )
    .await;
    check_well_formed(&text);
    assert_eq!(
        value(
            &text,
            "rabbitmq_detailed_queue_messages_ready{vhost=\"/\",queue=\"plain\"}"
        ),
        0
    );
    assert!(text.contains("# TYPE rabbitmq_detailed_queue_consumers gauge"));
    assert!(text.contains("rabbitmq_cluster_vhost_status{vhost=\"/\"} 1"));
    assert!(text.contains(
        "rabbitmq_cluster_exchange_name{vhost=\"/\",exchange=\"amq.topic\",type=\"topic\"} 1"
    ));
    assert!(
        !text.contains("rabbitmq_detailed_connections"),
        "not asked for"
    );

    let (_, _, text) = get(
        &app,
        "/metrics/detailed?family=queue_coarse_metrics&vhost=other",
    )
    .await;
    assert!(
        !text.contains("queue=\""),
        "another vhost's queues are filtered out"
    );
}

/// The figure in docs/metrics.md: `cargo test --release -p warren-metrics -- --ignored
/// --nocapture scrape_of_100k_queues`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn scrape_of_100k_queues() {
    const QUEUES: usize = 100_000;
    let broker = Broker::in_memory(BrokerSettings::default());
    for i in 0..QUEUES {
        declare(&broker, &format!("queue-{i:06}"));
    }
    let node = Node::new(None, Instant::now());
    for mode in [Mode::Aggregated, Mode::PerObject] {
        let mut best = std::time::Duration::MAX;
        let mut bytes = 0;
        for _ in 0..5 {
            let started = Instant::now();
            let text = render(&broker, &node, mode);
            best = best.min(started.elapsed());
            bytes = text.len();
        }
        println!("{QUEUES} queues, {mode:?}: {best:?} ({bytes} bytes), best of 5");
        assert!(best < std::time::Duration::from_secs(1));
    }
    let request = detailed::Request::parse("family=queue_coarse_metrics&family=queue_metrics");
    let started = Instant::now();
    let text = detailed::render(&broker, &node, &request, &Vec::new());
    println!(
        "{QUEUES} queues, detailed queue_coarse_metrics + queue_metrics: {:?} ({} bytes)",
        started.elapsed(),
        text.len()
    );
}
