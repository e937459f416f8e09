//! Message deduplication, as RabbitMQ's `rabbitmq-message-deduplication` plugin: the
//! `x-message-deduplication` exchange type (a fanout that drops a message whose
//! `x-deduplication-header` value it has seen within the cache's TTL) and the key a message
//! carries (also used by queues declared with `x-message-deduplication: true`,
//! `queue/actor.rs`).
//!
//! It owns one exchange's cache (`DedupCache`: keys with their expiry, in insertion order
//! for eviction) and, for a durable exchange, the cache's log (`warren_store::DedupLog`)
//! with its group commit. The routing snapshot shares the cache through an `Arc` in the
//! exchange's matcher; the cache's mutex is taken only by publishes to that exchange, never
//! across an `.await`. It must not touch queues or the definitions.
//!
//! Durability (see ARCHITECTURE.md "Deduplication"): a new key enters the in-memory cache
//! when first routed, but is appended to the log only once the message is safe in every
//! queue it went to (the queues hold a chained `ConfirmShare` whose last drop appends it),
//! and the publisher's own confirm is held until an fsync covers the key. So a key is never
//! on disk before its message, and a confirmed message has both on disk. The queues also
//! hold the message back from consumers until that fsync (a `Gate` on the share): a message
//! consumed and acked before its key was on disk would, after a crash, leave neither, and
//! the publisher's retry would be taken for a new message.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use warren_protocol::{AMQPValue, FieldTable};
use warren_store::{DedupLog, DedupRecord, Io, StoreError, SyncMode, DEDUP_KEY_BYTES_MAX};

use crate::args::{as_i64, as_str, type_name};
use crate::confirm::{ConfirmShare, Gate, GateOpener};

/// The exchange type's name, as the plugin registers it.
pub const EXCHANGE_TYPE: &str = "x-message-deduplication";
/// The queue argument (a boolean) that turns on queue-level deduplication.
pub const QUEUE_ARGUMENT: &str = "x-message-deduplication";
/// The message header whose value is the deduplication key.
pub const KEY_HEADER: &str = "x-deduplication-header";
/// The exchange argument, and message header, giving a key's lifetime in milliseconds.
pub const CACHE_TTL: &str = "x-cache-ttl";
/// The exchange argument giving the cache's size (required).
pub const CACHE_SIZE: &str = "x-cache-size";
/// The exchange argument `memory` | `disk`.
pub const CACHE_PERSISTENCE: &str = "x-cache-persistence";
/// The largest `x-cache-size` accepted. A key takes at most `DEDUP_KEY_BYTES_MAX` (64)
/// bytes (longer values are kept as a SHA-256 digest) plus ~80 bytes of map, order and
/// allocation overhead, so a full cache of this size is ~1.5 GB: the most one exchange
/// should be allowed to pin, while 10 million keys cover an hour of retries at ~2,800
/// messages/s, more than one exchange of a broker this size sees.
pub const CACHE_SIZE_MAX: u64 = 10_000_000;
/// A durable cache's log is compacted once it holds more than twice the live entries and
/// at least this many records (so a small cache is not rewritten every few publishes).
pub const COMPACT_RECORDS_MIN: u64 = 1024;
/// The largest `x-cache-ttl` (exchange argument or header): RabbitMQ's TTL limit.
pub const CACHE_TTL_MS_MAX: u64 = 4_294_967_295;

/// A validated exchange's cache settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheArgs {
    pub size: u64,
    pub ttl_ms: Option<u64>,
}

/// Reads a positive integer argument (an integer, or a string of digits as the plugin
/// accepts); `Ok(None)` when absent.
fn positive(args: &FieldTable, name: &str, max: u64) -> Result<Option<u64>, String> {
    let Some(value) = args.inner().get(name) else {
        return Ok(None);
    };
    let number = as_i64(value).or_else(|| as_str(value).and_then(|s| s.trim().parse().ok()));
    match number {
        Some(n) if n > 0 && (n as u64) <= max => Ok(Some(n as u64)),
        Some(n) if n > 0 => Err(format!("'{name}' must not be greater than {max}, got {n}")),
        _ => Err(format!(
            "'{name}' must be an integer greater than 0, got {} {}",
            type_name(value),
            crate::args::show(value)
        )),
    }
}

