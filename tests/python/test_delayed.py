"""The delayed-message exchange (``x-delayed-message``) through pika, in the way it is used
most: retry with backoff. A consumer that fails to handle a message republishes it to a
delayed exchange with ``x-delay`` and acks it; the exchange routes it back to the work queue
no earlier than the delay. Runs against RabbitMQ with ``rabbitmq_delayed_message_exchange``
enabled too."""

import time

import pika

from amqphelpers import pump_until

BACKOFF_MS = 500


def test_a_failed_message_comes_back_after_its_backoff(connection, unique):
    ch = connection.channel()
    retry = unique("retry")
    work = unique("work")
    ch.exchange_declare(retry, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(work)
    ch.queue_bind(work, retry, routing_key=work)
    ch.confirm_delivery()

    arrivals = []

    def on_message(channel, method, properties, body):
        arrivals.append((time.monotonic(), dict(properties.headers or {})))
        attempt = int((properties.headers or {}).get("x-attempt", 0))
        if attempt == 0:
            # "Processing failed": retry later through the delayed exchange.
            channel.basic_publish(
                retry, work, body,
                pika.BasicProperties(headers={"x-delay": BACKOFF_MS, "x-attempt": attempt + 1},
                                     delivery_mode=2))
        channel.basic_ack(method.delivery_tag)

    ch.basic_consume(work, on_message)
    ch.basic_publish("", work, b"job", pika.BasicProperties(headers={"x-attempt": 0}))
    pump_until(connection, lambda: len(arrivals) >= 2, "the retried message")
    (first, _), (second, headers) = arrivals[0], arrivals[1]
    assert second - first >= BACKOFF_MS / 1000.0, f"came back after {second - first:.3f} s"
    assert headers["x-attempt"] == 1
    # As the plugin: the delay header is negated on the way out.
    assert headers["x-delay"] == -BACKOFF_MS
