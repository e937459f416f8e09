//! The broker: its vhosts, its access state (users, vhosts' metadata, permissions, limits)
//! and its open connections. Shared by every connection; the vhost map and the access state
//! are immutable snapshots swapped whole on change, so connections read them without a lock.
//! Changes go through the admin interface (`admin.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, Guard};
use warren_protocol::ProtocolError;

use crate::access::{AccessState, Permission, User};
use crate::connections::{ConnectionLimits, Connections};
use crate::queue::settings::QueueDefaults;
use crate::vhost::{Persistence, VHost};

/// The vhost every new broker has.
pub const DEFAULT_VHOST: &str = "/";
/// Its description, as RabbitMQ writes it.
pub const DEFAULT_VHOST_DESCRIPTION: &str = "Default virtual host";

/// A user created when the data directory is new (RabbitMQ's `default_user`).
#[derive(Clone, Debug)]
pub struct DefaultUser {
    pub name: String,
    pub password: String,
    pub tags: Vec<String>,
}

/// How a broker starts.
#[derive(Clone, Debug, Default)]
pub struct BrokerSettings {
    pub queue_defaults: QueueDefaults,
    /// Created with full permissions on the default vhost, on first start only (as
    /// RabbitMQ): later changes to these settings do not touch existing users.
    pub default_users: Vec<DefaultUser>,
    /// Users who may connect only from loopback addresses (RabbitMQ's `loopback_users`).
    pub loopback_users: Vec<String>,
}

pub struct Broker {
    pub(crate) vhosts: ArcSwap<HashMap<String, Arc<VHost>>>,
    pub(crate) access: Arc<ArcSwap<AccessState>>,
    /// Bumped after every access change: connections compare it to notice one.
    pub(crate) generation: AtomicU64,
    /// Serialises administrative changes (each validates against the state it replaces).
    pub(crate) admin: Mutex<()>,
    pub(crate) persistence: Option<Arc<Persistence>>,
    pub(crate) queue_defaults: QueueDefaults,
    loopback_users: Vec<String>,
    pub connections: Connections,
    /// The queue churn of deleted vhosts, so the broker's totals never go down.
    pub(crate) retired_queue_churn: Mutex<crate::vhost::QueueChurn>,
}

/// Texts of failed logins: the client learns only that it failed (the log says why).
fn login_refused(mechanism: &str) -> ProtocolError {
    ProtocolError::access_refused(format!(
        "Login was refused using authentication mechanism {mechanism}. For details see the broker logfile."
    ))
}

impl Broker {
    /// A broker that keeps everything in memory.
    pub fn in_memory(settings: BrokerSettings) -> Arc<Broker> {
        let mut access = AccessState::default();
        for op in crate::admin::seed_ops(&settings.default_users) {
            let _ = op.apply(&mut access);
        }
        let vhosts = access
            .vhosts
            .values()
            .map(|info| {
                let vhost = VHost::new(&info.name, settings.queue_defaults.clone(), None);
                (info.name.clone(), vhost)
            })
            .collect();
        Broker::assemble(
            vhosts,
            Arc::new(ArcSwap::from_pointee(access)),
            None,
            settings,
        )
    }

    /// A broker on a data directory, with everything durable in it restored.
    pub fn open(
        data_dir: &std::path::Path,
        sync_mode: warren_store::SyncMode,
        settings: BrokerSettings,
    ) -> Result<Arc<Broker>, warren_store::StoreError> {
        crate::recovery::open(
            data_dir,
            warren_store::RealIo::shared(),
            sync_mode,
            settings,
        )
    }

    pub(crate) fn assemble(
        vhosts: HashMap<String, Arc<VHost>>,
        access: Arc<ArcSwap<AccessState>>,
        persistence: Option<Arc<Persistence>>,
        settings: BrokerSettings,
    ) -> Arc<Broker> {
        {
            let state = access.load();
            for (name, vhost) in &vhosts {
                if let Some(info) = state.vhosts.get(name) {
                    vhost.set_limits(info.limits);
                }
            }
        }
        Arc::new(Broker {
            vhosts: ArcSwap::from_pointee(vhosts),
            access,
            generation: AtomicU64::new(0),
            admin: Mutex::new(()),
            persistence,
            queue_defaults: settings.queue_defaults,
            loopback_users: settings.loopback_users,
            connections: Connections::default(),
            retired_queue_churn: Mutex::default(),
        })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.load().get(name).cloned()
    }

    /// Every vhost, by name.
    pub fn vhost_handles(&self) -> Arc<HashMap<String, Arc<VHost>>> {
        self.vhosts.load_full()
    }

    /// The current access state (lock-free).
    pub fn access(&self) -> Guard<Arc<AccessState>> {
        self.access.load()
    }