/// Validates a deduplication exchange's arguments (the reply text of a 406).
pub fn validate_exchange_args(args: &FieldTable) -> Result<CacheArgs, String> {
    let size = positive(args, CACHE_SIZE, CACHE_SIZE_MAX)
        .map_err(|e| format!("Missing or invalid argument, {e}"))?
        .ok_or_else(|| {
            format!("Missing or invalid argument, '{CACHE_SIZE}' must be an integer greater than 0")
        })?;
    let ttl_ms = positive(args, CACHE_TTL, CACHE_TTL_MS_MAX)
        .map_err(|e| format!("Invalid argument, {e}"))?;
    if let Some(value) = args.inner().get(CACHE_PERSISTENCE) {
        match as_str(value).as_deref() {
            Some("memory") | Some("disk") => {}
            _ => {
                return Err(format!(
                    "Invalid argument, '{CACHE_PERSISTENCE}' must be either 'disk' or 'memory'"
                ))
            }
        }
    }
    Ok(CacheArgs { size, ttl_ms })
}

/// Whether a queue's arguments turn deduplication on (`Err`: the reply text of a 406).
pub fn queue_enabled(args: &FieldTable) -> Result<bool, String> {
    match args.inner().get(QUEUE_ARGUMENT) {
        None => Ok(false),
        Some(AMQPValue::Boolean(on)) => Ok(*on),
        Some(other) => Err(format!(
            "invalid arg '{QUEUE_ARGUMENT}': expected a boolean, got {}",
            type_name(other)
        )),
    }
}

/// A message's deduplication key: its `x-deduplication-header` value, compared by value
/// (every string type as its bytes, every integer type as its number, anything else by its
/// encoding with its type). A key longer than `DEDUP_KEY_BYTES_MAX` is replaced by its
/// SHA-256 digest, so every key held for a client is bounded.
pub fn message_key(headers: Option<&FieldTable>) -> Option<Bytes> {
    let value = headers?.inner().get(KEY_HEADER)?;
    let mut key = Vec::new();
    match value {
        AMQPValue::LongString(s) => {
            key.push(b'S');
            key.extend_from_slice(s.as_bytes());
        }
        AMQPValue::ShortString(s) => {
            key.push(b'S');
            key.extend_from_slice(s.as_str().as_bytes());
        }
        AMQPValue::ByteArray(b) => {
            key.push(b'S');
            key.extend_from_slice(b.as_slice());
        }
        other => match as_i64(other) {
            Some(n) => {
                key.push(b'I');
                key.extend_from_slice(&n.to_le_bytes());
            }
            None => {
                let mut table = FieldTable::default();
                table.insert("".into(), other.clone());
                key.push(b'V');
                key.extend_from_slice(&crate::durable::definitions::encode_table(&table));
            }
        },
    }
    if key.len() > DEDUP_KEY_BYTES_MAX {
        let mut digest = vec![b'H'];
        digest.extend_from_slice(&Sha256::digest(&key));
        key = digest;
    }
    Some(Bytes::from(key))
}

/// A message's own `x-cache-ttl` header (ms), if it carries a valid one.
fn message_ttl_ms(headers: Option<&FieldTable>) -> Option<u64> {
    let value = headers?.inner().get(CACHE_TTL)?;
    let n = as_i64(value).or_else(|| as_str(value).and_then(|s| s.trim().parse().ok()))?;
    u64::try_from(n).ok().map(|n| n.min(CACHE_TTL_MS_MAX))
}

/// Where a durable cache lives and how it syncs.
pub struct CacheFile {
    pub path: PathBuf,
    pub io: Arc<dyn Io>,
    pub sync_mode: SyncMode,
}

#[derive(Clone, Copy)]
struct Slot {
    /// Insertion number: the `order` entry that is this slot's (others are stale).
    seq: u64,
    expires_at_ms: u64,
}

