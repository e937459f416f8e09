//! The move journal: makes moving messages (DLQ redrive, `messages.rs`) exactly-once across
//! a crash.
//!
//! A move takes a batch from the source (unacked there), publishes it to the destination
//! with confirms, and acks it on the source. A crash between the destinations' fsync and the
//! source's ack would leave the batch in both. So, before a batch is published, its source
//! ids and the durable destination queues each message goes to are appended to a journal
//! file and fsynced; each published message carries a `MoveOrigin` (the move's nonce and its
//! source id) that the destination writes into its record, invisible to clients. At start-up
//! (`reconcile`, before any queue runs) every journal still present is settled: a journaled
//! message still in the source that reached one of its destinations is acked on the source
//! (and copied into any durable destination it did not reach, when an exchange fanned it out
//! to several); one that reached none stays in the source. A move that ends normally waits
//! until its acks on the source are on disk, then removes its journal.
//!
//! File: `<data dir>/moves/<source key>-<nonce>.journal` (both 16 hex digits; the source key
//! is the queue's log directory name). Frames: `len u32 | xxh3-64 u64 | payload`, payload =
//! repeated `source id u64 | n u16 | n × destination key u64`, little-endian. A frame that
//! does not check out ends the file (it was never fsynced, so its batch never went out).
//!
//! Owns: the journal files. Must not touch: queues while they run (only `reconcile`, before
//! their actors start, changes their logs).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::BuildHasher;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use tracing::{info, warn};
use warren_store::{Location, StoreError};

use crate::durable::record::MoveOrigin;
use crate::queue::ready::Entry;
use crate::queue::store::QueueStore;

/// The journals' directory under the data directory.
pub const JOURNAL_DIR: &str = "moves";
const SUFFIX: &str = ".journal";
const FRAME_HEADER_BYTES: usize = 12;

/// One move's journal, open for appending.
pub struct Journal {
    file: File,
    path: PathBuf,
    nonce: u64,
}

impl Journal {
    /// Creates the journal of a move from the queue whose log key is `source_key`.
    pub fn create(data_dir: &Path, source_key: u64) -> io::Result<Journal> {
        let dir = data_dir.join(JOURNAL_DIR);
        std::fs::create_dir_all(&dir)?;
        let nonce = std::collections::hash_map::RandomState::new().hash_one((
            source_key,
            std::time::SystemTime::now(),
            std::process::id(),
        ));
        let path = dir.join(format!("{source_key:016x}-{nonce:016x}{SUFFIX}"));
        let file = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&path)?;
        // The file's name must survive a crash too.
        File::open(&dir)?.sync_all()?;
        Ok(Journal { file, path, nonce })
    }

    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    /// Appends a batch (source id, destination queue keys) and fsyncs it: only then may its
    /// messages be published.
    pub fn append_batch(&mut self, batch: &[(u64, Vec<u64>)]) -> io::Result<()> {
        let mut payload = Vec::new();
        for (id, dests) in batch {
            payload.extend_from_slice(&id.to_le_bytes());
            payload.extend_from_slice(&(dests.len() as u16).to_le_bytes());
            for d in dests {
                payload.extend_from_slice(&d.to_le_bytes());
            }
        }
        let mut frame = Vec::with_capacity(FRAME_HEADER_BYTES + payload.len());
        frame.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        frame.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(&payload).to_le_bytes());
        frame.extend_from_slice(&payload);
        self.file.write_all(&frame)?;
        self.file.sync_data()
    }

    /// The move is over and its acks on the source are on disk.
    pub fn remove(self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            warn!(path = %self.path.display(), error = %e, "cannot remove a move journal");
        }
    }
}

/// A durable queue's log as recovery read it, before its actor starts.
pub struct LoadedQueue {
    /// Its log directory's key (`StoreContext::queue_key`).
    pub key: u64,
    pub store: QueueStore,
    /// In id order.
    pub entries: Vec<Entry>,
    /// Where each moved message in it came from: its location and expiry.
    pub origins: HashMap<MoveOrigin, (Location, Option<u64>)>,
}

/// Settles every journal whose source is among `queues` (one vhost's), then removes it.
pub fn reconcile(data_dir: &Path, queues: &mut [LoadedQueue]) {
    let Ok(files) = std::fs::read_dir(data_dir.join(JOURNAL_DIR)) else {
        return;
    };
    let by_key: HashMap<u64, usize> = queues.iter().enumerate().map(|(i, q)| (q.key, i)).collect();
    for file in files.flatten() {
        let path = file.path();
        let Some((source_key, nonce)) = parse_name(&path) else {
            continue;
        };
        let Some(&source) = by_key.get(&source_key) else {
            continue;
        };
        let batch = match read(&path) {
            Ok(b) => b,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot read a move journal; left as it is");
                continue;
            }
        };
        match settle(queues, &by_key, source, nonce, &batch) {
            Ok((acked, copied)) => {
                info!(path = %path.display(), acked, copied, "settled an interrupted move");
                if let Err(e) = std::fs::remove_file(&path) {
                    warn!(path = %path.display(), error = %e, "cannot remove a move journal");
                }
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "cannot settle an interrupted move; it is tried again at the next start")
            }
        }
    }
}

