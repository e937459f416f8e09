//! Access control: users and their password hashes, vhosts' metadata and limits,
//! permissions per user and vhost, topic permissions, and per-user limits.
//!
//! All of it lives in one immutable `AccessState` snapshot that the broker swaps whole on
//! every change (`Broker::access`): connections read it without a lock, and notice a change
//! by the broker's access generation (one atomic load), so a permission revoked while a
//! client is connected is enforced on its next operation.

pub mod password;
pub mod permission;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use password::PasswordHash;
pub use permission::{Access, Pattern, Permission, TopicPermission};

/// Tags RabbitMQ gives meaning to; any other tag is kept and shown, and means nothing.
pub const KNOWN_TAGS: &[&str] = &[
    "administrator",
    "monitoring",
    "management",
    "policymaker",
    "impersonator",
];

/// Per-user limits (RabbitMQ's `set_user_limits`); None is unlimited (RabbitMQ's -1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UserLimits {
    pub max_connections: Option<u64>,
    pub max_channels: Option<u64>,
}

/// Per-vhost limits (RabbitMQ's `set_vhost_limits`); None is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VHostLimits {
    pub max_connections: Option<u64>,
    pub max_queues: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// None: the user can log in only with a certificate (SASL EXTERNAL).
    pub password: Option<PasswordHash>,
    pub tags: Vec<String>,
    pub limits: UserLimits,
}

impl User {
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// What the broker knows of a vhost besides its definitions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VHostInfo {
    pub name: String,
    pub description: String,
    pub tags: Vec<String>,
    /// Warren has classic queues only; kept for export and shown.
    pub default_queue_type: Option<String>,
    pub limits: VHostLimits,
}

/// One immutable snapshot of everything access control knows.
#[derive(Clone, Debug, Default)]
pub struct AccessState {
    pub users: BTreeMap<String, Arc<User>>,
    pub vhosts: BTreeMap<String, VHostInfo>,
    /// By (user, vhost).
    pub permissions: BTreeMap<(String, String), Arc<Permission>>,
    /// By (user, vhost, exchange).
    pub topic_permissions: BTreeMap<(String, String, String), Arc<TopicPermission>>,
}

impl AccessState {
    pub fn permission(&self, user: &str, vhost: &str) -> Option<&Arc<Permission>> {
        self.permissions.get(&(user.to_owned(), vhost.to_owned()))
    }

    /// The topic permissions of `user` in `vhost`, by exchange.
    pub fn topic_permissions_of(&self, user: &str, vhost: &str) -> Vec<Arc<TopicPermission>> {
        self.topic_permissions
            .range((user.to_owned(), vhost.to_owned(), String::new())..)
            .take_while(|((u, v, _), _)| u == user && v == vhost)
            .map(|(_, p)| p.clone())
            .collect()
    }
}
