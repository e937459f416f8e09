//! What each command sends — method, path (percent-encoded), query, headers and JSON body —
//! as recorded by a fake HTTP server on a real socket that answers with canned responses. It
//! pins the requests of commands whose endpoints the broker does not serve yet (queues,
//! exchanges, bindings, publish, get, move) to RabbitMQ's API, and maps statuses to exit codes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use serde_json::{json, Value};

#[derive(Debug)]
struct Request {
    method: String,
    /// Path and query, as sent.
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A server that answers its n-th request with `answers[n]` (then 500s) and records them all.
struct Fake {
    url: String,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Request>>,
}

fn read_request(stream: &TcpStream) -> Option<Request> {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let mut headers = Vec::new();
    loop {
        let mut header = String::new();
        reader.read_line(&mut header).ok()?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        headers.push((name.trim().to_owned(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        target,
        headers,
        body,
    })
}

impl Fake {
    fn start(answers: Vec<(u16, String)>) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut answers = answers.into_iter();
            let mut seen = Vec::new();
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut stream) = stream else { continue };
                let Some(request) = read_request(&stream) else {
                    continue;
                };
                let (status, body) = answers.next().unwrap_or((500, String::new()));
                let response = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes());
                seen.push(request);
            }
            seen
        });
        Fake { url, stop, thread }
    }

    /// Every request received; wakes the accept loop with one last connection to end it.
    fn requests(self) -> Vec<Request> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.url.trim_start_matches("http://"));
        self.thread.join().expect("fake server")
    }
}

/// Runs `warrenctl args` against a fake answering `answers` in turn.
fn run(answers: &[(u16, Value)], args: &[&str], stdin: Option<&[u8]>) -> (Vec<Request>, Output) {
    let answers = answers
        .iter()
        .map(|(status, body)| {
            let text = if body.is_null() {
                String::new()
            } else {
                body.to_string()
            };
            (*status, text)
        })
        .collect();
    let fake = Fake::start(answers);
    let mut command = Command::new(env!("CARGO_BIN_EXE_warrenctl"));
    for var in [
        "WARREN_URL",
        "WARREN_USER",
        "WARREN_PASSWORD",
        "WARREN_VHOST",
    ] {
        command.env_remove(var);
    }
    command
        .args(["--url", &fake.url, "--user", "admin", "--password", "pw"])
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn warrenctl");
    if let Some(bytes) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(bytes)
            .expect("write stdin");
    }
    let output = child.wait_with_output().expect("warrenctl");
    (fake.requests(), output)
}

/// One request answered 204 with no body; returns it.
fn one(args: &[&str]) -> Request {
    let (mut requests, output) = run(&[(204, Value::Null)], args, None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(requests.len(), 1, "{requests:?}");
    requests.remove(0)
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn every_request_logs_in_with_basic_auth() {
    let r = one(&["declare", "vhost", "v"]);
    // base64("admin:pw")
    assert_eq!(r.header("authorization"), Some("Basic YWRtaW46cHc="));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("user-agent").unwrap().starts_with("warrenctl/"));
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("PUT", "/api/vhosts/v")
    );
    assert_eq!(r.json(), json!({}));
}

#[test]
fn declare_user_with_a_password_or_a_hash() {
    let r = one(&[
        "declare",
        "user",
        "bob",
        "--password",
        "pw",
        "--tags",
        "a,b",
    ]);
    assert_eq!(r.target, "/api/users/bob");
    assert_eq!(r.json(), json!({"password": "pw", "tags": "a,b"}));
    let r = one(&["declare", "user", "bob", "--password-hash", "h4sh"]);
    assert_eq!(r.json(), json!({"password_hash": "h4sh", "tags": ""}));
    let (requests, output) = run(
        &[],
        &[
            "declare",
            "user",
            "bob",
            "--password",
            "a",
            "--password-hash",
            "b",
        ],
        None,
    );
    assert_eq!(output.status.code(), Some(2));
    assert!(requests.is_empty());
}

#[test]
fn declare_queue_encodes_names_and_sends_rabbitmq_fields() {
    let r = one(&[
        "declare",
        "queue",
        "a q/1",
        "--vhost",
        "v%1",
        "--durable",
        "false",
        "--auto-delete",
        "--arguments",
        r#"{"x-max-length": 5}"#,
    ]);
    assert_eq!(r.method, "PUT");
    assert_eq!(r.target, "/api/queues/v%251/a%20q%2F1");
    assert_eq!(
        r.json(),
        json!({"durable": false, "auto_delete": true, "arguments": {"x-max-length": 5}})
    );
    let r = one(&["declare", "queue", "q"]);
    assert_eq!(r.target, "/api/queues/%2F/q");
    assert_eq!(r.json()["durable"], true);
}

