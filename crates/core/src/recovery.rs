//! Start-up from the data directory: replays the definitions log into the vhosts, reopens
//! every durable queue's log (its unacked persistent messages come back, marked
//! redelivered), compacts the definitions log, and removes what belongs to nothing (logs of
//! deleted queues, transient page files).
//!
//! Damage never stops the broker: undecodable definition records are skipped and logged;
//! the store itself drops torn tails and skips damaged records (see docs/storage.md).
//! Neither does a full disk: start-up only reads, truncates and removes, and the one step
//! that needs space (compacting the definitions log) is skipped with a warning if it fails.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing::{info, warn};
use warren_protocol::ShortString;
use warren_store::{DefinitionsLog, Io, StoreError, SyncMode};

use crate::access::AccessState;
use crate::admin::move_journal::{self, LoadedQueue};
use crate::broker::{Broker, BrokerSettings};
use crate::durable::access::{self as access_records, AccessOp};
use crate::durable::definitions::{self, DefinitionOp};
use crate::durable::record;
use crate::exchange::ExchangeDef;
use crate::policy::{Policy, PolicyKind};
use crate::queue::ready::Entry;
use crate::queue::store::{QueueStore, StoreContext};
use crate::queue::QueueDef;
use crate::routing::{Binding, Destination};
use crate::vhost::{Persistence, Upstream, VHost, DEFINITIONS_COMPACT_RECORDS_MIN};

/// The definitions log's file name in the data directory.
pub const DEFINITIONS_FILE: &str = "definitions.log";

/// What the log says a vhost holds.
#[derive(Default)]
struct VHostState {
    exchanges: BTreeMap<ShortString, ExchangeDef>,
    queues: BTreeMap<ShortString, QueueDef>,
    /// Bindings by identity (source, destination, routing key, encoded arguments): replaying
    /// a log with many bindings must not cost a scan per record.
    bindings: HashMap<BindingId, (ShortString, Binding)>,
    /// The same bindings by source and by destination, so a deleted exchange or queue finds
    /// its bindings without a scan of all of them (a log of many deleted queues replayed in
    /// O(n²) otherwise).
    from: HashMap<ShortString, HashSet<BindingId>>,
    to: HashMap<Destination, HashSet<BindingId>>,
    policies: BTreeMap<(PolicyKind, String), Policy>,
}

type BindingId = (ShortString, Destination, ShortString, Vec<u8>);

fn binding_id(source: &ShortString, b: &Binding) -> BindingId {
    (
        source.clone(),
        b.destination.clone(),
        b.routing_key.clone(),
        definitions::encode_table(&b.arguments),
    )
}

impl VHostState {
    fn apply(&mut self, op: DefinitionOp) {
        match op {
            DefinitionOp::ExchangeDeclared(def) => {
                self.exchanges.insert(def.name.clone(), def);
            }
            DefinitionOp::ExchangeDeleted(name) => {
                self.exchanges.remove(&name);
                let from = self.from.remove(&name).unwrap_or_default();
                let to = self
                    .to
                    .remove(&Destination::Exchange(name))
                    .unwrap_or_default();
                from.iter().chain(&to).for_each(|id| self.unbind(id));
            }
            DefinitionOp::QueueDeclared(def) => {
                self.queues.insert(def.name.clone(), def);
            }
            DefinitionOp::QueueDeleted(name) => {
                self.queues.remove(&name);
                let to = self
                    .to
                    .remove(&Destination::Queue(name))
                    .unwrap_or_default();
                to.iter().for_each(|id| self.unbind(id));
            }
            DefinitionOp::Bound {
                source,
                destination,
                routing_key,
                arguments,
            } => {
                let b = Binding {
                    destination,
                    routing_key,
                    arguments,
                };
                let id = binding_id(&source, &b);
                self.from
                    .entry(source.clone())
                    .or_default()
                    .insert(id.clone());
                self.to
                    .entry(b.destination.clone())
                    .or_default()
                    .insert(id.clone());
                self.bindings.insert(id, (source, b));
            }
            DefinitionOp::Unbound {
                source,
                destination,
                routing_key,
                arguments,
            } => {
                let b = Binding {
                    destination,
                    routing_key,
                    arguments,
                };
                self.unbind(&binding_id(&source, &b));
            }
            DefinitionOp::PolicySet(policy) => {
                self.policies
                    .insert((policy.kind, policy.name.clone()), policy);
            }
            DefinitionOp::PolicyCleared { kind, name } => {
                self.policies.remove(&(kind, name));
            }
        }
    }

    /// Forgets one binding and its index entries.
    fn unbind(&mut self, id: &BindingId) {
        if self.bindings.remove(id).is_none() {
            return;
        }
        let (source, destination) = (&id.0, &id.1);
        if let Some(set) = self.from.get_mut(source) {
            set.remove(id);
            if set.is_empty() {
                self.from.remove(source);
            }
        }
        if let Some(set) = self.to.get_mut(destination) {
            set.remove(id);
            if set.is_empty() {
                self.to.remove(destination);
            }
        }
    }
}

