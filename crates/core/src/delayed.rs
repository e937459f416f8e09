//! The delayed-message exchange (`x-delayed-message`, RabbitMQ's
//! `rabbitmq-delayed-message-exchange` plugin, built in): its arguments, the `x-delay`
//! header, and the handle to the actor that owns one exchange's schedule.
//!
//! Owns: one actor per delayed exchange (`actor.rs`), which owns the exchange's schedule
//! (`schedule.rs`: time-bucketed files on disk, only the buckets due soon in memory) and its
//! timer. It must not touch the vhost's definitions: at due time it reads the routing snapshot
//! like any publisher and sends to queue inboxes.
//!
//! The publish path pays nothing for this unless the exchange is delayed: the routing
//! snapshot's `ExchangeRoute::delayed` is decided at declare time.

mod actor;
mod schedule;

use std::path::PathBuf;
use std::sync::{Arc, Weak};

use tokio::sync::mpsc;
use warren_protocol::{AMQPValue, FieldTable, ProtocolError, ShortString};
use warren_store::Io;

use crate::confirm::ConfirmShare;
use crate::exchange::ExchangeKind;
use crate::message::MessageRef;
use crate::vhost::VHost;

pub use schedule::{BUCKET_MS, LOAD_AHEAD_MS, OPEN_FILES_MAX};

/// The directory name of an exchange's schedule: a stable hash of vhost and name.
pub(crate) fn schedule_dir_name(vhost: &str, exchange: &ShortString) -> String {
    schedule::dir_name(vhost, exchange)
}

/// The exchange type's name.
pub const EXCHANGE_TYPE: &str = "x-delayed-message";
/// The argument naming the type whose routing the exchange uses.
pub const DELAYED_TYPE_ARG: &str = "x-delayed-type";
/// The header carrying a message's delay in milliseconds.
pub const DELAY_HEADER: &str = "x-delay";
/// The longest delay that delays (the plugin's: Erlang's largest timer, ~49.7 days); a
/// longer one routes at once, as in the plugin.
pub const DELAY_MS_MAX: i64 = 4_294_967_295;
/// Commands waiting in a delayed exchange's inbox: the bound is the publishers' backpressure,
/// as a queue's inbox.
pub const DELAYED_INBOX_CAPACITY: usize = 4096;

/// Checks a delayed exchange's arguments: `x-delayed-type` must name an exchange type that
/// is not itself delayed (406 with the plugin's text; an unknown type is 503, as for any
/// exchange.declare). The type's own arguments are checked as for that type.
pub fn validate_exchange_args(arguments: &FieldTable) -> Result<ExchangeKind, ProtocolError> {
    let refused = || {
        ProtocolError::precondition_failed(
            "Invalid argument, 'x-delayed-type' must be an existing exchange type",
        )
    };
    let name = arguments
        .inner()
        .get(DELAYED_TYPE_ARG)
        .and_then(crate::args::as_str)
        .ok_or_else(refused)?;
    match ExchangeKind::parse(&name)? {
        ExchangeKind::Delayed => Err(refused()),
        ExchangeKind::ConsistentHash => {
            crate::exchange::consistent_hash::validate_exchange_args(arguments)
                .map_err(ProtocolError::precondition_failed)?;
            Ok(ExchangeKind::ConsistentHash)
        }
        kind => Ok(kind),
    }
}

/// The type a delayed exchange routes as (direct when the argument is missing or invalid,
/// which `validate_exchange_args` refuses at declare).
pub fn base_kind(arguments: &FieldTable) -> ExchangeKind {
    match arguments
        .inner()
        .get(DELAYED_TYPE_ARG)
        .and_then(crate::args::as_str)
        .and_then(|name| ExchangeKind::parse(&name).ok())
    {
        Some(ExchangeKind::Delayed) | None => ExchangeKind::Direct,
        Some(kind) => kind,
    }
}

/// The delay a message asks for: `Some(ms)` when its `x-delay` header delays it (1 ...
/// `DELAY_MS_MAX`), `None` when it routes at once (missing, 0, negative, too large, or not a
/// number). As the plugin: integers of any width, floats truncated, numeric strings.
pub fn delay_ms(headers: Option<&FieldTable>) -> Option<u64> {
    let value = headers?.inner().get(DELAY_HEADER)?;
    let ms = match value {
        AMQPValue::Float(f) => float_ms(f64::from(*f))?,
        AMQPValue::Double(f) => float_ms(*f)?,
        AMQPValue::DecimalValue(d) => {
            float_ms(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))?
        }
        AMQPValue::ShortString(_) | AMQPValue::LongString(_) => {
            crate::args::as_str(value)?.trim().parse::<i64>().ok()?
        }
        other => crate::args::as_i64(other)?,
    };
    (1..=DELAY_MS_MAX).contains(&ms).then_some(ms as u64)
}

