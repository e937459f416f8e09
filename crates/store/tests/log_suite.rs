//! The message log test suite, run against every implementation (memory and file): each
//! `fn` below takes a `Harness` and the `suite!` macro instantiates it once per log. Steps
//! that need records to survive a reopen run only where the harness says they do.

mod common;

use std::sync::Arc;

use common::{assert_intact, files, ids as recovered_ids, payload, sync};
use warren_store::{
    memory_log, open_file_log_with, FaultyIo, Io, Location, MessageLog, Recovered, StoreError,
    RECORD_BYTES_MAX,
};

/// Segment size of the file harness: small, so tests roll over many segments.
const SEGMENT_BYTES: u32 = 4096;

trait Harness {
    fn open(&mut self) -> (Box<dyn MessageLog>, Vec<Recovered>);
    /// Records survive `open` again.
    fn persistent(&self) -> bool;
    /// Segment files on disk (0 for memory).
    fn segment_files(&self) -> usize;
}

struct MemoryHarness;

impl Harness for MemoryHarness {
    fn open(&mut self) -> (Box<dyn MessageLog>, Vec<Recovered>) {
        (memory_log(), Vec::new())
    }

    fn persistent(&self) -> bool {
        false
    }

    fn segment_files(&self) -> usize {
        0
    }
}

struct FileHarness {
    dir: tempfile::TempDir,
}

impl FileHarness {
    fn new() -> FileHarness {
        FileHarness {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("queue")
    }
}

impl Harness for FileHarness {
    fn open(&mut self) -> (Box<dyn MessageLog>, Vec<Recovered>) {
        common::open_log(&self.path(), &FaultyIo::new(), SEGMENT_BYTES)
    }

    fn persistent(&self) -> bool {
        true
    }

    fn segment_files(&self) -> usize {
        files(&self.path(), "msgs.").len()
    }
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[test] fn $name() { super::$name(&mut super::MemoryHarness) })*
        }
        mod file {
            $(#[test] fn $name() { super::$name(&mut super::FileHarness::new()) })*
        }
    };
}

suite!(
    append_read_ack,
    reads_and_acks_refuse_unknown_locations,
    recovery_returns_unacked_records_in_id_order,
    acked_records_never_come_back,
    fully_acked_segments_are_deleted,
    a_record_bigger_than_a_segment_gets_its_own,
    many_segments_acked_in_random_order,
    a_record_over_the_limit_is_refused,
    destroy_deletes_everything,
);

fn append_all(log: &mut dyn MessageLog, ids: &[u64], len_of: fn(u64) -> usize) -> Vec<Location> {
    ids.iter()
        .map(|&id| log.append(id, &payload(id, len_of(id))).expect("append"))
        .collect()
}

fn varied_len(id: u64) -> usize {
    (id as usize * 37) % 300
}

fn append_read_ack(h: &mut dyn Harness) {
    let (mut log, recovered) = h.open();
    assert!(recovered.is_empty());
    let ids: Vec<u64> = (1..=40).collect();
    let at = append_all(&mut *log, &ids, varied_len);
    for (id, at) in ids.iter().zip(&at) {
        assert_eq!(log.read(*at).expect("read"), payload(*id, varied_len(*id)));
    }
    log.ack(3, at[2]).expect("ack");
    assert!(matches!(log.read(at[2]), Err(StoreError::NotFound(_))));
    assert!(matches!(log.ack(3, at[2]), Err(StoreError::NotFound(_))));
    sync(&mut *log).expect("sync");
    // After the sync the records are read from the files, not the write buffer.
    for (id, at) in ids.iter().zip(&at).filter(|(id, _)| **id != 3) {
        assert_eq!(log.read(*at).expect("read"), payload(*id, varied_len(*id)));
    }
}

fn reads_and_acks_refuse_unknown_locations(h: &mut dyn Harness) {
    let (mut log, _) = h.open();
    let at = log.append(1, b"one").expect("append");
    let wrong = [
        Location {
            offset: at.offset + 1,
            ..at
        },
        Location {
            segment: at.segment + 7,
            ..at
        },
    ];
    for wrong in wrong {
        assert!(matches!(log.read(wrong), Err(StoreError::NotFound(_))));
        assert!(matches!(log.ack(1, wrong), Err(StoreError::NotFound(_))));
    }
    assert_eq!(log.read(at).expect("read"), &b"one"[..]);
}

