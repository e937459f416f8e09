//! The check the `handshake` fuzz target runs on each input, shared with the stable-Rust
//! replay test (`tests/fuzz_regressions.rs`): a real broker listens on 127.0.0.1:0; each input
//! is written after the protocol header to a fresh TCP connection, which is then half-closed
//! and read until the broker closes it. Every `LIVENESS_EVERY` inputs a fresh client must
//! still get through the whole handshake. Any panic, in the broker's tasks too, fails.
//!
//! Not part of the server's API: nothing in the broker calls this.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::Duration;

use amq_protocol::protocol::connection::{self, AMQPMethod};
use amq_protocol::protocol::AMQPClass;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warren_protocol::frame::decode_frame;
use warren_protocol::method::decode_method;
use warren_protocol::PROTOCOL_HEADER;

use crate::{Config, ServerHandle};

/// A fresh client checks the broker answers every this many inputs.
pub const LIVENESS_EVERY: u64 = 100;
/// How long the broker has to close a connection whose client has sent everything and
/// half-closed (it must see the end of input at once; this is a safety net, not a hang test).
pub const INPUT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a fresh client's whole handshake may take before the broker is declared hung.
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);
/// The message size limit of the fuzzed broker: inputs are small, and a header may announce
/// up to this much body, which the broker allocates once a second body frame arrives.
pub const FUZZ_MESSAGE_BYTES_MAX: u64 = 1024 * 1024;

/// Panics seen anywhere in the process since the hook was installed (the broker's tasks
/// catch their own panics; the fuzzer must still see them).
static PANICS: AtomicUsize = AtomicUsize::new(0);
static PANIC_HOOK: Once = Once::new();

/// A broker on a runtime of its own, and the inputs run against it so far.
pub struct HandshakeFuzzer {
    runtime: tokio::runtime::Runtime,
    handle: Option<ServerHandle>,
    addr: SocketAddr,
    data_dir: PathBuf,
    inputs: u64,
}

impl HandshakeFuzzer {
    /// Starts a broker with the test configuration and a fresh data directory.
    pub fn start() -> HandshakeFuzzer {
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                PANICS.fetch_add(1, Ordering::SeqCst);
                previous(info)
            }));
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let mut config = Config::for_tests();
        config.max_message_bytes = FUZZ_MESSAGE_BYTES_MAX;
        let data_dir = config.data_dir.clone();
        let handle = runtime
            .block_on(crate::start(config))
            .expect("the broker starts");
        let addr = handle.local_addr();
        HandshakeFuzzer {
            runtime,
            handle: Some(handle),
            addr,
            data_dir,
            inputs: 0,
        }
    }

    /// Runs one input; panics if the broker panicked or stopped answering.
    pub fn run(&mut self, data: &[u8]) {
        let panics = PANICS.load(Ordering::SeqCst);
        self.runtime.block_on(send_input(self.addr, data));
        self.inputs += 1;
        if self.inputs.is_multiple_of(LIVENESS_EVERY) {
            self.check_alive();
        }
        assert_eq!(PANICS.load(Ordering::SeqCst), panics, "the broker panicked");
    }

    /// Panics unless a fresh client gets through the whole handshake.
    pub fn check_alive(&self) {
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(LIVENESS_TIMEOUT, handshake(self.addr)).await });
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the broker refused a good handshake: {e}"),
            Err(_) => panic!("the broker did not answer a good handshake in time"),
        }
    }
}

impl Drop for HandshakeFuzzer {
    fn drop(&mut self) {
        if let Some(handle) = self.handle.take() {
            self.runtime.block_on(handle.shutdown());
        }
        _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Writes the header and the input, half-closes, and reads until the broker closes.
async fn send_input(addr: SocketAddr, data: &[u8]) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The broker may close early (a bad frame), which makes later writes fail: that is fine.
    if stream.write_all(PROTOCOL_HEADER).await.is_ok() && stream.write_all(data).await.is_ok() {
        _ = stream.shutdown().await;
    }
    let mut sink = vec![0u8; 64 * 1024];
    let drain = async { while let Ok(1..) = stream.read(&mut sink).await {} };
    _ = tokio::time::timeout(INPUT_TIMEOUT, drain).await;
}

/// A minimal client: header, start-ok (PLAIN guest), tune-ok, open, close.
async fn handshake(addr: SocketAddr) -> Result<(), String> {
    let mut client = Client {
        stream: TcpStream::connect(addr).await.map_err(|e| e.to_string())?,
        buf: BytesMut::new(),
    };
    client.write(PROTOCOL_HEADER).await?;
    client.expect(10, 10).await?;
    let start_ok = connection::StartOk {
        client_properties: Default::default(),
        mechanism: "PLAIN".into(),
        response: b"\0guest\0guest".to_vec().into(),
        locale: "en_US".into(),
    };
    client.send(AMQPMethod::StartOk(start_ok)).await?;
    let AMQPClass::Connection(AMQPMethod::Tune(tune)) = client.expect(10, 30).await? else {
        return Err("connection.tune expected".into());
    };
    let tune_ok = connection::TuneOk {
        channel_max: tune.channel_max,
        frame_max: tune.frame_max,
        heartbeat: 0,
    };
    client.send(AMQPMethod::TuneOk(tune_ok)).await?;
    let open = connection::Open {
        virtual_host: "/".into(),
    };
    client.send(AMQPMethod::Open(open)).await?;
    client.expect(10, 41).await?;
    let close = connection::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    client.send(AMQPMethod::Close(close)).await?;
    client.expect(10, 51).await.map(|_| ())
}

struct Client {
    stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.stream
            .write_all(bytes)
            .await
            .map_err(|e| e.to_string())
    }

    async fn send(&mut self, method: AMQPMethod) -> Result<(), String> {
        let mut out = BytesMut::new();
        warren_protocol::encode::method(&mut out, 0, AMQPClass::Connection(method));
        self.write(&out).await
    }

    /// Reads the next frame, which must be the method `class_id.method_id`.
    async fn expect(&mut self, class_id: u16, method_id: u16) -> Result<AMQPClass, String> {
        loop {
            if let Some(frame) = decode_frame(&mut self.buf, 0).map_err(|e| e.text)? {
                let method = decode_method(&frame.payload).map_err(|e| e.text)?;
                if (method.class_id, method.method_id) != (class_id, method_id) {
                    return Err(format!("{class_id}.{method_id} expected, got {method:?}"));
                }
                return Ok(method.class);
            }
            let read = self.stream.read_buf(&mut self.buf).await;
            match read.map_err(|e| e.to_string())? {
                0 => return Err(format!("closed before {class_id}.{method_id}")),
                _ => continue,
            }
        }
    }
}

/// Keeps the fuzzer's broker for the whole process: libFuzzer calls the target per input.
pub fn shared() -> &'static Mutex<HandshakeFuzzer> {
    static SHARED: OnceLock<Mutex<HandshakeFuzzer>> = OnceLock::new();
    SHARED.get_or_init(|| Mutex::new(HandshakeFuzzer::start()))
}

/// Target `handshake`: one input against the process's shared broker.
pub fn handshake_input(data: &[u8]) {
    let mut fuzzer = shared()
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    fuzzer.run(data);
}
