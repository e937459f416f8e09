"""End-to-end tests of RabbitMQ's queue and exchange features through pika.

Covers: message TTL (queue ``x-message-ttl``, per-message ``expiration``, the lower one wins,
``x-death`` as RabbitMQ writes it), queue expiry (``x-expires``), length limits
(``x-max-length``, ``x-max-length-bytes``, ``x-overflow`` drop-head / reject-publish /
reject-publish-dlx), dead-lettering (reject/nack, routing-key override, x-death counting in a
retry loop, automatic-cycle breaking), poison messages (``x-delivery-limit``), priority queues
(``x-max-priority``), single active consumer, consumer priorities (``x-priority``), consumer
cancel notification, consumer timeout as a visibility timeout, alternate exchanges, direct
reply-to, and argument validation with RabbitMQ's error texts.

Every test not marked ``warren_only`` passes against RabbitMQ 3.10 (see conftest.py for how to
point the suite at a broker); the ``warren_only`` ones cover what RabbitMQ 3.10 refuses or does
differently on classic queues (x-delivery-limit, x-consumer-timeout as a visibility timeout). Waits are event driven with deadlines (see
amqphelpers.py); the only fixed windows are short "nothing else happens" checks.
"""

import datetime
import time

import pytest
from pika.exceptions import ChannelClosedByBroker, NackError, UnroutableError

from amqphelpers import (get_bodies, get_messages, message_count, passive_declare, props,
                         pump_for, pump_until, wait_message_count, wait_queue_gone)

VHOST = "/"
NOTHING_MORE_S = 0.3  # "nothing else arrives" window


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------

def dead_letter_target(ch, unique, kind="fanout", binding_key=""):
    """A dead-letter exchange with one queue bound to it; returns ``(exchange, queue)``."""
    dlx = unique("dlx")
    ch.exchange_declare(dlx, exchange_type=kind)
    dlq = unique("dlq")
    ch.queue_declare(dlq, exclusive=True)
    ch.queue_bind(dlq, dlx, routing_key=binding_key)
    return dlx, dlq


def x_death(properties):
    headers = properties.headers or {}
    assert "x-death" in headers, f"no x-death header in {headers!r}"
    return headers["x-death"]


def assert_recent(timestamp):
    """x-death 'time' is an AMQP timestamp (pika decodes it as an aware datetime)."""
    assert isinstance(timestamp, datetime.datetime), repr(timestamp)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - timestamp).total_seconds()) < 120, timestamp


def assert_death(entry, *, count, reason, queue, exchange, routing_keys,
                 original_expiration=None):
    """One x-death table, field by field, as RabbitMQ 3.10 writes it."""
    expected_keys = {"count", "reason", "queue", "time", "exchange", "routing-keys"}
    if original_expiration is not None:
        expected_keys.add("original-expiration")
    assert set(entry) == expected_keys, entry
    assert entry["count"] == count, entry
    assert entry["reason"] == reason, entry
    assert entry["queue"] == queue, entry
    assert entry["exchange"] == exchange, entry
    assert entry["routing-keys"] == routing_keys, entry
    if original_expiration is not None:
        assert entry["original-expiration"] == original_expiration, entry
    assert_recent(entry["time"])


def assert_first_death(properties, *, reason, queue, exchange):
    headers = properties.headers
    assert headers["x-first-death-reason"] == reason, headers
    assert headers["x-first-death-queue"] == queue, headers
    assert headers["x-first-death-exchange"] == exchange, headers


def dead_letter_header_keys(properties):
    """Header names of a dead-lettered message, ignoring x-last-death-* (added by RabbitMQ
    3.13+, absent in 3.10: either is acceptable)."""
    return {k for k in (properties.headers or {}) if not k.startswith("x-last-death-")}


def channel_error(connection, action):
    """Runs ``action(channel)`` on a fresh channel; returns the ChannelClosedByBroker raised."""
    ch = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as err:
        action(ch)
    assert not ch.is_open
    assert connection.is_open, "a channel error must not close the connection"
    return err.value


def wait_queue_expired(connection, queue, timeout=5.0):
    """Waits until ``queue`` is gone without using it: a passive declare would count as a
    redeclare and renew its x-expires lease, so this probes with mandatory publishes (which
    do not count as use) until one comes back unroutable; then checks the 404."""
    ch = connection.channel()
    ch.confirm_delivery()
    deadline = time.monotonic() + timeout
    while True:
        try:
            ch.basic_publish("", queue, b"probe", mandatory=True)
        except UnroutableError:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"queue {queue!r} still exists {timeout} s later")
        connection.process_data_events(time_limit=0.02)
    ch.close()
    return wait_queue_gone(connection, queue, timeout=0.5)


def declare_error(connection, queue, arguments):
    return channel_error(connection, lambda ch: ch.queue_declare(queue, arguments=arguments))


# --------------------------------------------------------------------------------------------
# 1. Message TTL and queue expiry
# --------------------------------------------------------------------------------------------

def test_queue_message_ttl_message_not_consumed_in_time_is_never_delivered(connection, unique):
    ch = connection.channel()
    q = unique("ttl")
    ch.queue_declare(q, exclusive=True, arguments={"x-message-ttl": 300})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"fresh")
    [(_, _, body)] = get_messages(ch, q, 1, timeout=0.25)  # consumed in time: delivered
    assert body == b"fresh"

    ch.basic_publish("", q, b"stale")
    wait_message_count(connection, q, 0)  # without TTL it would stay at 1
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)
    # A consumer arriving later does not get it either.
    seen = []
    ch.basic_consume(q, lambda _c, _m, _p, b: seen.append(b), auto_ack=True)
    pump_for(connection, NOTHING_MORE_S / 2)
    assert seen == []


