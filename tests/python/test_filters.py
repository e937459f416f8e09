"""Content filters on headers-exchange bindings (``x-match: filter``) through pika.

The seeds' example: a binding whose SNS-style filter policy is
``{"fare": [{"numeric": [">=", 10]}]}`` receives only messages whose ``fare`` header is at least
10. Publisher confirms tell when every message has been routed, so the queue is then drained
with basic.get and compared exactly.
"""

import json
from decimal import Decimal

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker



def drain(ch, queue):
    """Every message in ``queue`` (basic.get, auto-ack): exact once confirms came back."""
    bodies = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return bodies
        bodies.append(body)


@pytest.mark.warren_only
def test_numeric_filter_delivers_only_fares_of_at_least_ten(connection, unique):
    ch = connection.channel()
    ch.confirm_delivery()
    exchange, queue = unique("fares"), unique("dear")
    ch.exchange_declare(exchange, exchange_type="headers")
    ch.queue_declare(queue)
    policy = {"fare": [{"numeric": [">=", 10]}]}
    ch.queue_bind(queue, exchange, arguments={"x-match": "filter",
                                              "x-filter": json.dumps(policy)})
    # pika sends ints as integers and Decimals as AMQP decimals (it has no float type).
    for fare in [3, Decimal("9.99"), 10, Decimal("12.5"), 250, "11"]:
        properties = pika.BasicProperties(headers={"fare": fare})
        ch.basic_publish(exchange, "", f"fare={fare}".encode(), properties)
    ch.basic_publish(exchange, "", b"no fare")
    # The string "11" is not a number: SNS does not compare strings numerically either.
    assert drain(ch, queue) == [b"fare=10", b"fare=12.5", b"fare=250"]


@pytest.mark.warren_only
def test_an_invalid_policy_is_refused_at_bind_time(connection, unique):
    ch = connection.channel()
    exchange, queue = unique("fares"), unique("q")
    ch.exchange_declare(exchange, exchange_type="headers")
    ch.queue_declare(queue)
    with pytest.raises(ChannelClosedByBroker) as refused:
        ch.queue_bind(queue, exchange, arguments={
            "x-match": "filter", "x-filter": '{"fare": [{"numerc": [">=", 10]}]}'})
    assert refused.value.reply_code == 406
    assert 'unknown operator "numerc" at key "fare"' in refused.value.reply_text
    assert connection.is_open
