//! `warrenctl` end to end: each test starts the real `warren` binary (ports chosen by the
//! broker and read from its log, a temporary data directory) and runs the built `warrenctl`
//! as a subprocess, checking its output and its exit codes.
//!
//! Tests of commands whose endpoints the broker does not serve yet (queues, exchanges,
//! bindings, publish, get, move) stop early with a note on stderr when the broker answers
//! its fallback 404 `Object Not Found`; they run for real once the endpoints are merged.
//!
//! The `warren` binary is the one built next to `warrenctl` (`cargo build -p warren`, which
//! `scripts/test` does), or `WARREN_BIN`.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

/// How long a broker gets to log that it started.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// The exit codes of `warrenctl --help`.
const EXIT_USAGE: i32 = 2;
const EXIT_NOT_FOUND: i32 = 3;
const EXIT_ACCESS_REFUSED: i32 = 4;
const EXIT_BAD_REQUEST: i32 = 5;
const EXIT_UNREACHABLE: i32 = 7;

fn warren_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("WARREN_BIN") {
        return path.into();
    }
    let ctl = PathBuf::from(env!("CARGO_BIN_EXE_warrenctl"));
    let path = ctl.with_file_name(format!("warren{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built: run `cargo build -p warren` first (or set WARREN_BIN)",
        path.display()
    );
    path
}

/// Whether `warren --help` lists `flag` (flags other branches add, such as
/// `--prometheus-port`, are passed only to a binary that has them).
fn warren_accepts(flag: &str) -> bool {
    let help = Command::new(warren_binary())
        .arg("--help")
        .output()
        .expect("run warren --help");
    String::from_utf8_lossy(&help.stdout).contains(flag)
}

/// The value of `key=` in a log line.
fn log_field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    let value = line[start..].split_whitespace().next()?;
    Some(value.trim_matches('"').to_owned())
}

struct Broker {
    child: Child,
    /// `http://127.0.0.1:<port>` of the management API.
    url: String,
    amqp_port: u16,
    _data: tempfile::TempDir,
}

/// What one `warrenctl` run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Self {
        assert_eq!(self.code, 0, "warrenctl failed: {self:?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.stdout))
    }

    /// Fails the test if the broker answered with its fallback 404 for an unknown path (the
    /// endpoint `what` is not served), naming it.
    fn assert_served(&self, what: &str) -> &Self {
        let missing = self.code == EXIT_NOT_FOUND && self.stderr.contains("Object Not Found");
        assert!(!missing, "{what} is not served: {}", self.stderr);
        self
    }
}

