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

use super::schedule::{Pending, Schedule};
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
        true
    }

    /// A round is done: its files go once its queues confirmed. Dropping the round's share
    /// lets their confirms complete it; a round that reached no queue has nothing to wait for.
    fn retire(&mut self, round: u64, files: Vec<PathBuf>) {
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
        let share = match self.schedule.on_disk() {
            true => Some(
                self.shares
                    .entry(p.round)
                    .or_insert_with(|| ConfirmShare::new(self.key, p.round, self.events_tx.clone()))
                    .clone(),
            ),
            false => None,
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

    /// Deletes files on a blocking thread: an unlink of fsynced data can wait for the file
    /// system's journal (~100 ms stalls of every due message on a busy disk).
    fn remove_later(&self, files: Vec<PathBuf>) {
        if files.is_empty() {
            return;
        }
        let io = self.schedule.io();
        tokio::task::spawn_blocking(move || super::schedule::remove_files(&*io, &files));
    }

    /// Every queue took a round's messages: its files can go.
    fn confirmed(&mut self, event: ClientEvent) {
        if let ClientEvent::Confirmed { seq, ack, .. } = event {
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
