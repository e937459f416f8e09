//! Fault injection and crash simulation through `FaultyIo`: failed and short writes, failed
//! fsyncs (the poison policy), and crashes that drop, keep or tear unsynced data.

mod common;

use std::sync::Arc;

use common::{assert_intact, files, ids, open_log, payload, sync};
use warren_store::{
    open_file_log_with, CrashTail, Fault, FaultyIo, Io, LogOptions, MessageLog, StoreError,
    SyncMode,
};

const SEGMENT_BYTES: u32 = 4096;
const LEN: usize = 100;

fn append_range(log: &mut dyn MessageLog, ids: std::ops::RangeInclusive<u64>) {
    for id in ids {
        log.append(id, &payload(id, LEN)).expect("append");
    }
}

fn assert_poisoned<T: std::fmt::Debug>(result: Result<T, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::Poisoned)),
        "expected Poisoned, got {result:?}"
    );
}

#[test]
fn a_failed_write_poisons_the_log_until_it_is_reopened() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    append_range(&mut *log, 1..=5);
    sync(&mut *log).expect("sync");
    append_range(&mut *log, 6..=8);
    io.inject(Fault::FailWrite);
    assert!(matches!(log.prepare_sync(), Err(StoreError::Io { .. })));
    assert_poisoned(log.append(9, b"x"));
    assert_poisoned(log.prepare_sync());
    drop(log);
    let (mut log, recovered) = open_log(dir.path(), &io, SEGMENT_BYTES);
    assert_eq!(ids(&recovered), vec![1, 2, 3, 4, 5]);
    append_range(&mut *log, 9..=9);
    sync(&mut *log).expect("a reopened log works again");
}

#[test]
fn a_short_write_is_dropped_as_a_torn_tail() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    append_range(&mut *log, 1..=5);
    sync(&mut *log).expect("sync");
    let synced_len = std::fs::metadata(dir.path().join("msgs.1"))
        .expect("stat")
        .len();
    append_range(&mut *log, 6..=7);
    io.inject(Fault::ShortWrite { bytes: 30 });
    assert!(log.prepare_sync().is_err());
    assert_poisoned(log.ack(
        1,
        warren_store::Location {
            segment: 1,
            offset: 16,
            len: 100,
        },
    ));
    drop(log);
    let (mut log, recovered) = open_log(dir.path(), &io, SEGMENT_BYTES);
    assert_eq!(ids(&recovered), vec![1, 2, 3, 4, 5]);
    assert_intact(&recovered, |_| LEN);
    let len = std::fs::metadata(dir.path().join("msgs.1"))
        .expect("stat")
        .len();
    assert_eq!(len, synced_len, "the 30 torn bytes are truncated");
    append_range(&mut *log, 8..=8);
    sync(&mut *log).expect("sync");
    drop(log);
    assert_eq!(
        ids(&open_log(dir.path(), &io, SEGMENT_BYTES).1),
        vec![1, 2, 3, 4, 5, 8]
    );
}

#[test]
fn a_failed_fsync_fails_the_job_and_poisons_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    append_range(&mut *log, 1..=3);
    let at = log.append(4, &payload(4, LEN)).expect("append");
    let job = log.prepare_sync().expect("prepare").expect("a job");
    io.inject(Fault::FailSync);
    assert!(matches!(job.run(), Err(StoreError::Io { .. })));
    assert_poisoned(log.append(5, b"x"));
    assert_poisoned(log.ack(4, at));
    assert_poisoned(log.prepare_sync());
    assert_eq!(log.read(at).expect("reads still work"), payload(4, LEN));
    drop(log);
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    append_range(&mut *log, 5..=5);
    sync(&mut *log).expect("a reopened log syncs again");
}

/// Pins the PostgreSQL lesson: after a failed fsync, a job prepared earlier must not report
/// success even though its own fsync would now succeed (the lost pages look clean).
#[test]
fn a_job_run_after_a_failed_fsync_fails_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    append_range(&mut *log, 1..=3);
    let first = log.prepare_sync().expect("prepare").expect("job");
    append_range(&mut *log, 4..=6);
    let second = log.prepare_sync().expect("prepare").expect("job");
    io.inject(Fault::FailSync);
    assert!(first.run().is_err());
    assert_poisoned(second.run());
}

#[test]
fn after_a_failed_fsync_and_a_crash_the_synced_records_are_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    append_range(&mut *log, 1..=10);
    sync(&mut *log).expect("sync");
    append_range(&mut *log, 11..=20);
    io.inject(Fault::FailSync);
    assert!(sync(&mut *log).is_err());
    drop(log);
    io.crash(CrashTail::Keep).expect("crash");
    let (_, recovered) = open_log(dir.path(), &io, SEGMENT_BYTES);
    let got = ids(&recovered);
    assert_eq!(&got[..10], &(1..=10).collect::<Vec<_>>()[..]);
    assert_intact(&recovered, |_| LEN);
}

