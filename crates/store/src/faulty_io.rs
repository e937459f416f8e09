//! `FaultyIo`: an [`Io`] for tests that wraps the real file system and can be told to fail
//! the next write, write only a prefix, fail the next fsync, or simulate a crash. It owns the
//! model of what a crash keeps; it never decides anything for the store.
//!
//! The crash model, per POSIX rather than per any one file system:
//! - file data is durable up to the length it had at its last successful `sync`; a crash
//!   drops the rest, keeps it, or keeps a random prefix of it ([`CrashTail`]);
//! - a failed `sync` loses the data written since the last good one *even if a later sync
//!   succeeds* (Linux marks the dirty pages clean): a crash zeroes that range, except the
//!   bytes written again after the failure and covered by a later successful `sync` (writing
//!   dirties the pages again, so that sync does persist them);
//! - creating, renaming and removing files is durable only after `sync_dir` on the
//!   directory; a crash undoes the rest (removed files are kept aside until then);
//! - handles opened before a crash fail every operation afterwards.
//!
//! Besides one-shot faults it can play a full disk ([`FaultyIo::set_disk_full`]) until told
//! otherwise: every write that needs space and every new file or directory fails with
//! `StorageFull` (ENOSPC); reads, fsyncs, truncation, renames and removals still work.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::io::{FileIo, Io, OpenMode, RealIo};

/// Names starting with this hold removed files until their directory is synced.
const GRAVE_PREFIX: &str = ".faulty-removed-";

/// A one-shot fault, consumed by the first operation it applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The next `write_at` fails without writing.
    FailWrite,
    /// The next `write_at` writes only its first `bytes` bytes, then fails.
    ShortWrite { bytes: usize },
    /// The next file `sync` fails, and the data it should have made durable is lost.
    FailSync,
    /// The next `sync_dir` fails; the directory's pending changes stay undone by a crash.
    FailSyncDir,
}

/// What a simulated crash does with data written after a file's last successful sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashTail {
    Drop,
    Keep,
    /// Keeps a pseudo-random prefix per file (torn writes), chosen from the seed.
    Tear {
        seed: u64,
    },
}

/// The real file system with injectable faults and crashes.
#[derive(Debug, Default)]
pub struct FaultyIo {
    state: Arc<Mutex<State>>,
}

#[derive(Debug, Default)]
struct State {
    epoch: u64,
    armed: Vec<Fault>,
    tracks: HashMap<u64, Track>,
    ids: HashMap<PathBuf, u64>,
    next_id: u64,
    dir_ops: Vec<DirOp>,
    next_grave: u64,
    file_syncs: u64,
    dir_syncs: u64,
    disk_full: bool,
}

#[derive(Debug)]
struct Track {
    path: PathBuf,
    synced_len: u64,
    lost: Vec<Range<u64>>,
    /// Writes since the last `sync` that overlap `lost`: a successful sync persists them.
    rewritten: Vec<Range<u64>>,
}

#[derive(Debug)]
enum DirOp {
    Created(PathBuf),
    Removed {
        path: PathBuf,
        grave: PathBuf,
    },
    Renamed {
        from: PathBuf,
        to: PathBuf,
        displaced: Option<PathBuf>,
    },
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Created(path) | DirOp::Removed { path, .. } => path.parent(),
            DirOp::Renamed { to, .. } => to.parent(),
        }
    }
}

struct FaultyFile {
    id: u64,
    epoch: u64,
    inner: Arc<dyn FileIo>,
    state: Arc<Mutex<State>>,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn no_space() -> io::Error {
    io::Error::new(
        io::ErrorKind::StorageFull,
        "FaultyIo: no space left on device",
    )
}

fn injected(what: &str) -> io::Error {
    io::Error::other(format!("FaultyIo: injected {what} failure"))
}

impl FaultyIo {
    pub fn new() -> Arc<FaultyIo> {
        Arc::new(FaultyIo::default())
    }

