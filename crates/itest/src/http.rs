//! A minimal HTTP/1.1 client for the management API tests (one request per connection,
//! `Connection: close`), and the API served beside an in-process broker on a real socket.

use std::net::SocketAddr;
use std::sync::Arc;

use base64::Engine;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// One request with basic auth; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: (&str, &str),
    body: &str,
) -> (u16, String) {
    let stream = crate::within("TCP connect", tokio::net::TcpStream::connect(addr))
        .await
        .expect("connect");
    http_over(stream, &addr.to_string(), method, path, auth, body).await
}

/// `http` over a stream the caller opened (e.g. TLS); `host` is the Host header.
pub async fn http_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    host: &str,
    method: &str,
    path: &str,
    auth: (&str, &str),
    body: &str,
) -> (u16, String) {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", auth.0, auth.1));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        // A peer that drops the connection without a TLS close_notify still gave its answer.
        if let Err(e) = stream.read_to_end(&mut response).await {
            if response.is_empty() {
                return Err(e);
            }
        }
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&response).into_owned())
    };
    let response = crate::within("HTTP response", exchange)
        .await
        .unwrap_or_default();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `http` whose body must be JSON: the status and the parsed value (`Null` for no body).
pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    auth: (&str, &str),
    body: &str,
) -> (u16, serde_json::Value) {
    let (status, text) = http(addr, method, path, auth, body).await;
    let value = match text.trim() {
        "" => serde_json::Value::Null,
        t => serde_json::from_str(t).unwrap_or_else(|e| panic!("not JSON ({e}): {t}")),
    };
    (status, value)
}

/// The management API of `broker` on 127.0.0.1:0, until the returned sender is dropped.
pub async fn serve_mgmt(
    broker: Arc<warren_core::Broker>,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(warren_mgmt::serve(listener, broker, async {
        let _ = stopped.await;
    }));
    (addr, stop)
}
