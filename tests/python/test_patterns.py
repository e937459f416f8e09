"""End-to-end messaging patterns through a real AMQP 0-9-1 client (pika).

Covers: competing consumers with prefetch 1 and manual ack (work queue); fanout pub/sub;
topic routing with ``*`` and ``#``; headers routing (x-match all/any, ``x-`` keys ignored);
RPC with reply_to/correlation_id over an exclusive server-named reply queue; mandatory
publishing and basic.return (312 NO_ROUTE); publisher confirms; nack/reject with and without
requeue (and requeue position); exclusive-queue locking (405) and deletion with its owner;
auto-delete queues; plus default-exchange delivery, basic.get on an empty queue, purge counts
and 404 on a passive declare.

The expectations were validated against RabbitMQ 3.10 (see conftest.py for how to point the
suite at a broker). Waits are event driven with deadlines (see amqphelpers.py); the only fixed
windows are short "nothing else arrives" checks.
"""

import collections
import uuid

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker, UnroutableError

from amqphelpers import (get_bodies, get_messages, get_until, message_count, passive_declare,
                         props, pump_for, pump_until, wait_message_count, wait_queue_gone)

SENTINEL = b"__end-of-test-messages__"


# --------------------------------------------------------------------------------------------
# 1. Work queue: competing consumers, prefetch 1, manual ack
# --------------------------------------------------------------------------------------------

def test_work_queue_competing_consumers_prefetch_one(connection, unique):
    q = unique("work")
    pub = connection.channel()
    pub.queue_declare(q)
    total = 30
    expected = [f"job-{i}".encode() for i in range(total)]
    for body in expected:
        pub.basic_publish("", q, body)
    # All jobs are waiting before any worker starts: a broker ignoring prefetch would push
    # them all to the first worker as soon as it subscribes.
    wait_message_count(connection, q, total)

    workers = []
    for name in ("w1", "w2", "w3"):
        ch = connection.channel()
        ch.basic_qos(prefetch_count=1)
        w = {"name": name, "ch": ch, "unacked": [], "max_unacked": 0, "bodies": [],
             "redelivered": 0}

        def on_message(_ch, method, _props, body, w=w):
            w["unacked"].append(method.delivery_tag)
            w["max_unacked"] = max(w["max_unacked"], len(w["unacked"]))
            w["bodies"].append(body)
            w["redelivered"] += method.redelivered

        w["tag"] = ch.basic_consume(q, on_message)
        workers.append(w)

    def delivered():
        return sum(len(w["bodies"]) for w in workers)

    # Each worker gets one job and, holding it unacked, must not get another.
    pump_until(connection, lambda: all(w["unacked"] for w in workers),
               lambda: "each of the three workers to receive a first job; deliveries so far: "
                       + str({w["name"]: len(w["bodies"]) for w in workers}))
    pump_for(connection, 0.3)
    assert [len(w["unacked"]) for w in workers] == [1, 1, 1]
    assert delivered() == 3

    # Acks are sent from the test loop after the I/O turn that delivered the message, so a
    # second delivery to a worker that still holds one would be recorded in max_unacked.
    def ack_all():
        for w in workers:
            for tag in w["unacked"]:
                w["ch"].basic_ack(tag)
            w["unacked"].clear()

    ack_all()
    while delivered() < total:
        pump_until(connection, lambda: any(w["unacked"] for w in workers) or delivered() >= total,
                   f"more jobs (have {delivered()} of {total})")
        ack_all()
    pump_for(connection, 0.2)  # any duplicate delivery would show up here
    ack_all()

    counts = collections.Counter(b for w in workers for b in w["bodies"])
    assert sorted(counts) == sorted(expected), "every job consumed"
    assert all(n == 1 for n in counts.values()), f"jobs consumed twice: {counts}"
    for w in workers:
        assert w["max_unacked"] == 1, f"{w['name']} held {w['max_unacked']} unacked jobs"
        assert w["bodies"], f"{w['name']} got no jobs"
        assert w["redelivered"] == 0
        # Each worker receives its own jobs in queue order.
        assert w["bodies"] == sorted(w["bodies"], key=expected.index)
    assert message_count(connection, q) == 0


