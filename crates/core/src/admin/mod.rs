//! The one administrative interface of the broker: users, vhosts, permissions, policies,
//! limits and definitions import/export. The management HTTP API, the CLI and a definitions
//! file all call these operations; none of them changes access state any other way.
//!
//! Every operation validates its whole input before it changes anything, and makes what it
//! changed durable (the definitions log) before it returns.

use std::fmt;

pub mod definitions;
pub mod messages;
pub mod move_journal;

/// Why an administrative operation was refused. Each variant maps to one HTTP status in the
/// management API (404, 400, 409, 500).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminError {
    /// A named thing (user, vhost, policy, queue ...) does not exist.
    NotFound(String),
    /// The input is malformed or refers to something it must not: the text names the entry.
    BadRequest(String),
    /// The operation conflicts with the current state (e.g. deleting the last vhost).
    Conflict(String),
    /// The broker could not carry it out (e.g. the definitions log cannot be written).
    Internal(String),
}

impl AdminError {
    pub fn not_found(what: impl Into<String>) -> Self {
        AdminError::NotFound(what.into())
    }

    pub fn bad_request(why: impl Into<String>) -> Self {
        AdminError::BadRequest(why.into())
    }

    /// The HTTP status the management API answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            AdminError::NotFound(_) => 404,
            AdminError::BadRequest(_) => 400,
            AdminError::Conflict(_) => 409,
            AdminError::Internal(_) => 500,
        }
    }

    /// The text without the kind.
    pub fn text(&self) -> &str {
        match self {
            AdminError::NotFound(t)
            | AdminError::BadRequest(t)
            | AdminError::Conflict(t)
            | AdminError::Internal(t) => t,
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminError::NotFound(t) => write!(f, "not found: {t}"),
            AdminError::BadRequest(t) => write!(f, "bad request: {t}"),
            AdminError::Conflict(t) => write!(f, "conflict: {t}"),
            AdminError::Internal(t) => write!(f, "internal error: {t}"),
        }
    }
}

impl std::error::Error for AdminError {}

