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
    /// A broker that keeps everything in memory.
    pub fn in_memory(users: Users, queue_defaults: QueueDefaults) -> Arc<Broker> {
        let mut vhosts = HashMap::new();
        vhosts.insert(
            DEFAULT_VHOST.to_owned(),
            VHost::new(DEFAULT_VHOST, queue_defaults, None),
        );
        Broker::with_vhosts(vhosts, users)
    }

    /// A broker on a data directory, with everything durable in it restored.
    pub fn open(
        data_dir: &std::path::Path,
        sync_mode: warren_store::SyncMode,
        users: Users,
        queue_defaults: QueueDefaults,
    ) -> Result<Arc<Broker>, warren_store::StoreError> {
        crate::recovery::open(
            data_dir,
            warren_store::RealIo::shared(),
            sync_mode,
            users,
            queue_defaults,
        )
    }

    pub(crate) fn with_vhosts(vhosts: HashMap<String, Arc<VHost>>, users: Users) -> Arc<Broker> {
        Arc::new(Broker { vhosts, users })
    }

    pub fn vhost(&self, name: &str) -> Option<Arc<VHost>> {
        self.vhosts.get(name).cloned()
    }
}