    /// Arms a one-shot fault.
    pub fn inject(&self, fault: Fault) {
        lock(&self.state).armed.push(fault);
    }

    /// Plays a full disk (or stops): until cleared, writes, new files and new directories
    /// fail with `StorageFull`. Unlike [`Fault`]s it is not consumed.
    pub fn set_disk_full(&self, full: bool) {
        lock(&self.state).disk_full = full;
    }

    /// Disarms every fault not yet triggered.
    pub fn clear_faults(&self) {
        lock(&self.state).armed.clear();
    }

    /// Successful file syncs so far.
    pub fn file_syncs(&self) -> u64 {
        lock(&self.state).file_syncs
    }

    /// Successful directory syncs so far.
    pub fn dir_syncs(&self) -> u64 {
        lock(&self.state).dir_syncs
    }

    /// Simulates a power loss: afterwards the files hold what the crash model says survived,
    /// and every handle opened before fails.
    pub fn crash(&self, tail: CrashTail) -> io::Result<()> {
        let mut state = lock(&self.state);
        for (id, track) in &state.tracks {
            crash_file(track, tail, *id)?;
        }
        while let Some(op) = state.dir_ops.pop() {
            undo(op)?;
        }
        state.tracks.clear();
        state.ids.clear();
        state.armed.clear();
        state.epoch += 1;
        Ok(())
    }

    fn track_id(state: &mut State, path: &Path, synced_len: u64) -> u64 {
        if let Some(id) = state.ids.get(path) {
            return *id;
        }
        let id = state.next_id;
        state.next_id += 1;
        state.ids.insert(path.to_path_buf(), id);
        let track = Track {
            path: path.to_path_buf(),
            synced_len,
            lost: Vec::new(),
            rewritten: Vec::new(),
        };
        state.tracks.insert(id, track);
        id
    }

    fn grave_for(state: &mut State, path: &Path) -> PathBuf {
        state.next_grave += 1;
        let name = format!("{GRAVE_PREFIX}{}", state.next_grave);
        path.parent().unwrap_or(Path::new(".")).join(name)
    }

    /// Moves the tracking of `from` to `to` (the file itself was moved by the caller).
    fn retrack(state: &mut State, from: &Path, to: &Path) {
        if let Some(id) = state.ids.remove(from) {
            state.ids.insert(to.to_path_buf(), id);
            if let Some(track) = state.tracks.get_mut(&id) {
                track.path = to.to_path_buf();
            }
        }
    }

    /// Makes the pending directory operations in `dir` durable.
    fn settle_dir(state: &mut State, dir: &Path) -> io::Result<()> {
        let (done, pending): (Vec<DirOp>, Vec<DirOp>) = std::mem::take(&mut state.dir_ops)
            .into_iter()
            .partition(|op| op.dir() == Some(dir));
        state.dir_ops = pending;
        for op in done {
            let grave = match op {
                DirOp::Removed { grave, .. } => Some(grave),
                DirOp::Renamed { displaced, .. } => displaced,
                DirOp::Created(_) => None,
            };
            if let Some(grave) = grave {
                if let Some(id) = state.ids.remove(&grave) {
                    state.tracks.remove(&id);
                }
                std::fs::remove_file(&grave)?;
            }
        }
        Ok(())
    }
}

fn crash_file(track: &Track, tail: CrashTail, id: u64) -> io::Result<()> {
    let file = match OpenOptions::new().write(true).open(&track.path) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error),
    };
    let len = file.metadata()?.len();
    let synced = track.synced_len.min(len);
    let keep = match tail {
        CrashTail::Drop => synced,
        CrashTail::Keep => len,
        CrashTail::Tear { seed } => synced + pseudo_random(seed ^ id) % (len - synced + 1),
    };
    file.set_len(keep)?;
    for range in &track.lost {
        let end = range.end.min(keep);
        if range.start < end {
            let zeros = vec![0u8; (end - range.start) as usize];
            std::os::unix::fs::FileExt::write_all_at(&file, &zeros, range.start)?;
        }
    }
    Ok(())
}

