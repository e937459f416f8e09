//! Ownership of the data directory: a second `warren` on a directory in use must refuse to
//! start, name the holder, and leave the first broker's durable state alone.

use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};

mod common;
use common::{free_port, start};

/// How long the second broker gets to give up (it should do so at once).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(30);
const QUEUE: &str = "owned";

async fn declare(url: &str, passive: bool) -> u32 {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                passive,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("declare");
    if !passive {
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm.select");
        let confirm = ch
            .basic_publish(
                "".into(),
                QUEUE.into(),
                BasicPublishOptions::default(),
                b"kept",
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(confirm.is_ack());
    }
    let _ = conn.close(200, "bye".into()).await;
    q.message_count()
}

/// Pins issue 9: a second broker opened the same directory, rewrote definitions.log, and a
/// durable queue the first had confirmed was gone after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_broker_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile_dir("warren-data-dir-lock");
    let first = start(&dir, free_port());
    declare(&first.url(), false).await;

    let second = Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["--bind", "127.0.0.1", "--port", &free_port().to_string()])
        .args(["--mgmt-port", "0", "--prometheus-port", "0"])
        .arg("--data-dir")
        .arg(&dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the second warren");
    let pid = second.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(second.wait_with_output());
    });
    let output = match rx.recv_timeout(REFUSAL_TIMEOUT) {
        Ok(output) => output.expect("wait for the second warren"),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("the second broker did not refuse the data directory in use");
        }
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "second broker exited with success"
    );
    let holder = format!("pid {}", first.child.id());
    assert!(
        stderr.contains("in use by another broker") && stderr.contains(&holder),
        "message does not name the holder ({holder}): {stderr}"
    );

    // The first broker's queue and message survive its restart.
    first.kill9();
    let restarted = start(&dir, free_port());
    assert_eq!(declare(&restarted.url(), true).await, 1);
    drop(restarted);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create data dir");
    dir
}