fn recovery_returns_unacked_records_in_id_order(h: &mut dyn Harness) {
    let (mut log, _) = h.open();
    // Ids arrive out of order (the queue may requeue); recovery sorts them.
    let ids: Vec<u64> = (0..200).map(|i| (i * 7919) % 200 + 1).collect();
    let at = append_all(&mut *log, &ids, varied_len);
    for (id, at) in ids.iter().zip(&at).filter(|(id, _)| **id % 3 == 0) {
        log.ack(*id, *at).expect("ack");
    }
    sync(&mut *log).expect("sync");
    drop(log);
    if !h.persistent() {
        return;
    }
    let (mut log, recovered) = h.open();
    let expected: Vec<u64> = (1..=200).filter(|id| id % 3 != 0).collect();
    assert_eq!(recovered_ids(&recovered), expected);
    assert_intact(&recovered, varied_len);
    for record in &recovered {
        assert_eq!(log.read(record.at).expect("read"), record.record);
        log.ack(record.id, record.at).expect("ack recovered");
    }
    sync(&mut *log).expect("sync");
    drop(log);
    assert!(h.open().1.is_empty());
}

fn acked_records_never_come_back(h: &mut dyn Harness) {
    let (mut log, _) = h.open();
    let ids: Vec<u64> = (1..=100).collect();
    let at = append_all(&mut *log, &ids, |_| 90);
    sync(&mut *log).expect("sync");
    for (id, at) in ids.iter().zip(&at).filter(|(id, _)| **id % 2 == 0) {
        log.ack(*id, *at).expect("ack");
    }
    sync(&mut *log).expect("sync");
    drop(log);
    if !h.persistent() {
        return;
    }
    for _ in 0..2 {
        let (_, recovered) = h.open();
        assert_eq!(
            recovered_ids(&recovered),
            (1..=100).step_by(2).collect::<Vec<_>>()
        );
    }
    let (mut log, recovered) = h.open();
    for record in recovered {
        log.ack(record.id, record.at).expect("ack");
    }
    sync(&mut *log).expect("sync");
    drop(log);
    assert!(h.open().1.is_empty());
    assert_eq!(
        h.segment_files(),
        0,
        "a reopened log deletes fully acked segments"
    );
}

fn fully_acked_segments_are_deleted(h: &mut dyn Harness) {
    let (mut log, _) = h.open();
    let ids: Vec<u64> = (1..=80).collect();
    let at = append_all(&mut *log, &ids, |_| 500);
    sync(&mut *log).expect("sync");
    let (bytes_full, files_full) = (log.disk_bytes(), h.segment_files());
    for (id, at) in ids.iter().zip(&at).take(40) {
        log.ack(*id, *at).expect("ack");
    }
    let (bytes_half, files_half) = (log.disk_bytes(), h.segment_files());
    for (id, at) in ids.iter().zip(&at).skip(40) {
        log.ack(*id, *at).expect("ack");
    }
    sync(&mut *log).expect("sync");
    if h.persistent() {
        assert!(
            files_full > 8,
            "80 records of 500 bytes fill several segments"
        );
        assert!(bytes_half < bytes_full && files_half < files_full);
        assert_eq!(
            h.segment_files(),
            1,
            "only the segment being written is kept"
        );
        assert!(log.disk_bytes() <= u64::from(SEGMENT_BYTES) * 2);
    } else {
        assert_eq!(log.disk_bytes(), 0);
    }
}

fn a_record_bigger_than_a_segment_gets_its_own(h: &mut dyn Harness) {
    let big_len = SEGMENT_BYTES as usize * 3;
    let len_of = move |id: u64| if id == 2 { big_len } else { 10 };
    let (mut log, _) = h.open();
    let at: Vec<Location> = (1..=3)
        .map(|id| log.append(id, &payload(id, len_of(id))).expect("append"))
        .collect();
    for (id, at) in (1..=3).zip(&at) {
        assert_eq!(log.read(*at).expect("read"), payload(id, len_of(id)));
    }
    if h.persistent() {
        assert!(at[0].segment < at[1].segment && at[1].segment < at[2].segment);
    }
    sync(&mut *log).expect("sync");
    drop(log);
    if !h.persistent() {
        return;
    }
    let (mut log, recovered) = h.open();
    assert_eq!(recovered_ids(&recovered), vec![1, 2, 3]);
    assert_intact(&recovered, len_of);
    let before = log.disk_bytes();
    log.ack(2, recovered[1].at).expect("ack big");
    assert!(before - log.disk_bytes() > big_len as u64);
    assert_eq!(h.segment_files(), 2);
}