fn undo(op: DirOp) -> io::Result<()> {
    match op {
        DirOp::Created(path) => match std::fs::remove_file(path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
            _ => Ok(()),
        },
        DirOp::Removed { path, grave } => std::fs::rename(grave, path),
        DirOp::Renamed {
            from,
            to,
            displaced,
        } => {
            std::fs::rename(&to, from)?;
            match displaced {
                Some(grave) => std::fs::rename(grave, to),
                None => Ok(()),
            }
        }
    }
}

/// `ranges` without the bytes of `cut`.
fn subtract(ranges: &[Range<u64>], cut: &Range<u64>) -> Vec<Range<u64>> {
    let mut left = Vec::with_capacity(ranges.len() + 1);
    for range in ranges {
        if cut.end <= range.start || range.end <= cut.start {
            left.push(range.clone());
            continue;
        }
        if range.start < cut.start {
            left.push(range.start..cut.start);
        }
        if cut.end < range.end {
            left.push(cut.end..range.end);
        }
    }
    left
}

/// xorshift64*: enough to spread torn lengths, and reproducible from the seed.
fn pseudo_random(seed: u64) -> u64 {
    let mut x = seed | 1;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

impl FaultyFile {
    /// Notes a write of `written` bytes at `offset` that overlaps data a failed sync lost.
    fn note_write(&self, state: &mut State, offset: u64, written: usize) {
        let range = offset..offset + written as u64;
        if let Some(track) = state.tracks.get_mut(&self.id) {
            let overlaps = track
                .lost
                .iter()
                .any(|lost| lost.start < range.end && range.start < lost.end);
            if overlaps {
                track.rewritten.push(range);
            }
        }
    }

    fn state(&self) -> io::Result<MutexGuard<'_, State>> {
        let state = lock(&self.state);
        if state.epoch != self.epoch {
            return Err(io::Error::other("FaultyIo: handle opened before a crash"));
        }
        Ok(state)
    }
}

impl FileIo for FaultyFile {
    fn write_at(&self, offset: u64, buf: &[u8]) -> io::Result<()> {
        let mut state = self.state()?;
        if state.disk_full && !buf.is_empty() {
            return Err(no_space());
        }
        let armed = state
            .armed
            .iter()
            .position(|fault| matches!(fault, Fault::FailWrite | Fault::ShortWrite { .. }));
        match armed.map(|index| state.armed.remove(index)) {
            Some(Fault::ShortWrite { bytes }) => {
                let bytes = bytes.min(buf.len());
                self.inner.write_at(offset, &buf[..bytes])?;
                self.note_write(&mut state, offset, bytes);
                Err(injected("short write"))
            }
            Some(_) => Err(injected("write")),
            None => {
                self.inner.write_at(offset, buf)?;
                self.note_write(&mut state, offset, buf.len());
                Ok(())
            }
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        let _state = self.state()?;
        self.inner.read_at(offset, buf)
    }

    fn sync(&self) -> io::Result<()> {
        let mut state = self.state()?;
        let len = self.inner.len()?;
        let armed = state.armed.iter().position(|f| *f == Fault::FailSync);
        let track = state.tracks.get_mut(&self.id);
        if let Some(index) = armed {
            if let Some(track) = track {
                let lost = track.synced_len..len;
                track.lost.push(lost);
                // Written again, then lost again (as far as they overlap what was lost).
                track.rewritten.clear();
            }
            state.armed.remove(index);
            return Err(injected("fsync"));
        }
        self.inner.sync()?;
        if let Some(track) = track {
            track.synced_len = len;
            for rewritten in std::mem::take(&mut track.rewritten) {
                track.lost = subtract(&track.lost, &rewritten);
            }
        }
        state.file_syncs += 1;
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let _state = self.state()?;
        self.inner.len()
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        let mut state = self.state()?;
        self.inner.truncate(len)?;
        if let Some(track) = state.tracks.get_mut(&self.id) {
            track.synced_len = track.synced_len.min(len);
        }
        Ok(())
    }
}

impl Io for FaultyIo {
    fn open(&self, path: &Path, mode: OpenMode) -> io::Result<Arc<dyn FileIo>> {
        let mut state = lock(&self.state);
        if state.disk_full && mode == OpenMode::CreateNew {
            return Err(no_space());
        }
        let inner = RealIo.open(path, mode)?;
        let id = if mode == OpenMode::CreateNew {
            if let Some(old) = state.ids.remove(path) {
                state.tracks.remove(&old);
            }
            state.dir_ops.push(DirOp::Created(path.to_path_buf()));
            FaultyIo::track_id(&mut state, path, 0)
        } else {
            let len = inner.len()?;
            FaultyIo::track_id(&mut state, path, len)
        };
        Ok(Arc::new(FaultyFile {
            id,
            epoch: state.epoch,
            inner,
            state: Arc::clone(&self.state),
        }))
    }

