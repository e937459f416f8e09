//! The actor of one delayed exchange: takes scheduled messages from publishers (bounded
//! inbox), stores them (`schedule.rs`; group commit: one fsync per batch of persistent
//! messages before their confirms), and at each due time routes them through the vhost's
//! current routing snapshot, as a publish to the exchange's `x-delayed-type` would.
//!
//! It owns the schedule and its timer; it must not touch definitions. It sends to queue
//! inboxes (bounded) and nothing ever awaits a send to it from a queue, so no cycle of
//! bounded sends exists.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::error;
use warren_protocol::{AMQPValue, ShortString};

use super::schedule::{Pending, RecordAt, Schedule};
use super::{DelayedCommand, ScheduleStore, DELAY_HEADER};
use crate::confirm::ConfirmShare;
use crate::consumer::{new_channel_key, ChannelKey, ClientEvent};
use crate::message::now_ms;
use crate::queue::dead_letter::is_cycle;
use crate::queue::{QueueCommand, QueueHandle};
use crate::vhost::VHost;

/// How often a delayed exchange restored at start-up checks whether its vhost's restore is
/// done before it routes overdue messages.
const RESTORE_POLL: Duration = Duration::from_millis(10);

/// Commands handled before one group commit.
const BATCH_MAX: usize = 512;

pub(super) struct DelayedActor {
    exchange: ShortString,
    vhost: Weak<VHost>,
    schedule: Schedule,
    /// Confirms from the queues a round's messages went to (seq = round).
    key: ChannelKey,
    events_tx: mpsc::UnboundedSender<ClientEvent>,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    /// The confirm share of each round being routed.
    shares: HashMap<u64, ConfirmShare>,
    /// Confirms of the messages routed in one tick for one round (`ClientEvent::Confirmed`
    /// with this key, seq = the batch): their records are then marked routed.
    batch_key: ChannelKey,
    /// This tick's batch share for each round (chained to the round's share), with its
    /// number; dropped at the end of the tick.
    batches: HashMap<u64, (u64, ConfirmShare)>,
    /// The records routed in each batch not confirmed yet (at most the messages of the
    /// rounds being routed).
    batch_records: HashMap<u64, Vec<RecordAt>>,
    next_batch: u64,
    /// Files of finished rounds, deleted when their queues confirmed (by round).
    retiring: HashMap<u64, Vec<PathBuf>>,
}

impl DelayedActor {
    pub(super) fn new(exchange: ShortString, vhost: Weak<VHost>, store: ScheduleStore) -> Self {
        let (events_tx, events) = mpsc::unbounded_channel();
        DelayedActor {
            exchange,
            vhost,
            schedule: Schedule::open(store),
            key: new_channel_key(0),
            events_tx,
            events,
            shares: HashMap::new(),
            batch_key: new_channel_key(0),
            batches: HashMap::new(),
            batch_records: HashMap::new(),
            next_batch: 1,
            retiring: HashMap::new(),
        }
    }

    pub(super) async fn run(mut self, mut inbox: mpsc::Receiver<DelayedCommand>) {
        loop {
            let wake = self.schedule.next_wake_ms().map(|at| {
                let us = at.saturating_mul(1000).saturating_sub(super::now_us());
                Instant::now() + Duration::from_micros(us)
            });
            tokio::select! {
                biased;
                _ = sleep_until(wake) => {
                    if !self.tick().await {
                        return;
                    }
                }
                Some(event) = self.events.recv() => self.confirmed(event),
                cmd = inbox.recv() => match cmd {
                    None => return,
                    Some(cmd) => {
                        if !self.batch(cmd, &mut inbox).await {
                            return;
                        }
                    }
                },
            }
        }
    }