def test_queue_message_ttl_dead_letters_with_reason_expired_and_x_death(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    ex = unique("in")
    ch.exchange_declare(ex, exchange_type="direct")
    src = unique("ttl")
    ch.queue_declare(src, exclusive=True,
                     arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dlx})
    ch.queue_bind(src, ex, routing_key="rk.in")
    ch.basic_publish(ex, "rk.in", b"expiring",
                     properties=props(message_id="m-1", headers={"app": "value"},
                                      content_type="text/plain"))

    [(method, got, body)] = get_messages(ch, dlq, 1)
    assert body == b"expiring"
    # Republished to the DLX with its original routing key.
    assert (method.exchange, method.routing_key) == (dlx, "rk.in")
    assert (got.message_id, got.content_type) == ("m-1", "text/plain")
    assert got.expiration is None
    assert dead_letter_header_keys(got) == {"app", "x-death", "x-first-death-reason",
                                            "x-first-death-queue", "x-first-death-exchange"}
    assert got.headers["app"] == "value"
    [entry] = x_death(got)
    assert_death(entry, count=1, reason="expired", queue=src, exchange=ex,
                 routing_keys=["rk.in"])
    assert_first_death(got, reason="expired", queue=src, exchange=ex)
    assert message_count(connection, src) == 0


