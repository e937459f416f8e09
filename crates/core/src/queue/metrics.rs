//! A queue's statistics as the management API and `/metrics` read them (RabbitMQ's names).
//!
//! The queue actor is the only writer. It counts in plain fields of its own
//! (`QueueCounters`) where it already does the work, and publishes everything with one
//! `Relaxed` store per field at the end of each batch of commands (and before answering
//! `QueueCommand::Stats`), so the message path pays no atomic read-modify-write, no lock and
//! no allocation. Readers load the atomics: listing 100,000 queues sends no command to any
//! actor. A snapshot is not atomic across fields (each value is at most one batch old).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The counters and gauges the actor keeps in its own fields.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounters {
    pub messages_ready: u64,
    pub messages_unacknowledged: u64,
    /// Body bytes of ready messages.
    pub message_bytes_ready: u64,
    /// Body bytes of delivered, unsettled messages.
    pub message_bytes_unacknowledged: u64,
    pub consumers: u64,
    /// Messages enqueued (routed here and accepted).
    pub publish: u64,
    /// Delivered to consumers that ack.
    pub deliver: u64,
    /// Delivered to no-ack consumers.
    pub deliver_no_ack: u64,
    /// basic.get answered with a message, ack expected.
    pub get: u64,
    pub get_no_ack: u64,
    /// basic.get answered get-empty.
    pub get_empty: u64,
    /// Deliveries (consume or get) of messages delivered before.
    pub redeliver: u64,
    /// Deliveries settled by basic.ack.
    pub ack: u64,
}

/// A queue's counters, published for readers on other threads. Aligned to its own cache
/// lines: the actor's stores must not invalidate the line publishers read the queue's inbox
/// sender and flow gate from.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct QueueMetrics {
    messages_ready: AtomicU64,
    messages_unacknowledged: AtomicU64,
    message_bytes_ready: AtomicU64,
    message_bytes_unacknowledged: AtomicU64,
    consumers: AtomicU64,
    publish: AtomicU64,
    deliver: AtomicU64,
    deliver_no_ack: AtomicU64,
    get: AtomicU64,
    get_no_ack: AtomicU64,
    get_empty: AtomicU64,
    redeliver: AtomicU64,
    ack: AtomicU64,
}

impl QueueMetrics {
    /// Publishes the actor's values (the actor is the only writer, so stores suffice).
    pub(crate) fn store(&self, c: &QueueCounters) {
        self.messages_ready.store(c.messages_ready, Relaxed);
        self.messages_unacknowledged
            .store(c.messages_unacknowledged, Relaxed);
        self.message_bytes_ready
            .store(c.message_bytes_ready, Relaxed);
        self.message_bytes_unacknowledged
            .store(c.message_bytes_unacknowledged, Relaxed);
        self.consumers.store(c.consumers, Relaxed);
        self.publish.store(c.publish, Relaxed);
        self.deliver.store(c.deliver, Relaxed);
        self.deliver_no_ack.store(c.deliver_no_ack, Relaxed);
        self.get.store(c.get, Relaxed);
        self.get_no_ack.store(c.get_no_ack, Relaxed);
        self.get_empty.store(c.get_empty, Relaxed);
        self.redeliver.store(c.redeliver, Relaxed);
        self.ack.store(c.ack, Relaxed);
    }

    /// The values as last published (no command to the actor).
    pub fn snapshot(&self) -> QueueMetricsSnapshot {
        QueueMetricsSnapshot(QueueCounters {
            messages_ready: self.messages_ready.load(Relaxed),
            messages_unacknowledged: self.messages_unacknowledged.load(Relaxed),
            message_bytes_ready: self.message_bytes_ready.load(Relaxed),
            message_bytes_unacknowledged: self.message_bytes_unacknowledged.load(Relaxed),
            consumers: self.consumers.load(Relaxed),
            publish: self.publish.load(Relaxed),
            deliver: self.deliver.load(Relaxed),
            deliver_no_ack: self.deliver_no_ack.load(Relaxed),
            get: self.get.load(Relaxed),
            get_no_ack: self.get_no_ack.load(Relaxed),
            get_empty: self.get_empty.load(Relaxed),
            redeliver: self.redeliver.load(Relaxed),
            ack: self.ack.load(Relaxed),
        })
    }
}

