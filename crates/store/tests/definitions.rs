//! The definitions log: append and reopen, compaction (and crashes around it), torn tails,
//! damaged records, bad headers, and the fsync-failure policy.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use common::{flip_byte, truncate};
use warren_store::format::{FILE_HEADER_BYTES, RECORD_HEADER_BYTES};
use warren_store::{CrashTail, DefinitionsLog, Fault, FaultyIo, Io, StoreError};

fn open(path: &Path, io: &Arc<FaultyIo>) -> (DefinitionsLog, Vec<Bytes>) {
    let io: Arc<dyn Io> = io.clone();
    DefinitionsLog::open(path, io).expect("open definitions")
}

fn records(names: &[&str]) -> Vec<Bytes> {
    names
        .iter()
        .map(|n| Bytes::copy_from_slice(n.as_bytes()))
        .collect()
}

fn setup() -> (tempfile::TempDir, PathBuf, Arc<FaultyIo>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("broker").join("definitions");
    (dir, path, FaultyIo::new())
}

#[test]
fn appended_records_come_back_in_order() {
    let (_dir, path, io) = setup();
    let (mut log, found) = open(&path, &io);
    assert!(found.is_empty());
    for name in ["vhost /", "exchange x", "queue q", "binding x q"] {
        log.append(name.as_bytes()).expect("append");
    }
    drop(log);
    let (_, found) = open(&path, &io);
    assert_eq!(
        found,
        records(&["vhost /", "exchange x", "queue q", "binding x q"])
    );
}

#[test]
fn an_append_is_durable_when_it_returns() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue q").expect("append");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(open(&path, &io).1, records(&["queue q"]));
}

#[test]
fn unsynced_appends_are_durable_only_after_the_group_fsync() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    assert_eq!(log.append_unsynced(b"queue a").expect("append"), 1);
    assert_eq!(log.append_unsynced(b"queue b").expect("append"), 2);
    let (file, covers) = log.unsynced();
    assert_eq!(covers, 2);
    file.sync().expect("one fsync for both");
    log.append_unsynced(b"queue c").expect("append");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(open(&path, &io).1, records(&["queue a", "queue b"]));
}

#[test]
fn a_failed_group_fsync_poisons_the_log_until_the_next_change_reopens_it() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append_unsynced(b"queue a").expect("append");
    io.inject(Fault::FailSync);
    let (file, _) = log.unsynced();
    let error = file.sync().expect_err("injected");
    log.sync_failed(error);
    assert!(log.is_poisoned());
    let before = log.appended();
    // "queue a" was never acknowledged: reading it back and keeping it is allowed.
    let sequence = log.append_unsynced(b"queue b").expect("reopened");
    assert!(sequence > before, "group commit's sequence never goes back");
    let (file, _) = log.unsynced();
    file.sync().expect("sync");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(open(&path, &io).1, records(&["queue a", "queue b"]));
}

/// Pins issue 9: after one ENOSPC the definitions log refused every declaration until a
/// restart, even once space was back.
#[test]
fn a_full_disk_refuses_changes_until_space_is_back() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue a").expect("append");
    io.set_disk_full(true);
    let full = log.append(b"queue b").expect_err("disk full");
    assert!(
        matches!(&full, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull),
        "{full:?}"
    );
    assert!(log.append(b"queue b").is_err(), "still full");
    io.set_disk_full(false);
    log.append(b"queue c").expect("space is back");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(open(&path, &io).1, records(&["queue a", "queue c"]));
}

/// A write that stopped half-way leaves a torn frame; the reopen drops it.
#[test]
fn a_short_write_is_dropped_by_the_reopen() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue a").expect("append");
    io.inject(Fault::ShortWrite { bytes: 7 });
    assert!(log.append(b"queue b").is_err());
    log.append(b"queue c").expect("reopened");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(open(&path, &io).1, records(&["queue a", "queue c"]));
}

#[test]
fn compact_replaces_the_log_and_appends_continue() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    for name in ["queue a", "queue b", "delete queue a"] {
        log.append(name.as_bytes()).expect("append");
    }
    log.compact(&records(&["queue b"])).expect("compact");
    log.append(b"queue c").expect("append after compact");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(open(&path, &io).1, records(&["queue b", "queue c"]));
}