# --------------------------------------------------------------------------------------------
# 2. Pub/sub over a fanout exchange
# --------------------------------------------------------------------------------------------

def test_fanout_pubsub_every_queue_gets_every_message_in_order(connection, unique):
    ch = connection.channel()
    ex = unique("fanout")
    ch.exchange_declare(ex, exchange_type="fanout")
    queues = [unique(f"sub{i}") for i in range(3)]
    for i, q in enumerate(queues):
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, ex, routing_key=f"binding-key-{i}")  # ignored by fanout
    unbound = unique("unbound")
    ch.queue_declare(unbound, exclusive=True)

    msgs = [f"news-{i}".encode() for i in range(20)]
    for i, body in enumerate(msgs):
        ch.basic_publish(ex, f"any.key.{i}", body)

    for q in queues:
        got = get_messages(ch, q, len(msgs))
        assert [b for _, _, b in got] == msgs
        assert all(m.exchange == ex for m, _, _ in got)
        assert [m.routing_key for m, _, _ in got] == [f"any.key.{i}" for i in range(len(msgs))]
        assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    assert message_count(connection, unbound) == 0


# --------------------------------------------------------------------------------------------
# 3. Topic routing
# --------------------------------------------------------------------------------------------

TOPIC_BINDINGS = {
    "kern_star": ["kern.*"],
    "star_critical": ["*.critical"],
    "hash": ["#"],
    "a_hash_z": ["a.#.z"],
    "hash_critical": ["#.critical"],
    "exact": ["kern.critical"],
    "two_bindings": ["kern.*", "*.critical"],  # a message matching both arrives once
}

TOPIC_EXPECTED = {  # routing key -> queues that must get it (all others must not)
    "kern.critical": {"kern_star", "star_critical", "hash", "hash_critical", "exact",
                      "two_bindings"},
    "kern.info": {"kern_star", "hash", "two_bindings"},
    "app.critical": {"star_critical", "hash", "hash_critical", "two_bindings"},
    "critical": {"hash", "hash_critical"},             # '#' also matches zero words
    "kern": {"hash"},                                  # '*' needs exactly one word
    "kern.info.extra": {"hash"},
    "x.app.critical": {"hash", "hash_critical"},
    "a.z": {"hash", "a_hash_z"},
    "a.b.z": {"hash", "a_hash_z"},
    "a.b.c.z": {"hash", "a_hash_z"},
    "a.z.b": {"hash"},
    "b.a.z": {"hash"},
    "kern.critical.": {"hash"},                        # trailing empty word
    "": {"hash"},
}


def test_topic_routing_wildcards(connection, unique):
    ch = connection.channel()
    ex = unique("topic")
    ch.exchange_declare(ex, exchange_type="topic")
    queue_of = {}
    for label, patterns in TOPIC_BINDINGS.items():
        q = queue_of[label] = unique(label)
        ch.queue_declare(q, exclusive=True)
        for pattern in patterns:
            ch.queue_bind(q, ex, routing_key=pattern)

    keys = list(TOPIC_EXPECTED)
    for key in keys:
        ch.basic_publish(ex, key, f"key={key}".encode())
    # Per-queue end marker, sent on the same channel after the test messages.
    for q in queue_of.values():
        ch.basic_publish("", q, SENTINEL)

    for label, q in queue_of.items():
        want = [f"key={k}".encode() for k in keys if label in TOPIC_EXPECTED[k]]
        assert get_until(ch, q, SENTINEL) == want, f"queue bound with {TOPIC_BINDINGS[label]}"


# --------------------------------------------------------------------------------------------
# 4. Headers routing
# --------------------------------------------------------------------------------------------