/// Removes journals whose source queue no longer exists (`live`: every durable queue's key).
pub fn remove_orphans(data_dir: &Path, live: &HashSet<u64>) {
    let Ok(files) = std::fs::read_dir(data_dir.join(JOURNAL_DIR)) else {
        return;
    };
    for file in files.flatten() {
        let path = file.path();
        match parse_name(&path) {
            Some((key, _)) if live.contains(&key) => {}
            _ => {
                info!(path = %path.display(), "removing the journal of a move from a queue that no longer exists");
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

fn parse_name(path: &Path) -> Option<(u64, u64)> {
    let name = path.file_name()?.to_str()?.strip_suffix(SUFFIX)?;
    let (key, nonce) = name.split_once('-')?;
    Some((
        u64::from_str_radix(key, 16).ok()?,
        u64::from_str_radix(nonce, 16).ok()?,
    ))
}

/// Every complete frame's entries, in order.
fn read(path: &Path) -> io::Result<Vec<(u64, Vec<u64>)>> {
    let mut bytes = Vec::new();
    File::open(path)?.read_to_end(&mut bytes)?;
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + FRAME_HEADER_BYTES) {
        let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default()) as usize;
        let sum = u64::from_le_bytes(header[4..].try_into().unwrap_or_default());
        let Some(payload) = bytes.get(at + FRAME_HEADER_BYTES..at + FRAME_HEADER_BYTES + len)
        else {
            break;
        };
        if xxhash_rust::xxh3::xxh3_64(payload) != sum {
            break;
        }
        let mut p = payload;
        let mut word = |n: usize| -> Option<u64> {
            let (head, rest) = p.split_at_checked(n)?;
            p = rest;
            let mut buf = [0u8; 8];
            buf[..n].copy_from_slice(head);
            Some(u64::from_le_bytes(buf))
        };
        while let (Some(id), Some(n)) = (word(8), word(2)) {
            let dests: Option<Vec<u64>> = (0..n).map(|_| word(8)).collect();
            match dests {
                Some(d) => out.push((id, d)),
                None => break,
            }
        }
        at += FRAME_HEADER_BYTES + len;
    }
    Ok(out)
}

/// Settles one journal: returns (messages acked on the source, copies made).
fn settle(
    queues: &mut [LoadedQueue],
    by_key: &HashMap<u64, usize>,
    source: usize,
    nonce: u64,
    batch: &[(u64, Vec<u64>)],
) -> Result<(usize, usize), StoreError> {
    let mut touched = HashSet::new();
    let (mut acked, mut copied) = (0, 0);
    for (source_id, dests) in batch {
        let Ok(pos) = queues[source]
            .entries
            .binary_search_by_key(source_id, |e| e.id)
        else {
            continue; // acked before the crash
        };
        let origin = MoveOrigin {
            nonce,
            source_id: *source_id,
        };
        let live: Vec<usize> = dests
            .iter()
            .filter_map(|k| by_key.get(k).copied())
            .collect();
        let Some(&holder) = live
            .iter()
            .find(|&&d| queues[d].origins.contains_key(&origin))
        else {
            continue; // reached no destination: it stays in the source
        };
        let (at, expires) = queues[holder].origins[&origin];
        for &d in &live {
            if queues[d].origins.contains_key(&origin) {
                continue;
            }
            let Some(message) = queues[holder].store.load(at) else {
                return Err(StoreError::NotFound(at));
            };
            let q = &mut queues[d];
            let id = q.entries.last().map_or(1, |e| e.id + 1);
            let location = q.store.append_recovered(id, &message, expires, origin)?;
            let mut entry = Entry::new(id, message, expires);
            entry.location = Some(location);
            entry.redelivered = true;
            entry.message = None;
            q.entries.push(entry);
            q.origins.insert(origin, (location, expires));
            touched.insert(d);
            copied += 1;
        }
        let entry = queues[source].entries.remove(pos);
        if let Some(at) = entry.location {
            queues[source].store.ack(entry.id, at);
        }
        touched.insert(source);
        acked += 1;
    }
    for q in touched {
        queues[q].store.sync_blocking()?;
    }
    Ok((acked, copied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use crate::queue::store::StoreContext;
    use std::sync::Arc;

    fn message(body: &'static str) -> Arc<Message> {
        let props = warren_protocol::basic::AMQPProperties::default().with_delivery_mode(2);
        let body = bytes::Bytes::from_static(body.as_bytes());
        Arc::new(Message {
            exchange: "x".into(),
            routing_key: "k".into(),
            header_raw: warren_protocol::encode::header_payload(&props, body.len() as u64),
            properties: Box::new(props),
            body,
            properties_bytes: 0,
        })
    }

    fn queue(key: u64) -> LoadedQueue {
        let ctx = StoreContext {
            data_dir: std::path::PathBuf::from("/nonexistent"),
            io: warren_store::RealIo::shared(),
            sync_mode: warren_store::SyncMode::None,
        };
        LoadedQueue {
            key,
            store: QueueStore::new(
                warren_store::memory_log(),
                Path::new("/nonexistent"),
                true,
                &ctx,
            ),
            entries: Vec::new(),
            origins: HashMap::new(),
        }
    }

    /// Appends `body` as the queue's next message, moved by `origin` if given.
    fn put(q: &mut LoadedQueue, body: &'static str, origin: Option<MoveOrigin>) {
        let id = q.entries.last().map_or(1, |e| e.id + 1);
        let m = message(body);
        let at = match origin {
            Some(o) => q.store.append_recovered(id, &m, None, o).unwrap(),
            None => q.store.append(id, &m, None, None).unwrap(),
        };
        if let Some(o) = origin {
            q.origins.insert(o, (at, None));
        }
        let mut e = Entry::new(id, m, None);
        e.location = Some(at);
        q.entries.push(e);
    }

    fn bodies(q: &mut LoadedQueue) -> Vec<String> {
        let locations: Vec<_> = q.entries.iter().map(|e| e.location.unwrap()).collect();
        locations
            .into_iter()
            .map(|at| String::from_utf8(q.store.load(at).unwrap().body.to_vec()).unwrap())
            .collect()
    }

    /// A crash after the batch reached its destinations, before the source's acks: each
    /// message ends in exactly one place, and a fanout copy that one destination missed is
    /// made from the one that has it.
    #[test]
    fn settling_acks_what_arrived_copies_what_a_fanout_missed_and_keeps_the_rest() {
        let nonce = 99;
        let origin = |source_id| MoveOrigin { nonce, source_id };
        let (mut source, mut a, mut b) = (queue(1), queue(2), queue(3));
        for body in ["m1", "m2", "m3", "m4"] {
            put(&mut source, body, None);
        }
        put(
            &mut a,
            "old",
            Some(MoveOrigin {
                nonce: 1,
                source_id: 3,
            }),
        ); // another move's
        put(&mut a, "m1", Some(origin(1)));
        put(&mut a, "m2", Some(origin(2)));
        put(&mut b, "m2", Some(origin(2)));
        // m1 went to a and b (b missed it), m2 to a and b, m3 to a (never arrived), m4 was
        // acked before the crash (not in the source any more).
        source.entries.pop();
        let batch = [(1, vec![2, 3]), (2, vec![2, 3]), (3, vec![2]), (4, vec![2])];
        let mut queues = vec![source, a, b];
        let by_key = queues.iter().enumerate().map(|(i, q)| (q.key, i)).collect();
        assert_eq!(
            settle(&mut queues, &by_key, 0, nonce, &batch).unwrap(),
            (2, 1)
        );
        assert_eq!(bodies(&mut queues[0]), ["m3"]);
        assert_eq!(bodies(&mut queues[1]), ["old", "m1", "m2"]);
        assert_eq!(bodies(&mut queues[2]), ["m2", "m1"]);
        assert!(queues[2].origins.contains_key(&origin(1)));
        // Settling again changes nothing: recovery may run it twice after a second crash.
        assert_eq!(
            settle(&mut queues, &by_key, 0, nonce, &batch).unwrap(),
            (0, 0)
        );
    }

    #[test]
    fn journal_frames_read_back_and_a_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::create(dir.path(), 0xabc).unwrap();
        j.append_batch(&[(1, vec![7]), (2, vec![7, 8])]).unwrap();
        j.append_batch(&[(3, vec![])]).unwrap();
        let path = j.path.clone();
        assert_eq!(parse_name(&path), Some((0xabc, j.nonce())));
        let all = read(&path).unwrap();
        assert_eq!(all, vec![(1, vec![7]), (2, vec![7, 8]), (3, vec![])]);
        // A frame cut short (the crash came mid-write) ends the journal.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes.truncate(bytes.len() - 3);
        std::fs::write(&path, &bytes).unwrap();
        assert_eq!(read(&path).unwrap(), vec![(1, vec![7]), (2, vec![7, 8])]);
        j.remove();
        assert!(!path.exists());
    }
}