    /// Handles `first` and whatever else is waiting (up to `BATCH_MAX`), then writes and
    /// syncs once for all of them before dropping their confirms. False: stop (deleted).
    async fn batch(
        &mut self,
        first: DelayedCommand,
        inbox: &mut mpsc::Receiver<DelayedCommand>,
    ) -> bool {
        let mut confirms = Vec::new();
        let mut syncs = Vec::new();
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(cmd) = next.take() {
            match cmd {
                DelayedCommand::Schedule(s) => {
                    let mut s = *s;
                    if let Some(c) = s.confirm.take() {
                        confirms.push(c);
                    }
                    self.schedule.add(s);
                }
                DelayedCommand::Sync(reply) => syncs.push(reply),
                DelayedCommand::Delete(moved) => {
                    self.schedule.remove_files(moved);
                    return false;
                }
            }
            handled += 1;
            if handled < BATCH_MAX {
                next = inbox.try_recv().ok();
            }
        }
        let stored = match self.schedule.flush() {
            Ok(None) => Ok(()),
            Ok(Some(need)) => tokio::task::spawn_blocking(move || need.run())
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e))),
            Err(e) => Err(e),
        };
        if let Err(e) = stored {
            error!(exchange = %self.exchange.as_str(), error = %e, "delayed exchange: cannot store messages");
            confirms.into_iter().for_each(ConfirmShare::fail);
        }
        self.retire_finished();
        for reply in syncs {
            let _ = reply.send(());
        }
        true
    }

    /// Loads the buckets coming due and routes every message that is due. False when the
    /// vhost is gone (the broker is stopping): the schedule stays on disk for the next start.
    async fn tick(&mut self) -> bool {
        let Some(vhost) = self.vhost.upgrade() else {
            return false;
        };
        if vhost.is_restoring() {
            // Start-up has not put the queues and bindings back yet: routing now would lose
            // overdue messages. Look again shortly.
            tokio::time::sleep(RESTORE_POLL).await;
            return true;
        }
        self.schedule.load_due(now_ms());
        self.retire_finished();
        while let Some((round, pending)) = self.schedule.pop_due(now_ms()) {
            if let Some(pending) = pending {
                self.route(&vhost, pending).await;
            }
            if let Some(files) = self.schedule.routed(round) {
                self.retire(round, files);
            }
            self.retire_finished();
        }
        // The batches are complete: their confirms come once their queues have them.
        self.batches.clear();
        true
    }

    /// A round is done: its files go once its queues confirmed. Dropping the round's share
    /// lets their confirms complete it; a round that reached no queue has nothing to wait for.
    fn retire(&mut self, round: u64, files: Vec<PathBuf>) {
        self.batches.remove(&round);
        match self.shares.remove(&round) {
            Some(_) if !files.is_empty() => {
                self.retiring.insert(round, files);
            }
            _ => self.remove_later(files),
        }
    }

    /// Retires the rounds the schedule finished while reading (empty ones, or ones whose
    /// last file turned out to hold nothing more).
    fn retire_finished(&mut self) {
        for (round, files) in self.schedule.take_finished() {
            self.retire(round, files);
        }
    }

    /// Routes a due message through the current routing snapshot, with `x-delay` set to
    /// minus the delay (as the plugin does, so it is not delayed again downstream).
    async fn route(&mut self, vhost: &VHost, p: Pending) {
        let routing = vhost.routing_snapshot();
        let delay = i64::try_from(p.delay_ms).unwrap_or(i64::MAX);
        let value = match i32::try_from(-delay) {
            Ok(v) => AMQPValue::LongInt(v),
            Err(_) => AMQPValue::LongLongInt(-delay),
        };
        let message = Arc::new(p.message.with_header(DELAY_HEADER, value));
        let mut queues: Vec<QueueHandle> = Vec::new();
        let keys: Vec<&str> = std::iter::once(message.routing_key.as_str())
            .chain(p.extra_keys.iter().map(String::as_str))
            .collect();
        // Counted in the exchange's publish_in / publish_out when it was published.
        routing.route_due(
            self.exchange.as_str(),
            &keys,
            &message.properties,
            &message.body,
            &mut queues,
        );
        if p.dead_lettered {
            // The cycle rule of dead-lettering, applied when the route is taken (here).
            queues.retain(|q| !is_cycle(&message, q.name().as_str()));
        }
        if queues.is_empty() {
            return;
        }
        let share = match (self.schedule.on_disk(), p.at) {
            (true, Some(at)) => Some(self.batch_share(p.round, at)),
            (true, None) => Some(self.round_share(p.round)),
            (false, _) => None,
        };
        for q in queues {
            let sent = q
                .send(QueueCommand::Publish(message.clone(), share.clone()))
                .await;
            if let (Err(_), Some(share)) = (sent, &share) {
                // The queue stopped (deleted, or the broker is stopping): keep the round's
                // files, so a restart routes its messages again rather than losing one.
                share.clone().fail();
            }
        }
    }

    fn round_share(&mut self, round: u64) -> ConfirmShare {
        self.shares
            .entry(round)
            .or_insert_with(|| ConfirmShare::new(self.key, round, self.events_tx.clone()))
            .clone()
    }

    /// The share of this tick's batch of `round`, with `at` recorded in it: when its queues
    /// confirmed every message of the batch, the batch's records are marked routed, and
    /// only then is the round's share released (so a round's files are deleted after the
    /// marks of its batches are written). A failure fails the round too (its files stay).
    fn batch_share(&mut self, round: u64, at: RecordAt) -> ConfirmShare {
        if let Some((batch, share)) = self.batches.get(&round) {
            self.batch_records.entry(*batch).or_default().push(at);
            return share.clone();
        }
        let batch = self.next_batch;
        self.next_batch += 1;
        self.batch_records.insert(batch, vec![at]);
        let round_share = self.round_share(round);
        let (events, key) = (self.events_tx.clone(), self.batch_key);
        let share = ConfirmShare::then(
            Box::new(move |safe| {
                let _ = events.send(ClientEvent::Confirmed {
                    channel_key: key,
                    seq: batch,
                    ack: safe,
                });
                if !safe {
                    round_share.fail();
                }
            }),
            None,
        );
        self.batches.insert(round, (batch, share.clone()));
        share
    }

    /// Deletes files on a blocking thread: an unlink of fsynced data can wait for the file
    /// system's journal (~100 ms stalls of every due message on a busy disk).
    fn remove_later(&mut self, files: Vec<PathBuf>) {
        if files.is_empty() {
            return;
        }
        self.schedule.forget_marks(&files);
        let io = self.schedule.io();
        tokio::task::spawn_blocking(move || super::schedule::remove_files(&*io, &files));
    }

    /// Every queue took a round's messages: its files can go.
    fn confirmed(&mut self, event: ClientEvent) {
        if let ClientEvent::Confirmed {
            channel_key,
            seq,
            ack,
        } = event
        {
            if channel_key == self.batch_key {
                if let Some(records) = self.batch_records.remove(&seq) {
                    if ack {
                        self.schedule.write_marks(&records);
                    }
                }
                return;
            }
            if let Some(files) = self.retiring.remove(&seq) {
                match ack {
                    true => self.remove_later(files),
                    // Kept: the next start routes them again (at least once).
                    false => {
                        error!(exchange = %self.exchange.as_str(), "delayed exchange: a queue could not take due messages; their bucket is kept")
                    }
                }
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delayed::Scheduled;
    use crate::message::Message;
    use bytes::Bytes;
    use warren_protocol::basic::AMQPProperties;
    use warren_store::{Fault, FaultyIo};

    fn message(persistent: bool) -> crate::message::MessageRef {
        let props = AMQPProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
        let header_raw = warren_protocol::encode::header_payload(&props, 1);
        Arc::new(Message {
            exchange: "x".into(),
            routing_key: "k".into(),
            properties: Box::new(props),
            header_raw,
            body: Bytes::from_static(b"m"),
            properties_bytes: 0,
        })
    }

    /// Publisher confirms of persistent messages on a durable delayed exchange wait for the
    /// fsync of their bucket file; a failed fsync is a nack; transient ones cost no fsync.
    #[tokio::test]
    async fn confirms_follow_the_fsync_of_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let io = FaultyIo::new();
        let store = ScheduleStore {
            dir: Some(dir.path().join("x")),
            io: io.clone(),
            sync_persistent: true,
            durable: true,
        };
        let handle = super::super::DelayedHandle::spawn("x".into(), Weak::new(), store);
        let (client, mut events) = mpsc::unbounded_channel();
        let key = new_channel_key(1);
        let publish = |seq: u64, persistent: bool| {
            DelayedCommand::Schedule(Box::new(Scheduled {
                message: message(persistent),
                extra_keys: Vec::new(),
                delay_ms: 600_000,
                due_ms: now_ms() + 600_000,
                confirm: Some(ConfirmShare::new(key, seq, client.clone())),
                dead_lettered: false,
            }))
        };
        let confirmed = |event: Option<ClientEvent>| match event {
            Some(ClientEvent::Confirmed { seq, ack, .. }) => (seq, ack),
            _ => panic!("expected a confirm"),
        };

        handle.send(publish(1, true)).await;
        let got = confirmed(events.recv().await);
        assert_eq!(got, (1, true));
        let syncs = io.file_syncs();
        assert!(syncs >= 1, "confirmed before any fsync");

        io.inject(Fault::FailSync);
        handle.send(publish(2, true)).await;
        assert_eq!(confirmed(events.recv().await), (2, false));

        let before = io.file_syncs();
        handle.send(publish(3, false)).await;
        assert_eq!(confirmed(events.recv().await), (3, true));
        assert_eq!(
            io.file_syncs(),
            before,
            "a transient message is not fsynced"
        );
    }
}