#[test]
fn declare_exchange_and_bindings() {
    let r = one(&[
        "declare",
        "exchange",
        "x.y",
        "--type",
        "topic",
        "--internal",
    ]);
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("PUT", "/api/exchanges/%2F/x.y")
    );
    assert_eq!(
        r.json(),
        json!({"type": "topic", "durable": true, "auto_delete": false, "internal": true,
               "arguments": {}})
    );
    let r = one(&[
        "declare",
        "binding",
        "--source",
        "x.y",
        "--destination",
        "d",
        "--destination-type",
        "exchange",
        "--routing-key",
        "a.#",
        "--arguments",
        r#"{"x-match": "all"}"#,
    ]);
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("POST", "/api/bindings/%2F/e/x.y/e/d")
    );
    assert_eq!(
        r.json(),
        json!({"routing_key": "a.#", "arguments": {"x-match": "all"}})
    );
}

#[test]
fn delete_binding_finds_its_properties_key() {
    let list = json!([
        {"source": "s", "destination": "q", "routing_key": "k", "arguments": {},
         "properties_key": "k"},
        {"source": "s", "destination": "q", "routing_key": "k", "arguments": {"x": 1},
         "properties_key": "k~abc"}
    ]);
    let (requests, output) = run(
        &[(200, list), (204, Value::Null)],
        &[
            "delete",
            "binding",
            "--source",
            "s",
            "--destination",
            "q",
            "--routing-key",
            "k",
            "--arguments",
            r#"{"x": 1}"#,
        ],
        None,
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(requests[0].method, "GET");
    assert_eq!(requests[0].target, "/api/bindings/%2F/e/s/q/q");
    assert_eq!(requests[1].method, "DELETE");
    assert_eq!(requests[1].target, "/api/bindings/%2F/e/s/q/q/k~abc");

    // No such binding: not found, and nothing deleted.
    let (requests, output) = run(
        &[(200, json!([]))],
        &["delete", "binding", "--source", "s", "--destination", "q"],
        None,
    );
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(requests.len(), 1);
}

#[test]
fn delete_queue_conditions_purge_and_failed_preconditions() {
    let r = one(&["delete", "queue", "q", "--if-empty", "--if-unused"]);
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("DELETE", "/api/queues/%2F/q?if-empty=true&if-unused=true")
    );
    let r = one(&["delete", "exchange", "x", "--if-unused"]);
    assert_eq!(r.target, "/api/exchanges/%2F/x?if-unused=true");
    let r = one(&["purge", "queue", "q", "--vhost", "v"]);
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("DELETE", "/api/queues/v/q/contents")
    );

    let refusal = json!({"error": "bad_request", "reason": "queue 'q' in vhost '/' is not empty"});
    let (_, output) = run(
        &[(400, refusal)],
        &["delete", "queue", "q", "--if-empty"],
        None,
    );
    assert_eq!(output.status.code(), Some(5));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[test]
fn publish_from_stdin_and_from_the_flag() {
    let (requests, output) = run(
        &[(200, json!({"routed": false}))],
        &[
            "publish",
            "--routing-key",
            "jobs",
            "--properties",
            r#"{"delivery_mode": 2}"#,
        ],
        Some(&[0xff, 0xfe]),
    );
    assert!(output.status.success(), "{output:?}");
    assert!(stdout(&output).contains("NOT routed"));
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("POST", "/api/exchanges/%2F/amq.default/publish")
    );
    assert_eq!(
        r.json(),
        json!({"properties": {"delivery_mode": 2}, "routing_key": "jobs",
               "payload": "//4=", "payload_encoding": "base64"})
    );

    let (requests, output) = run(
        &[(200, json!({"routed": true}))],
        &[
            "--format",
            "json",
            "publish",
            "--exchange",
            "amq.topic",
            "--payload",
            "hi",
        ],
        None,
    );
    assert_eq!(requests[0].target, "/api/exchanges/%2F/amq.topic/publish");
    assert_eq!(requests[0].json()["payload"], "hi");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed, json!({"routed": true}));
}

#[test]
fn get_sends_count_ackmode_and_prints_messages() {
    let messages = json!([{"payload_bytes": 5, "redelivered": false, "exchange": "",
        "routing_key": "q", "message_count": 0, "properties": {}, "payload": "hello",
        "payload_encoding": "string"}]);
    let (requests, output) = run(
        &[(200, messages)],
        &[
            "get",
            "--queue",
            "q",
            "--count",
            "3",
            "--ackmode",
            "reject_requeue_false",
            "--truncate",
            "10",
        ],
        None,
    );
    assert!(output.status.success(), "{output:?}");
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("POST", "/api/queues/%2F/q/get")
    );
    assert_eq!(
        r.json(),
        json!({"count": 3, "ackmode": "reject_requeue_false", "encoding": "auto", "truncate": 10})
    );
    let table = stdout(&output);
    assert!(
        table.lines().next().unwrap().ends_with("payload"),
        "{table}"
    );
    assert!(table.lines().nth(1).unwrap().ends_with("hello"), "{table}");
}