impl From<warren_protocol::ProtocolError> for AdminError {
    fn from(e: warren_protocol::ProtocolError) -> Self {
        match e.code.code() {
            404 => AdminError::NotFound(e.text),
            541 => AdminError::Internal(e.text),
            _ => AdminError::BadRequest(e.text),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::access::{
    AccessState, PasswordHash, Permission, TopicPermission, User, UserLimits, VHostInfo,
    VHostLimits,
};
use crate::broker::{Broker, DefaultUser, DEFAULT_VHOST, DEFAULT_VHOST_DESCRIPTION};
use crate::durable::access::{self as access_records, AccessOp};
use crate::vhost::VHost;
use warren_protocol::ProtocolError;

/// Longest user or vhost name (both travel in AMQP short strings).
pub const NAME_BYTES_MAX: usize = 255;

/// The records that set up a new data directory: the default vhost, and each default user
/// with full permissions on it.
pub fn seed_ops(default_users: &[DefaultUser]) -> Vec<AccessOp> {
    let mut ops = vec![AccessOp::vhost_put(&VHostInfo {
        name: DEFAULT_VHOST.into(),
        description: DEFAULT_VHOST_DESCRIPTION.into(),
        tags: Vec::new(),
        default_queue_type: Some("classic".into()),
        limits: VHostLimits::default(),
    })];
    for u in default_users {
        ops.push(AccessOp::user_put(&User {
            name: u.name.clone(),
            password: Some(PasswordHash::new(&u.password)),
            tags: u.tags.clone(),
            limits: UserLimits::default(),
        }));
        ops.push(full_permissions(&u.name, DEFAULT_VHOST));
    }
    ops
}

fn full_permissions(user: &str, vhost: &str) -> AccessOp {
    AccessOp::PermissionSet {
        user: user.into(),
        vhost: vhost.into(),
        configure: ".*".into(),
        write: ".*".into(),
        read: ".*".into(),
    }
}

fn check_name(name: &str, what: &str) -> Result<(), AdminError> {
    if name.is_empty() {
        return Err(AdminError::bad_request(format!(
            "{what} name must not be empty"
        )));
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(AdminError::bad_request(format!(
            "{what} name '{name}' is longer than {NAME_BYTES_MAX} bytes"
        )));
    }
    Ok(())
}

/// A user as the admin interface creates or replaces it.
#[derive(Clone, Debug)]
pub struct UserSpec {
    pub name: String,
    /// None: the user can log in only by certificate.
    pub password: Option<PasswordHash>,
    pub tags: Vec<String>,
}

impl Broker {
    pub(crate) fn admin_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.admin.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies `ops` to a copy of the access state, makes them durable as one record, and
    /// publishes the new state. The caller holds the admin lock and has validated `ops`.
    pub(crate) fn commit_access(&self, ops: Vec<AccessOp>) -> Result<(), AdminError> {
        self.commit_access_with(ops, |record, publish| match &self.persistence {
            Some(p) => VHost::append_and(p, record, publish),
            None => {
                publish();
                Ok(())
            }
        })
    }

    /// `commit_access` with the append done by `write`, which must call `publish` while it
    /// holds the definitions log's lock (a vhost's deletion also marks the vhost under it).
    fn commit_access_with<T>(
        &self,
        ops: Vec<AccessOp>,
        write: impl FnOnce(&[u8], Box<dyn FnOnce() + '_>) -> Result<T, ProtocolError>,
    ) -> Result<T, AdminError> {
        let mut next: AccessState = (**self.access.load()).clone();
        for op in &ops {
            op.clone()
                .apply(&mut next)
                .map_err(AdminError::bad_request)?;
        }
        let op = match <[AccessOp; 1]>::try_from(ops) {
            Ok([one]) => one,
            Err(ops) => AccessOp::Batch { ops },
        };
        let record = access_records::encode(&op);
        let written = write(&record, Box::new(|| self.access.store(Arc::new(next))))?;
        if let Some(p) = &self.persistence {
            VHost::sync_persistence(p)?;
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(written)
    }

    // ---- users ----

    pub fn users(&self) -> Vec<Arc<User>> {
        self.access().users.values().cloned().collect()
    }

    pub fn user(&self, name: &str) -> Option<Arc<User>> {
        self.access().users.get(name).cloned()
    }

    /// Creates or replaces a user (its limits and permissions are kept).
    pub fn put_user(&self, spec: UserSpec) -> Result<(), AdminError> {
        check_name(&spec.name, "user")?;
        let _admin = self.admin_lock();
        let limits = self.user(&spec.name).map(|u| u.limits).unwrap_or_default();
        self.commit_access(vec![AccessOp::user_put(&User {
            name: spec.name,
            password: spec.password,
            tags: spec.tags,
            limits,
        })])
    }

    /// Deletes a user with its permissions, and closes its connections (320).
    pub fn delete_user(&self, name: &str) -> Result<(), AdminError> {
        {
            let _admin = self.admin_lock();
            if self.user(name).is_none() {
                return Err(AdminError::not_found(format!("user '{name}'")));
            }
            self.commit_access(vec![AccessOp::UserDeleted { name: name.into() }])?;
        }
        let err =
            warren_protocol::ProtocolError::connection_forced(format!("user '{name}' is deleted"));
        self.connections.close_where(|c| c.user == name, &err);
        Ok(())
    }

    /// Sets a user's limits (None: unlimited).
    pub fn set_user_limits(&self, name: &str, limits: UserLimits) -> Result<(), AdminError> {
        let _admin = self.admin_lock();
        let user = self
            .user(name)
            .ok_or_else(|| AdminError::not_found(format!("user '{name}'")))?;
        let mut user = (*user).clone();
        user.limits = limits;
        self.commit_access(vec![AccessOp::user_put(&user)])
    }

    // ---- vhosts ----

    /// Every vhost's metadata.
    pub fn vhosts(&self) -> Vec<VHostInfo> {
        self.access().vhosts.values().cloned().collect()
    }

    /// Creates a vhost, or updates the description, tags and default queue type of an
    /// existing one (its limits are kept).
    pub fn put_vhost(&self, mut info: VHostInfo) -> Result<(), AdminError> {
        check_name(&info.name, "vhost")?;
        let _admin = self.admin_lock();
        if let Some(old) = self.access().vhosts.get(&info.name) {
            info.limits = old.limits;
            return self.commit_access(vec![AccessOp::vhost_put(&info)]);
        }
        // The record comes first: the vhost's own records must replay after it.
        self.commit_access(vec![AccessOp::vhost_put(&info)])?;
        self.attach_vhost(&info);
        Ok(())
    }

    /// Turns a vhost's firehose tracing on or off (`crate::firehose`). Like RabbitMQ, the
    /// switch is not persisted: a restarted broker traces nothing.
    pub fn set_vhost_tracing(&self, name: &str, on: bool) -> Result<(), AdminError> {
        let vhost = self
            .vhost(name)
            .filter(|_| self.access().vhosts.contains_key(name))
            .ok_or_else(|| AdminError::not_found(format!("vhost '{name}'")))?;
        if vhost.tracing() != on {
            tracing::info!(vhost = name, on, "firehose tracing switched");
        }
        vhost.set_tracing(on);
        Ok(())
    }

    /// Whether a vhost's firehose tracing is on (false for an unknown vhost).
    pub fn vhost_tracing(&self, name: &str) -> bool {
        self.vhost(name).is_some_and(|v| v.tracing())
    }

    /// Deletes a vhost: closes its connections (320), deletes every queue (with its files),
    /// exchange, binding, policy and permission in it, and nothing of any other vhost.
    pub async fn delete_vhost(&self, name: &str) -> Result<(), AdminError> {
        let (vhost, queues) = {
            let _admin = self.admin_lock();
            let vhost = self
                .vhost(name)
                .filter(|_| self.access().vhosts.contains_key(name))
                .ok_or_else(|| AdminError::not_found(format!("vhost '{name}'")))?;
            let op = AccessOp::VHostDeleted { name: name.into() };
            let queues =
                self.commit_access_with(vec![op], |record, publish| vhost.retire(record, publish))?;
            self.vhosts.rcu(|map| {
                let mut map = (**map).clone();
                map.remove(name);
                map
            });
            (vhost, queues)
        };
        let err =
            warren_protocol::ProtocolError::connection_forced(format!("vhost '{name}' is down"));
        self.connections.close_where(|c| c.vhost == name, &err);
        for queue in queues {
            let _ = queue
                .ask(|reply| crate::queue::QueueCommand::Delete {
                    if_unused: false,
                    if_empty: false,
                    reply,
                })
                .await;
        }
        let churn = vhost.queue_churn();
        self.retired_queue_churn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(&churn);
        drop(vhost);
        Ok(())
    }

    /// Sets a vhost's limits (None: unlimited).
    pub fn set_vhost_limits(&self, name: &str, limits: VHostLimits) -> Result<(), AdminError> {
        let _admin = self.admin_lock();
        let mut info = self
            .access()
            .vhosts
            .get(name)
            .cloned()
            .ok_or_else(|| AdminError::not_found(format!("vhost '{name}'")))?;
        info.limits = limits;
        self.commit_access(vec![AccessOp::vhost_put(&info)])?;
        if let Some(vhost) = self.vhost(name) {
            vhost.set_limits(limits);
        }
        Ok(())
    }

    // ---- connections ----

    /// Closes an open connection with `320 CONNECTION_FORCED - <reason>` (what RabbitMQ's
    /// management API does on `DELETE /api/connections/<name>`).
    pub fn close_connection(&self, id: u64, reason: &str) -> Result<(), AdminError> {
        let err = warren_protocol::ProtocolError::connection_forced(reason.to_owned());
        match self.connections.close_where(|c| c.id == id, &err) {
            0 => Err(AdminError::not_found(format!("connection {id}"))),
            _ => Ok(()),
        }
    }

    // ---- permissions ----

    fn check_user_and_vhost(&self, user: &str, vhost: &str) -> Result<(), AdminError> {
        let access = self.access();
        if !access.users.contains_key(user) {
            return Err(AdminError::not_found(format!("user '{user}'")));
        }
        if !access.vhosts.contains_key(vhost) {
            return Err(AdminError::not_found(format!("vhost '{vhost}'")));
        }
        Ok(())
    }

    /// Every (user, vhost, permission).
    pub fn permissions(&self) -> Vec<(String, String, Arc<Permission>)> {
        self.access()
            .permissions
            .iter()
            .map(|((u, v), p)| (u.clone(), v.clone(), p.clone()))
            .collect()
    }

    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        configure: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AdminError> {
        let _admin = self.admin_lock();
        self.check_user_and_vhost(user, vhost)?;
        Permission::new(configure, write, read).map_err(|e| {
            AdminError::bad_request(format!(
                "permissions of '{user}' in vhost '{vhost}': {}",
                e.text()
            ))
        })?;
        self.commit_access(vec![AccessOp::PermissionSet {
            user: user.into(),
            vhost: vhost.into(),
            configure: configure.into(),
            write: write.into(),
            read: read.into(),
        }])
    }

    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), AdminError> {
        let _admin = self.admin_lock();
        if self.access().permission(user, vhost).is_none() {
            return Err(AdminError::not_found(format!(
                "permissions of user '{user}' in vhost '{vhost}'"
            )));
        }
        self.commit_access(vec![AccessOp::PermissionCleared {
            user: user.into(),
            vhost: vhost.into(),
        }])
    }

    /// Every topic permission: (user, vhost, permission).
    pub fn topic_permissions(&self) -> Vec<(String, String, Arc<TopicPermission>)> {
        self.access()
            .topic_permissions
            .iter()
            .map(|((u, v, _), p)| (u.clone(), v.clone(), p.clone()))
            .collect()
    }

    pub fn set_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> Result<(), AdminError> {
        let _admin = self.admin_lock();
        self.check_user_and_vhost(user, vhost)?;
        TopicPermission::new(exchange, write, read).map_err(|e| {
            AdminError::bad_request(format!(
                "topic permissions of '{user}' in vhost '{vhost}' on exchange '{exchange}': {}",
                e.text()
            ))
        })?;
        self.commit_access(vec![AccessOp::TopicPermissionSet {
            user: user.into(),
            vhost: vhost.into(),
            exchange: exchange.into(),
            write: write.into(),
            read: read.into(),
        }])
    }

    /// Clears the user's topic permissions in `vhost` on `exchange`, or on every exchange.
    pub fn clear_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<(), AdminError> {
        let _admin = self.admin_lock();
        let ops: Vec<AccessOp> = self
            .access()
            .topic_permissions_of(user, vhost)
            .iter()
            .filter(|p| exchange.is_none_or(|x| x == p.exchange))
            .map(|p| AccessOp::TopicPermissionCleared {
                user: user.into(),
                vhost: vhost.into(),
                exchange: p.exchange.clone(),
            })
            .collect();
        if ops.is_empty() {
            return Err(AdminError::not_found(format!(
                "topic permissions of user '{user}' in vhost '{vhost}'"
            )));
        }
        self.commit_access(ops)
    }
}
