"""Message deduplication through pika, as with RabbitMQ's ``rabbitmq-message-deduplication``
plugin (the usage of the plugin author's pika example): an ``x-message-deduplication``
exchange with ``x-cache-size`` given as a string routes one message per
``x-deduplication-header`` value and confirms the duplicates; a queue declared with
``x-message-deduplication: true`` holds one message per key; a missing ``x-cache-size`` is
refused with 406.
"""

import hashlib

import pytest
from pika.exceptions import ChannelClosedByBroker

from amqphelpers import get_bodies, message_count, props


def keyed(key):
    return props(headers={"x-deduplication-header": key})


@pytest.mark.warren_only
def test_deduplication_exchange_and_queue(connection, unique):
    ch = connection.channel()
    x = unique("dedupx")
    ch.exchange_declare(x, exchange_type="x-message-deduplication",
                        arguments={"x-cache-size": "5"})
    q = unique("q")
    ch.queue_declare(q, exclusive=True)
    ch.queue_bind(q, x)
    ch.confirm_delivery()  # every publish below raises unless acked
    body = b"hello world"
    digest = hashlib.md5(body).hexdigest()
    for _ in range(10):
        ch.basic_publish(x, "", body, properties=keyed(digest))
    ch.basic_publish(x, "", b"other", properties=keyed("other"))
    ch.basic_publish(x, "", b"no header")
    assert message_count(connection, q) == 3
    assert get_bodies(ch, q, 3) == [body, b"other", b"no header"]

    dq = unique("dq")
    ch.queue_declare(dq, exclusive=True, arguments={"x-message-deduplication": True})
    for n in range(3):
        ch.basic_publish("", dq, b"copy %d" % n, properties=keyed("k"))
    assert message_count(connection, dq) == 1
    assert get_bodies(ch, dq, 1) == [b"copy 0"]  # taken with auto-ack: the key is free
    ch.basic_publish("", dq, b"after", properties=keyed("k"))
    assert get_bodies(ch, dq, 1) == [b"after"]


@pytest.mark.warren_only
def test_deduplication_exchange_needs_a_cache_size(connection, unique):
    ch = connection.channel()
    with pytest.raises(ChannelClosedByBroker) as closed:
        ch.exchange_declare(unique("dedupx"), exchange_type="x-message-deduplication")
    assert closed.value.reply_code == 406
    assert "x-cache-size" in closed.value.reply_text