fn many_segments_acked_in_random_order(h: &mut dyn Harness) {
    let (mut log, _) = h.open();
    let ids: Vec<u64> = (1..=2000).collect();
    let at = append_all(&mut *log, &ids, |id| (id as usize * 131) % 600);
    let mut order: Vec<usize> = (0..ids.len()).collect();
    let mut state = 0x2545_f491_u64;
    for i in (1..order.len()).rev() {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        order.swap(i, (state >> 33) as usize % (i + 1));
    }
    for (n, &i) in order.iter().enumerate() {
        log.ack(ids[i], at[i]).expect("ack");
        if n % 97 == 0 {
            sync(&mut *log).expect("sync");
        }
    }
    sync(&mut *log).expect("sync");
    if h.persistent() {
        assert_eq!(h.segment_files(), 1);
        drop(log);
        assert!(h.open().1.is_empty());
        assert_eq!(h.segment_files(), 0);
    }
}

fn a_record_over_the_limit_is_refused(h: &mut dyn Harness) {
    let (mut log, _) = h.open();
    // vec! of zeros is allocated lazily: this costs no real memory.
    let huge = vec![0u8; RECORD_BYTES_MAX as usize + 1];
    assert!(matches!(
        log.append(1, &huge),
        Err(StoreError::RecordTooLarge { .. })
    ));
    log.append(2, b"still usable")
        .expect("append after refusal");
}

fn destroy_deletes_everything(h: &mut dyn Harness) {
    let (mut log, _) = h.open();
    append_all(&mut *log, &(1..=50).collect::<Vec<_>>(), |_| 400);
    sync(&mut *log).expect("sync");
    log.destroy().expect("destroy");
    if h.persistent() {
        assert!(h.open().1.is_empty());
    }
}

#[test]
fn destroy_removes_the_directory() {
    let harness = FileHarness::new();
    let io: Arc<dyn Io> = Arc::new(warren_store::RealIo);
    let (mut log, _) =
        open_file_log_with(&harness.path(), io, common::options(SEGMENT_BYTES)).expect("open");
    log.append(1, b"x").expect("append");
    sync(&mut *log).expect("sync");
    log.destroy().expect("destroy");
    assert!(!harness.path().exists());
}

/// The default 8 MiB segments: the limit the broker runs with.
#[test]
fn default_segments_roll_at_eight_mebibytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io: Arc<dyn Io> = Arc::new(warren_store::RealIo);
    let (mut log, _) = warren_store::open_file_log(dir.path(), io.clone()).expect("open");
    let record = vec![7u8; 64 * 1024];
    let at: Vec<Location> = (0..300)
        .map(|id| log.append(id, &record).expect("append"))
        .collect();
    sync(&mut *log).expect("sync");
    assert_eq!(
        at.last().map(|at| at.segment),
        Some(3),
        "19.2 MB in 8 MiB segments"
    );
    assert!(at
        .iter()
        .all(|at| at.offset < warren_store::SEGMENT_BYTES_MAX));
    for (id, at) in at.iter().enumerate() {
        log.ack(id as u64, *at).expect("ack");
    }
    assert_eq!(files(dir.path(), "msgs.").len(), 1);
}

/// The integrator moves jobs to blocking threads and logs into actor tasks.
#[test]
fn logs_and_jobs_cross_threads() {
    fn send_static<T: Send + 'static>() {}
    fn send_sync<T: Send + Sync + 'static>() {}
    send_static::<Box<dyn MessageLog>>();
    send_static::<warren_store::SyncJob>();
    send_sync::<warren_store::DefinitionsLog>();
    send_sync::<Arc<dyn Io>>();
}
