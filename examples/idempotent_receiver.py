"""Idempotent receiver: a publisher that retries never makes an order be processed twice.

A publisher in confirm mode that loses a confirm (a timeout, a reconnect) cannot know whether
the broker got the message, so it publishes it again: at-least-once. Here the broker drops
the copies: orders go through an `x-message-deduplication` exchange (Warren's built-in
equivalent of the rabbitmq-message-deduplication plugin) and carry their order id in the
`x-deduplication-header` header. The exchange remembers the ids it routed (`x-cache-size`
of them, each for `x-cache-ttl` ms) and does not route a message whose id it has seen, but it
still confirms it (`basic.ack`), so the retrying publisher is satisfied.

Checks: every publish, retries included, was acked; each order reached the order service
exactly once.
"""
import argparse
import os
import sys
import time
import uuid

import pika
from pika.exceptions import NackError

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

RUN = uuid.uuid4().hex[:8]
EXCHANGE, QUEUE = f"examples.idempotent.orders.{RUN}", f"examples.idempotent.order-service.{RUN}"
ORDERS = [f"order-{n}" for n in range(1, 6)]
RETRIED = ["order-2", "order-4", "order-2"]  # confirms "lost": published again (order-2 twice)


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "x-message-deduplication", arguments={
        "x-cache-size": 10000,     # order ids remembered (the oldest is forgotten first)
        "x-cache-ttl": 600000})    # ... each for 10 minutes, longer than any retry
    ch.queue_declare(QUEUE)
    ch.queue_bind(QUEUE, EXCHANGE)  # routes like a fanout: no routing key needed

    pub = conn.channel()
    pub.confirm_delivery()  # basic_publish returns once the broker acked (raises if nacked)
    acked = 0
    for order in ORDERS + RETRIED:
        props = pika.BasicProperties(delivery_mode=2, message_id=order,
                                     headers={"x-deduplication-header": order})
        try:
            pub.basic_publish(EXCHANGE, "", f"{order}: 1 x widget".encode(), props)
            acked += 1
        except NackError:
            print(f"{order}: nacked")
    print(f"publishes acked: {acked} of {len(ORDERS) + len(RETRIED)}")

    processed = []

    def on_order(ch, method, props, body):
        processed.append(props.message_id)
        print(f"order service: processing {body.decode()}")
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(QUEUE, on_order)
    # Wait for the orders, then a little longer: a duplicate would arrive after them.
    deadline = time.monotonic() + 5
    while len(processed) < len(ORDERS) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    conn.process_data_events(time_limit=0.3)
    ch.queue_delete(QUEUE)
    ch.exchange_delete(EXCHANGE)
    conn.close()

    counts = {order: processed.count(order) for order in ORDERS}
    print(f"times each order was processed: {counts}")
    ok = acked == len(ORDERS) + len(RETRIED) and processed == ORDERS
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
