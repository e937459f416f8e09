//! A property test: random sequences of append / ack / read / sync / faults / crash / reopen
//! (and, in a second test, kills and failed directory fsyncs too) against the file log on
//! `FaultyIo`, checked after every reopen against a model of what must, may and must not
//! come back:
//! - must: records covered by a successful sync job and never acked;
//! - must not: records whose ack was covered by a successful sync job;
//! - may: anything else ever appended (even an append that failed may have reached disk) —
//!   but always byte for byte, in id order, once.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use common::{ids, open_log, payload};
use proptest::prelude::*;
use warren_store::{CrashTail, Fault, FaultyIo, Location, MessageLog, Recovered, StoreError};

const SEGMENT_BYTES: u32 = 1024;

#[derive(Clone, Debug)]
enum Op {
    Append {
        len: usize,
    },
    Ack {
        pick: usize,
    },
    Read {
        pick: usize,
    },
    /// prepare_sync and run the job.
    Sync,
    /// prepare_sync and drop the job: the data reaches the OS but is never made durable.
    Prepare,
    Inject(Fault),
    Crash(CrashTail),
    /// Sync (when possible), close and reopen.
    Reopen,
    /// The process dies: the log is dropped unsynced (its buffers are lost, what reached the
    /// OS stays) and reopened without a crash.
    Kill,
}

fn op() -> impl Strategy<Value = Op> {
    let fault = prop_oneof![
        Just(Fault::FailWrite),
        (0usize..200).prop_map(|bytes| Fault::ShortWrite { bytes }),
        Just(Fault::FailSync),
    ];
    let tail = prop_oneof![
        Just(CrashTail::Drop),
        Just(CrashTail::Keep),
        any::<u64>().prop_map(|seed| CrashTail::Tear { seed }),
    ];
    prop_oneof![
        30 => (0usize..600).prop_map(|len| Op::Append { len }),
        2 => (1500usize..3000).prop_map(|len| Op::Append { len }),
        20 => any::<usize>().prop_map(|pick| Op::Ack { pick }),
        5 => any::<usize>().prop_map(|pick| Op::Read { pick }),
        8 => Just(Op::Sync),
        3 => Just(Op::Prepare),
        2 => fault.prop_map(Op::Inject),
        3 => tail.prop_map(Op::Crash),
        3 => Just(Op::Reopen),
    ]
}

/// `op()` plus failed directory fsyncs and kills. A separate strategy, so that the seeds
/// saved for `op()` keep generating the cases they were saved for.
fn op_with_kills() -> impl Strategy<Value = Op> {
    prop_oneof![
        20 => op(),
        1 => Just(Op::Inject(Fault::FailSyncDir)),
        1 => Just(Op::Kill),
    ]
}

#[derive(Default)]
struct Model {
    next_id: u64,
    /// Payload length of every id ever passed to append.
    lens: HashMap<u64, usize>,
    /// Records the running log holds unacked.
    live: BTreeMap<u64, Location>,
    /// Covered by a successful sync job: must come back unless acked.
    durable: BTreeSet<u64>,
    /// An ack was attempted: may be gone.
    acked: BTreeSet<u64>,
    /// The ack was covered by a successful sync job: must never come back.
    durably_acked: BTreeSet<u64>,
    /// Appended / acked since the last prepare_sync.
    pending: (Vec<u64>, Vec<u64>),
    poisoned: bool,
}

struct Runner {
    dir: tempfile::TempDir,
    io: Arc<FaultyIo>,
    log: Box<dyn MessageLog>,
    model: Model,
}

fn expect_poisoned<T: std::fmt::Debug>(result: Result<T, StoreError>) -> Result<(), TestCaseError> {
    prop_assert!(
        matches!(result, Err(StoreError::Poisoned)),
        "got {:?}",
        result
    );
    Ok(())
}

impl Runner {
    fn new() -> Runner {
        let dir = tempfile::tempdir().expect("tempdir");
        let io = FaultyIo::new();
        let (log, _) = open_log(dir.path(), &io, SEGMENT_BYTES);
        Runner {
            dir,
            io,
            log,
            model: Model::default(),
        }
    }

    fn pick(&self, pick: usize) -> Option<(u64, Location)> {
        let live = &self.model.live;
        live.iter()
            .nth(pick % live.len().max(1))
            .map(|(id, at)| (*id, *at))
    }

    fn apply(&mut self, op: Op) -> Result<(), TestCaseError> {
        match op {
            Op::Append { len } => self.append(len),
            Op::Ack { pick } => self.ack(pick),
            Op::Read { pick } => self.read(pick),
            Op::Sync => self.sync(true),
            Op::Prepare => self.sync(false),
            Op::Inject(fault) => {
                self.io.inject(fault);
                Ok(())
            }
            Op::Crash(tail) => {
                self.io.crash(tail).expect("crash");
                self.reopen(true, false)
            }
            Op::Reopen => {
                if !self.model.poisoned {
                    self.sync(true)?;
                }
                self.reopen(false, false)
            }
            Op::Kill => self.reopen(false, true),
        }
    }