impl Broker {
    fn start() -> Broker {
        let data = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(warren_binary());
        command
            .args(["--bind", "127.0.0.1", "--port", "0", "--mgmt-port", "0"])
            .args(["--log-level", "info", "--data-dir"])
            .arg(data.path());
        if warren_accepts("--prometheus-port") {
            command.args(["--prometheus-port", "0"]);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn warren");
        let stdout = child.stdout.take().expect("stdout");
        // One thread reads the log for as long as the broker runs (a full pipe would stop
        // it); the lines up to "Warren started" come back over the channel.
        let (lines, started) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sending = true;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if sending {
                    sending = !line.contains("Warren started");
                    let _ = lines.send(line);
                }
            }
        });
        let (mut mgmt, mut amqp) = (None, None);
        loop {
            let line = started.recv_timeout(START_TIMEOUT).unwrap_or_else(|e| {
                let _ = child.kill();
                panic!("warren did not log that it started: {e}")
            });
            if line.contains("management API listening") {
                mgmt = log_field(&line, "addr=");
            }
            if line.contains("listening for AMQP") {
                amqp = log_field(&line, "address=");
            }
            if line.contains("Warren started") {
                break;
            }
        }
        let mgmt = mgmt.expect("the management API's address in the log");
        let amqp_port = amqp
            .and_then(|a| a.rsplit(':').next()?.parse().ok())
            .expect("the AMQP port in the log");
        Broker {
            child,
            url: format!("http://{mgmt}"),
            amqp_port,
            _data: data,
        }
    }

    fn ctl(&self, args: &[&str]) -> Run {
        self.ctl_as(("guest", "guest"), args, None)
    }

    fn ctl_as(&self, login: (&str, &str), args: &[&str], stdin: Option<&[u8]>) -> Run {
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
            .args(["--url", &self.url, "--user", login.0, "--password", login.1])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        let mut child = command.spawn().expect("spawn warrenctl");
        if let Some(bytes) = stdin {
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(bytes).expect("write stdin");
        }
        let output = child.wait_with_output().expect("warrenctl output");
        Run {
            code: output.status.code().expect("exit code"),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// A GET straight to the API (as guest), for what no command shows.
    fn api_get(&self, path: &str) -> Value {
        let mut answer = ureq::get(format!("{}{path}", self.url))
            .header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=") // guest:guest
            .call()
            .expect("GET");
        serde_json::from_reader(answer.body_mut().as_reader()).expect("JSON")
    }

    /// The JSON list of `list <kind>`.
    fn list(&self, kind: &str, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["--format", "json", "list", kind];
        args.extend_from_slice(extra);
        match self.ctl(&args).ok().json() {
            Value::Array(items) => items,
            other => panic!("list {kind} is not a list: {other}"),
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn named<'a>(items: &'a [Value], name: &str) -> Option<&'a Value> {
    items.iter().find(|i| i["name"] == name)
}

#[test]
fn vhosts_users_permissions_policies_and_limits() {
    let b = Broker::start();
    // A `/` in the name: encoded as %2F in every path.
    b.ctl(&[
        "declare",
        "vhost",
        "cli/v1",
        "--description",
        "made by warrenctl",
    ])
    .ok();
    b.ctl(&[
        "declare",
        "user",
        "bob",
        "--password",
        "pw",
        "--tags",
        "management,policymaker",
    ])
    .ok();
    b.ctl(&[
        "declare",
        "permission",
        "--vhost",
        "cli/v1",
        "--user",
        "bob",
        "--read",
        "^r",
    ])
    .ok();
    b.ctl(&[
        "declare",
        "policy",
        "cap",
        "--vhost",
        "cli/v1",
        "--pattern",
        "^q",
        "--definition",
        r#"{"max-length": 10}"#,
        "--apply-to",
        "queues",
        "--priority",
        "3",
    ])
    .ok();

    let vhosts = b.list("vhosts", &[]);
    let vhost = named(&vhosts, "cli/v1").expect("the vhost is listed");
    assert_eq!(vhost["description"], "made by warrenctl");
    let users = b.list("users", &[]);
    let tags = &named(&users, "bob").expect("bob is listed")["tags"];
    assert!(tags.to_string().contains("policymaker"), "{tags}");
    let permissions = b.list("permissions", &["--vhost", "cli/v1"]);
    let bobs = permissions
        .iter()
        .find(|p| p["user"] == "bob")
        .expect("bob's permissions are listed");
    assert_eq!(bobs["vhost"], "cli/v1");
    assert_eq!(bobs["read"], "^r");
    assert_eq!(bobs["configure"], ".*");
    let policies = b.list("policies", &["--vhost", "cli/v1"]);
    let policy = named(&policies, "cap").expect("the policy is listed");
    assert_eq!(policy["pattern"], "^q");
    assert_eq!(policy["apply-to"], "queues");
    assert_eq!(policy["priority"], 3);
    assert_eq!(policy["definition"]["max-length"], 10);
    // Every vhost's policies without --vhost.
    assert!(named(&b.list("policies", &[]), "cap").is_some());

    // The table of users has a header and a row for bob with his tags.
    let table = b.ctl(&["list", "users"]).ok().stdout;
    let mut lines = table.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["name", "tags"]);
    assert!(table.contains("management,policymaker"), "{table}");

    // bob may log in but not manage users: access refused.
    let refused = b.ctl_as(("bob", "pw"), &["list", "users"], None);
    assert_eq!(refused.code, EXIT_ACCESS_REFUSED, "{refused:?}");
    b.ctl_as(
        ("bob", "pw"),
        &["list", "policies", "--vhost", "cli/v1"],
        None,
    )
    .ok();

    b.ctl(&["delete", "policy", "cap", "--vhost", "cli/v1"])
        .ok();
    b.ctl(&["delete", "permission", "--vhost", "cli/v1", "--user", "bob"])
        .ok();
    b.ctl(&["delete", "user", "bob"]).ok();
    b.ctl(&["delete", "vhost", "cli/v1"]).ok();
    assert!(named(&b.list("vhosts", &[]), "cli/v1").is_none());
    assert!(named(&b.list("users", &[]), "bob").is_none());
    let again = b.ctl(&["delete", "user", "bob"]);
    assert_eq!(again.code, EXIT_NOT_FOUND, "{again:?}");
    assert!(again.stderr.contains("bob"), "the API's reason: {again:?}");
}

#[test]
fn limits_are_set_and_removed() {
    let b = Broker::start();
    b.ctl(&["declare", "vhost", "lim"]).ok();
    b.ctl(&[
        "set",
        "limits",
        "--vhost",
        "lim",
        "--max-connections",
        "5",
        "--max-queues",
        "7",
    ])
    .ok();
    // Limits have no list command: read back over the API itself.
    assert_eq!(
        b.api_get("/api/vhost-limits/lim"),
        serde_json::json!([{"vhost": "lim", "value": {"max-connections": 5, "max-queues": 7}}])
    );
    let removed = b
        .ctl(&["set", "limits", "--vhost", "lim", "--max-queues", "-1"])
        .ok();
    assert!(removed.stdout.contains("removed"), "{removed:?}");
    let missing = b.ctl(&["set", "limits", "--vhost", "nope", "--max-queues", "1"]);
    assert_eq!(missing.code, EXIT_NOT_FOUND, "{missing:?}");
    let no_limit = b.ctl(&["set", "limits", "--vhost", "lim"]);
    assert_eq!(no_limit.code, EXIT_USAGE, "{no_limit:?}");
    b.ctl(&["declare", "user", "u", "--password", "p"]).ok();
    b.ctl(&[
        "set",
        "user-limits",
        "--user",
        "u",
        "--max-connections",
        "1",
        "--max-channels",
        "2",
    ])
    .ok();
    let no_user = b.ctl(&[
        "set",
        "user-limits",
        "--user",
        "nobody",
        "--max-channels",
        "2",
    ]);
    assert_eq!(no_user.code, EXIT_NOT_FOUND, "{no_user:?}");
}

#[test]
fn trace_on_and_off_switch_the_vhost_tracing() {
    let b = Broker::start();
    b.ctl(&["declare", "vhost", "traced", "--description", "kept"])
        .ok();
    let tracing_of = |b: &Broker| named(&b.list("vhosts", &[]), "traced").cloned();
    assert_eq!(tracing_of(&b).expect("listed")["tracing"], false);
    let on = b.ctl(&["trace", "on", "--vhost", "traced"]).ok();
    assert!(on.stdout.contains("is on"), "{on:?}");
    let vhost = tracing_of(&b).expect("listed");
    assert_eq!(vhost["tracing"], true);
    assert_eq!(vhost["description"], "kept", "switching keeps the metadata");
    b.ctl(&["trace", "off", "--vhost", "traced"]).ok();
    assert_eq!(tracing_of(&b).expect("listed")["tracing"], false);
    let missing = b.ctl(&["trace", "on", "--vhost", "no-such-vhost"]);
    assert_eq!(missing.code, EXIT_NOT_FOUND, "{missing:?}");
    assert!(named(&b.list("vhosts", &[]), "no-such-vhost").is_none());
}

#[test]
fn a_wrong_password_is_access_refused() {
    let b = Broker::start();
    let run = b.ctl_as(("guest", "not-the-password"), &["list", "vhosts"], None);
    assert_eq!(run.code, EXIT_ACCESS_REFUSED, "{run:?}");
    assert!(run.stdout.is_empty());
    assert!(run.stderr.contains("401"), "{run:?}");
}

#[test]
fn an_unknown_vhost_is_not_found() {
    let b = Broker::start();
    for args in [
        &["list", "permissions", "--vhost", "no-such-vhost"][..],
        &[
            "declare",
            "permission",
            "--vhost",
            "no-such-vhost",
            "--user",
            "guest",
        ],
        &["delete", "vhost", "no-such-vhost"],
        &["export", "-", "--vhost", "no-such-vhost"],
    ] {
        let run = b.ctl(args);
        assert_eq!(run.code, EXIT_NOT_FOUND, "{args:?}: {run:?}");
        assert!(run.stderr.contains("no-such-vhost"), "the reason: {run:?}");
    }
}

#[test]
fn bad_arguments_are_usage_errors_before_any_request() {
    let b = Broker::start();
    let bad_json = b.ctl(&[
        "declare",
        "policy",
        "p",
        "--pattern",
        ".",
        "--definition",
        "{not json",
    ]);
    assert_eq!(bad_json.code, EXIT_USAGE, "{bad_json:?}");
    assert!(bad_json.stderr.contains("--definition"), "{bad_json:?}");
    let unknown = b.ctl(&["frobnicate"]);
    assert_eq!(unknown.code, EXIT_USAGE, "{unknown:?}");
    let missing = b.ctl(&["declare", "user", "x"]);
    assert_eq!(missing.code, EXIT_USAGE, "{missing:?}");
    // A bad policy the broker refuses: 400 → bad request.
    let refused = b.ctl(&[
        "declare",
        "policy",
        "p",
        "--pattern",
        ".",
        "--definition",
        r#"{"no-such-key": 1}"#,
    ]);
    assert_eq!(refused.code, EXIT_BAD_REQUEST, "{refused:?}");
}

#[test]
fn an_unreachable_broker_has_its_own_code() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let out = Command::new(env!("CARGO_BIN_EXE_warrenctl"))
        .args([
            "--url",
            &format!("http://127.0.0.1:{port}"),
            "list",
            "vhosts",
        ])
        .output()
        .expect("run warrenctl");
    assert_eq!(out.status.code(), Some(EXIT_UNREACHABLE), "{out:?}");
}

