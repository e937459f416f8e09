//! Warren's AMQP server: accepts TCP connections and runs one task per connection.
//! It owns sockets, connection and channel state; broker state (vhosts, exchanges, queues)
//! belongs to `warren-core` and is reached only through its handles and snapshots.

pub mod config;

pub use config::{Config, UserConfig};

use std::net::SocketAddr;

/// A running broker. Dropping it does not stop the broker; call [`ServerHandle::shutdown`].
pub struct ServerHandle {
    addrs: Vec<SocketAddr>,
}

impl ServerHandle {
    /// The address of the first listener (with the real port when the config asked for 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// All listening addresses.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// `amqp://guest:guest@<addr>/%2f` for the first listener.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.local_addr())
    }

    /// Closes every connection with 320 CONNECTION_FORCED and waits until all are gone.
    pub async fn shutdown(self) {}
}

/// Binds every listener in `config.listen` and starts serving in the background.
pub async fn start(config: Config) -> std::io::Result<ServerHandle> {
    let _ = config;
    Err(std::io::Error::other("not implemented yet"))
}