HEADERS_BINDINGS = {
    "all": {"x-match": "all", "format": "pdf", "type": "report"},
    "any": {"x-match": "any", "format": "pdf", "type": "report"},
    "default_is_all": {"format": "pdf", "type": "report"},
    # "x-" keys in the binding are not match conditions under all/any
    "all_with_x_arg": {"x-match": "all", "format": "pdf", "x-ignored": "yes"},
    "any_with_x_arg": {"x-match": "any", "type": "log", "x-ignored": "yes"},
    "all_no_keys": {"x-match": "all"},  # nothing to check: matches every message
    "any_no_keys": {"x-match": "any"},  # no key can match: matches nothing
    "int_value": {"x-match": "all", "size": 10},
}

HEADERS_MESSAGES = [  # (name, headers, queues that must get it)
    ("pdf-report", {"format": "pdf", "type": "report"},
     {"all", "any", "default_is_all", "all_with_x_arg", "all_no_keys"}),
    ("pdf-log", {"format": "pdf", "type": "log"},
     {"any", "all_with_x_arg", "any_with_x_arg", "all_no_keys"}),
    ("zip-report", {"format": "zip", "type": "report"}, {"any", "all_no_keys"}),
    ("pdf-report-extra", {"format": "pdf", "type": "report", "extra": "x"},
     {"all", "any", "default_is_all", "all_with_x_arg", "all_no_keys"}),
    ("no-headers", None, {"all_no_keys"}),
    ("only-x-header", {"x-ignored": "yes"}, {"all_no_keys"}),
    ("uppercase-value", {"format": "PDF"}, {"all_no_keys"}),
    ("type-log", {"type": "log"}, {"any_with_x_arg", "all_no_keys"}),
    ("size-10", {"size": 10}, {"int_value", "all_no_keys"}),
    ("size-11", {"size": 11}, {"all_no_keys"}),
]


def test_headers_routing_all_any(connection, unique):
    ch = connection.channel()
    ex = unique("headers")
    ch.exchange_declare(ex, exchange_type="headers")
    queue_of = {}
    for label, args in HEADERS_BINDINGS.items():
        q = queue_of[label] = unique(label)
        ch.queue_declare(q, exclusive=True)
        ch.queue_bind(q, ex, routing_key="", arguments=args)

    for name, headers, _ in HEADERS_MESSAGES:
        ch.basic_publish(ex, "routing-key-is-ignored", name.encode(),
                         properties=props(headers=headers))
    for q in queue_of.values():
        ch.basic_publish("", q, SENTINEL)

    for label, q in queue_of.items():
        want = [name.encode() for name, _, dests in HEADERS_MESSAGES if label in dests]
        assert get_until(ch, q, SENTINEL) == want, f"binding {HEADERS_BINDINGS[label]}"


# --------------------------------------------------------------------------------------------
# 5. RPC: reply_to + correlation_id
# --------------------------------------------------------------------------------------------

def test_rpc_reply_to_and_correlation_id(connect, unique):
    server_conn, client_conn = connect(), connect()
    rpc_queue = unique("rpc")

    server = server_conn.channel()
    server.queue_declare(rpc_queue)
    server.basic_qos(prefetch_count=1)
    served = []

    def on_request(ch, method, props_, body):
        served.append(props_.correlation_id)
        ch.basic_publish("", props_.reply_to, body.upper(),
                         properties=props(correlation_id=props_.correlation_id))
        ch.basic_ack(method.delivery_tag)

    server.basic_consume(rpc_queue, on_request)

    client = client_conn.channel()
    reply_queue = client.queue_declare("", exclusive=True).method.queue
    assert reply_queue.startswith("amq.gen-"), reply_queue
    replies = {}

    def on_reply(_ch, _method, props_, body):
        replies[props_.correlation_id] = body

    client.basic_consume(reply_queue, on_reply, auto_ack=True)

    requests = {str(uuid.uuid4()): f"request number {i}".encode() for i in range(5)}
    for corr_id, body in requests.items():
        client.basic_publish("", rpc_queue, body,
                             properties=props(reply_to=reply_queue, correlation_id=corr_id))

    pump_until([server_conn, client_conn], lambda: len(replies) == len(requests),
               f"{len(requests)} RPC replies")
    assert replies == {c: b.upper() for c, b in requests.items()}
    assert served == list(requests)  # one queue, one consumer: served in publish order