#[test]
fn definitions_export_and_import_round_trip() {
    let b = Broker::start();
    b.ctl(&["declare", "vhost", "round%trip"]).ok();
    b.ctl(&[
        "declare",
        "user",
        "carol",
        "--password",
        "pw",
        "--tags",
        "monitoring",
    ])
    .ok();
    b.ctl(&[
        "declare",
        "permission",
        "--vhost",
        "round%trip",
        "--user",
        "carol",
    ])
    .ok();
    b.ctl(&[
        "declare",
        "policy",
        "ttl",
        "--vhost",
        "round%trip",
        "--pattern",
        ".*",
        "--definition",
        r#"{"message-ttl": 60000}"#,
    ])
    .ok();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("defs.json");
    let file = file.to_str().expect("utf-8 path");
    b.ctl(&["export", file]).ok();
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(file).expect("read export")).unwrap();
    assert!(written["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["name"] == "carol"));

    b.ctl(&["delete", "vhost", "round%trip"]).ok();
    b.ctl(&["delete", "user", "carol"]).ok();
    assert!(named(&b.list("users", &[]), "carol").is_none());

    b.ctl(&["import", file]).ok();
    assert!(named(&b.list("vhosts", &[]), "round%trip").is_some());
    assert!(named(&b.list("users", &[]), "carol").is_some());
    let policies = b.list("policies", &["--vhost", "round%trip"]);
    assert_eq!(
        named(&policies, "ttl").expect("policy back")["definition"]["message-ttl"],
        60000
    );
    let permissions = b.list("permissions", &["--vhost", "round%trip"]);
    assert!(
        permissions.iter().any(|p| p["user"] == "carol"),
        "{permissions:?}"
    );
    // carol's password came back with her (the hash is in the file).
    b.ctl_as(("carol", "pw"), &["overview"], None).ok();

    // Through stdout and stdin, and of one vhost.
    let one_vhost = b.ctl(&["export", "-", "--vhost", "round%trip"]).ok().stdout;
    let doc: Value = serde_json::from_str(&one_vhost).unwrap();
    assert!(
        doc.get("users").is_none(),
        "a vhost's export has no users: {doc}"
    );
    b.ctl(&["declare", "vhost", "copy"]).ok();
    b.ctl_as(
        ("guest", "guest"),
        &["import", "-", "--vhost", "copy"],
        Some(one_vhost.as_bytes()),
    )
    .ok();
    assert!(named(&b.list("policies", &["--vhost", "copy"]), "ttl").is_some());

    let not_json = b.ctl_as(("guest", "guest"), &["import", "-"], Some(b"{oops"));
    assert_eq!(not_json.code, EXIT_USAGE, "{not_json:?}");
    let no_file = b.ctl(&["import", "/nonexistent/defs.json"]);
    assert_eq!(no_file.code, 1, "{no_file:?}");
}

#[test]
fn overview_in_both_formats() {
    let b = Broker::start();
    let json = b.ctl(&["overview", "--format", "json"]).ok().json();
    assert_eq!(json["product_name"], "Warren");
    let table = b.ctl(&["overview"]).ok().stdout;
    assert!(table.starts_with("key"), "{table}");
    assert!(table.contains("object_totals.queues"), "{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_is_listed_and_closed_with_a_reason() {
    use futures_lite::StreamExt;

    let b = Broker::start();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", b.amqp_port);
    let conn = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .expect("AMQP login");
    let mut events = Box::pin(conn.events_listener());
    let connections = b.list("connections", &[]);
    assert_eq!(connections.len(), 1, "{connections:?}");
    let name = connections[0]["name"].as_str().expect("name").to_owned();
    // The name holds spaces, `>` and `#`: all percent-encoded in the path.
    let table = b.ctl(&["list", "connections", "--vhost", "/"]).ok().stdout;
    assert!(table.contains(&name), "{table}");

    b.ctl(&[
        "close",
        "connection",
        &name,
        "--reason",
        "bye from warrenctl",
    ])
    .ok();
    // The client is told: awaited, not polled.
    let text = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = events.next().await {
            if let lapin::Event::Error(e) = event {
                return e.to_string();
            }
        }
        panic!("the event stream ended without an error");
    })
    .await
    .expect("the connection was closed");
    assert!(text.contains("bye from warrenctl"), "{text}");
    let again = b.ctl(&["close", "connection", &name]);
    assert_eq!(again.code, EXIT_NOT_FOUND, "{again:?}");
}