    fn append(&mut self, len: usize) -> Result<(), TestCaseError> {
        let id = self.model.next_id;
        self.model.next_id += 1;
        self.model.lens.insert(id, len);
        let result = self.log.append(id, &payload(id, len));
        if self.model.poisoned {
            return expect_poisoned(result);
        }
        match result {
            Ok(at) => {
                self.model.live.insert(id, at);
                self.model.pending.0.push(id);
            }
            Err(StoreError::Io { .. }) => self.model.poisoned = true,
            Err(other) => prop_assert!(false, "append: {}", other),
        }
        Ok(())
    }

    fn ack(&mut self, pick: usize) -> Result<(), TestCaseError> {
        let Some((id, at)) = self.pick(pick) else {
            return Ok(());
        };
        let result = self.log.ack(id, at);
        if self.model.poisoned {
            return expect_poisoned(result);
        }
        self.model.live.remove(&id);
        self.model.acked.insert(id);
        match result {
            Ok(()) => self.model.pending.1.push(id),
            Err(StoreError::Io { .. }) => self.model.poisoned = true,
            Err(other) => prop_assert!(false, "ack: {}", other),
        }
        Ok(())
    }

    fn read(&mut self, pick: usize) -> Result<(), TestCaseError> {
        let Some((id, at)) = self.pick(pick) else {
            return Ok(());
        };
        if !self.model.poisoned {
            let record = self.log.read(at);
            prop_assert_eq!(record.ok(), Some(payload(id, self.model.lens[&id]).into()));
        }
        Ok(())
    }

    fn sync(&mut self, run: bool) -> Result<(), TestCaseError> {
        let prepared = self.log.prepare_sync();
        if self.model.poisoned {
            return expect_poisoned(prepared);
        }
        let covered = std::mem::take(&mut self.model.pending);
        let job = match prepared {
            Ok(job) => job,
            Err(StoreError::Io { .. }) => {
                self.model.poisoned = true;
                return Ok(());
            }
            Err(other) => return Err(TestCaseError::fail(format!("prepare: {other}"))),
        };
        let ran = match job {
            Some(job) if run => job.run(),
            Some(_) => return Ok(()),
            None => {
                prop_assert!(covered.0.is_empty() && covered.1.is_empty());
                Ok(())
            }
        };
        match ran {
            Ok(()) => {
                self.model.durable.extend(covered.0);
                self.model.durably_acked.extend(covered.1);
            }
            Err(_) => self.model.poisoned = true,
        }
        Ok(())
    }

    /// Reopens after a crash, a clean close (`Reopen`) or a kill (nothing synced first).
    fn reopen(&mut self, crashed: bool, killed: bool) -> Result<(), TestCaseError> {
        self.io.clear_faults();
        let (log, recovered) = open_log(self.dir.path(), &self.io, SEGMENT_BYTES);
        self.log = log;
        self.check(&recovered, crashed || killed)?;
        let model = &mut self.model;
        let got: BTreeSet<u64> = ids(&recovered).into_iter().collect();
        if crashed {
            // What a crash left is on disk.
            model.durable = got.clone();
        } else {
            // Without a crash, recovery may read data only the page cache holds (after a
            // failed write or fsync): only successful jobs make records durable.
            model.durable = model.durable.intersection(&got).copied().collect();
        }
        model.acked.retain(|id| !got.contains(id));
        model.live = recovered.iter().map(|r| (r.id, r.at)).collect();
        model.pending = (Vec::new(), Vec::new());
        model.poisoned = false;
        Ok(())
    }

    /// `unclean`: after a crash or a kill, what comes back need not be exactly what is live.
    fn check(&self, recovered: &[Recovered], unclean: bool) -> Result<(), TestCaseError> {
        let model = &self.model;
        let got = ids(recovered);
        prop_assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "not in id order: {:?}",
            got
        );
        for record in recovered {
            let len = model.lens.get(&record.id).copied();
            prop_assert!(len.is_some(), "unknown id {}", record.id);
            let expected = payload(record.id, len.unwrap_or_default());
            prop_assert_eq!(&record.record[..], &expected[..], "record {}", record.id);
            prop_assert!(
                !model.durably_acked.contains(&record.id),
                "acked {}",
                record.id
            );
        }
        let got: BTreeSet<u64> = got.into_iter().collect();
        for id in model.durable.difference(&model.acked) {
            prop_assert!(got.contains(id), "durable record {} lost", id);
        }
        if !unclean && !model.poisoned {
            let live: BTreeSet<u64> = model.live.keys().copied().collect();
            prop_assert_eq!(got, live, "a clean reopen returns exactly the live records");
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_file_log_keeps_its_promises(ops in proptest::collection::vec(op(), 1..120)) {
        let mut runner = Runner::new();
        for op in ops {
            runner.apply(op)?;
        }
        runner.apply(Op::Reopen)?;
    }

    #[test]
    fn the_file_log_keeps_its_promises_through_kills(
        ops in proptest::collection::vec(op_with_kills(), 1..120),
    ) {
        let mut runner = Runner::new();
        for op in ops {
            runner.apply(op)?;
        }
        runner.apply(Op::Reopen)?;
    }
}
