//! HTTP basic auth against Warren's users, and RabbitMQ's management tag rules:
//! `management` (own vhosts only), `policymaker` (+ policies in its vhosts), `monitoring`
//! (reads everything), `administrator` (everything). A user with none of them may not use
//! the API at all.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use base64::Engine;
use warren_core::access::{Access, User};
use warren_core::vhost::VHost;

use crate::{ApiError, AppState};

pub const TAG_ADMINISTRATOR: &str = "administrator";
pub const TAG_MONITORING: &str = "monitoring";
pub const TAG_POLICYMAKER: &str = "policymaker";
pub const TAG_MANAGEMENT: &str = "management";

/// The authenticated user of a request.
pub struct Caller {
    pub user: Arc<User>,
    pub(crate) state: AppState,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let unauthorized = || ApiError::Unauthorized("Login failed".into());
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(unauthorized)?;
        let encoded = header
            .strip_prefix("Basic ")
            .or_else(|| header.strip_prefix("basic "))
            .ok_or_else(unauthorized)?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(unauthorized)?;
        let (name, password) = decoded.split_once(':').ok_or_else(unauthorized)?;
        let peer = ConnectInfo::<SocketAddr>::from_request_parts(parts, state)
            .await
            .map(|c| c.0.ip())
            .map_err(|_| ApiError::Internal("the peer address is unknown".into()))?;
        let user = state
            .broker
            .authenticate("PLAIN", name, Some(password), peer)
            .map_err(|_| unauthorized())?;
        let caller = Caller {
            user,
            state: state.clone(),
        };
        if !caller.is_management() {
            return Err(ApiError::refused(
                "Not management user (the user has none of the tags management, policymaker, monitoring, administrator)",
            ));
        }
        Ok(caller)
    }
}

impl Caller {
    pub fn name(&self) -> &str {
        &self.user.name
    }

    pub fn is_admin(&self) -> bool {
        self.user.has_tag(TAG_ADMINISTRATOR)
    }

    /// May read everything (monitoring or administrator).
    pub fn is_monitor(&self) -> bool {
        self.is_admin() || self.user.has_tag(TAG_MONITORING)
    }

    pub fn is_policymaker(&self) -> bool {
        self.is_admin() || self.user.has_tag(TAG_POLICYMAKER)
    }

    fn is_management(&self) -> bool {
        self.is_monitor() || self.is_policymaker() || self.user.has_tag(TAG_MANAGEMENT)
    }

    /// 401 (refused) unless the caller is an administrator.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self.is_admin() {
            true => Ok(()),
            false => Err(ApiError::refused("Not administrator user")),
        }
    }

    /// 401 (refused) unless the caller may read everything.
    pub fn require_monitor(&self) -> Result<(), ApiError> {
        match self.is_monitor() {
            true => Ok(()),
            false => Err(ApiError::refused("Not monitor user")),
        }
    }

    /// Whether the caller has permissions in `vhost`.
    pub fn has_permissions_in(&self, vhost: &str) -> bool {
        self.state
            .broker
            .access()
            .permission(&self.user.name, vhost)
            .is_some()
    }

    /// Whether the caller may see `vhost` and what is in it.
    pub fn can_see_vhost(&self, vhost: &str) -> bool {
        self.is_monitor() || self.has_permissions_in(vhost)
    }

    /// 404 for a vhost that does not exist, 401 for one the caller may not see.
    pub fn require_vhost(&self, vhost: &str) -> Result<(), ApiError> {
        if !self.state.broker.access().vhosts.contains_key(vhost) {
            return Err(ApiError::not_found(format!("vhost '{vhost}'")));
        }
        match self.can_see_vhost(vhost) {
            true => Ok(()),
            false => Err(ApiError::refused(format!(
                "User not authorised to access virtual host '{vhost}'"
            ))),
        }
    }

    /// 401 (refused) unless the caller's permissions in `vhost` grant `access` on the `kind`
    /// (`queue`, `exchange`) called `name`, with RabbitMQ's AMQP text.
    pub fn require_resource(
        &self,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let granted = self
            .state
            .broker
            .access()
            .permission(&self.user.name, vhost)
            .is_some_and(|p| p.allows(access, name));
        match granted {
            true => Ok(()),
            false => Err(ApiError::refused(format!(
                "access to {kind} '{}' in vhost '{vhost}' refused for user '{}'",
                if name.is_empty() { "amq.default" } else { name },
                self.user.name
            ))),
        }
    }

    /// May set policies in `vhost`: a policymaker with permissions there, or an admin.
    pub fn require_policymaker_in(&self, vhost: &str) -> Result<(), ApiError> {
        if !self.state.broker.access().vhosts.contains_key(vhost) {
            return Err(ApiError::not_found(format!("vhost '{vhost}'")));
        }
        if self.is_admin() || (self.is_policymaker() && self.has_permissions_in(vhost)) {
            return Ok(());
        }
        Err(ApiError::refused(format!(
            "Not policymaker user with permissions in virtual host '{vhost}'"
        )))
    }

    /// AMQP resource permission, as RabbitMQ's management applies it to changes: the vhost
    /// exists (404), the caller has permissions in it, and `access` on `kind` `name` (401
    /// with RabbitMQ's ACCESS_REFUSED text). Administrators need permissions too.
    pub fn require_access(
        &self,
        vhost: &str,
        access: Access,
        kind: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        if !self.state.broker.access().vhosts.contains_key(vhost) {
            return Err(ApiError::not_found(format!("vhost '{vhost}'")));
        }
        let allowed = self
            .state
            .broker
            .permission(&self.user.name, vhost)
            .is_some_and(|p| p.allows(access, name));
        match allowed {
            true => Ok(()),
            false => Err(ApiError::refused(format!(
                "ACCESS_REFUSED - {} access to {kind} '{name}' in vhost '{vhost}' refused for user '{}'",
                access.as_str(),
                self.user.name
            ))),
        }
    }

    /// The vhost, when it exists (404) and the caller may see it (401).
    pub fn vhost(&self, name: &str) -> Result<Arc<VHost>, ApiError> {
        self.require_vhost(name)?;
        self.state
            .broker
            .vhost(name)
            .ok_or_else(|| ApiError::not_found(format!("vhost '{name}'")))
    }

    /// Every vhost the caller may see, sorted by name.
    pub fn visible_vhosts(&self) -> Vec<Arc<VHost>> {
        let mut all: Vec<Arc<VHost>> = self
            .state
            .broker
            .vhost_handles()
            .values()
            .filter(|v| self.can_see_vhost(v.name()))
            .cloned()
            .collect();
        all.sort_unstable_by(|a, b| a.name().cmp(b.name()));
        all
    }
}