#[test]
fn queues_exchanges_and_bindings() {
    let b = Broker::start();
    // A space and a slash in the queue's name.
    let declared = b.ctl(&[
        "declare",
        "queue",
        "cli q/1",
        "--arguments",
        r#"{"x-max-length": 100}"#,
    ]);
    declared.assert_served("PUT /api/queues/{vhost}/{name}");
    declared.ok();
    b.ctl(&[
        "declare",
        "queue",
        "tmp",
        "--durable",
        "false",
        "--auto-delete",
    ])
    .ok();
    let queues = b.list("queues", &["--vhost", "/"]);
    let q = named(&queues, "cli q/1").expect("the queue is listed");
    assert_eq!(q["durable"], true);
    assert_eq!(q["arguments"]["x-max-length"], 100);
    assert_eq!(named(&queues, "tmp").expect("tmp")["durable"], false);
    let table = b.ctl(&["list", "queues"]).ok().stdout;
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    for column in ["name", "messages", "ready", "unacked", "consumers"] {
        assert!(header.contains(&column), "{table}");
    }

    b.ctl(&["declare", "exchange", "cli.x", "--type", "direct"])
        .ok();
    b.ctl(&[
        "declare",
        "exchange",
        "cli.f",
        "--type",
        "fanout",
        "--internal",
    ])
    .ok();
    let exchanges = b.list("exchanges", &["--vhost", "/"]);
    assert_eq!(named(&exchanges, "cli.x").expect("cli.x")["type"], "direct");
    assert_eq!(named(&exchanges, "cli.f").expect("cli.f")["internal"], true);

    let bound = |args: &[&str]| {
        let mut all = vec!["declare", "binding"];
        all.extend_from_slice(args);
        b.ctl(&all)
    };
    bound(&[
        "--source",
        "cli.x",
        "--destination",
        "cli q/1",
        "--routing-key",
        "k",
    ])
    .ok();
    bound(&[
        "--source",
        "cli.x",
        "--destination",
        "cli.f",
        "--destination-type",
        "exchange",
        "--routing-key",
        "k2",
    ])
    .ok();
    let bindings = b.list("bindings", &["--vhost", "/"]);
    let to_queue = bindings
        .iter()
        .find(|x| x["source"] == "cli.x" && x["destination"] == "cli q/1")
        .expect("the binding to the queue is listed");
    assert_eq!(to_queue["routing_key"], "k");
    assert_eq!(to_queue["destination_type"], "queue");
    assert!(bindings
        .iter()
        .any(|x| x["destination"] == "cli.f" && x["destination_type"] == "exchange"));

    b.ctl(&[
        "delete",
        "binding",
        "--source",
        "cli.x",
        "--destination",
        "cli q/1",
        "--routing-key",
        "k",
    ])
    .ok();
    let gone = b.ctl(&[
        "delete",
        "binding",
        "--source",
        "cli.x",
        "--destination",
        "cli q/1",
        "--routing-key",
        "k",
    ]);
    assert_eq!(gone.code, EXIT_NOT_FOUND, "{gone:?}");
    assert!(!b
        .list("bindings", &["--vhost", "/"])
        .iter()
        .any(|x| x["destination"] == "cli q/1" && x["source"] == "cli.x"));

    b.ctl(&["purge", "queue", "cli q/1"]).ok();
    b.ctl(&["delete", "queue", "cli q/1", "--if-empty", "--if-unused"])
        .ok();
    b.ctl(&["delete", "exchange", "cli.x"]).ok();
    assert!(named(&b.list("queues", &[]), "cli q/1").is_none());
    let missing = b.ctl(&["delete", "queue", "cli q/1"]);
    assert_eq!(missing.code, EXIT_NOT_FOUND, "{missing:?}");
    let wrong_vhost = b.ctl(&["declare", "queue", "q", "--vhost", "no-such-vhost"]);
    assert_eq!(wrong_vhost.code, EXIT_NOT_FOUND, "{wrong_vhost:?}");
}