#[test]
fn group_commit_one_fsync_per_touched_file_per_batch() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, 1024 * 1024);
    assert!(
        log.prepare_sync().expect("prepare").is_none(),
        "nothing pending"
    );
    append_range(&mut *log, 1..=100);
    let first = log.prepare_sync().expect("prepare").expect("job");
    // Appends go on while the first job runs elsewhere.
    let running = std::thread::spawn(move || first.run());
    append_range(&mut *log, 101..=200);
    running.join().expect("thread").expect("first job");
    let (file_syncs, dir_syncs) = (io.file_syncs(), io.dir_syncs());
    assert_eq!(
        (file_syncs, dir_syncs),
        (1, 1),
        "the segment, and its new directory entry"
    );
    sync(&mut *log).expect("second job");
    assert_eq!(io.file_syncs(), file_syncs + 1);
    assert_eq!(io.dir_syncs(), dir_syncs, "no directory change since");
    assert!(log.prepare_sync().expect("prepare").is_none());
}

#[test]
fn sync_mode_none_hands_data_to_the_os_without_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let options = LogOptions {
        segment_bytes_max: SEGMENT_BYTES,
        sync_mode: SyncMode::None,
    };
    let shared: Arc<dyn Io> = io.clone();
    let (mut log, _) = open_file_log_with(dir.path(), shared.clone(), options).expect("open");
    let syncs_after_open = io.file_syncs();
    append_range(&mut *log, 1..=5);
    sync(&mut *log).expect("job");
    assert_eq!(io.file_syncs(), syncs_after_open);
    drop(log);
    let (_, recovered) = open_file_log_with(dir.path(), shared, options).expect("reopen");
    assert_eq!(ids(&recovered), vec![1, 2, 3, 4, 5], "the OS has the data");
}

/// Appends `synced` records and syncs, then appends `unsynced` more: half handed to the OS
/// by a job that never runs, half still in the process; crashes; returns the recovered ids.
fn crash_after(io: &Arc<FaultyIo>, synced: u64, unsynced: u64, tail: CrashTail) -> Vec<u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut log, _) = open_log(dir.path(), io, SEGMENT_BYTES);
    append_range(&mut *log, 1..=synced);
    sync(&mut *log).expect("sync");
    append_range(&mut *log, synced + 1..=synced + unsynced / 2);
    drop(log.prepare_sync().expect("prepare"));
    append_range(&mut *log, synced + unsynced / 2 + 1..=synced + unsynced);
    drop(log);
    io.crash(tail).expect("crash");
    let (_, recovered) = open_log(dir.path(), io, SEGMENT_BYTES);
    assert_intact(&recovered, |_| LEN);
    ids(&recovered)
}

#[test]
fn a_crash_keeps_every_synced_record_and_never_a_damaged_one() {
    let (synced, unsynced) = (50, 60);
    let mut tails = vec![CrashTail::Drop, CrashTail::Keep];
    tails.extend((0..40).map(|seed| CrashTail::Tear { seed }));
    for tail in tails {
        let io = FaultyIo::new();
        let got = crash_after(&io, synced, unsynced, tail);
        let expected_prefix: Vec<u64> = (1..=synced).collect();
        assert_eq!(&got[..synced as usize], &expected_prefix[..], "{tail:?}");
        assert!(got.iter().all(|id| *id <= synced + unsynced), "{tail:?}");
        assert!(got.windows(2).all(|w| w[0] < w[1]), "{tail:?}");
        if tail == CrashTail::Drop {
            assert_eq!(got.len() as u64, synced);
        }
    }
}

#[test]
fn synced_acks_survive_a_crash_and_deleted_segments_stay_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    let at: Vec<_> = (1..=120)
        .map(|id| log.append(id, &payload(id, LEN)).expect("append"))
        .collect();
    sync(&mut *log).expect("sync");
    // Ack exactly the first two segments: they are deleted before any ack file is written,
    // so only the sync job's directory fsync makes the deletion durable.
    let first_two = at.iter().take_while(|at| at.segment <= 2).count() as u64;
    for (id, at) in (1..=first_two).zip(&at) {
        log.ack(id, *at).expect("ack");
    }
    sync(&mut *log).expect("sync");
    let files_before = files(dir.path(), "msgs.");
    assert!(!files_before.contains(&"msgs.1".to_string()));
    // These acks are never synced: after the crash they may come back.
    for (id, at) in (first_two + 1..=first_two + 10).zip(&at[first_two as usize..]) {
        log.ack(id, *at).expect("ack");
    }
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    assert_eq!(files(dir.path(), "msgs."), files_before);
    let (_, recovered) = open_log(dir.path(), &io, SEGMENT_BYTES);
    assert_eq!(ids(&recovered), (first_two + 1..=120).collect::<Vec<_>>());
}