#[test]
fn a_failed_compaction_leaves_the_old_log() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue a").expect("append");
    io.inject(Fault::FailSync);
    assert!(log.compact(&records(&["queue z"])).is_err());
    log.append(b"queue b").expect("the old log is still usable");
    drop(log);
    assert_eq!(open(&path, &io).1, records(&["queue a", "queue b"]));
    assert!(!path.with_file_name("definitions.tmp").exists());
}

#[test]
fn a_crash_before_the_directory_sync_leaves_the_old_or_the_new_log() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue a").expect("append");
    io.inject(Fault::FailSyncDir);
    assert!(log.compact(&records(&["queue z"])).is_err());
    assert!(log.is_poisoned());
    drop(log);
    io.crash(CrashTail::Keep).expect("crash");
    assert_eq!(open(&path, &io).1, records(&["queue a"]));
}

#[test]
fn a_leftover_temporary_file_is_removed() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue a").expect("append");
    drop(log);
    let temp = path.with_file_name("definitions.tmp");
    std::fs::write(&temp, b"half a compaction").expect("write");
    assert_eq!(open(&path, &io).1, records(&["queue a"]));
    assert!(!temp.exists());
}

#[test]
fn a_torn_tail_at_any_offset_is_dropped() {
    let (dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    for name in ["vhost /", "queue q", "binding"] {
        log.append(name.as_bytes()).expect("append");
    }
    drop(log);
    let whole = std::fs::read(&path).expect("read");
    let last = whole.len() - RECORD_HEADER_BYTES as usize - "binding".len();
    for cut in last..whole.len() {
        let copy = dir.path().join(format!("cut-{cut}"));
        std::fs::write(&copy, &whole).expect("write");
        truncate(&copy, cut as u64);
        let (mut log, found) = open(&copy, &io);
        assert_eq!(found, records(&["vhost /", "queue q"]), "cut at {cut}");
        log.append(b"exchange").expect("append after a torn tail");
        drop(log);
        let expected = records(&["vhost /", "queue q", "exchange"]);
        assert_eq!(open(&copy, &io).1, expected, "cut at {cut}");
    }
}

#[test]
fn a_damaged_middle_record_is_skipped() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    for name in ["vhost /", "queue q", "binding"] {
        log.append(name.as_bytes()).expect("append");
    }
    drop(log);
    let second = FILE_HEADER_BYTES as usize + RECORD_HEADER_BYTES as usize + "vhost /".len();
    flip_byte(&path, second + RECORD_HEADER_BYTES as usize + 2);
    assert_eq!(open(&path, &io).1, records(&["vhost /", "binding"]));
}

#[test]
fn a_bad_header_moves_the_file_aside_and_starts_empty() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue q").expect("append");
    drop(log);
    flip_byte(&path, 2);
    let (mut log, found) = open(&path, &io);
    assert!(found.is_empty());
    assert!(path.with_file_name("definitions.corrupt").exists());
    log.append(b"vhost /").expect("append");
    drop(log);
    assert_eq!(open(&path, &io).1, records(&["vhost /"]));
}

#[test]
fn a_failed_fsync_poisons_the_log_until_reopened() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue a").expect("append");
    io.inject(Fault::FailSync);
    assert!(matches!(log.append(b"queue b"), Err(StoreError::Io { .. })));
    assert!(log.is_poisoned());
    drop(log);
    io.crash(CrashTail::Keep).expect("crash");
    let (mut log, found) = open(&path, &io);
    assert_eq!(found, records(&["queue a"]), "the unsynced record was lost");
    log.append(b"queue d").expect("append after reopen");
}

/// The reopen after a failed fsync rewrites the file: the record whose fsync failed is
/// kept (it is read back from the page cache) and later ones are not lost behind it.
#[test]
fn the_change_after_a_failed_fsync_reopens_the_log() {
    let (_dir, path, io) = setup();
    let (mut log, _) = open(&path, &io);
    log.append(b"queue a").expect("append");
    io.inject(Fault::FailSync);
    assert!(log.append(b"queue b").is_err());
    log.append(b"queue c").expect("reopened");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(
        open(&path, &io).1,
        records(&["queue a", "queue b", "queue c"])
    );
}