#[test]
fn publish_get_purge_and_delete_if_empty() {
    let b = Broker::start();
    let declared = b.ctl(&["declare", "queue", "work"]);
    declared.assert_served("PUT /api/queues/{vhost}/{name}");
    declared.ok();
    let published = b.ctl(&["publish", "--routing-key", "work", "--payload", "hello"]);
    published.assert_served("POST /api/exchanges/{vhost}/{name}/publish");
    assert!(published.ok().stdout.contains("routed"));
    let unrouted = b
        .ctl(&["publish", "--routing-key", "nowhere", "--payload", "lost"])
        .ok();
    assert!(unrouted.stdout.contains("NOT routed"), "{unrouted:?}");
    let json = b
        .ctl(&[
            "--format",
            "json",
            "publish",
            "--routing-key",
            "nowhere",
            "--payload",
            "x",
        ])
        .ok()
        .json();
    assert_eq!(json["routed"], false);
    // From stdin, not UTF-8: sent as base64.
    b.ctl_as(
        ("guest", "guest"),
        &[
            "publish",
            "--routing-key",
            "work",
            "--properties",
            r#"{"delivery_mode": 2}"#,
        ],
        Some(&[0xff, 0x00, 0x01]),
    )
    .ok();

    let fetched = b.ctl(&["get", "--queue", "work", "--count", "5", "--format", "json"]);
    fetched.assert_served("POST /api/queues/{vhost}/{name}/get");
    let messages = fetched.ok().json();
    let messages = messages.as_array().expect("a list");
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["payload"], "hello");
    assert_eq!(messages[1]["payload_bytes"], 3);
    // Requeued by default: still there, shown as a table with the payload.
    let table = b.ctl(&["get", "--queue", "work"]).ok().stdout;
    assert!(
        table.lines().next().unwrap().ends_with("payload"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 2, "{table}");

    let not_empty = b.ctl(&["delete", "queue", "work", "--if-empty"]);
    assert_eq!(not_empty.code, EXIT_BAD_REQUEST, "{not_empty:?}");
    let taken = b
        .ctl(&[
            "--format",
            "json",
            "get",
            "--queue",
            "work",
            "--ackmode",
            "ack_requeue_false",
        ])
        .ok()
        .json();
    assert_eq!(taken.as_array().map(Vec::len), Some(1));
    b.ctl(&["purge", "queue", "work"]).ok();
    let empty = b
        .ctl(&["--format", "json", "get", "--queue", "work"])
        .ok()
        .json();
    assert_eq!(empty.as_array().map(Vec::len), Some(0), "{empty}");
    b.ctl(&["delete", "queue", "work", "--if-empty"]).ok();
}

