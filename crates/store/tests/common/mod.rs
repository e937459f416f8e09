//! Helpers shared by the store's integration tests: deterministic payloads, running a sync,
//! copying and damaging files.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use warren_store::{
    open_file_log_with, FaultyIo, Io, LogOptions, MessageLog, Recovered, StoreError, SyncMode,
};

/// A payload whose every byte depends on the id, so a record read back under the wrong id,
/// or shifted, or torn, never compares equal.
pub fn payload(id: u64, len: usize) -> Vec<u8> {
    let seed = id.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (0..len)
        .map(|i| (seed.rotate_left((i % 61) as u32) >> 7) as u8 ^ i as u8)
        .collect()
}

/// Runs the sync job for everything so far, as the queue will.
pub fn sync(log: &mut dyn MessageLog) -> Result<(), StoreError> {
    match log.prepare_sync()? {
        Some(job) => job.run(),
        None => Ok(()),
    }
}

pub fn options(segment_bytes_max: u32) -> LogOptions {
    LogOptions {
        segment_bytes_max,
        sync_mode: SyncMode::Always,
    }
}

pub fn open_log(
    dir: &Path,
    io: &Arc<FaultyIo>,
    segment_bytes_max: u32,
) -> (Box<dyn MessageLog>, Vec<Recovered>) {
    let io: Arc<dyn Io> = io.clone();
    match open_file_log_with(dir, io, options(segment_bytes_max)) {
        Ok(opened) => opened,
        Err(error) => panic!("open {}: {error}", dir.display()),
    }
}

pub fn ids(recovered: &[Recovered]) -> Vec<u64> {
    recovered.iter().map(|r| r.id).collect()
}

/// Every recovered record carries exactly the payload written under its id.
pub fn assert_intact(recovered: &[Recovered], len_of: impl Fn(u64) -> usize) {
    for record in recovered {
        let expected = payload(record.id, len_of(record.id));
        assert_eq!(record.record, expected, "record {} damaged", record.id);
        assert_eq!(record.at.len as usize, expected.len());
    }
}

/// Names of the store's segment files in `dir`, sorted.
pub fn files(dir: &Path, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list dir")
        .map(|entry| {
            entry
                .expect("entry")
                .file_name()
                .into_string()
                .expect("utf8")
        })
        .filter(|name| name.starts_with(prefix))
        .collect();
    names.sort();
    names
}

/// A fresh directory holding a copy of every regular file of `from`.
pub fn copy_dir(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
    to.to_path_buf()
}

pub fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[offset] ^= 0xff;
    std::fs::write(path, bytes).expect("write");
}

pub fn truncate(path: &Path, len: u64) {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open");
    file.set_len(len).expect("truncate");
}