/// Microseconds since the Unix epoch.
pub(crate) fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The due time (ms since the epoch) of a message published now with `delay_ms`: rounded
/// up, so a message is never routed before now + its delay (the schedule counts whole
/// milliseconds).
pub fn due_ms(delay_ms: u64) -> u64 {
    now_us()
        .saturating_add(delay_ms.saturating_mul(1000))
        .div_ceil(1000)
}

fn float_ms(f: f64) -> Option<i64> {
    f.is_finite()
        .then(|| f.trunc().clamp(-1.0, DELAY_MS_MAX as f64 + 1.0) as i64)
}

/// A message waiting for its due time, as the publishing connection hands it over.
pub struct Scheduled {
    pub message: MessageRef,
    /// `CC` / `BCC` routing keys (BCC is already stripped from the message).
    pub extra_keys: Vec<String>,
    pub delay_ms: u64,
    /// Milliseconds since the epoch at which it is routed.
    pub due_ms: u64,
    /// Dropped once the message is stored (fsynced if persistent on a durable exchange).
    pub confirm: Option<ConfirmShare>,
    /// Scheduled by dead-lettering: at its due time the dead-letter cycle rule applies (it
    /// is not routed to a queue it died in automatically, `queue::dead_letter::is_cycle`),
    /// as it would have had the dead-letter exchange routed it at once.
    pub dead_lettered: bool,
}

pub enum DelayedCommand {
    Schedule(Box<Scheduled>),
    /// The exchange was deleted: remove its schedule (moved to this directory, or still in
    /// its own when None) and stop.
    Delete(Option<PathBuf>),
    /// Answers once every command before it is handled (tests).
    Sync(tokio::sync::oneshot::Sender<()>),
}

/// Where an exchange's actor keeps its schedule.
pub(crate) struct ScheduleStore {
    /// None: no data directory (an in-memory broker); the schedule stays in memory.
    pub dir: Option<PathBuf>,
    pub io: Arc<dyn Io>,
    /// fsync before confirming persistent messages (a durable exchange with `--sync` on).
    pub sync_persistent: bool,
    /// Files found at start hold messages of an earlier run: only persistent ones survive.
    pub durable: bool,
}

/// The handle to a delayed exchange's actor; cloned into the routing snapshot.
#[derive(Clone)]
pub struct DelayedHandle(Arc<Inner>);

struct Inner {
    tx: mpsc::Sender<DelayedCommand>,
    dir: Option<PathBuf>,
    io: Arc<dyn Io>,
}

impl std::fmt::Debug for DelayedHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DelayedHandle({:?})", self.0.dir)
    }
}

impl DelayedHandle {
    /// Starts the actor of exchange `exchange` in `vhost`, recovering what `store.dir` holds.
    pub(crate) fn spawn(exchange: ShortString, vhost: Weak<VHost>, store: ScheduleStore) -> Self {
        let (tx, rx) = mpsc::channel(DELAYED_INBOX_CAPACITY);
        let dir = store.dir.clone();
        let io = store.io.clone();
        let actor = actor::DelayedActor::new(exchange, vhost, store);
        tokio::spawn(actor.run(rx));
        DelayedHandle(Arc::new(Inner { tx, dir, io }))
    }

    /// The directory holding the schedule (None: in memory).
    pub fn dir(&self) -> Option<&PathBuf> {
        self.0.dir.as_ref()
    }