/// One reading of a queue's metrics, with RabbitMQ's derived values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueMetricsSnapshot(pub QueueCounters);

impl std::ops::Deref for QueueMetricsSnapshot {
    type Target = QueueCounters;

    fn deref(&self) -> &QueueCounters {
        &self.0
    }
}

impl QueueMetricsSnapshot {
    /// Ready + unacknowledged.
    pub fn messages(&self) -> u64 {
        self.messages_ready + self.messages_unacknowledged
    }

    /// Body bytes of ready + unacknowledged messages.
    pub fn message_bytes(&self) -> u64 {
        self.message_bytes_ready + self.message_bytes_unacknowledged
    }

    /// deliver + deliver_no_ack + get + get_no_ack.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// Adds another queue's values (vhost and node totals).
    pub fn add(&mut self, o: &QueueMetricsSnapshot) {
        let (a, b) = (&mut self.0, &o.0);
        a.messages_ready += b.messages_ready;
        a.messages_unacknowledged += b.messages_unacknowledged;
        a.message_bytes_ready += b.message_bytes_ready;
        a.message_bytes_unacknowledged += b.message_bytes_unacknowledged;
        a.consumers += b.consumers;
        a.publish += b.publish;
        a.deliver += b.deliver;
        a.deliver_no_ack += b.deliver_no_ack;
        a.get += b.get;
        a.get_no_ack += b.get_no_ack;
        a.get_empty += b.get_empty;
        a.redeliver += b.redeliver;
        a.ack += b.ack;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;
    use warren_protocol::basic::AMQPProperties;
    use warren_protocol::{FieldTable, ShortString};

    use crate::consumer::{ClientEvent, ConsumerSpec, Delivery};
    use crate::message::Message;
    use crate::queue::settings::QueueDefaults;
    use crate::queue::{QueueCommand, QueueDef, QueueHandle};
    use crate::vhost::VHost;

    pub(crate) fn message(body: &'static [u8]) -> Arc<Message> {
        let properties = AMQPProperties::default();
        Arc::new(Message {
            exchange: ShortString::from(""),
            routing_key: ShortString::from("q"),
            header_raw: warren_protocol::encode::header_payload(&properties, body.len() as u64),
            properties: Box::new(properties),
            body: bytes::Bytes::from_static(body),
            properties_bytes: 0,
        })
    }

    fn queue_def(name: &str) -> QueueDef {
        QueueDef {
            name: ShortString::from(name),
            durable: false,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::default(),
        }
    }

    fn queue(vhost: &VHost, name: &str) -> QueueHandle {
        vhost
            .declare_queue(queue_def(name), false)
            .expect("declare")
    }

    async fn delivery(rx: &mut mpsc::UnboundedReceiver<ClientEvent>) -> Delivery {
        match rx.recv().await {
            Some(ClientEvent::Deliver(d)) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    async fn get(q: &QueueHandle, no_ack: bool) -> Option<Delivery> {
        q.ask(|reply| QueueCommand::Get {
            channel_key: 99,
            no_ack,
            reply,
        })
        .await
        .expect("get")
        .map(|(d, _)| d)
    }

    #[tokio::test]
    async fn counters_follow_publish_consume_ack_get_and_requeue() {
        let vhost = VHost::new("/", QueueDefaults::default(), None);
        let q = queue(&vhost, "q");
        for _ in 0..5 {
            q.send(QueueCommand::Publish(message(b"0123456789"), None))
                .await
                .unwrap();
        }
        let m = q.sync_metrics().await.unwrap();
        assert_eq!((m.messages(), m.messages_ready, m.publish), (5, 5, 5));
        assert_eq!((m.message_bytes(), m.message_bytes_ready), (50, 50));

        let (client, mut rx) = mpsc::unbounded_channel();
        let spec = ConsumerSpec {
            tag: ShortString::from("c"),
            channel_key: 1,
            no_ack: false,
            exclusive: false,
            priority: 0,
            prefetch: 2,
            channel_limiter: Arc::default(),
            output: Arc::default(),
            client,
        };
        q.ask(|reply| QueueCommand::Consume(spec, reply))
            .await
            .unwrap()
            .unwrap();
        let first = delivery(&mut rx).await;
        delivery(&mut rx).await;
        let m = q.sync_metrics().await.unwrap();
        assert_eq!(m.consumers, 1);
        // The management API's consumer listing (`QueueCommand::Consumers`).
        let listed = q.ask(QueueCommand::Consumers).await.unwrap();
        assert_eq!(
            listed,
            [crate::queue::ConsumerInfo {
                tag: ShortString::from("c"),
                channel_key: 1,
                ack_required: true,
                exclusive: false,
                prefetch_count: 2,
                priority: 0,
            }]
        );
        assert_eq!((m.messages_ready, m.messages_unacknowledged), (3, 2));
        assert_eq!(m.message_bytes_unacknowledged, 20);
        assert_eq!((m.deliver, m.deliver_get(), m.ack), (2, 2, 0));

        q.send(QueueCommand::Settle {
            channel_key: 1,
            ids: vec![first.message_id],
            requeue: None,
        })
        .await
        .unwrap();
        delivery(&mut rx).await;
        let m = q.sync_metrics().await.unwrap();
        assert_eq!((m.ack, m.deliver), (1, 3));
        assert_eq!(
            (m.messages(), m.messages_ready, m.messages_unacknowledged),
            (4, 2, 2)
        );

        assert!(get(&q, true).await.is_some());
        let m = q.sync_metrics().await.unwrap();
        assert_eq!((m.get_no_ack, m.deliver_get(), m.messages_ready), (1, 4, 1));

        // The consumer's channel closes: its two deliveries come back, redelivered.
        q.send(QueueCommand::ChannelClosed { channel_key: 1 })
            .await
            .unwrap();
        let m = q.sync_metrics().await.unwrap();
        assert_eq!(
            (m.consumers, m.messages_ready, m.messages_unacknowledged),
            (0, 3, 0)
        );
        assert_eq!(
            (m.message_bytes_ready, m.message_bytes_unacknowledged),
            (30, 0)
        );

        let again = get(&q, false).await.expect("a message");
        assert!(again.redelivered);
        let m = q.sync_metrics().await.unwrap();
        assert_eq!((m.get, m.redeliver, m.messages_unacknowledged), (1, 1, 1));
        assert_eq!(m.deliver_get(), 5);

        while get(&q, true).await.is_some() {}
        let m = q.sync_metrics().await.unwrap();
        assert_eq!((m.get_empty, m.messages_ready, m.publish), (1, 0, 5));
    }

    /// A durable queue's recovered messages are counted at start, before any command: the
    /// listing read zero until something woke the actor.
    #[tokio::test]
    async fn recovered_messages_count_without_a_command() {
        let dir = tempfile::tempdir().expect("tempdir");
        let open = || {
            crate::recovery::open(
                dir.path(),
                warren_store::RealIo::shared(),
                warren_store::SyncMode::None,
                crate::broker::BrokerSettings::default(),
            )
            .expect("open")
        };
        {
            let broker = open();
            let vhost = broker.vhost(crate::broker::DEFAULT_VHOST).unwrap();
            let def = QueueDef {
                durable: true,
                ..queue_def("kept")
            };
            let q = vhost.declare_queue(def, false).unwrap();
            let properties = AMQPProperties::default().with_delivery_mode(2);
            let persistent = Arc::new(Message {
                exchange: ShortString::from(""),
                routing_key: ShortString::from("kept"),
                header_raw: warren_protocol::encode::header_payload(&properties, 10),
                properties: Box::new(properties),
                body: bytes::Bytes::from_static(b"persistent"),
                properties_bytes: 0,
            });
            for _ in 0..3 {
                q.send(QueueCommand::Publish(persistent.clone(), None))
                    .await
                    .unwrap();
            }
            assert_eq!(q.sync_metrics().await.unwrap().messages_ready, 3);
            // Dropped without shutting down, as after a crash.
        }
        let broker = open();
        let vhost = broker.vhost(crate::broker::DEFAULT_VHOST).unwrap();
        let mut m = vhost.queue_info("kept").expect("recovered").metrics;
        for _ in 0..500 {
            if m.messages_ready != 0 {
                break;
            }
            tokio::task::yield_now().await;
            m = vhost.queue_info("kept").unwrap().metrics;
        }
        assert_eq!((m.messages_ready, m.message_bytes_ready), (3, 30));
    }
}
