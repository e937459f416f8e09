//! A broker on a full disk: start-up needs no free space (so consumers can drain it), and a
//! declaration refused for want of space succeeds once space is back and survives a restart.
//! The disk is played by `FaultyIo::set_disk_full`: every write and new file fails with
//! ENOSPC (`StorageFull`) until cleared.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use warren_core::broker::BrokerSettings;
use warren_core::durable::definitions::{self, DefinitionOp};
use warren_core::durable::record;
use warren_core::queue::store::StoreContext;
use warren_core::queue::{QueueCommand, QueueDef};
use warren_core::recovery::{self, DEFINITIONS_FILE};
use warren_core::{Broker, Message};
use warren_protocol::basic::AMQPProperties;
use warren_protocol::{FieldTable, ShortString};
use warren_store::{DefinitionsLog, FaultyIo, Io, SyncMode};

const QUEUE: &str = "backlog";
const MESSAGES: u64 = 50;

fn queue_def(name: &str) -> QueueDef {
    QueueDef {
        name: ShortString::from(name),
        durable: true,
        exclusive_owner: None,
        auto_delete: false,
        arguments: FieldTable::default(),
    }
}

fn message(i: u64) -> Message {
    let properties = AMQPProperties::default().with_delivery_mode(2);
    let body = Bytes::from(format!("message {i}"));
    Message {
        exchange: ShortString::from(""),
        routing_key: ShortString::from(QUEUE),
        header_raw: warren_protocol::encode::header_payload(&properties, body.len() as u64),
        properties: Box::new(properties),
        body,
        properties_bytes: 0,
    }
}

/// What a broker left behind: a durable queue holding `MESSAGES` persistent messages, and
/// definitions worth compacting (a queue declared and deleted).
fn write_data_dir(dir: &Path, io: &Arc<dyn Io>) {
    let (mut log, _) =
        DefinitionsLog::open(&dir.join(DEFINITIONS_FILE), io.clone()).expect("definitions");
    for op in [
        DefinitionOp::QueueDeclared(queue_def("gone")),
        DefinitionOp::QueueDeleted(ShortString::from("gone")),
        DefinitionOp::QueueDeclared(queue_def(QUEUE)),
    ] {
        log.append(&definitions::encode("/", &op))
            .expect("append definition");
    }
    let ctx = StoreContext {
        data_dir: dir.to_path_buf(),
        io: io.clone(),
        sync_mode: SyncMode::Always,
    };
    let (mut messages, _) =
        warren_store::open_file_log(&ctx.queue_dir("/", QUEUE), io.clone()).expect("log");
    for i in 0..MESSAGES {
        messages
            .append(i + 1, &record::encode(&message(i), None))
            .expect("append message");
    }
    let job = messages.prepare_sync().expect("prepare").expect("a job");
    job.run().expect("sync");
}

fn open(dir: &Path, io: &Arc<FaultyIo>) -> Result<Arc<Broker>, warren_store::StoreError> {
    let io: Arc<dyn Io> = io.clone();
    recovery::open(dir, io, SyncMode::Always, BrokerSettings::default())
}

/// Pins issue 9: a broker could not start while its disk was full (start-up compacted the
/// definitions log, which needs space), so no consumer could drain it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_starts_on_a_full_disk_and_its_queues_can_be_drained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let io = FaultyIo::new();
    let dyn_io: Arc<dyn Io> = io.clone();
    write_data_dir(dir.path(), &dyn_io);

    io.set_disk_full(true);
    let broker = open(dir.path(), &io).expect("start-up needs no free space");
    let vhost = broker.vhost("/").expect("vhost");
    let queue = vhost.queue(QUEUE, 1).expect("the queue was restored");
    for i in 0..MESSAGES {
        let got = queue
            .ask(|reply| QueueCommand::Get {
                channel_key: 1,
                no_ack: true,
                reply,
            })
            .await
            .expect("basic.get");
        let (delivery, _) = got.unwrap_or_else(|| panic!("message {i} is missing"));
        assert_eq!(delivery.message.body, message(i).body);
    }
    let empty = queue
        .ask(|reply| QueueCommand::Get {
            channel_key: 1,
            no_ack: true,
            reply,
        })
        .await
        .expect("basic.get");
    assert!(empty.is_none(), "drained");

    // No space: a durable declaration is refused...
    let refused = vhost.declare_queue(queue_def("while-full"), false);
    assert!(refused.is_err(), "declared without space");
    // ...and succeeds once space is back, and survives a restart.
    io.set_disk_full(false);
    vhost
        .declare_queue(queue_def("after"), false)
        .expect("declare once space is back");
    let restarted = open(dir.path(), &io).expect("restart");
    let vhost = restarted.vhost("/").expect("vhost");
    vhost
        .queue("after", 1)
        .expect("the later declaration survived");
    assert!(vhost.queue("while-full", 1).is_err());
}