    fn list_dir(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = RealIo.list_dir(dir)?;
        names.retain(|name| !name.starts_with(GRAVE_PREFIX));
        Ok(names)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        if lock(&self.state).disk_full && !dir.is_dir() {
            return Err(no_space());
        }
        RealIo.create_dir_all(dir)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if !path.exists() {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        let grave = FaultyIo::grave_for(&mut state, path);
        std::fs::rename(path, &grave)?;
        FaultyIo::retrack(&mut state, path, &grave);
        let path = path.to_path_buf();
        state.dir_ops.push(DirOp::Removed { path, grave });
        Ok(())
    }

    fn remove_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        FaultyIo::settle_dir(&mut state, dir)?;
        RealIo.remove_dir(dir)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        let displaced = if to.exists() {
            let grave = FaultyIo::grave_for(&mut state, to);
            std::fs::rename(to, &grave)?;
            FaultyIo::retrack(&mut state, to, &grave);
            Some(grave)
        } else {
            None
        };
        std::fs::rename(from, to)?;
        FaultyIo::retrack(&mut state, from, to);
        let (from, to) = (from.to_path_buf(), to.to_path_buf());
        state.dir_ops.push(DirOp::Renamed {
            from,
            to,
            displaced,
        });
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = lock(&self.state);
        if let Some(index) = state.armed.iter().position(|f| *f == Fault::FailSyncDir) {
            state.armed.remove(index);
            return Err(injected("directory fsync"));
        }
        RealIo.sync_dir(dir)?;
        FaultyIo::settle_dir(&mut state, dir)?;
        state.dir_syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// After a failed sync, a crash zeroes the lost bytes even though a later sync succeeds,
    /// except those written again before that sync.
    #[test]
    fn lost_bytes_stay_lost_unless_written_again_and_synced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let io = FaultyIo::new();
        let file = io.open(&path, OpenMode::CreateNew).expect("create");
        io.sync_dir(dir.path()).expect("sync dir");
        file.write_at(0, &[1; 8]).expect("write");
        file.sync().expect("sync");
        file.write_at(8, &[2; 24]).expect("write");
        io.inject(Fault::FailSync);
        assert!(file.sync().is_err());
        file.write_at(12, &[3; 4])
            .expect("write again, then lost again");
        io.inject(Fault::FailSync);
        assert!(file.sync().is_err());
        file.write_at(16, &[4; 4]).expect("write again");
        file.write_at(32, &[5; 4]).expect("append");
        file.sync().expect("sync");
        io.crash(CrashTail::Keep).expect("crash");
        let mut expected = vec![1u8; 8];
        expected.extend([0; 8]);
        expected.extend([4; 4]);
        expected.extend([0; 12]);
        expected.extend([5; 4]);
        assert_eq!(std::fs::read(&path).expect("read"), expected);
    }
}