#[test]
fn move_sends_the_action() {
    let (requests, output) = run(
        &[(200, json!({"moved": 4}))],
        &[
            "move",
            "--queue",
            "a",
            "--to-exchange",
            "x",
            "--routing-key",
            "k",
            "--count",
            "4",
        ],
        None,
    );
    assert!(stdout(&output).contains("moved 4"), "{output:?}");
    let r = &requests[0];
    assert_eq!(
        (r.method.as_str(), r.target.as_str()),
        ("POST", "/api/queues/%2F/a/actions")
    );
    assert_eq!(
        r.json(),
        json!({"action": "move", "destination_exchange": "x", "routing_key": "k", "count": 4})
    );
}

#[test]
fn trace_on_and_off_put_the_tracing_field_alone() {
    let vhost = json!({"name": "a/b", "tracing": false});
    let (requests, output) = run(
        &[(200, vhost.clone()), (204, Value::Null)],
        &["trace", "on", "--vhost", "a/b"],
        None,
    );
    assert!(output.status.success(), "{output:?}");
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(
        (requests[0].method.as_str(), requests[0].target.as_str()),
        ("GET", "/api/vhosts/a%2Fb")
    );
    assert_eq!(
        (requests[1].method.as_str(), requests[1].target.as_str()),
        ("PUT", "/api/vhosts/a%2Fb")
    );
    assert_eq!(requests[1].json(), json!({"tracing": true}));
    assert_eq!(stdout(&output), "tracing of vhost 'a/b' is on\n");
    let (requests, output) = run(&[(200, vhost), (204, Value::Null)], &["trace", "off"], None);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(requests[1].target, "/api/vhosts/%2F");
    assert_eq!(requests[1].json(), json!({"tracing": false}));
    // A missing vhost is not created by a PUT: not found, exit 3, nothing sent after the GET.
    let missing = json!({"error": "Object Not Found", "reason": "Not Found"});
    let (requests, output) = run(&[(404, missing)], &["trace", "on", "--vhost", "typo"], None);
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(requests.len(), 1, "{requests:?}");
    let (_, output) = run(&[], &["trace", "maybe"], None);
    assert_eq!(output.status.code(), Some(2), "{output:?}");
}

#[test]
fn close_connection_sends_the_reason_header() {
    let r = one(&[
        "close",
        "connection",
        "127.0.0.1:5 -> #7",
        "--reason",
        "bye now",
    ]);
    assert_eq!(r.method, "DELETE");
    assert_eq!(r.target, "/api/connections/127.0.0.1%3A5%20-%3E%20%237");
    assert_eq!(r.header("x-reason"), Some("bye now"));
}

#[test]
fn lists_of_channels_and_consumers() {
    let channels = json!([{"name": "c 1", "user": "u", "vhost": "v", "number": 1,
        "consumer_count": 2, "messages_unacknowledged": 3, "prefetch_count": 10,
        "state": "running"}]);
    let (requests, output) = run(
        &[(200, channels)],
        &["list", "channels", "--vhost", "v"],
        None,
    );
    assert_eq!(requests[0].target, "/api/vhosts/v/channels");
    let table = stdout(&output);
    assert_eq!(
        table
            .lines()
            .nth(1)
            .unwrap()
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["c", "1", "u", "v", "1", "2", "3", "10", "running"]
    );
    let consumers = json!([{"consumer_tag": "t", "queue": {"name": "q", "vhost": "/"},
        "channel_details": {"name": "ch"}, "ack_required": true, "prefetch_count": 0,
        "exclusive": false, "active": true}]);
    let (requests, output) = run(&[(200, consumers)], &["list", "consumers"], None);
    assert_eq!(requests[0].target, "/api/consumers");
    let table = stdout(&output);
    assert!(
        table.lines().nth(1).unwrap().starts_with("/      q      t"),
        "{table}"
    );
}

#[test]
fn statuses_map_to_exit_codes() {
    for (status, code) in [
        (400, 5),
        (401, 4),
        (403, 4),
        (404, 3),
        (409, 5),
        (500, 6),
        (503, 6),
    ] {
        let body = json!({"error": "x", "reason": format!("because {status}")});
        let (_, output) = run(&[(status, body)], &["list", "queues"], None);
        assert_eq!(
            output.status.code(),
            Some(code),
            "status {status}: {output:?}"
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(&format!("because {status}")), "{stderr}");
    }
}