# --------------------------------------------------------------------------------------------
# 6. Mandatory publishing: basic.return 312 NO_ROUTE
# --------------------------------------------------------------------------------------------

def test_mandatory_unroutable_is_returned_routable_is_not(connection, unique):
    ch = connection.channel()
    q = unique("routable")
    ch.queue_declare(q, exclusive=True)
    ex = unique("direct")
    ch.exchange_declare(ex, exchange_type="direct")  # no bindings
    returned = []
    ch.add_on_return_callback(lambda _ch, method, props_, body:
                              returned.append((method, props_, body)))

    ch.basic_publish("", q, b"routable", mandatory=True)
    ch.basic_publish(ex, "nowhere", b"not-mandatory", mandatory=False)  # silently dropped
    ch.basic_publish(ex, "nowhere", b"unroutable", mandatory=True,
                     properties=props(message_id="m-1", headers={"h": "v"}))

    pump_until(connection, lambda: returned, "basic.return")
    pump_for(connection, 0.2)
    # Returns are sent in publish order, so a wrongly returned earlier message would be first.
    assert len(returned) == 1, [body for _, _, body in returned]
    method, props_, body = returned[0]
    assert body == b"unroutable"
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == ex
    assert method.routing_key == "nowhere"
    assert props_.message_id == "m-1" and props_.headers == {"h": "v"}
    assert get_bodies(ch, q, 1) == [b"routable"]


def test_mandatory_with_confirms_raises_unroutable(connection, unique):
    ch = connection.channel()
    ch.confirm_delivery()
    q = unique("routable")
    ch.queue_declare(q, exclusive=True)

    ch.basic_publish("", q, b"routable", mandatory=True)  # no exception: routed and acked
    missing = unique("no-such-queue")  # default exchange, no queue of that name
    with pytest.raises(UnroutableError) as err:
        ch.basic_publish("", missing, b"lost", mandatory=True)
    [msg] = err.value.messages
    assert msg.method.reply_code == 312 and msg.method.reply_text == "NO_ROUTE"
    assert msg.method.exchange == "" and msg.method.routing_key == missing
    assert msg.body == b"lost"
    # Unroutable without mandatory is simply confirmed (and dropped).
    ch.basic_publish("", missing, b"dropped")
    assert ch.is_open
    assert message_count(connection, q) == 1


# --------------------------------------------------------------------------------------------
# 7. Publisher confirms
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("durable", [False, True], ids=["transient", "persistent"])
def test_publisher_confirms(connection, unique, durable):
    ch = connection.channel()
    q = unique("confirmed")
    ch.queue_declare(q, durable=durable)
    ch.confirm_delivery()
    n = 50
    message_props = props(delivery_mode=2) if durable else None
    for i in range(n):
        # BlockingChannel waits for basic.ack; a nack would raise NackError
        ch.basic_publish("", q, f"c{i}".encode(), properties=message_props)
    # A confirm means the message is enqueued: the count is exact immediately.
    assert ch.queue_declare(q, passive=True).method.message_count == n
    got = get_messages(ch, q, n)
    assert [b for _, _, b in got] == [f"c{i}".encode() for i in range(n)]
    if durable:
        assert all(p.delivery_mode == 2 for _, p, _ in got)


def test_confirm_select_then_publish_to_missing_exchange_closes_channel(connection, unique):
    ch = connection.channel()
    ch.confirm_delivery()
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.basic_publish(unique("no-such-exchange"), "k", b"x")
    assert err.value.reply_code == 404
    assert "NOT_FOUND" in err.value.reply_text


# --------------------------------------------------------------------------------------------
# 8. Negative acknowledgements
# --------------------------------------------------------------------------------------------