    /// Sends if the inbox has room: `Err(Some(cmd))` when full (await `send`), `Err(None)`
    /// when the exchange is gone (the message is dropped, as a deleted queue's).
    pub fn try_send(&self, cmd: DelayedCommand) -> Result<(), Option<DelayedCommand>> {
        match self.0.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(cmd)) => Err(Some(cmd)),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(None),
        }
    }

    /// Whether both handles are the same exchange's actor.
    pub fn same(&self, other: &DelayedHandle) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The command scheduling `message` (reached this exchange with a positive `x-delay`;
    /// None when it has none) on a path other than a client's publish.
    pub fn schedule_command(
        message: MessageRef,
        extra_keys: Vec<String>,
        confirm: Option<ConfirmShare>,
    ) -> Option<DelayedCommand> {
        let delay_ms = delay_ms(message.properties.headers().as_ref())?;
        Some(DelayedCommand::Schedule(Box::new(Scheduled {
            due_ms: due_ms(delay_ms),
            message,
            extra_keys,
            delay_ms,
            confirm,
            dead_lettered: false,
        })))
    }

    /// `schedule_command` for a message dead-lettered into this exchange (the cycle rule
    /// applies when it is routed); `confirm` is a deduplication exchange's chained share,
    /// if one was on the route.
    pub fn dead_letter_command(
        message: MessageRef,
        extra_keys: Vec<String>,
        confirm: Option<ConfirmShare>,
    ) -> Option<DelayedCommand> {
        let mut cmd = Self::schedule_command(message, extra_keys, confirm)?;
        if let DelayedCommand::Schedule(s) = &mut cmd {
            s.dead_lettered = true;
        }
        Some(cmd)
    }

    /// Schedules without waiting (dead-lettering, which never awaits a send): a full inbox
    /// gets the command from a task, as a queue's `send_now`.
    pub fn send_now(&self, cmd: DelayedCommand) {
        if let Err(Some(cmd)) = self.try_send(cmd) {
            let tx = self.0.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// Sends, waiting for room in the inbox.
    pub async fn send(&self, cmd: DelayedCommand) {
        let _ = self.0.tx.send(cmd).await;
    }

    /// The exchange was deleted; never waits (called under the definitions lock). The
    /// directory is renamed at once (one rename), so an exchange declared again with the
    /// same name starts with an empty schedule while the old actor removes the old files.
    pub(crate) fn delete(&self) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let moved = self.0.dir.as_ref().and_then(|dir| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let name = dir.file_name()?.to_string_lossy().into_owned();
            let to = dir.with_file_name(format!("{name}.deleted-{}-{n}", std::process::id()));
            self.0.io.rename(dir, &to).ok().map(|()| to)
        });
        if let Err(mpsc::error::TrySendError::Full(cmd)) =
            self.0.tx.try_send(DelayedCommand::Delete(moved))
        {
            let tx = self.0.tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(cmd).await;
            });
        }
    }

    /// Waits until the actor has handled everything sent before (tests).
    pub async fn sync(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(DelayedCommand::Sync(tx)).await;
        let _ = rx.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(v: AMQPValue) -> FieldTable {
        let mut t = FieldTable::default();
        t.insert(DELAY_HEADER.into(), v);
        t
    }

    #[test]
    fn delays_follow_the_plugin() {
        assert_eq!(delay_ms(None), None);
        assert_eq!(delay_ms(Some(&headers(AMQPValue::LongInt(200)))), Some(200));
        assert_eq!(
            delay_ms(Some(&headers(AMQPValue::ShortShortUInt(5)))),
            Some(5)
        );
        assert_eq!(delay_ms(Some(&headers(AMQPValue::LongInt(0)))), None);
        assert_eq!(delay_ms(Some(&headers(AMQPValue::LongInt(-5)))), None);
        assert_eq!(delay_ms(Some(&headers(AMQPValue::Double(10.9)))), Some(10));
        assert_eq!(
            delay_ms(Some(&headers(AMQPValue::LongString("300".into())))),
            Some(300)
        );
        assert_eq!(
            delay_ms(Some(&headers(AMQPValue::LongString("x".into())))),
            None
        );
        assert_eq!(
            delay_ms(Some(&headers(AMQPValue::LongLongInt(DELAY_MS_MAX + 1)))),
            None
        );
        assert_eq!(delay_ms(Some(&headers(AMQPValue::Double(f64::NAN)))), None);
    }

    #[test]
    fn the_delayed_type_is_required() {
        let mut args = FieldTable::default();
        assert_eq!(validate_exchange_args(&args).unwrap_err().code as u16, 406);
        args.insert(
            DELAYED_TYPE_ARG.into(),
            AMQPValue::LongString("nope".into()),
        );
        assert_eq!(validate_exchange_args(&args).unwrap_err().code as u16, 503);
        args.insert(
            DELAYED_TYPE_ARG.into(),
            AMQPValue::LongString(EXCHANGE_TYPE.into()),
        );
        assert_eq!(validate_exchange_args(&args).unwrap_err().code as u16, 406);
        args.insert(
            DELAYED_TYPE_ARG.into(),
            AMQPValue::LongString("topic".into()),
        );
        assert_eq!(validate_exchange_args(&args).unwrap(), ExchangeKind::Topic);
        assert_eq!(base_kind(&args), ExchangeKind::Topic);
    }
}