#[test]
fn a_new_segment_survives_a_crash_once_synced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    append_range(&mut *log, 1..=200);
    sync(&mut *log).expect("sync");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    let (_, recovered) = open_log(dir.path(), &io, SEGMENT_BYTES);
    assert_eq!(ids(&recovered), (1..=200).collect::<Vec<_>>());
}

#[test]
fn a_failed_ack_write_poisons_the_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    let at = log.append(1, b"one").expect("append");
    log.append(2, b"two").expect("append");
    sync(&mut *log).expect("sync");
    log.ack(1, at).expect("ack");
    io.inject(Fault::ShortWrite { bytes: 5 });
    assert!(log.prepare_sync().is_err());
    drop(log);
    let (_, recovered) = open_log(dir.path(), &io, SEGMENT_BYTES);
    assert_eq!(
        ids(&recovered),
        vec![1, 2],
        "the unsynced ack was lost; the record is back"
    );
}

/// Records 1..=3 in segment 1, synced; `ack 1` is written to a new `acks.1` whose sync job
/// is `spoil`ed; the log is reopened without a crash (the OS still shows `acks.1`), record 2
/// is acked into the inherited `acks.1` and synced, then the power fails. Returns what comes
/// back.
fn ack_into_an_inherited_ack_file(spoil: impl FnOnce(&FaultyIo, &mut dyn MessageLog)) -> Vec<u64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    let at: Vec<_> = (1..=3)
        .map(|id| log.append(id, &payload(id, LEN)).expect("append"))
        .collect();
    sync(&mut *log).expect("sync");
    log.ack(1, at[0]).expect("ack");
    spoil(&io, &mut *log);
    drop(log);
    let (mut log, recovered) = open_log(dir.path(), &io, SEGMENT_BYTES);
    assert_eq!(
        ids(&recovered),
        vec![2, 3],
        "the OS still shows the first ack"
    );
    log.ack(2, recovered[0].at).expect("ack");
    sync(&mut *log).expect("this job makes the ack of 2 durable");
    drop(log);
    io.crash(CrashTail::Drop).expect("crash");
    ids(&open_log(dir.path(), &io, SEGMENT_BYTES).1)
}

/// The first fsync of `acks.1` fails, so its header never reaches the disk (the pages are
/// marked clean). Appending after a reopen must not leave the confirmed ack of 2 in a file
/// whose header a crash zeroes: recovery would move the whole file aside.
#[test]
fn an_ack_confirmed_after_a_failed_fsync_and_a_reopen_survives_a_crash() {
    let got = ack_into_an_inherited_ack_file(|io, log| {
        io.inject(Fault::FailSync);
        assert!(matches!(sync(log), Err(StoreError::Io { .. })));
    });
    assert!(
        !got.contains(&2),
        "the durably acked record 2 came back: {got:?}"
    );
    assert!(got.contains(&3), "record 3 was lost: {got:?}");
}

/// The process dies after writing `acks.1` but before any job synced the directory (here:
/// the job is dropped, as when the broker is killed), and the next process acks into it.
/// Its job must sync the directory, or a power loss removes `acks.1` with the ack of 2.
#[test]
fn an_ack_confirmed_after_a_restart_survives_a_crash_even_if_its_file_was_never_dir_synced() {
    let got = ack_into_an_inherited_ack_file(|_, log| {
        let job = log.prepare_sync().expect("prepare").expect("a job");
        drop(job);
    });
    assert!(
        !got.contains(&2),
        "the durably acked record 2 came back: {got:?}"
    );
    assert!(got.contains(&3), "record 3 was lost: {got:?}");
}

/// The directory fsync of the job that created `acks.1` fails; the reopened log acks into it.
#[test]
fn an_ack_confirmed_after_a_failed_directory_fsync_and_a_reopen_survives_a_crash() {
    let got = ack_into_an_inherited_ack_file(|io, log| {
        io.inject(Fault::FailSyncDir);
        assert!(matches!(sync(log), Err(StoreError::Io { .. })));
    });
    assert!(
        !got.contains(&2),
        "the durably acked record 2 came back: {got:?}"
    );
    assert!(got.contains(&3), "record 3 was lost: {got:?}");
}
