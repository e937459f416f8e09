//! The writer task: the only owner of a connection's socket write half. The connection task
//! hands it whole batches of encoded frames (one per loop iteration), so a burst of deliveries
//! costs few syscalls; the writer never parses or changes them.

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Writes batches until the connection task drops its sender (then shuts the socket down for
/// writing) or the socket fails.
pub async fn run(mut socket: OwnedWriteHalf, mut batches: mpsc::UnboundedReceiver<Bytes>) {
    while let Some(batch) = batches.recv().await {
        if socket.write_all(&batch).await.is_err() {
            return;
        }
        // Coalesce whatever queued up while we were writing.
        while let Ok(more) = batches.try_recv() {
            if socket.write_all(&more).await.is_err() {
                return;
            }
        }
        if socket.flush().await.is_err() {
            return;
        }
    }
    let _ = socket.shutdown().await;
}