    /// Changes on every access change; a connection that saw another value re-reads
    /// `access()` before its next check.
    pub fn access_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Checks credentials from `peer`. `password` is None for SASL EXTERNAL (the TLS layer
    /// verified the client's certificate, whose CN is `name`). The error is the 403 to send;
    /// why it failed is logged, not told.
    pub fn authenticate(
        &self,
        mechanism: &str,
        name: &str,
        password: Option<&str>,
        peer: IpAddr,
    ) -> Result<Arc<User>, ProtocolError> {
        let access = self.access();
        let Some(user) = access.users.get(name) else {
            tracing::warn!(user = name, %peer, mechanism, "login refused: no such user");
            return Err(login_refused(mechanism));
        };
        if let Some(password) = password {
            match &user.password {
                Some(hash) if hash.verify(password) => {}
                Some(_) => {
                    tracing::warn!(user = name, %peer, mechanism, "login refused: wrong password");
                    return Err(login_refused(mechanism));
                }
                None => {
                    tracing::warn!(user = name, %peer, mechanism, "login refused: the user has no password (certificate login only)");
                    return Err(login_refused(mechanism));
                }
            }
        }
        if self.loopback_users.iter().any(|u| u == name) && !is_loopback(peer) {
            tracing::warn!(user = name, %peer, "login refused: user may connect only via localhost");
            return Err(ProtocolError::access_refused(format!(
                "user '{name}' can only connect via localhost"
            )));
        }
        Ok(user.clone())
    }

    /// connection.open: the vhost must exist and the user have permissions in it (530
    /// otherwise, as RabbitMQ).
    pub fn open_vhost(&self, user: &str, vhost: &str) -> Result<Arc<VHost>, ProtocolError> {
        let handle = self.vhost(vhost);
        let access = self.access();
        let Some(handle) = handle.filter(|_| access.vhosts.contains_key(vhost)) else {
            return Err(ProtocolError::not_allowed(format!(
                "vhost {vhost} not found"
            )));
        };
        if access.permission(user, vhost).is_none() {
            return Err(ProtocolError::not_allowed(format!(
                "access to vhost '{vhost}' refused for user '{user}'"
            )));
        }
        Ok(handle)
    }

    /// The user's permissions in `vhost` (None: none at all).
    pub fn permission(&self, user: &str, vhost: &str) -> Option<Arc<Permission>> {
        self.access().permission(user, vhost).cloned()
    }

    /// The connection limits that apply to `user` in `vhost`.
    pub fn connection_limits(&self, user: &str, vhost: &str) -> ConnectionLimits {
        let access = self.access();
        ConnectionLimits {
            vhost_max_connections: access
                .vhosts
                .get(vhost)
                .and_then(|v| v.limits.max_connections),
            user_max_connections: access
                .users
                .get(user)
                .and_then(|u| u.limits.max_connections),
        }
    }

    /// The most channels `user` may have open over all its connections.
    pub fn user_max_channels(&self, user: &str) -> Option<u64> {
        self.access()
            .users
            .get(user)
            .and_then(|u| u.limits.max_channels)
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker() -> Arc<Broker> {
        Broker::in_memory(BrokerSettings {
            default_users: vec![DefaultUser {
                name: "guest".into(),
                password: "guest".into(),
                tags: vec!["administrator".into()],
            }],
            loopback_users: vec!["guest".into()],
            ..Default::default()
        })
    }

    #[test]
    fn loopback_users_only_from_loopback() {
        let b = broker();
        for peer in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(b
                .authenticate("PLAIN", "guest", Some("guest"), peer.parse().unwrap())
                .is_ok());
        }
        let err = b
            .authenticate("PLAIN", "guest", Some("guest"), "10.0.0.1".parse().unwrap())
            .unwrap_err();
        assert_eq!(err.code.code(), 403);
        assert!(err.text.contains("can only connect via localhost"), "{err}");
    }

    #[test]
    fn failed_logins_do_not_say_why() {
        let b = broker();
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let wrong = b
            .authenticate("PLAIN", "guest", Some("x"), local)
            .unwrap_err();
        let unknown = b
            .authenticate("PLAIN", "nobody", Some("guest"), local)
            .unwrap_err();
        assert_eq!(wrong.text, unknown.text);
        // EXTERNAL (no password) needs only an existing user.
        assert!(b.authenticate("EXTERNAL", "guest", None, local).is_ok());
        assert!(b.authenticate("EXTERNAL", "nobody", None, local).is_err());
        // The default user has full permissions on the default vhost.
        assert!(b.open_vhost("guest", DEFAULT_VHOST).is_ok());
        let missing = b.open_vhost("guest", "nope").err().map(|e| e.code.code());
        assert_eq!(missing, Some(530));
    }
}
