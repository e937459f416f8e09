//! `--definitions FILE` on a real `warren` process: the file's users log in, what it created
//! survives `kill -9` (without the file on the next start), and a bad entry stops the start
//! with an error naming it.

use std::process::{Command, Stdio};

use lapin::{Connection, ConnectionProperties};

mod common;
use common::{free_port, start_with};

const DEFINITIONS: &str = r#"{
  "users": [{"name": "svc", "password_hash": "", "tags": ["monitoring"]}],
  "vhosts": [{"name": "apps", "description": "from a file"}],
  "permissions": [{"user": "svc", "vhost": "apps", "configure": ".*", "write": ".*", "read": ".*"}],
  "queues": [{"name": "jobs", "vhost": "apps", "durable": true, "auto_delete": false, "arguments": {}}]
}"#;

fn definitions_with_password(dir: &std::path::Path) -> std::path::PathBuf {
    // The hash of "svc-pw" with a fixed salt, computed the way RabbitMQ does.
    let hash = warren_core::access::password::PasswordHash::with_salt(
        warren_core::access::password::HashingAlgorithm::Sha256,
        [1, 2, 3, 4],
        "svc-pw",
    );
    let text = DEFINITIONS.replace(
        r#""password_hash": """#,
        &format!(r#""password_hash": "{}""#, hash.to_base64()),
    );
    let path = dir.join("definitions.json");
    std::fs::write(&path, text).expect("write definitions");
    path
}

async fn login(port: u16) -> lapin::Result<Connection> {
    let url = format!("amqp://svc:svc-pw@127.0.0.1:{port}/apps");
    Connection::connect(&url, ConnectionProperties::default()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definitions_file_loads_at_start_and_survives_kill_9() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let file = definitions_with_password(dir.path());
    let port = free_port();
    let broker = start_with(
        &data,
        port,
        &[
            "--log-level",
            "warn",
            "--definitions",
            file.to_str().unwrap(),
        ],
        Stdio::null(),
    );
    let conn = login(port).await.expect("the file's user logs in");
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        "jobs".into(),
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        Default::default(),
    )
    .await
    .expect("the file's queue exists");
    drop(conn);
    broker.kill9();

    // No file this time: what it created is in the data directory.
    let port = free_port();
    let _broker = start_with(&data, port, &["--log-level", "warn"], Stdio::null());
    login(port).await.expect("still logs in after kill -9");
}

#[test]
fn a_bad_entry_stops_the_start_and_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.json");
    std::fs::write(
        &file,
        r#"{"vhosts": [{"name": "v"}],
            "policies": [{"vhost": "v", "name": "bad", "pattern": "(", "definition": {"max-length": 1}}]}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--mgmt-port", "0", "--prometheus-port", "0"])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--definitions")
        .arg(&file)
        .output()
        .expect("run warren");
    assert!(
        !out.status.success(),
        "warren started with a bad definitions file"
    );
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("policies[0] (\"bad\" in vhost \"v\")"),
        "{text}"
    );
}