def test_per_message_expiration_expires_and_dead_letters(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    src = unique("src")
    ch.queue_declare(src, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
    ch.basic_publish("", src, b"short-lived", properties=props(expiration="100"))
    ch.basic_publish("", src, b"immortal")

    [(method, got, body)] = get_messages(ch, dlq, 1)
    assert body == b"short-lived"
    assert (method.exchange, method.routing_key) == (dlx, src)
    assert got.expiration is None, "the expiration property is removed when dead-lettering"
    [entry] = x_death(got)
    assert_death(entry, count=1, reason="expired", queue=src, exchange="",
                 routing_keys=[src], original_expiration="100")
    assert_first_death(got, reason="expired", queue=src, exchange="")
    # The message without expiration is still there, untouched.
    [(_, kept, body)] = get_messages(ch, src, 1)
    assert body == b"immortal" and kept.headers is None
    pump_for(connection, NOTHING_MORE_S / 2)
    assert ch.basic_get(dlq, auto_ack=True) == (None, None, None)


def test_per_message_expiration_message_consumed_in_time_keeps_its_expiration(connection,
                                                                              unique):
    ch = connection.channel()
    q = unique("src")
    ch.queue_declare(q, exclusive=True)
    ch.basic_publish("", q, b"x", properties=props(expiration="300"))
    [(_, got, body)] = get_messages(ch, q, 1, timeout=0.25)
    assert body == b"x" and got.expiration == "300"
    ch.basic_publish("", q, b"too-late", properties=props(expiration="50"))
    wait_message_count(connection, q, 0)
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


@pytest.mark.parametrize("queue_ttl, expiration", [(100, "60000"), (60000, "100")],
                         ids=["queue-ttl-lower", "message-expiration-lower"])
def test_lower_of_queue_ttl_and_message_expiration_wins(connection, unique, queue_ttl,
                                                        expiration):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    src = unique("src")
    ch.queue_declare(src, exclusive=True,
                     arguments={"x-message-ttl": queue_ttl, "x-dead-letter-exchange": dlx})
    started = time.monotonic()
    ch.basic_publish("", src, b"m", properties=props(expiration=expiration))
    # Whichever TTL is 100 ms must apply: with the other one (60 s) this times out.
    [(_, got, body)] = get_messages(ch, dlq, 1, timeout=5)
    assert time.monotonic() - started >= 0.09
    assert body == b"m"
    [entry] = x_death(got)
    assert_death(entry, count=1, reason="expired", queue=src, exchange="", routing_keys=[src],
                 original_expiration=expiration)


@pytest.mark.parametrize("expiration, detail", [
    ("abc", "no_integer"),
    ("", "no_integer"),
    ("-1", "{value_negative,-1}"),
    ("1.5", '{leftover_string,".5"}'),
    ("315360000001", "{value_too_large,315360000001}"),
])
def test_invalid_expiration_property_closes_channel_406(connection, unique, expiration, detail):
    q = unique("q")
    connection.channel().queue_declare(q)

    def publish(ch):
        ch.basic_publish("", q, b"x", properties=props(expiration=expiration))
        ch.basic_get(q)  # the channel.close arrives in answer to the publish

    err = channel_error(connection, publish)
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - invalid expiration '{expiration}': {detail}"
    assert message_count(connection, q) == 0


@pytest.mark.parametrize("where", ["queue-ttl", "message-expiration"])
def test_ttl_zero_is_delivered_only_to_a_waiting_consumer(connection, unique, where):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    q = unique("ttl0")
    arguments = {"x-dead-letter-exchange": dlx}
    if where == "queue-ttl":
        arguments["x-message-ttl"] = 0
    message_props = props(expiration="0") if where == "message-expiration" else None
    ch.queue_declare(q, exclusive=True, arguments=arguments)
    ch.confirm_delivery()
    ch.basic_publish("", q, b"nobody-waiting", properties=message_props)
    # No consumer: expires at once.
    [(_, p, body)] = get_messages(ch, dlq, 1)
    assert body == b"nobody-waiting" and x_death(p)[0]["reason"] == "expired"
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)

    got = []
    consumer = connection.channel()
    consumer.basic_consume(q, lambda _c, _m, _p, b: got.append(b), auto_ack=True)
    ch.basic_publish("", q, b"consumer-waiting", properties=message_props)
    pump_until(connection, lambda: got, "delivery of a TTL 0 message to a waiting consumer")
    assert got == [b"consumer-waiting"]
    assert ch.basic_get(dlq, auto_ack=True) == (None, None, None)


def test_x_expires_deletes_unused_queue_but_not_one_with_a_consumer(connect, unique):
    conn, observer = connect(), connect()
    ch = conn.channel()
    unused = unique("unused")
    ch.queue_declare(unused, arguments={"x-expires": 200})
    ch.basic_publish("", unused, b"messages do not count as use")
    consumed = unique("consumed")
    ch.queue_declare(consumed, arguments={"x-expires": 200})
    tag = ch.basic_consume(consumed, lambda *a: None)

    exc = wait_queue_expired(observer, unused)
    assert exc.reply_text.startswith("NOT_FOUND")
    # The one with a consumer outlives its period by far.
    pump_for(conn, 0.5)
    assert passive_declare(observer, consumed).consumer_count == 1
    # Once the consumer is gone it is unused: deleted after the period.
    ch.basic_cancel(tag)
    wait_queue_expired(observer, consumed)


# --------------------------------------------------------------------------------------------
# 2. Length limits and overflow
# --------------------------------------------------------------------------------------------

def test_max_length_drop_head_dead_letters_oldest_with_reason_maxlen(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    q = unique("bounded")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-max-length": 3, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    for i in range(5):
        ch.basic_publish("", q, f"m{i}".encode())  # all accepted (confirmed)
    assert message_count(connection, q) == 3
    assert get_bodies(ch, q, 3) == [b"m2", b"m3", b"m4"]
    dropped = get_messages(ch, dlq, 2)
    assert [b for _, _, b in dropped] == [b"m0", b"m1"]
    for _, got, _ in dropped:
        [entry] = x_death(got)
        assert_death(entry, count=1, reason="maxlen", queue=q, exchange="", routing_keys=[q])
        assert_first_death(got, reason="maxlen", queue=q, exchange="")


def test_max_length_bytes_drops_head_by_body_size(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    q = unique("bytes")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-max-length-bytes": 10, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    for body in (b"aaaa", b"bbbb", b"cccc", b"dddd"):  # 16 bytes > 10: two must go
        ch.basic_publish("", q, body)
    assert message_count(connection, q) == 2
    assert get_bodies(ch, q, 2) == [b"cccc", b"dddd"]
    dropped = get_messages(ch, dlq, 2)
    assert [b for _, _, b in dropped] == [b"aaaa", b"bbbb"]
    assert all(x_death(p)[0]["reason"] == "maxlen" for _, p, _ in dropped)


def test_max_length_zero_dead_letters_every_message(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    q = unique("zero")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-max-length": 0, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"z")
    assert message_count(connection, q) == 0
    [(_, p, body)] = get_messages(ch, dlq, 1)
    assert body == b"z" and x_death(p)[0]["reason"] == "maxlen"


def test_overflow_reject_publish_nacks_and_does_not_dead_letter(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    q = unique("reject")
    ch.queue_declare(q, exclusive=True, arguments={
        "x-max-length": 2, "x-overflow": "reject-publish", "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"p0")
    ch.basic_publish("", q, b"p1")
    with pytest.raises(NackError):
        ch.basic_publish("", q, b"p2")
    assert ch.is_open
    assert message_count(connection, q) == 2
    # Room again after one is consumed.
    assert get_bodies(ch, q, 1) == [b"p0"]
    ch.basic_publish("", q, b"p3")
    assert get_bodies(ch, q, 2) == [b"p1", b"p3"]
    # reject-publish (unlike reject-publish-dlx) never dead-letters.
    pump_for(connection, NOTHING_MORE_S / 2)
    assert ch.basic_get(dlq, auto_ack=True) == (None, None, None)


def test_overflow_reject_publish_dlx_nacks_and_dead_letters(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    q = unique("rejectdlx")
    ch.queue_declare(q, exclusive=True, arguments={
        "x-max-length": 1, "x-overflow": "reject-publish-dlx", "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"kept")
    with pytest.raises(NackError):
        ch.basic_publish("", q, b"refused")
    [(method, got, body)] = get_messages(ch, dlq, 1)
    assert body == b"refused"
    assert (method.exchange, method.routing_key) == (dlx, q)
    [entry] = x_death(got)
    assert_death(entry, count=1, reason="maxlen", queue=q, exchange="", routing_keys=[q])
    assert get_bodies(ch, q, 1) == [b"kept"]


# --------------------------------------------------------------------------------------------
# 3. Dead-lettering on reject / nack, x-death counting, cycles
# --------------------------------------------------------------------------------------------

def test_reject_and_nack_without_requeue_dead_letter_with_routing_key_override(connection,
                                                                             unique):
    ch = connection.channel()
    # Direct DLX whose only binding is the override key: arriving proves the override.
    dlx, dlq = dead_letter_target(ch, unique, kind="direct", binding_key="dead")
    src = unique("src")
    ch.queue_declare(src, exclusive=True, arguments={
        "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": "dead"})
    for body in (b"requeued", b"rejected", b"nacked-1", b"nacked-2"):
        ch.basic_publish("", src, body)
    wait_message_count(connection, src, 4)

    [(m0, _, _), (m1, _, _), (m2, _, _), (m3, _, _)] = get_messages(ch, src, 4, auto_ack=False)
    ch.basic_nack(m0.delivery_tag, requeue=True)  # requeued: not dead-lettered
    ch.basic_reject(m1.delivery_tag, requeue=False)
    ch.basic_nack(m3.delivery_tag, multiple=True, requeue=False)  # covers m2 and m3

    got = get_messages(ch, dlq, 3)
    assert [b for _, _, b in got] == [b"rejected", b"nacked-1", b"nacked-2"]
    for method, p, _ in got:
        assert (method.exchange, method.routing_key) == (dlx, "dead")
        [entry] = x_death(p)
        # routing-keys records the keys the message was published with, not the override.
        assert_death(entry, count=1, reason="rejected", queue=src, exchange="",
                     routing_keys=[src])
        assert_first_death(p, reason="rejected", queue=src, exchange="")
    [(method, _, body)] = get_messages(ch, src, 1)
    assert (body, method.redelivered) == (b"requeued", True)
    assert ch.basic_get(dlq, auto_ack=True) == (None, None, None)


def test_x_death_routing_keys_include_cc_and_bcc_is_stripped(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    ex = unique("in")
    ch.exchange_declare(ex, exchange_type="direct")
    src = unique("src")
    ch.queue_declare(src, exclusive=True, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_bind(src, ex, routing_key="main")
    ch.queue_bind(src, ex, routing_key="cc1")
    ch.basic_publish(ex, "main", b"copied", properties=props(
        headers={"CC": ["cc1", "cc2"], "BCC": ["bcc1"]}))
    [(method, p, _)] = get_messages(ch, src, 1, auto_ack=False)  # once, though bound twice
    assert p.headers == {"CC": ["cc1", "cc2"]}
    ch.basic_reject(method.delivery_tag, requeue=False)
    [(method, p, _)] = get_messages(ch, dlq, 1)
    assert method.routing_key == "main"
    [entry] = x_death(p)
    assert_death(entry, count=1, reason="rejected", queue=src, exchange=ex,
                 routing_keys=["main", "cc1", "cc2"])
    assert ch.basic_get(src, auto_ack=True) == (None, None, None)


def test_dead_lettering_to_a_missing_exchange_drops_the_message(connection, unique):
    ch = connection.channel()
    src = unique("src")
    ch.queue_declare(src, exclusive=True,
                     arguments={"x-dead-letter-exchange": unique("missing")})
    ch.basic_publish("", src, b"x")
    [(method, _, _)] = get_messages(ch, src, 1, auto_ack=False)
    ch.basic_reject(method.delivery_tag, requeue=False)
    assert ch.is_open
    assert message_count(connection, src) == 0
    assert ch.basic_get(src, auto_ack=True) == (None, None, None)


def test_x_death_counts_repeated_deaths_in_a_retry_loop(connection, unique):
    """work --(reject)--> retry exchange --> retry queue (TTL) --(expired)--> work again."""
    ch = connection.channel()
    work, retry, retry_x = unique("work"), unique("retry"), unique("retryx")
    ch.exchange_declare(retry_x, exchange_type="fanout")
    ch.queue_declare(work, exclusive=True, arguments={"x-dead-letter-exchange": retry_x})
    ch.queue_declare(retry, exclusive=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": work})
    ch.queue_bind(retry, retry_x)
    ch.basic_publish("", work, b"flaky", properties=props(headers={"attempt": "first"}))

    deliveries = []
    for _ in range(3):
        [(method, p, body)] = get_messages(ch, work, 1, auto_ack=False)
        assert body == b"flaky"
        deliveries.append((method, p))
        ch.basic_reject(method.delivery_tag, requeue=False)
    [(method, p, _)] = get_messages(ch, work, 1, auto_ack=False)
    deliveries.append((method, p))
    ch.basic_ack(method.delivery_tag)

    assert deliveries[0][1].headers == {"attempt": "first"}
    for attempt, (method, p) in enumerate(deliveries[1:], start=1):
        assert (method.exchange, method.routing_key) == ("", work)
        assert p.headers["attempt"] == "first"
        deaths = x_death(p)
        assert len(deaths) == 2, deaths
        # Most recent death first; a repeated (queue, reason) death increments its count.
        assert_death(deaths[0], count=attempt, reason="expired", queue=retry,
                     exchange=retry_x, routing_keys=[work])
        assert_death(deaths[1], count=attempt, reason="rejected", queue=work, exchange="",
                     routing_keys=[work])
        assert_first_death(p, reason="rejected", queue=work, exchange="")
    assert message_count(connection, work) == 0
    assert message_count(connection, retry) == 0


def test_automatic_dead_letter_cycle_is_broken(connection, unique):
    """A queue whose DLX routes expired messages back to itself (no consumer, no reject):
    RabbitMQ drops the message at the cycle instead of looping forever."""
    ch = connection.channel()
    dlx = unique("loopx")
    ch.exchange_declare(dlx, exchange_type="fanout")
    loop, monitor = unique("loop"), unique("monitor")
    ch.queue_declare(loop, exclusive=True,
                     arguments={"x-message-ttl": 50, "x-dead-letter-exchange": dlx})
    ch.queue_declare(monitor, exclusive=True)  # sees every dead-lettering of the message
    ch.queue_bind(loop, dlx)
    ch.queue_bind(monitor, dlx)
    ch.basic_publish("", loop, b"round and round")

    wait_message_count(connection, monitor, 1)
    wait_message_count(connection, loop, 0)
    # With a 50 ms TTL a looping message would be dead-lettered again several times here.
    pump_for(connection, 0.4)
    assert message_count(connection, loop) == 0
    assert message_count(connection, monitor) == 1
    [(_, p, _)] = get_messages(ch, monitor, 1)
    [entry] = x_death(p)
    assert_death(entry, count=1, reason="expired", queue=loop, exchange="",
                 routing_keys=[loop])


def test_self_dead_lettering_via_default_exchange_is_dropped(connection, unique):
    ch = connection.channel()
    loop = unique("loop")
    ch.queue_declare(loop, exclusive=True, arguments={
        "x-message-ttl": 50, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": loop})
    ch.basic_publish("", loop, b"x")
    wait_message_count(connection, loop, 0)
    pump_for(connection, 0.3)
    assert message_count(connection, loop) == 0
    assert ch.basic_get(loop, auto_ack=True) == (None, None, None)


# --------------------------------------------------------------------------------------------
# 4. Poison messages: x-delivery-limit (RabbitMQ: quorum queues only)
# --------------------------------------------------------------------------------------------

def _nack_until_gone(ch, q, max_deliveries=5):
    """basic_get + nack(requeue) until the queue no longer hands the message out."""
    seen = []
    while len(seen) < max_deliveries:
        method, p, body = ch.basic_get(q)
        if method is None:
            break
        seen.append((method.redelivered, (p.headers or {}).get("x-delivery-count"), body))
        ch.basic_nack(method.delivery_tag, requeue=True)
    return seen


@pytest.mark.warren_only
def test_delivery_limit_dead_letters_poison_message(connection, unique):
    ch = connection.channel()
    dlx, dlq = dead_letter_target(ch, unique)
    q = unique("poison")
    ch.queue_declare(q, exclusive=True,
                     arguments={"x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison", properties=props(headers={"k": "v"}))
    seen = _nack_until_gone(ch, q)
    # First delivery, then two redeliveries counted 1 and 2; the third return exceeds it.
    assert seen == [(False, None, b"poison"), (True, 1, b"poison"), (True, 2, b"poison")]
    [(method, p, body)] = get_messages(ch, dlq, 1)
    assert body == b"poison" and method.routing_key == q
    [entry] = x_death(p)
    assert_death(entry, count=1, reason="delivery_limit", queue=q, exchange="",
                 routing_keys=[q])
    assert_first_death(p, reason="delivery_limit", queue=q, exchange="")
    assert p.headers["k"] == "v"
    assert "x-delivery-count" not in p.headers
    assert message_count(connection, q) == 0


@pytest.mark.warren_only
def test_delivery_limit_without_dlx_drops_poison_message(connection, unique):
    ch = connection.channel()
    q = unique("poison")
    ch.queue_declare(q, exclusive=True, arguments={"x-delivery-limit": 2})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"poison")
    ch.basic_publish("", q, b"healthy")
    [(m, _, body)] = get_messages(ch, q, 1, auto_ack=False)
    assert body == b"poison"
    ch.basic_nack(m.delivery_tag, requeue=True)
    for expected_count in (1, 2):
        [(m, p, body)] = get_messages(ch, q, 1, auto_ack=False)
        assert (body, m.redelivered, p.headers) == (b"poison", True,
                                                    {"x-delivery-count": expected_count})
        ch.basic_nack(m.delivery_tag, requeue=True)
    # Over the limit: dropped; the next message is the healthy one.
    [(m, p, body)] = get_messages(ch, q, 1)
    assert (body, m.redelivered, p.headers) == (b"healthy", False, None)
    assert ch.basic_get(q, auto_ack=True) == (None, None, None)


# --------------------------------------------------------------------------------------------
# 5. Priority queues
# --------------------------------------------------------------------------------------------

def test_priority_queue_delivers_highest_first_fifo_within_priority(connection, unique):
    ch = connection.channel()
    q = unique("prio")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 10})
    ch.confirm_delivery()
    sent = [("a", None), ("b", 5), ("c", 1), ("d", 10), ("e", 5), ("f", 20), ("g", 0),
            ("h", 10), ("i", 9), ("j", None)]
    for body, priority in sent:
        ch.basic_publish("", q, body.encode(), properties=props(priority=priority))
    got = get_messages(ch, q, len(sent))
    # 20 counts as 10 (the maximum), so "f" sits between the other two 10s in publish order;
    # no priority is priority 0.
    assert [b.decode() for _, _, b in got] == ["d", "f", "h", "i", "b", "e", "c", "a", "g", "j"]
    assert {b.decode(): p.priority for _, p, b in got}["f"] == 20  # property untouched


def test_priority_queue_consumer_gets_highest_first(connection, unique):
    ch = connection.channel()
    q = unique("prio")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 3})
    ch.confirm_delivery()
    for i, priority in enumerate([0, 1, 2, 3, 0, 3]):
        ch.basic_publish("", q, f"{priority}-{i}".encode(), properties=props(priority=priority))
    got = []
    ch.basic_consume(q, lambda _c, _m, _p, body: got.append(body.decode()), auto_ack=True)
    pump_until(connection, lambda: len(got) == 6, lambda: f"6 deliveries, got {got}")
    assert got == ["3-3", "3-5", "2-2", "1-1", "0-0", "0-4"]


def test_priority_queue_requeued_message_goes_back_to_its_priority(connection, unique):
    ch = connection.channel()
    q = unique("prio")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-priority": 5})
    ch.confirm_delivery()
    for body, priority in (("lo", 1), ("hi", 5), ("mid", 3)):
        ch.basic_publish("", q, body.encode(), properties=props(priority=priority))
    [(method, _, body)] = get_messages(ch, q, 1, auto_ack=False)
    assert body == b"hi"
    ch.basic_publish("", q, b"hi2", properties=props(priority=5))
    ch.basic_nack(method.delivery_tag, requeue=True)
    wait_message_count(connection, q, 4)
    got = get_messages(ch, q, 4)
    assert [(b, m.redelivered) for m, _, b in got] == [
        (b"hi", True), (b"hi2", False), (b"mid", False), (b"lo", False)]


# --------------------------------------------------------------------------------------------
# 6. Consumers: single active consumer, priorities, cancel notification
# --------------------------------------------------------------------------------------------

def test_single_active_consumer_only_first_receives_until_it_cancels(connection, unique):
    q = unique("sac")
    setup = connection.channel()
    setup.queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    chans, got, tags = [connection.channel(), connection.channel()], [[], []], []
    for i, ch in enumerate(chans):
        tags.append(ch.basic_consume(q, lambda _c, _m, _p, b, i=i: got[i].append(b),
                                     auto_ack=True))
    assert passive_declare(connection, q).consumer_count == 2

    for i in range(6):
        setup.basic_publish("", q, f"a{i}".encode())
    pump_until(connection, lambda: len(got[0]) == 6, lambda: f"6 messages for the first, {got}")
    pump_for(connection, NOTHING_MORE_S / 2)
    assert got == [[f"a{i}".encode() for i in range(6)], []]

    chans[0].basic_cancel(tags[0])
    for i in range(4):
        setup.basic_publish("", q, f"b{i}".encode())
    pump_until(connection, lambda: len(got[1]) == 4, lambda: f"4 messages for the second, {got}")
    assert got[1] == [f"b{i}".encode() for i in range(4)]
    assert len(got[0]) == 6


def test_single_active_consumer_unacked_messages_go_to_the_next_consumer(connection, unique):
    q = unique("sac")
    setup = connection.channel()
    setup.queue_declare(q, exclusive=True, arguments={"x-single-active-consumer": True})
    first, second = connection.channel(), connection.channel()
    got1, got2 = [], []
    first.basic_consume(q, lambda _c, m, _p, b: got1.append(b))  # never acks
    second.basic_consume(q, lambda _c, m, _p, b: got2.append((b, m.redelivered)),
                         auto_ack=True)
    for i in range(3):
        setup.basic_publish("", q, f"m{i}".encode())
    pump_until(connection, lambda: len(got1) == 3, "3 deliveries to the active consumer")
    assert got2 == []
    first.close()  # unacked messages are requeued and the second consumer takes over
    pump_until(connection, lambda: len(got2) == 3, lambda: f"3 redeliveries, got {got2}")
    assert got2 == [(f"m{i}".encode(), True) for i in range(3)]


def test_consumer_priority_higher_gets_all_until_at_prefetch_limit(connect, unique):
    conn = connect()
    q = unique("cprio")
    setup = conn.channel()
    setup.queue_declare(q, exclusive=True)
    low, high = conn.channel(), conn.channel()
    low.basic_qos(prefetch_count=10)
    high.basic_qos(prefetch_count=3)
    got_low, got_high = [], []
    # The low-priority consumer subscribes first: round-robin would start with it.
    low.basic_consume(q, lambda _c, m, _p, b: got_low.append((m.delivery_tag, b)),
                      arguments={"x-priority": 1})
    high.basic_consume(q, lambda _c, m, _p, b: got_high.append((m.delivery_tag, b)),
                       arguments={"x-priority": 10})

    for i in range(2):
        setup.basic_publish("", q, f"m{i}".encode())
    pump_until(conn, lambda: len(got_high) == 2, lambda: f"2 for high, {got_high} {got_low}")
    pump_for(conn, NOTHING_MORE_S / 2)
    assert got_low == []

    for i in range(2, 6):
        setup.basic_publish("", q, f"m{i}".encode())
    # high takes one more (3 = its prefetch), then low gets the overflow.
    pump_until(conn, lambda: len(got_high) + len(got_low) == 6,
               lambda: f"6 deliveries, high {got_high} low {got_low}")
    assert [b for _, b in got_high] == [b"m0", b"m1", b"m2"]
    assert [b for _, b in got_low] == [b"m3", b"m4", b"m5"]

    # With credit again, high takes precedence again.
    high.basic_ack(got_high[-1][0], multiple=True)
    high.queue_declare(q, passive=True)  # round trip: the ack is processed before we publish
    for i in range(6, 8):
        setup.basic_publish("", q, f"m{i}".encode())
    pump_until(conn, lambda: len(got_high) == 5, lambda: f"5 for high, {got_high} {got_low}")
    assert [b for _, b in got_high[3:]] == [b"m6", b"m7"]
    assert len(got_low) == 3


def test_consumer_gets_basic_cancel_when_its_queue_is_deleted(connection, unique):
    q = unique("doomed")
    ch = connection.channel()
    ch.queue_declare(q)
    cancels = []
    ch.add_on_cancel_callback(cancels.append)
    tag = ch.basic_consume(q, lambda *a: None)
    other = connection.channel()
    other.queue_delete(q)
    pump_until(connection, lambda: cancels, "basic.cancel from the broker")
    [frame] = cancels
    assert frame.method.NAME == "Basic.Cancel"
    assert frame.method.consumer_tag == tag
    assert ch.is_open
    assert ch.queue_declare("", exclusive=True).method.queue  # channel still usable


# --------------------------------------------------------------------------------------------
# 7. Consumer timeout as a visibility timeout (Warren's default action)
# --------------------------------------------------------------------------------------------

@pytest.mark.warren_only
def test_consumer_timeout_requeues_delivery_and_cancels_consumer(connect, unique):
    conn, other_conn = connect(), connect()
    q = unique("visibility")
    ch = conn.channel()
    ch.queue_declare(q, arguments={"x-consumer-timeout": 300})
    ch.confirm_delivery()
    deliveries, cancels = [], []
    ch.add_on_cancel_callback(cancels.append)
    tag = ch.basic_consume(q, lambda _c, m, _p, b: deliveries.append((m, b)))
    started = time.monotonic()
    ch.basic_publish("", q, b"acked-in-time")
    ch.basic_publish("", q, b"forgotten")
    pump_until(conn, lambda: len(deliveries) == 2, "two deliveries")
    ch.basic_ack(deliveries[0][0].delivery_tag)

    pump_until(conn, lambda: cancels, "basic.cancel after the consumer timeout")
    assert time.monotonic() - started >= 0.28, "cancelled before the timeout"
    assert cancels[0].method.consumer_tag == tag
    other = other_conn.channel()
    [(method, _, body)] = get_messages(other, q, 1)
    assert (body, method.redelivered) == (b"forgotten", True)
    assert other.basic_get(q, auto_ack=True) == (None, None, None)  # the acked one is gone
    assert len(deliveries) == 2  # not redelivered to the timed-out consumer
    # The channel survives: its next operations work.
    assert ch.is_open
    assert ch.queue_declare(q, passive=True).method.consumer_count == 0
    ch.basic_publish("", q, b"after")
    assert get_bodies(ch, q, 1) == [b"after"]


@pytest.mark.warren_only
def test_consumer_timeout_also_requeues_unacked_basic_get(connection, unique):
    ch = connection.channel()
    q = unique("visibility")
    ch.queue_declare(q, exclusive=True, arguments={"x-consumer-timeout": 200})
    ch.confirm_delivery()
    ch.basic_publish("", q, b"fetched")
    started = time.monotonic()
    [(method, _, _)] = get_messages(ch, q, 1, auto_ack=False)
    assert not method.redelivered
    other = connection.channel()
    [(method, _, body)] = get_messages(other, q, 1)
    assert time.monotonic() - started >= 0.18, "back before the timeout"
    assert (body, method.redelivered) == (b"fetched", True)
    assert ch.is_open


# --------------------------------------------------------------------------------------------
# 8. Alternate exchanges
# --------------------------------------------------------------------------------------------

def test_alternate_exchange_receives_unroutable_messages(connection, unique):
    ch = connection.channel()
    ae = unique("ae")
    ch.exchange_declare(ae, exchange_type="fanout")
    ae_q = unique("aeq")
    ch.queue_declare(ae_q, exclusive=True)
    ch.queue_bind(ae_q, ae)
    main = unique("main")
    ch.exchange_declare(main, exchange_type="direct", arguments={"alternate-exchange": ae})
    main_q = unique("mainq")
    ch.queue_declare(main_q, exclusive=True)
    ch.queue_bind(main_q, main, routing_key="known")

    returned = []
    ch.add_on_return_callback(lambda _c, m, _p, b: returned.append(b))
    ch.confirm_delivery()
    ch.basic_publish(main, "known", b"routed")
    ch.basic_publish(main, "unknown", b"to-ae")
    # mandatory: the AE routes it, so no basic.return (pika would raise UnroutableError)
    ch.basic_publish(main, "unknown-too", b"mandatory-to-ae", mandatory=True)
    pump_for(connection, NOTHING_MORE_S / 2)
    assert returned == []
    assert get_bodies(ch, main_q, 1) == [b"routed"]
    got = get_messages(ch, ae_q, 2)
    assert [b for _, _, b in got] == [b"to-ae", b"mandatory-to-ae"]
    # Delivered with the original exchange and routing key.
    assert [(m.exchange, m.routing_key) for m, _, _ in got] == [(main, "unknown"),
                                                                (main, "unknown-too")]
    assert ch.basic_get(main_q, auto_ack=True) == (None, None, None)


def test_alternate_exchanges_chain(connection, unique):
    ch = connection.channel()
    first, second, last = unique("ae1"), unique("ae2"), unique("ae3")
    ch.exchange_declare(last, exchange_type="fanout")
    ch.exchange_declare(second, exchange_type="direct", arguments={"alternate-exchange": last})
    ch.exchange_declare(first, exchange_type="direct", arguments={"alternate-exchange": second})
    q = unique("q")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, last)
    ch.confirm_delivery()
    ch.basic_publish(first, "k", b"through two AEs", mandatory=True)  # no UnroutableError
    [(method, _, body)] = get_messages(ch, q, 1)
    assert (body, method.exchange, method.routing_key) == (b"through two AEs", first, "k")


@pytest.mark.parametrize("case", ["ae-without-bindings", "ae-missing", "ae-cycle"])
def test_alternate_exchange_that_cannot_route_returns_mandatory(connection, unique, case):
    ch = connection.channel()
    ae, main = unique("ae"), unique("main")
    if case == "ae-without-bindings":
        ch.exchange_declare(ae, exchange_type="fanout")
    elif case == "ae-cycle":  # ae's own AE is main: must not loop
        ch.exchange_declare(ae, exchange_type="direct", arguments={"alternate-exchange": main})
    ch.exchange_declare(main, exchange_type="direct", arguments={"alternate-exchange": ae})
    ch.confirm_delivery()
    with pytest.raises(UnroutableError) as err:
        ch.basic_publish(main, "nowhere", b"lost", mandatory=True)
    [msg] = err.value.messages
    assert (msg.method.reply_code, msg.method.reply_text) == (312, "NO_ROUTE")
    assert (msg.method.exchange, msg.method.routing_key) == (main, "nowhere")
    ch.basic_publish(main, "nowhere", b"dropped")  # without mandatory: confirmed, dropped
    assert ch.is_open


# --------------------------------------------------------------------------------------------
# 9. Direct reply-to
# --------------------------------------------------------------------------------------------

REPLY_TO = "amq.rabbitmq.reply-to"


def test_direct_reply_to_rpc_round_trip(connect, unique):
    server_conn, client_conn = connect(), connect()
    rpc = unique("rpc")
    server = server_conn.channel()
    server.queue_declare(rpc)
    seen_reply_to = []

    def on_request(ch, method, p, body):
        seen_reply_to.append(p.reply_to)
        ch.basic_publish("", p.reply_to, body.upper(),
                         properties=props(correlation_id=p.correlation_id))
        ch.basic_ack(method.delivery_tag)

    server.basic_consume(rpc, on_request)

    client = client_conn.channel()
    replies = []
    client.basic_consume(REPLY_TO, lambda _c, m, p, b: replies.append((p.correlation_id, b)),
                         auto_ack=True)
    for i in range(3):
        client.basic_publish("", rpc, f"request {i}".encode(),
                             properties=props(reply_to=REPLY_TO, correlation_id=f"c{i}"))
    pump_until([server_conn, client_conn], lambda: len(replies) == 3,
               lambda: f"3 replies, got {replies}")
    assert replies == [(f"c{i}", f"REQUEST {i}".encode()) for i in range(3)]
    assert all(r.startswith(REPLY_TO + ".") and len(r) > len(REPLY_TO) + 1
               for r in seen_reply_to), seen_reply_to
    assert len(set(seen_reply_to)) == 1  # one channel, one reply address


def test_direct_reply_to_unknown_address_is_unroutable(connection):
    ch = connection.channel()
    ch.confirm_delivery()
    with pytest.raises(UnroutableError) as err:
        ch.basic_publish("", REPLY_TO + ".no-such-channel", b"late reply", mandatory=True)
    assert err.value.messages[0].method.reply_code == 312
    ch.basic_publish("", REPLY_TO + ".no-such-channel", b"late reply")  # dropped
    assert ch.is_open


def test_direct_reply_to_publish_without_reply_consumer_is_406(connection, unique):
    q = unique("rpc")
    connection.channel().queue_declare(q)

    def publish(ch):
        ch.basic_publish("", q, b"req", properties=props(reply_to=REPLY_TO))
        ch.basic_get(q)

    err = channel_error(connection, publish)
    assert (err.reply_code, err.reply_text) == (
        406, "PRECONDITION_FAILED - fast reply consumer does not exist")
    assert message_count(connection, q) == 0


def test_direct_reply_to_consumer_with_manual_ack_is_406(connection):
    err = channel_error(connection, lambda ch: ch.basic_consume(REPLY_TO, lambda *a: None))
    assert (err.reply_code, err.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer cannot acknowledge")


def test_direct_reply_to_second_consumer_on_channel_is_406(connection):
    def consume_twice(ch):
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
        ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)

    err = channel_error(connection, consume_twice)
    assert (err.reply_code, err.reply_text) == (
        406, "PRECONDITION_FAILED - reply consumer already set")


# --------------------------------------------------------------------------------------------
# 10. Argument validation
# --------------------------------------------------------------------------------------------

INTEGER_EXPECTED = '"expected integer, got longstr"'

INVALID_QUEUE_ARGS = [  # (arguments, the detail after "invalid arg '<name>' for queue ...: ")
    ({"x-message-ttl": "abc"}, INTEGER_EXPECTED),
    ({"x-message-ttl": -1}, "{value_negative,-1}"),
    ({"x-message-ttl": 315360000001}, "{value_too_large,315360000001}"),
    ({"x-expires": 0}, "{value_zero,0}"),
    ({"x-expires": -5}, "{value_negative,-5}"),
    ({"x-expires": "soon"}, INTEGER_EXPECTED),
    ({"x-expires": 315360000001}, "{value_too_large,315360000001}"),
    ({"x-max-length": -1}, "{value_negative,-1}"),
    ({"x-max-length": "ten"}, INTEGER_EXPECTED),
    ({"x-max-length-bytes": -1}, "{value_negative,-1}"),
    ({"x-max-priority": 256}, "{max_value_exceeded,256}"),
    ({"x-max-priority": -1}, "{value_negative,-1}"),
    ({"x-max-priority": "hi"}, INTEGER_EXPECTED),
    ({"x-overflow": "drop-tail"}, "invalid_overflow"),
    ({"x-overflow": 1}, "{unacceptable_type,signedint}"),
    ({"x-dead-letter-routing-key": "rk"}, "routing_key_but_no_dlx_defined"),
    ({"x-single-active-consumer": "yes"}, "{unacceptable_type,longstr}"),
    ({"x-single-active-consumer": 1}, "{unacceptable_type,signedint}"),
]


@pytest.mark.parametrize("arguments, detail", INVALID_QUEUE_ARGS,
                         ids=[f"{next(iter(a))}={a[next(iter(a))]!r}"
                              for a, _ in INVALID_QUEUE_ARGS])
def test_invalid_queue_argument_is_406_with_rabbitmq_text(connection, unique, arguments,
                                                          detail):
    q = unique("q")
    [name] = [k for k in arguments if k != "x-dead-letter-exchange"]
    err = declare_error(connection, q, arguments)
    assert err.reply_code == 406
    assert err.reply_text == (f"PRECONDITION_FAILED - invalid arg '{name}' for queue '{q}' "
                              f"in vhost '{VHOST}': {detail}")
    # Nothing was created.
    with pytest.raises(ChannelClosedByBroker) as missing:
        passive_declare(connection, q)
    assert missing.value.reply_code == 404


def test_dead_letter_exchange_of_wrong_type_is_406(connection, unique):
    q = unique("q")
    err = declare_error(connection, q, {"x-dead-letter-exchange": 1})
    assert (err.reply_code, err.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'x-dead-letter-exchange' "
             f"in queue '{q}' in vhost '{VHOST}'")


def test_alternate_exchange_of_wrong_type_is_406(connection, unique):
    ex = unique("ex")
    err = channel_error(connection, lambda ch: ch.exchange_declare(
        ex, exchange_type="direct", arguments={"alternate-exchange": 1}))
    assert (err.reply_code, err.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid type 'signedint' for arg 'alternate-exchange' "
             f"in exchange '{ex}' in vhost '{VHOST}'")


def test_consumer_priority_of_wrong_type_is_406(connection, unique):
    q = unique("q")
    connection.channel().queue_declare(q)
    err = channel_error(connection, lambda ch: ch.basic_consume(
        q, lambda *a: None, arguments={"x-priority": "high"}))
    assert (err.reply_code, err.reply_text) == (
        406, f"PRECONDITION_FAILED - invalid arg 'x-priority' for queue '{q}' in vhost "
             f"'{VHOST}': {INTEGER_EXPECTED}")
    assert passive_declare(connection, q).consumer_count == 0


def test_argument_values_at_the_limits_are_accepted(connection, unique):
    ch = connection.channel()
    for arguments in ({"x-max-priority": 255}, {"x-max-priority": 0},
                      {"x-expires": 2 ** 33}, {"x-expires": 315360000000},
                      {"x-message-ttl": 0}, {"x-message-ttl": 315360000000},
                      {"x-max-length": 0}, {"x-single-active-consumer": False},
                      {"x-overflow": "drop-head"}):
        q = unique("q")
        assert ch.queue_declare(q, exclusive=True, arguments=arguments).method.queue == q


INEQUIVALENT = [  # (current arguments, redeclared arguments, name, "received ... current ...")
    ({"x-message-ttl": 100}, {"x-message-ttl": 200}, "x-message-ttl",
     "received '200' but current is '100'"),
    ({"x-message-ttl": 100}, None, "x-message-ttl",
     "received none but current is the value '100' of type 'signedint'"),
    (None, {"x-max-length": 5}, "x-max-length",
     "received the value '5' of type 'signedint' but current is none"),
    ({"x-dead-letter-exchange": "a"}, {"x-dead-letter-exchange": "b"},
     "x-dead-letter-exchange", "received 'b' but current is 'a'"),
    ({"x-dead-letter-exchange": "a"}, None, "x-dead-letter-exchange",
     "received none but current is the value 'a' of type 'longstr'"),
    ({"x-single-active-consumer": True}, {"x-single-active-consumer": False},
     "x-single-active-consumer", "received 'false' but current is 'true'"),
    ({"x-overflow": "reject-publish"}, {"x-overflow": "drop-head"}, "x-overflow",
     "received 'drop-head' but current is 'reject-publish'"),
]


@pytest.mark.parametrize("current, redeclared, name, detail", INEQUIVALENT,
                         ids=[f"{n}:{c and c[n]!r}->{r and r[n]!r}"
                              for c, r, n, _ in INEQUIVALENT])
def test_redeclare_with_different_known_argument_is_406_inequivalent(
        connection, unique, current, redeclared, name, detail):
    q = unique("q")
    connection.channel().queue_declare(q, arguments=current)
    connection.channel().queue_declare(q, arguments=current)  # same: fine
    err = declare_error(connection, q, redeclared)
    assert (err.reply_code, err.reply_text) == (
        406, f"PRECONDITION_FAILED - inequivalent arg '{name}' for queue '{q}' in vhost "
             f"'{VHOST}': {detail}")


def test_redeclare_exchange_with_different_alternate_exchange_is_406(connection, unique):
    ex = unique("ex")
    connection.channel().exchange_declare(ex, exchange_type="direct",
                                          arguments={"alternate-exchange": "a"})
    err = channel_error(connection, lambda ch: ch.exchange_declare(
        ex, exchange_type="direct", arguments={"alternate-exchange": "b"}))
    assert (err.reply_code, err.reply_text) == (
        406, f"PRECONDITION_FAILED - inequivalent arg 'alternate-exchange' for exchange '{ex}' "
             f"in vhost '{VHOST}': received 'b' but current is 'a'")


def test_unknown_x_arguments_are_accepted(connection, unique):
    ch = connection.channel()
    q = unique("q")
    ch.queue_declare(q, arguments={"x-custom": "a", "x-other": 7, "plain": True})
    assert ch.queue_declare(q, arguments={"x-custom": "a", "x-other": 7, "plain": True})
    ex = unique("ex")
    ch.exchange_declare(ex, exchange_type="topic", arguments={"x-custom": "a"})
    ch.exchange_declare(ex, exchange_type="topic", arguments={"x-custom": "a"})
    ch.queue_bind(q, ex, routing_key="k")
    ch.basic_publish(ex, "k", b"still works")
    assert get_bodies(ch, q, 1) == [b"still works"]


def test_unknown_x_arguments_are_ignored_on_redeclare(connection, unique):
    """As RabbitMQ: a redeclare is compared only on the arguments it knows."""
    q = unique("q")
    connection.channel().queue_declare(q, arguments={"x-custom": "a"})
    assert connection.channel().queue_declare(q, arguments={"x-custom": "b"})
    assert connection.channel().queue_declare(q)
    ex = unique("ex")
    connection.channel().exchange_declare(ex, exchange_type="topic", arguments={"x-custom": "a"})
    connection.channel().exchange_declare(ex, exchange_type="topic", arguments={"x-custom": "b"})
