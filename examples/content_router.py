"""Content-based router: each desk gets the bookings whose content it cares about.

A booking service publishes every fare to one headers exchange, with what it knows about the
booking as message headers (fare, region, channel). Instead of one routing key per audience,
each desk binds its queue with a filter policy in the grammar of AWS SNS subscription filters
(Warren's `x-match: filter` with an `x-filter` binding argument): the premium desk wants fares
of 100 or more, the Europe desk bookings in `eu-west`/`eu-central` or any `eu-north-*` region,
and the analytics desk everything but bookings from the `test` channel. Adding an audience is
one binding; the publisher does not change.

Checks: each desk got exactly the bookings its policy matches, in order.
"""
import argparse
import json
import os
import sys
import time
import uuid

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

EXCHANGE = f"examples.content-router.bookings.{uuid.uuid4().hex[:8]}"
POLICIES = {
    "premium": {"fare": [{"numeric": [">=", 100]}]},
    "europe": {"region": ["eu-west", "eu-central", {"prefix": "eu-north-"}]},
    "analytics": {"channel": [{"anything-but": "test"}]},
}
BOOKINGS = [  # (id, headers)
    ("b1", {"fare": 250, "region": "eu-west", "channel": "web"}),
    ("b2", {"fare": 40, "region": "us-east", "channel": "app"}),
    ("b3", {"fare": 99, "region": "eu-north-1", "channel": "test"}),
    ("b4", {"fare": 100, "region": "ap-south", "channel": "test"}),
    ("b5", {"fare": 12, "region": "eu-central", "channel": "agent"}),
]
EXPECTED = {"premium": ["b1", "b4"], "europe": ["b1", "b3", "b5"],
            "analytics": ["b1", "b2", "b5"]}


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "headers")
    received = {desk: [] for desk in POLICIES}
    for desk, policy in POLICIES.items():
        queue = ch.queue_declare("", exclusive=True).method.queue
        # The routing key is ignored; the policy decides.
        ch.queue_bind(queue, EXCHANGE, arguments={"x-match": "filter",
                                                  "x-filter": json.dumps(policy)})
        ch.basic_consume(queue, lambda c, m, p, body, d=desk: received[d].append(body.decode()),
                         auto_ack=True)

    for booking, headers in BOOKINGS:
        ch.basic_publish(EXCHANGE, "", booking.encode(), pika.BasicProperties(headers=headers))
    # A marker every policy matches, published last: once each desk has it, each queue has
    # everything it will ever get (a queue keeps publication order).
    marker = {"fare": 1000, "region": "eu-west", "channel": "web"}
    ch.basic_publish(EXCHANGE, "", b"end", pika.BasicProperties(headers=marker))
    deadline = time.monotonic() + 5
    while (any(not r or r[-1] != "end" for r in received.values())
           and time.monotonic() < deadline):
        conn.process_data_events(time_limit=0.05)
    ch.exchange_delete(EXCHANGE)
    conn.close()

    ok = True
    for desk, policy in POLICIES.items():
        got = [b for b in received[desk] if b != "end"]
        print(f"{desk} {json.dumps(policy)}: {got}")
        ok = ok and received[desk][-1:] == ["end"] and got == EXPECTED[desk]
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