/// Opens the broker on `data_dir`, restoring everything durable.
pub fn open(
    data_dir: &Path,
    io: Arc<dyn Io>,
    sync_mode: SyncMode,
    settings: BrokerSettings,
) -> Result<Arc<Broker>, StoreError> {
    let queue_defaults = settings.queue_defaults.clone();
    let started = std::time::Instant::now();
    let ctx = StoreContext {
        data_dir: data_dir.to_path_buf(),
        io: io.clone(),
        sync_mode,
    };
    remove_dir_quietly(&ctx.transient_dir());
    let (log, records) = DefinitionsLog::open(&data_dir.join(DEFINITIONS_FILE), io.clone())?;
    let mut states: BTreeMap<String, VHostState> = BTreeMap::new();
    let mut access = AccessState::default();
    let mut saw_access = false;
    for (i, rec) in records.iter().enumerate() {
        if let Some(op) = access_records::decode(rec) {
            saw_access = true;
            match op {
                Ok(op) => replay_access(op, &mut access, &mut states, i),
                Err(e) => warn!(record = i, error = %e, "skipping an undecodable access record"),
            }
            continue;
        }
        match definitions::decode(rec) {
            Ok((vhost, op)) => states.entry(vhost).or_default().apply(op),
            Err(e) => warn!(record = i, error = %e, "skipping an undecodable definition record"),
        }
    }
    // A new data directory, or one from before access records: the default vhost and
    // users, and every vhost that has definitions.
    let mut seeded = Vec::new();
    if !saw_access {
        seeded = crate::admin::seed_ops(&settings.default_users);
        for name in states.keys() {
            if !seeded_vhost(&seeded, name) {
                seeded.push(AccessOp::vhost_put(&crate::access::VHostInfo {
                    name: name.clone(),
                    ..Default::default()
                }));
            }
        }
        for op in &seeded {
            if let Err(e) = op.clone().apply(&mut access) {
                warn!(error = %e, "cannot create the default user");
            }
        }
    }
    for name in access.vhosts.keys() {
        states.entry(name.clone()).or_default();
    }
    states.retain(|name, _| {
        let known = access.vhosts.contains_key(name);
        if !known {
            warn!(vhost = %name, "dropping the definitions of a vhost that does not exist");
        }
        known
    });
    let access = Arc::new(arc_swap::ArcSwap::from_pointee(access));
    let persistence = Arc::new(Persistence {
        store: ctx.clone(),
        definitions: Mutex::new(log),
        synced: Mutex::new(0),
        vhosts: Mutex::new(Vec::new()),
        live_records: AtomicU64::new(0),
        compact_records_min: DEFINITIONS_COMPACT_RECORDS_MIN,
        access: access.clone(),
    });
    // The seed goes to the log at once: compaction below may fail for want of space.
    for op in &seeded {
        let record = access_records::encode(op);
        if let Err(e) = VHost::append_and(&persistence, &record, || {}) {
            warn!(error = %e.text, "cannot store the default user and vhost");
        }
    }
    let mut vhosts = HashMap::new();
    let mut live_dirs = BTreeSet::new();
    let mut live_keys = HashSet::new();
    let mut messages = 0usize;
    for (name, state) in states {
        let vhost = VHost::new(&name, queue_defaults.clone(), Some(persistence.clone()));
        vhost.begin_restore();
        // First: exchanges and queues come back with their policies applied.
        for policy in state.policies.into_values() {
            vhost.restore_policy(policy);
        }
        for def in state.exchanges.into_values() {
            vhost.restore_exchange(def);
        }
        // Every queue's log is read before any queue runs: an interrupted move's journal
        // is settled between its source and destinations (`admin::move_journal`).
        let mut loaded = Vec::new();
        for def in state.queues.into_values() {
            let dir = ctx.queue_dir(&name, def.name.as_str());
            live_dirs.insert(dir.clone());
            live_keys.insert(StoreContext::queue_key(&name, def.name.as_str()));
            match load_queue(
                &ctx,
                &dir,
                StoreContext::queue_key(&name, def.name.as_str()),
            ) {
                Ok(queue) => loaded.push((def, queue)),
                Err(e) => warn!(queue = %def.name.as_str(), error = %e, "cannot restore a queue"),
            }
        }
        let (defs, mut queues): (Vec<_>, Vec<_>) = loaded.into_iter().unzip();
        move_journal::reconcile(data_dir, &mut queues);
        // Who binds to what, for the deduplication keys of recovered messages that reached
        // their queue through exchange-to-exchange bindings (the bindings come back later).
        let mut upstream = Upstream::new();
        for (source, binding) in state.bindings.values() {
            upstream
                .entry(binding.destination.clone())
                .or_default()
                .push(source.clone());
        }
        for (def, queue) in defs.into_iter().zip(queues) {
            let n = queue.entries.len();
            match vhost.restore_queue(def.clone(), queue.store, queue.entries, &upstream) {
                Ok(()) => messages += n,
                Err(e) => {
                    warn!(queue = %def.name.as_str(), error = %e.reply_text(), "cannot restore a queue")
                }
            }
        }
        for (source, binding) in state.bindings.into_values() {
            vhost.restore_binding(source.as_str(), binding);
        }
        vhost.restore_done();
        vhosts.insert(name, vhost);
    }
    // Compaction needs space; start-up must not (a broker on a full disk has to come up so
    // that consumers can drain it). A failed compaction leaves the old log in use (or, if
    // the rename was done, a poisoned log that the next change reopens).
    if let Err(e) = compact(&persistence, &vhosts) {
        warn!(error = %e, "cannot compact the definitions log; it stays as it is until the next start");
    }
    // Compaction fsyncs the new log; without it, the records read back are as durable as
    // they were (what recovery found is all there is to sync).
    let (appended, records) = {
        let log = persistence
            .definitions
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        (log.appended(), log.records())
    };
    persistence.live_records.store(records, Ordering::Relaxed);
    if seeded.is_empty() {
        *persistence.synced.lock().unwrap_or_else(|e| e.into_inner()) = appended;
    } else if let Err(e) = VHost::sync_persistence(&persistence) {
        warn!(error = %e.text, "cannot store the default user and vhost");
    }
    remove_orphan_queue_dirs(&ctx, &live_dirs);
    move_journal::remove_orphans(data_dir, &live_keys);
    info!(
        vhosts = vhosts.len(),
        messages,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "restored from the data directory"
    );
    Ok(Broker::assemble(
        vhosts,
        access,
        Some(persistence),
        settings,
    ))
}

