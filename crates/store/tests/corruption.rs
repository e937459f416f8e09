//! Recovery from damaged files: torn tails at every offset, a byte flipped anywhere in a
//! record or an ack entry, bad headers, foreign and orphan files, and the checked-in
//! format-version-1 fixture. Recovery must open every time and never return a damaged record.

mod common;

use std::path::Path;

use common::{assert_intact, copy_dir, files, flip_byte, ids, open_log, payload, sync, truncate};
use warren_store::format::{FILE_HEADER_BYTES, RECORD_HEADER_BYTES};
use warren_store::{FaultyIo, Location};

const SEGMENT_BYTES: u32 = 1024 * 1024;
const LEN: usize = 40;
const FRAME: usize = RECORD_HEADER_BYTES as usize + LEN;

/// A log with records 1..=5 in `msgs.1`, and 2 and 4 acked in `acks.1`.
fn template() -> (tempfile::TempDir, Vec<Location>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let (mut log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
    let at: Vec<Location> = (1..=5)
        .map(|id| log.append(id, &payload(id, LEN)).expect("append"))
        .collect();
    log.ack(2, at[1]).expect("ack");
    log.ack(4, at[3]).expect("ack");
    sync(&mut *log).expect("sync");
    (dir, at)
}

fn reopen(dir: &Path) -> Vec<u64> {
    let (_, recovered) = open_log(dir, &FaultyIo::new(), SEGMENT_BYTES);
    assert_intact(&recovered, |_| LEN);
    ids(&recovered)
}

fn record_offset(id: u64) -> usize {
    FILE_HEADER_BYTES as usize + (id as usize - 1) * FRAME
}

#[test]
fn a_tail_torn_at_any_offset_is_dropped() {
    let (template, _) = template();
    let scratch = tempfile::tempdir().expect("tempdir");
    let last = record_offset(5);
    for cut in last..=last + FRAME {
        let dir = copy_dir(template.path(), &scratch.path().join(cut.to_string()));
        truncate(&dir.join("msgs.1"), cut as u64);
        let expected: Vec<u64> = if cut == last + FRAME {
            vec![1, 3, 5]
        } else {
            vec![1, 3]
        };
        let io = FaultyIo::new();
        let (mut log, recovered) = open_log(&dir, &io, SEGMENT_BYTES);
        assert_eq!(ids(&recovered), expected, "cut at {cut}");
        let len = std::fs::metadata(dir.join("msgs.1")).expect("stat").len();
        assert_eq!(len as usize, if cut == last + FRAME { cut } else { last });
        log.append(6, &payload(6, LEN))
            .expect("append after recovery");
        sync(&mut *log).expect("sync");
        drop(log);
        let mut expected = expected;
        expected.push(6);
        assert_eq!(reopen(&dir), expected, "reopen after cut at {cut}");
    }
}

#[test]
fn a_byte_flipped_anywhere_in_a_middle_record_skips_only_that_record() {
    let (template, _) = template();
    let scratch = tempfile::tempdir().expect("tempdir");
    for offset in record_offset(3)..record_offset(4) {
        let dir = copy_dir(template.path(), &scratch.path().join(offset.to_string()));
        flip_byte(&dir.join("msgs.1"), offset);
        assert_eq!(reopen(&dir), vec![1, 5], "byte {offset} flipped");
    }
}

#[test]
fn a_garbage_length_field_is_resynchronised() {
    let (template, _) = template();
    let scratch = tempfile::tempdir().expect("tempdir");
    for garbage in [0u32, 1, 39, 41, 1 << 20, u32::MAX] {
        let dir = copy_dir(template.path(), &scratch.path().join(garbage.to_string()));
        let path = dir.join("msgs.1");
        let mut bytes = std::fs::read(&path).expect("read");
        let at = record_offset(1) + 4;
        bytes[at..at + 4].copy_from_slice(&garbage.to_le_bytes());
        std::fs::write(&path, bytes).expect("write");
        assert_eq!(reopen(&dir), vec![3, 5], "length {garbage}");
    }
}

#[test]
fn a_damaged_ack_entry_brings_its_record_back() {
    let (template, _) = template();
    let dir = template.path();
    flip_byte(&dir.join("acks.1"), FILE_HEADER_BYTES as usize + 3);
    assert_eq!(reopen(dir), vec![1, 2, 3, 5]);
}

#[test]
fn a_torn_ack_entry_is_dropped_and_new_acks_stay_aligned() {
    let (template, _) = template();
    let dir = template.path();
    let acks = dir.join("acks.1");
    let len = std::fs::metadata(&acks).expect("stat").len();
    truncate(&acks, len - 5);
    let io = FaultyIo::new();
    let (mut log, recovered) = open_log(dir, &io, SEGMENT_BYTES);
    assert_eq!(ids(&recovered), vec![1, 3, 4, 5]);
    for record in &recovered {
        log.ack(record.id, record.at).expect("ack");
    }
    sync(&mut *log).expect("sync");
    drop(log);
    assert_eq!(reopen(dir), Vec::<u64>::new());
    assert!(files(dir, "msgs.").is_empty());
}

fn rewrite_header(path: &Path, edit: impl Fn(&mut [u8])) {
    let mut bytes = std::fs::read(path).expect("read");
    edit(&mut bytes[..FILE_HEADER_BYTES as usize]);
    std::fs::write(path, bytes).expect("write");
}

#[test]
fn a_segment_with_a_bad_header_is_moved_aside_with_its_acks() {
    let (template, _) = template();
    let dir = template.path();
    rewrite_header(&dir.join("msgs.1"), |header| header[0] = b'X');
    let io = FaultyIo::new();
    let (mut log, recovered) = open_log(dir, &io, SEGMENT_BYTES);
    assert!(recovered.is_empty());
    assert_eq!(files(dir, "msgs."), vec!["msgs.1.corrupt"]);
    assert_eq!(files(dir, "acks."), vec!["acks.1.corrupt"]);
    let at = log.append(7, b"seven").expect("append");
    assert!(at.segment > 1, "segment numbers are never reused");
    sync(&mut *log).expect("sync");
    drop(log);
    let (_, recovered) = open_log(dir, &io, SEGMENT_BYTES);
    assert_eq!(ids(&recovered), vec![7]);
    assert!(
        dir.join("msgs.1.corrupt").exists(),
        "moved-aside files are left alone"
    );
}

#[test]
fn a_segment_from_a_future_version_is_moved_aside() {
    let (template, _) = template();
    let dir = template.path();
    rewrite_header(&dir.join("msgs.1"), |header| {
        header[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32c::crc32c(&header[0..12]);
        header[12..16].copy_from_slice(&crc.to_le_bytes());
    });
    assert!(reopen(dir).is_empty());
    assert!(dir.join("msgs.1.corrupt").exists());
}

#[test]
fn an_ack_file_with_a_bad_header_is_moved_aside_and_its_records_come_back() {
    let (template, _) = template();
    let dir = template.path();
    rewrite_header(&dir.join("acks.1"), |header| header[13] ^= 1);
    assert_eq!(reopen(dir), vec![1, 2, 3, 4, 5]);
    assert!(dir.join("acks.1.corrupt").exists());
}

#[test]
fn files_shorter_than_a_header_are_removed() {
    let (template, _) = template();
    let dir = template.path();
    std::fs::write(dir.join("msgs.9"), b"WARR").expect("write");
    std::fs::write(dir.join("acks.9"), b"").expect("write");
    assert_eq!(reopen(dir), vec![1, 3, 5]);
    assert!(!dir.join("msgs.9").exists() && !dir.join("acks.9").exists());
}

#[test]
fn foreign_files_are_ignored_and_orphan_ack_files_removed() {
    let (template, _) = template();
    let dir = template.path();
    let foreign = ["README", "msgs.01", "msgs.2.bak", "acks.x"];
    for name in foreign {
        std::fs::write(dir.join(name), b"not ours").expect("write");
    }
    std::fs::copy(dir.join("acks.1"), dir.join("acks.4")).expect("orphan");
    let io = FaultyIo::new();
    let (log, recovered) = open_log(dir, &io, SEGMENT_BYTES);
    assert_eq!(ids(&recovered), vec![1, 3, 5]);
    assert!(!dir.join("acks.4").exists());
    log.destroy().expect("destroy");
    for name in foreign {
        assert!(
            dir.join(name).exists(),
            "{name} left alone, even by destroy"
        );
    }
    assert!(!dir.join("msgs.1").exists() && !dir.join("acks.1").exists());
}

/// Format version 1 as first released, checked in byte for byte (tests/fixtures/format-v1,
/// see its README). A change that cannot read it must bump FORMAT_VERSION and keep a reader.
#[test]
fn the_version_1_fixture_still_opens() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format-v1");
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = copy_dir(&fixture.join("queue"), &scratch.path().join("queue"));
    let (_, recovered) = open_log(&dir, &FaultyIo::new(), SEGMENT_BYTES);
    let got: Vec<(u64, &[u8])> = recovered.iter().map(|r| (r.id, &r.record[..])).collect();
    assert_eq!(got, vec![(1, &b"first"[..]), (3, &b"third"[..])]);
    let definitions = scratch.path().join("definitions");
    std::fs::copy(fixture.join("definitions"), &definitions).expect("copy");
    let (_, records) = warren_store::DefinitionsLog::open(&definitions, FaultyIo::new())
        .expect("open definitions");
    assert_eq!(records, vec![&b"vhost /"[..], &b"queue q1"[..]]);
}