#[test]
fn messages_move_to_a_queue_or_through_an_exchange() {
    let b = Broker::start();
    let declared = b.ctl(&["declare", "queue", "from"]);
    declared.assert_served("PUT /api/queues/{vhost}/{name}");
    declared.ok();
    b.ctl(&["declare", "queue", "to"]).ok();
    b.ctl(&["declare", "queue", "via-x"]).ok();
    b.ctl(&["declare", "exchange", "mx", "--type", "direct"])
        .ok();
    b.ctl(&[
        "declare",
        "binding",
        "--source",
        "mx",
        "--destination",
        "via-x",
        "--routing-key",
        "r",
    ])
    .ok();
    for i in 0..3 {
        let published = b.ctl(&[
            "publish",
            "--routing-key",
            "from",
            "--payload",
            &format!("m{i}"),
        ]);
        published.assert_served("POST /api/exchanges/{vhost}/{name}/publish");
        published.ok();
    }
    let moved = b.ctl(&[
        "--format",
        "json",
        "move",
        "--queue",
        "from",
        "--to-queue",
        "to",
        "--count",
        "2",
    ]);
    moved.assert_served("POST /api/queues/{vhost}/{name}/actions");
    assert_eq!(moved.ok().json()["moved"], 2);
    let rest = b
        .ctl(&[
            "move",
            "--queue",
            "from",
            "--to-exchange",
            "mx",
            "--routing-key",
            "r",
        ])
        .ok();
    assert!(rest.stdout.contains("moved 1"), "{rest:?}");

    let get = |queue: &str| {
        b.ctl(&["--format", "json", "get", "--queue", queue, "--count", "10"])
            .ok()
            .json()
    };
    let to = get("to");
    let payloads: Vec<&str> = to
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["payload"].as_str())
        .collect();
    assert_eq!(payloads, ["m0", "m1"]);
    assert_eq!(get("via-x")[0]["payload"], "m2");
    assert_eq!(get("from").as_array().map(Vec::len), Some(0));
    let no_queue = b.ctl(&["move", "--queue", "from", "--to-queue", "no-such-queue"]);
    assert_ne!(no_queue.code, 0, "{no_queue:?}");
}

#[test]
fn channels_and_consumers_are_listed() {
    let b = Broker::start();
    for kind in ["channels", "consumers"] {
        let run = b.ctl(&["--format", "json", "list", kind]);
        run.assert_served(&format!("GET /api/{kind}"));
        assert!(run.ok().json().is_array());
        b.ctl(&["list", kind]).ok();
    }
}