/// Replays one access record; a deleted vhost takes its definitions with it.
fn replay_access(
    op: AccessOp,
    access: &mut AccessState,
    states: &mut BTreeMap<String, VHostState>,
    index: usize,
) {
    let deleted = match &op {
        AccessOp::VHostDeleted { name } => vec![name.clone()],
        AccessOp::Batch { ops } => ops
            .iter()
            .filter_map(|o| match o {
                AccessOp::VHostDeleted { name } => Some(name.clone()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    for name in deleted {
        states.remove(&name);
    }
    if let Err(e) = op.apply(access) {
        warn!(record = index, error = %e, "skipping an access record that does not apply");
    }
}

fn seeded_vhost(ops: &[AccessOp], name: &str) -> bool {
    ops.iter()
        .any(|op| matches!(op, AccessOp::VHostPut { name: n, .. } if n == name))
}

/// Reopens a queue's log and turns its records into queue entries (not started yet).
fn load_queue(ctx: &StoreContext, dir: &Path, key: u64) -> Result<LoadedQueue, String> {
    let mut entries: Vec<Entry> = Vec::new();
    let mut origins = HashMap::new();
    let mut undecodable = Vec::new();
    let log = warren_store::open_file_log_visit(dir, ctx.io.clone(), ctx.log_options(), &mut |r| {
        let (message, expires_at_ms, origin) = match record::decode_with_origin(r.record) {
            Ok(m) => m,
            Err(e) => {
                warn!(dir = %dir.display(), id = r.id, error = ?e, "skipping an undecodable message record");
                undecodable.push((r.id, r.at));
                return;
            }
        };
        if let Some(origin) = origin {
            origins.insert(origin, (r.at, expires_at_ms));
        }
        let mut entry = Entry::new(r.id, Arc::new(message), expires_at_ms);
        entry.location = Some(r.at);
        // It may have been delivered before the restart: RabbitMQ marks such messages.
        entry.redelivered = true;
        // Recovered messages stay on disk until delivered: a broker restarting with millions
        // of messages over thousands of queues would otherwise hold them all in memory.
        entry.message = None;
        entries.push(entry);
    })
    .map_err(|e| e.to_string())?;
    let mut store = QueueStore::new(log, dir, true, ctx);
    for (id, at) in undecodable {
        store.ack(id, at);
    }
    // Segments are read in order, so ids already ascend; sort anyway (cheap when sorted).
    entries.sort_by_key(|e| e.id);
    Ok(LoadedQueue {
        key,
        store,
        entries,
        origins,
    })
}

/// Rewrites the definitions log as the current state (dropping deleted definitions).
fn compact(
    persistence: &Persistence,
    vhosts: &HashMap<String, Arc<VHost>>,
) -> Result<(), StoreError> {
    let mut records = VHost::access_records(persistence);
    for (name, vhost) in vhosts {
        for op in vhost.snapshot_ops() {
            records.push(definitions::encode(name, &op));
        }
    }
    persistence
        .definitions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .compact(&records)
}

fn remove_orphan_queue_dirs(ctx: &StoreContext, live: &BTreeSet<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(ctx.data_dir.join("queues")) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() && !live.contains(&path) {
            info!(dir = %path.display(), "removing the log of a queue that no longer exists");
            remove_dir_quietly(&path);
        }
    }
}

fn remove_dir_quietly(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            warn!(dir = %dir.display(), error = %e, "cannot remove a directory");
        }
    }
}