def test_nack_requeue_redelivers_then_reject_discards(connection, unique):
    ch = connection.channel()
    q = unique("nack")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"payload", properties=props(message_id="id-1"))
    seen = []

    def on_message(ch_, method, props_, body):
        seen.append((method.redelivered, body, props_.message_id))
        if len(seen) == 1:
            ch_.basic_nack(method.delivery_tag, requeue=True)
        else:
            ch_.basic_reject(method.delivery_tag, requeue=False)

    tag = ch.basic_consume(q, on_message)
    pump_until(connection, lambda: len(seen) >= 2, "redelivery after nack(requeue=True)")
    pump_for(connection, 0.2)  # a rejected (requeue=False) message must not come back
    assert seen == [(False, b"payload", "id-1"), (True, b"payload", "id-1")]
    ch.basic_cancel(tag)
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_requeued_message_goes_back_ahead_of_newer_ones(connection, unique):
    ch = connection.channel()
    q = unique("order")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"A")
    ch.basic_publish("", q, b"B")
    wait_message_count(connection, q, 2)

    method, _, body = ch.basic_get(q)
    assert (body, method.redelivered, method.message_count) == (b"A", False, 1)
    ch.basic_nack(method.delivery_tag, requeue=True)

    [(method, _, body)] = get_messages(ch, q, 1)
    assert (body, method.redelivered) == (b"A", True)
    [(method, _, body)] = get_messages(ch, q, 1)
    assert (body, method.redelivered) == (b"B", False)


def test_requeue_restores_original_queue_position(connection, unique):
    ch = connection.channel()
    q = unique("multi")
    ch.queue_declare(q, exclusive=True)
    for body in (b"1", b"2", b"3", b"4"):
        ch.basic_publish("", q, body)
    wait_message_count(connection, q, 4)
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]  # 1, 2, 3 unacked; 4 ready
    assert message_count(connection, q) == 1
    # Requeue out of order: 3 first, then 1 and 2 with one multiple nack. RabbitMQ puts each
    # requeued message back at its original position, not simply at the head.
    ch.basic_reject(tags[2], requeue=True)
    ch.basic_nack(tags[1], multiple=True, requeue=True)  # covers 1 and 2
    wait_message_count(connection, q, 4)
    got = get_messages(ch, q, 4)
    assert [b for _, _, b in got] == [b"1", b"2", b"3", b"4"]
    assert [m.redelivered for m, _, _ in got] == [True, True, True, False]


# --------------------------------------------------------------------------------------------
# 9. Exclusive queues
# --------------------------------------------------------------------------------------------

def test_exclusive_queue_is_locked_to_its_connection_and_dies_with_it(connect, unique):
    owner, other = connect(), connect()
    q = unique("exclusive")
    owner_ch = owner.channel()
    owner_ch.queue_declare(q, exclusive=True)
    owner_ch.basic_publish("", q, b"mine")
    assert passive_declare(owner, q).queue == q  # the owner may use it

    attempts = {
        "passive declare": lambda ch: ch.queue_declare(q, passive=True),
        "declare": lambda ch: ch.queue_declare(q, exclusive=True),
        "consume": lambda ch: ch.basic_consume(q, lambda *a: None),
        "get": lambda ch: ch.basic_get(q),
    }
    for what, attempt in attempts.items():
        ch = other.channel()
        with pytest.raises(ChannelClosedByBroker) as err:
            attempt(ch)
        assert err.value.reply_code == 405, what
        assert err.value.reply_text.startswith("RESOURCE_LOCKED"), (what, err.value.reply_text)
    assert other.is_open  # a channel error, not a connection error
    # Even the owner gets 405 (not 406) when redeclaring it without exclusive.
    with pytest.raises(ChannelClosedByBroker) as err:
        owner.channel().queue_declare(q, exclusive=False)
    assert err.value.reply_code == 405

    owner.close()
    # RabbitMQ has usually deleted it by the time close-ok arrives, but do not rely on that.
    exc = wait_queue_gone(other, q)
    assert "NOT_FOUND" in exc.reply_text


