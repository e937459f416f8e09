//! A real `warren` process for the binary's integration tests.

#![allow(dead_code)] // each test file uses its own part

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a broker gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Broker {
    pub child: Child,
    pub port: u16,
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// Starts `warren` on loopback with `data_dir`; its log (stdout, warnings only) is discarded.
pub fn start(data_dir: &Path, port: u16) -> Broker {
    start_with(data_dir, port, &["--log-level", "warn"], Stdio::null())
}

/// Starts `warren` with extra flags; its stdout (where it logs) goes to `stdout`.
pub fn start_with(data_dir: &Path, port: u16, flags: &[&str], stdout: Stdio) -> Broker {
    start_with_env(data_dir, port, flags, stdout, &[])
}

/// `start_with`, with extra environment variables (fault injection).
pub fn start_with_env(
    data_dir: &Path,
    port: u16,
    flags: &[&str],
    stdout: Stdio,
    env: &[(&str, &str)],
) -> Broker {
    let mut command = Command::new(env!("CARGO_BIN_EXE_warren"));
    command.envs(env.iter().copied());
    command.args(["--bind", "127.0.0.1", "--port", &port.to_string()]);
    if !flags.contains(&"--mgmt-port") {
        // A free port for the management API: tests run brokers side by side.
        command.args(["--mgmt-port", "0"]);
    }
    // The same for Prometheus metrics.
    command.args(["--prometheus-port", "0"]);
    let child = command
        .arg("--data-dir")
        .arg(data_dir)
        .args(flags)
        .stdout(stdout)
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn warren");
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "warren did not start listening");
        std::thread::sleep(Duration::from_millis(10));
    }
    Broker { child, port }
}

/// Waits until something accepts connections on `port` (a listener the broker opens after
/// its AMQP one, such as the management API's).
pub fn wait_listening(port: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Broker {
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kills the broker with SIGKILL (what dropping it does), saying so at the call site.
    pub fn kill9(self) {
        drop(self);
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
