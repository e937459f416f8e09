//! Publisher confirms across queues. A message published in confirm mode carries one
//! `ConfirmShare` per destination queue; a queue drops its share once the message is safe
//! with it (enqueued in memory, or fsynced for a persistent message in a durable queue), or
//! marks it failed first (a store error). When the last share is gone the channel gets one
//! `ClientEvent::Confirmed` — basic.ack, or basic.nack if any queue failed.
//!
//! A share may instead be chained (`ConfirmShare::then`): when its last clone drops, a
//! function runs with the outcome. A durable deduplication exchange hands the queues such a
//! share, so that the message's key is written only once the message is safe, and keeps the
//! publisher's own share until the key is on disk too.
//!
//! A share may also carry a `Gate`: the queues keep the message from consumers until it
//! opens. A durable deduplication exchange opens it once the message's key is on disk, and
//! a move once the batch's acks on the source are, so a message is never consumed (and gone)
//! while a crash could still lose the record that makes a retry or a recovery skip it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

use crate::consumer::{ChannelKey, ClientEvent, ClientSender};
use crate::durable::record::MoveOrigin;

/// What runs when a chained share's last clone drops: `true` if no holder failed it.
pub type Then = Box<dyn FnOnce(bool) + Send + Sync>;

enum Target {
    Client {
        channel_key: ChannelKey,
        client: ClientSender,
    },
    Then(Option<Then>),
}

struct Ticket {
    seq: u64,
    failed: AtomicBool,
    target: Target,
    /// Set by a move (`admin::messages`): written into the destinations' records.
    origin: Option<MoveOrigin>,
    gate: Option<Arc<Gate>>,
}

/// Holds a message back from consumers until opened (see the module docs). Queues that hold
/// a gated message wait on it; it opens once, for good.
#[derive(Debug)]
pub struct Gate(watch::Sender<bool>);

impl Gate {
    /// A closed gate and the opener that opens it when dropped (so a failure or a dropped
    /// task can never leave messages held forever).
    pub fn new() -> (Arc<Gate>, GateOpener) {
        let gate = Arc::new(Gate(watch::Sender::new(false)));
        (gate.clone(), GateOpener(gate))
    }

    pub fn is_open(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the gate is open.
    pub async fn opened(&self) {
        let mut open = self.0.subscribe();
        // The sender lives as long as `self`: this only ends with the gate open.
        let _ = open.wait_for(|open| *open).await;
    }
}

/// Opens its gate when dropped.
#[derive(Debug)]
pub struct GateOpener(Arc<Gate>);

impl Drop for GateOpener {
    fn drop(&mut self) {
        self.0 .0.send_replace(true);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let ack = !self.failed.load(Ordering::Acquire);
        match &mut self.target {
            Target::Client {
                channel_key,
                client,
            } => {
                let _ = client.send(ClientEvent::Confirmed {
                    channel_key: *channel_key,
                    seq: self.seq,
                    ack,
                });
            }
            Target::Then(then) => {
                if let Some(then) = then.take() {
                    then(ack);
                }
            }
        }
    }
}

/// One queue's part of a publisher confirm. Dropping it means "done here".
#[derive(Clone)]
pub struct ConfirmShare(Arc<Ticket>);

impl std::fmt::Debug for ConfirmShare {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConfirmShare({})", self.0.seq)
    }
}

impl ConfirmShare {
    /// A confirm for publish `seq` on a channel; clone it once per destination queue and
    /// drop the original (an unroutable message confirms at once).
    pub fn new(channel_key: ChannelKey, seq: u64, client: ClientSender) -> ConfirmShare {
        Self::with_origin(channel_key, seq, client, None, None)
    }

    /// A confirm for a moved message: the queues that log it record where it came from,
    /// and hold it back from consumers until `gate` opens.
    pub fn with_origin(
        channel_key: ChannelKey,
        seq: u64,
        client: ClientSender,
        origin: Option<MoveOrigin>,
        gate: Option<Arc<Gate>>,
    ) -> ConfirmShare {
        ConfirmShare(Arc::new(Ticket {
            seq,
            failed: AtomicBool::new(false),
            target: Target::Client {
                channel_key,
                client,
            },
            origin,
            gate,
        }))
    }

    /// The move the message is part of, if it is.
    pub fn origin(&self) -> Option<MoveOrigin> {
        self.0.origin
    }

    /// The gate the queues hold the message behind, if it is still closed.
    pub fn closed_gate(&self) -> Option<&Arc<Gate>> {
        self.0.gate.as_ref().filter(|g| !g.is_open())
    }

    /// A share whose last drop runs `then` with the outcome instead of confirming; the
    /// queues hold the message back from consumers until `gate` (if any) opens.
    pub fn then(then: Then, gate: Option<Arc<Gate>>) -> ConfirmShare {
        ConfirmShare(Arc::new(Ticket {
            seq: 0,
            failed: AtomicBool::new(false),
            target: Target::Then(Some(then)),
            origin: None,
            gate,
        }))
    }

    /// The message could not be made safe: the publisher gets basic.nack.
    pub fn fail(self) {
        self.0.failed.store(true, Ordering::Release);
    }
}