struct Durable {
    log: DedupLog,
    file: CacheFile,
    /// Confirms (and gates) waiting for the next fsync.
    waiting: Vec<Waiting>,
    /// Appended since the last fsync began.
    dirty: bool,
    /// A sync task is running (it loops while `dirty`).
    syncing: bool,
}

/// What an fsync of the log releases for one key.
struct Waiting {
    /// Opened first (fields drop in order), so a publisher that got its confirm finds the
    /// message deliverable.
    _gate: Option<GateOpener>,
    publisher: Option<ConfirmShare>,
}

impl Waiting {
    fn fail(self) {
        if let Some(p) = self.publisher {
            p.fail();
        }
    }
}

#[derive(Default)]
struct State {
    entries: HashMap<Bytes, Slot>,
    /// Keys oldest first, with the `seq` they were inserted with.
    order: VecDeque<(u64, Bytes)>,
    next_seq: u64,
    durable: Option<Durable>,
}

impl State {
    fn is_live(&mut self, key: &Bytes, now_ms: u64) -> bool {
        match self.entries.get(key) {
            Some(slot) if slot.expires_at_ms > now_ms => true,
            Some(_) => {
                self.entries.remove(key);
                false
            }
            None => false,
        }
    }

    /// Removes a key if it is still the entry inserted as `seq`.
    fn forget(&mut self, key: &Bytes, seq: u64) {
        if self.entries.get(key).is_some_and(|s| s.seq == seq) {
            self.entries.remove(key);
        }
    }