# --------------------------------------------------------------------------------------------
# 10. Auto-delete queues
# --------------------------------------------------------------------------------------------

def test_auto_delete_queue_goes_away_after_last_consumer_cancels(connect, unique):
    conn, observer = connect(), connect()
    q = unique("autodelete")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    # Never consumed from: an auto-delete queue stays.
    assert passive_declare(observer, q).consumer_count == 0

    tag1 = ch.basic_consume(q, lambda *a: None)
    tag2 = ch.basic_consume(q, lambda *a: None)
    assert passive_declare(observer, q).consumer_count == 2
    ch.basic_cancel(tag1)
    # One consumer left: the queue stays.
    assert passive_declare(observer, q).consumer_count == 1
    ch.basic_cancel(tag2)
    wait_queue_gone(observer, q)


def test_auto_delete_queue_goes_away_when_consumer_channel_closes(connect, unique):
    conn, observer = connect(), connect()
    q = unique("autodelete")
    ch = conn.channel()
    ch.queue_declare(q, auto_delete=True)
    ch.basic_consume(q, lambda *a: None)
    assert passive_declare(observer, q).consumer_count == 1
    ch.close()
    wait_queue_gone(observer, q)


# --------------------------------------------------------------------------------------------
# Small ones
# --------------------------------------------------------------------------------------------

def test_default_exchange_delivers_by_queue_name(connection, unique, amqp_url):
    ch = connection.channel()
    user = pika.URLParameters(amqp_url).credentials.username  # user_id must be the real user
    q = unique("direct")
    ch.queue_declare(q, exclusive=True)
    sent = props(content_type="text/plain", correlation_id="c-9", message_id="m-9",
                 headers={"str": "s", "int": 42, "bool": True, "nested": {"k": "v"}},
                 priority=3, delivery_mode=1, app_id="pytest", type="greeting",
                 timestamp=1700000000, expiration="60000", user_id=user)
    ch.basic_publish("", q, b"hello", properties=sent)
    [(method, got, body)] = get_messages(ch, q, 1)
    assert body == b"hello"
    assert (method.exchange, method.routing_key, method.redelivered) == ("", q, False)
    for field in ("content_type", "correlation_id", "message_id", "headers", "priority",
                  "delivery_mode", "app_id", "type", "timestamp", "expiration", "user_id"):
        assert getattr(got, field) == getattr(sent, field), field
    # Routing key naming no queue: dropped, nothing else receives it.
    ch.basic_publish("", unique("nobody"), b"lost")
    assert ch.basic_get(q) == (None, None, None)


def test_basic_get_on_empty_queue_returns_nothing(connection, unique):
    ch = connection.channel()
    q = unique("empty")
    ch.queue_declare(q, exclusive=True)
    assert ch.basic_get(q) == (None, None, None)
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    assert ch.is_open


def test_queue_purge_returns_count(connection, unique):
    ch = connection.channel()
    q = unique("purge")
    ch.queue_declare(q, exclusive=True)
    for i in range(7):
        ch.basic_publish("", q, f"p{i}".encode())
    wait_message_count(connection, q, 7)
    assert ch.queue_purge(q).method.message_count == 7
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    assert ch.queue_purge(q).method.message_count == 0
    assert ch.basic_get(q) == (None, None, None)


def test_passive_declare_of_missing_queue_is_404(connection, unique):
    ch = connection.channel()
    missing = unique("missing")
    with pytest.raises(ChannelClosedByBroker) as err:
        ch.queue_declare(missing, passive=True)
    assert err.value.reply_code == 404
    assert "NOT_FOUND" in err.value.reply_text
    assert missing in err.value.reply_text
    assert not ch.is_open
    assert connection.is_open
    # The connection is still usable.
    assert connection.channel().queue_declare("", exclusive=True).method.queue
