//! The broker: its vhosts and users. Shared read-only by every connection.

use std::collections::HashMap;
use std::sync::Arc;

use crate::auth::Users;
use crate::queue::settings::QueueDefaults;
use crate::vhost::VHost;

/// The vhost every broker has.
pub const DEFAULT_VHOST: &str = "/";

pub struct Broker {
    vhosts: HashMap<String, Arc<VHost>>,
    pub users: Users,
}

impl Broker {
    pub fn new(users: Users, queue_defaults: QueueDefaults) -> Arc<Broker> {
        let mut vhosts = HashMap::new();
        vhosts.insert(
            DEFAULT_VHOST.to_owned(),
            VHost::new(DEFAULT_VHOST, queue_defaults),
        );
        Arc::new(Broker { vhosts, users })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }
}