    /// Inserts a key, evicting the oldest entries (expired or not) beyond `size`; returns
    /// the entry's insertion number.
    fn insert(&mut self, key: Bytes, expires_at_ms: u64, size: u64, now_ms: u64) -> u64 {
        while self.entries.len() as u64 >= size {
            let Some((seq, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.entries.get(&oldest).is_some_and(|s| s.seq == seq) {
                self.entries.remove(&oldest);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries
            .insert(key.clone(), Slot { seq, expires_at_ms });
        self.order.push_back((seq, key));
        // Re-inserted keys leave stale order entries; drop them (and expired heads) once
        // they are as many as the live ones, so `order` stays O(entries).
        if self.order.len() > 2 * self.entries.len() + 16 {
            let entries = &self.entries;
            self.order.retain(|(seq, key)| {
                entries
                    .get(key)
                    .is_some_and(|s| s.seq == *seq && s.expires_at_ms > now_ms)
            });
            let order = &self.order;
            let live: std::collections::HashSet<&Bytes> = order.iter().map(|(_, k)| k).collect();
            self.entries.retain(|k, _| live.contains(k));
        }
        seq
    }

    fn live_records(&self, now_ms: u64) -> Vec<DedupRecord> {
        self.order
            .iter()
            .filter_map(|(seq, key)| {
                let slot = self.entries.get(key)?;
                (slot.seq == *seq && slot.expires_at_ms > now_ms).then(|| DedupRecord {
                    key: key.clone(),
                    expires_at_ms: slot.expires_at_ms,
                })
            })
            .collect()
    }
}

/// One deduplication exchange's cache.
pub struct DedupCache {
    args: CacheArgs,
    state: Mutex<State>,
}

impl std::fmt::Debug for DedupCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DedupCache({:?})", self.args)
    }
}

fn now_ms() -> u64 {
    crate::message::now_ms()
}

impl DedupCache {
    /// An in-memory cache (a transient exchange, or a broker without a data directory).
    pub fn memory(args: CacheArgs) -> Arc<DedupCache> {
        Arc::new(DedupCache {
            args,
            state: Mutex::new(State::default()),
        })
    }

    /// A cache kept in `file`. `fresh` (a new declare): any file left by a deleted exchange
    /// of the same name is removed first. Otherwise (a restart) the records are replayed,
    /// expired ones dropped and only the newest `size` kept, and the file is compacted.
    pub fn durable(
        args: CacheArgs,
        file: CacheFile,
        fresh: bool,
    ) -> Result<Arc<DedupCache>, StoreError> {
        if fresh {
            DedupLog::remove(&file.path, &*file.io)?;
        }
        let (mut log, records) = DedupLog::open(&file.path, file.io.clone())?;
        let mut state = State::default();
        let now = now_ms();
        for record in records {
            if record.expires_at_ms > now {
                state.insert(record.key, record.expires_at_ms, args.size, now);
            }
        }
        if log.records() > state.entries.len() as u64 {
            log.compact(&state.live_records(now))?;
        }
        state.durable = Some(Durable {
            log,
            file,
            waiting: Vec::new(),
            dirty: false,
            syncing: false,
        });
        Ok(Arc::new(DedupCache {
            args,
            state: Mutex::new(state),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Entries in the cache (expired ones not yet dropped included).
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a message may be routed: it carries no key, or a key not in the cache (which
    /// is then added). For a durable cache, `confirm` (the share the publish path hands to
    /// the queues: the publisher's, or none) is replaced by a chained share: once every queue
    /// has the message safe, the key is appended to the log, and the publisher's share is
    /// released when an fsync covers the key. If the message or the key cannot be made
    /// durable, the publisher's confirm fails (basic.nack) and the key is forgotten, so a
    /// retry is not taken for a duplicate. A transient cache chains too, only to forget the
    /// key of a message no queue could take. Without `confirm` (internal routes that hand
    /// no share on) a durable cache's key is appended at once.
    pub fn admit(
        self: &Arc<Self>,
        headers: Option<&FieldTable>,
        confirm: Option<&RefCell<Option<ConfirmShare>>>,
    ) -> bool {
        let Some(key) = message_key(headers) else {
            return true;
        };
        let now = now_ms();
        let ttl_ms = message_ttl_ms(headers).or(self.args.ttl_ms);
        let expires_at_ms = ttl_ms.map_or(u64::MAX, |t| now.saturating_add(t));
        let mut state = self.lock();
        if state.is_live(&key, now) {
            return false;
        }
        let seq = state.insert(key.clone(), expires_at_ms, self.args.size, now);
        let durable = state.durable.is_some();
        let Some(cell) = confirm else {
            if durable {
                self.log_key(&mut state, key, seq, expires_at_ms, None, None);
            }
            return true;
        };
        drop(state);
        let publisher = cell.borrow_mut().take();
        let cache = self.clone();
        if !durable {
            // Nothing to write, but a message no queue could take must not leave its key
            // behind (the retry would be dropped as a duplicate).
            let chained = ConfirmShare::then(
                Box::new(move |safe| {
                    if !safe {
                        cache.lock().forget(&key, seq);
                        if let Some(p) = publisher {
                            p.fail();
                        }
                    }
                }),
                None,
            );
            *cell.borrow_mut() = Some(chained);
            return true;
        }
        let (gate, opener) = Gate::new();
        let chained = ConfirmShare::then(
            Box::new(move |safe| {
                if fault::stall_key(safe) {
                    // Test hook: the key is never written, its confirm never sent.
                    std::mem::forget((publisher, opener));
                    return;
                }
                let mut state = cache.lock();
                if safe {
                    cache.log_key(&mut state, key, seq, expires_at_ms, publisher, Some(opener));
                } else {
                    state.forget(&key, seq);
                    if let Some(p) = publisher {
                        p.fail();
                    }
                }
            }),
            Some(gate),
        );
        *cell.borrow_mut() = Some(chained);
        true
    }

    /// Adds the key of a message recovered from a queue's log that was published through
    /// this exchange (the window where the message reached disk and its key did not).
    pub fn remember(self: &Arc<Self>, headers: Option<&FieldTable>) {
        let Some(key) = message_key(headers) else {
            return;
        };
        let now = now_ms();
        let ttl_ms = message_ttl_ms(headers).or(self.args.ttl_ms);
        let expires_at_ms = ttl_ms.map_or(u64::MAX, |t| now.saturating_add(t));
        let mut state = self.lock();
        if !state.is_live(&key, now) {
            let seq = state.insert(key.clone(), expires_at_ms, self.args.size, now);
            self.log_key(&mut state, key, seq, expires_at_ms, None, None);
        }
    }

    /// Appends a key to the log; `publisher` is released, and `gate` opened, by the fsync
    /// that covers it.
    fn log_key(
        self: &Arc<Self>,
        state: &mut State,
        key: Bytes,
        seq: u64,
        expires_at_ms: u64,
        publisher: Option<ConfirmShare>,
        gate: Option<GateOpener>,
    ) {
        let Some(durable) = state.durable.as_mut() else {
            return;
        };
        let record = DedupRecord {
            key: key.clone(),
            expires_at_ms,
        };
        if let Err(error) = durable.log.append_unsynced(&record) {
            tracing::error!(file = %durable.file.path.display(), %error, "deduplication key not written");
            state.forget(&key, seq);
            if let Some(p) = publisher {
                p.fail();
            }
            return;
        }
        if publisher.is_some() || gate.is_some() {
            durable.waiting.push(Waiting {
                _gate: gate,
                publisher,
            });
        }
        durable.dirty = true;
        if !durable.syncing {
            durable.syncing = true;
            let cache = self.clone();
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn_blocking(move || cache.sync_loop());
                }
                Err(_) => {
                    // No runtime (unit tests): the caller's lock is held, so sync later
                    // from a thread.
                    std::thread::spawn(move || cache.sync_loop());
                }
            }
        }
    }

    /// Group commit: fsyncs the log while anything was appended since the last fsync
    /// began, then releases the confirms that fsync covered; compacts when due.
    fn sync_loop(&self) {
        loop {
            let (file, waiting, sync_mode) = {
                let mut state = self.lock();
                let Some(durable) = state.durable.as_mut() else {
                    return;
                };
                if !durable.dirty {
                    durable.syncing = false;
                    return;
                }
                durable.dirty = false;
                let waiting = std::mem::take(&mut durable.waiting);
                (durable.log.unsynced().0, waiting, durable.file.sync_mode)
            };
            let synced = match sync_mode {
                SyncMode::Always => file.sync(),
                SyncMode::None => Ok(()),
            };
            if let Err(error) = synced {
                let mut state = self.lock();
                if let Some(durable) = state.durable.as_mut() {
                    durable.log.sync_failed(error);
                }
                waiting.into_iter().for_each(Waiting::fail);
                continue;
            }
            drop(waiting);
            self.compact_if_due();
        }
    }

    fn compact_if_due(&self) {
        let mut state = self.lock();
        let live = state.entries.len() as u64;
        let due = state
            .durable
            .as_ref()
            .is_some_and(|d| d.log.records() > (2 * live).max(COMPACT_RECORDS_MIN));
        if !due {
            return;
        }
        let records = state.live_records(now_ms());
        if let Some(durable) = state.durable.as_mut() {
            if let Err(error) = durable.log.compact(&records) {
                tracing::warn!(file = %durable.file.path.display(), %error, "deduplication cache compaction failed");
            }
        }
    }

    /// The exchange was deleted: its file is removed and nothing is written any more.
    pub fn destroy(&self) {
        let durable = self.lock().durable.take();
        if let Some(durable) = durable {
            if let Err(error) = DedupLog::remove(&durable.file.path, &*durable.file.io) {
                tracing::warn!(%error, "deduplication cache file not removed");
            }
        }
    }

    /// Waits until every key appended so far is fsynced (tests).
    #[cfg(test)]
    fn wait_synced(&self) {
        while self
            .lock()
            .durable
            .as_ref()
            .is_some_and(|d| d.syncing || d.dirty)
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}

/// A deterministic crash point for the process test `crates/warren/tests/dedup_crash.rs`:
/// with `WARREN_FAULT_DEDUP_KEY_STALL=1` in its environment, a durable exchange never writes
/// the key of a message that its queues made safe (nor confirms it, nor lets consumers have
/// it), as if the process died right after the message's fsync. Read once.
mod fault {
    use std::sync::OnceLock;

    /// The environment variable that arms it.
    pub const KEY_STALL: &str = "WARREN_FAULT_DEDUP_KEY_STALL";

    pub fn stall_key(safe: bool) -> bool {
        static ARMED: OnceLock<bool> = OnceLock::new();
        safe && *ARMED.get_or_init(|| std::env::var_os(KEY_STALL).is_some_and(|v| v == "1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(key: AMQPValue, ttl: Option<i64>) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(KEY_HEADER.into(), key);
        if let Some(ttl) = ttl {
            t.insert(CACHE_TTL.into(), AMQPValue::LongLongInt(ttl));
        }
        t
    }

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(v.into())
    }

    #[test]
    fn arguments_are_validated_as_the_plugin_does() {
        let mut args = FieldTable::default();
        assert!(validate_exchange_args(&args)
            .unwrap_err()
            .contains("x-cache-size"));
        args.insert(CACHE_SIZE.into(), AMQPValue::LongInt(0));
        assert!(validate_exchange_args(&args).is_err());
        args.insert(CACHE_SIZE.into(), s("10"));
        assert_eq!(validate_exchange_args(&args).unwrap().size, 10);
        args.insert(
            CACHE_SIZE.into(),
            AMQPValue::LongLongInt(CACHE_SIZE_MAX as i64 + 1),
        );
        assert!(validate_exchange_args(&args)
            .unwrap_err()
            .contains("greater than"));
        args.insert(CACHE_SIZE.into(), AMQPValue::LongInt(5));
        args.insert(CACHE_PERSISTENCE.into(), s("tape"));
        assert!(validate_exchange_args(&args).is_err());
        args.insert(CACHE_PERSISTENCE.into(), s("disk"));
        args.insert(CACHE_TTL.into(), AMQPValue::LongInt(-1));
        assert!(validate_exchange_args(&args).is_err());
        args.insert(CACHE_TTL.into(), AMQPValue::LongInt(100));
        assert_eq!(
            validate_exchange_args(&args).unwrap(),
            CacheArgs {
                size: 5,
                ttl_ms: Some(100)
            }
        );
    }

    #[test]
    fn keys_compare_by_value_and_long_ones_are_digested() {
        let a = headers(s("k"), None);
        let b = headers(AMQPValue::ShortString("k".into()), None);
        assert_eq!(message_key(Some(&a)), message_key(Some(&b)));
        let one = headers(AMQPValue::LongInt(1), None);
        let one_long = headers(AMQPValue::LongLongInt(1), None);
        assert_eq!(message_key(Some(&one)), message_key(Some(&one_long)));
        assert_ne!(
            message_key(Some(&one)),
            message_key(Some(&headers(s("1"), None)))
        );
        let long = headers(s(&"x".repeat(1000)), None);
        let key = message_key(Some(&long)).unwrap();
        assert!(key.len() <= DEDUP_KEY_BYTES_MAX);
        assert_ne!(
            Some(key),
            message_key(Some(&headers(s(&"x".repeat(999)), None)))
        );
        assert_eq!(message_key(None), None);
    }

    #[test]
    fn a_full_cache_evicts_its_oldest_key() {
        let cache = DedupCache::memory(CacheArgs {
            size: 2,
            ttl_ms: None,
        });
        for k in ["a", "b", "c"] {
            assert!(cache.admit(Some(&headers(s(k), None)), None));
        }
        assert_eq!(cache.len(), 2);
        assert!(
            cache.admit(Some(&headers(s("a"), None)), None),
            "a was evicted"
        );
        assert!(!cache.admit(Some(&headers(s("c"), None)), None));
    }

    #[test]
    fn an_expired_key_passes_again_and_order_stays_bounded() {
        let cache = DedupCache::memory(CacheArgs {
            size: 4,
            ttl_ms: None,
        });
        for _ in 0..1000 {
            assert!(cache.admit(Some(&headers(s("k"), Some(0))), None));
        }
        assert!(cache.lock().order.len() <= 2 * 4 + 17);
    }

    #[test]
    fn a_durable_cache_comes_back_without_expired_keys_and_is_removed_with_its_exchange() {
        let dir = tempfile::tempdir().unwrap();
        let file = || CacheFile {
            path: dir.path().join("x.dedup"),
            io: warren_store::RealIo::shared(),
            sync_mode: SyncMode::Always,
        };
        let args = CacheArgs {
            size: 2,
            ttl_ms: None,
        };
        let cache = DedupCache::durable(args, file(), true).unwrap();
        for k in ["a", "b", "c"] {
            assert!(cache.admit(Some(&headers(s(k), None)), None));
        }
        assert!(cache.admit(Some(&headers(s("gone"), Some(1))), None));
        cache.wait_synced();
        std::thread::sleep(std::time::Duration::from_millis(5));
        drop(cache);
        let cache = DedupCache::durable(args, file(), false).unwrap();
        assert!(!cache.admit(Some(&headers(s("c"), None)), None));
        assert!(
            cache.admit(Some(&headers(s("gone"), None)), None),
            "expired"
        );
        cache.destroy();
        assert!(!dir.path().join("x.dedup").exists());
        let fresh = DedupCache::durable(args, file(), true).unwrap();
        assert!(fresh.is_empty());
    }
    /// The figure in docs/benchmarks.md: `cargo test --release -p warren-core --lib --
    /// --ignored --nocapture dedup_routing_throughput`. One thread: the publish path's
    /// routing through a fanout and through a deduplication exchange, each with one queue.
    #[tokio::test]
    #[ignore]
    async fn dedup_routing_throughput() {
        use crate::exchange::{ExchangeDef, ExchangeKind};
        use crate::queue::settings::QueueDefaults;
        use crate::queue::QueueDef;
        use crate::routing::Destination;
        use crate::vhost::VHost;
        use std::time::{Duration, Instant};
        use warren_protocol::basic::AMQPProperties;
        use warren_protocol::ShortString;

        let vhost = VHost::new("/", QueueDefaults::default(), None);
        let mut args = FieldTable::default();
        args.insert(CACHE_SIZE.into(), AMQPValue::LongInt(1_000_000));
        for (name, kind, arguments) in [
            ("fx", ExchangeKind::Fanout, FieldTable::default()),
            ("ddx", ExchangeKind::Deduplication, args),
        ] {
            let def = ExchangeDef {
                name: ShortString::from(name),
                kind,
                durable: false,
                auto_delete: false,
                internal: false,
                arguments,
            };
            vhost
                .declare_exchange(def, false)
                .expect("declare exchange");
        }
        let def = QueueDef {
            name: ShortString::from("q"),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        };
        vhost.declare_queue(def, false).expect("declare queue");
        for x in ["fx", "ddx"] {
            let destination = Destination::Queue(ShortString::from("q"));
            vhost
                .bind(x, destination, "".into(), FieldTable::default(), 1)
                .expect("bind");
        }
        let keyed: Vec<AMQPProperties> = (0..100_000)
            .map(|i| {
                AMQPProperties::default().with_headers(headers(s(&format!("order-{i}")), None))
            })
            .collect();
        let plain = vec![AMQPProperties::default(); 1];
        let routing = vhost.routing_snapshot();
        let mut out = Vec::with_capacity(4);
        for (what, x, messages) in [
            ("fanout, no header", "fx", &plain),
            ("fanout, keyed", "fx", &keyed),
            ("dedup, no header", "ddx", &plain),
            ("dedup, keyed (new keys, then duplicates)", "ddx", &keyed),
        ] {
            let mut published = 0u64;
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                for properties in messages.iter().cycle().take(10_000) {
                    out.clear();
                    let mut confirm = None;
                    routing.route_content_confirmed(
                        x,
                        &[""],
                        properties,
                        b"",
                        &mut confirm,
                        &mut out,
                        &mut Vec::new(),
                    );
                    published += 1;
                }
            }
            let rate = published as f64 / started.elapsed().as_secs_f64();
            println!("{what}: {rate:.0} msg/s routed on one thread");
        }
    }
}
