"""Topics: a topic exchange routes on patterns over dotted routing keys.

Routing keys are "<source>.<severity>[.<more>]". `*` matches exactly one word, `#` zero or more:
  * "kern.#"      - everything from the kernel, however deep (and "kern" itself)
  * "*.critical"  - critical messages of any single-word source
  * "#"           - everything (an audit trail)

Checks: each queue received exactly the keys its pattern matches, in order.
"""
import argparse
import os
import sys
import time
import uuid

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

EXCHANGE = f"examples.topics.logs.{uuid.uuid4().hex[:8]}"
PATTERNS = {"kernel": "kern.#", "critical": "*.critical", "audit": "#"}
KEYS = ["kern.critical", "kern.info.disk", "app.critical", "app.info",
        "kern", "app.db.critical", "cron.warning"]
EXPECTED = {
    "kernel": ["kern.critical", "kern.info.disk", "kern"],
    "critical": ["kern.critical", "app.critical"],   # not "app.db.critical": * is one word
    "audit": KEYS,
}


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "topic")
    received = {name: [] for name in PATTERNS}
    for name, pattern in PATTERNS.items():
        queue = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queue, EXCHANGE, routing_key=pattern)
        ch.basic_consume(queue, lambda c, m, p, b, n=name: received[n].append(m.routing_key),
                         auto_ack=True)

    for key in KEYS:
        ch.basic_publish(EXCHANGE, key, f"message for {key}".encode())

    # Queues keep publication order: once the last expected key arrived, nothing else will.
    deadline = time.monotonic() + 5
    while (any(len(received[n]) < len(EXPECTED[n]) for n in PATTERNS)
           and time.monotonic() < deadline):
        conn.process_data_events(time_limit=0.05)
    ch.exchange_delete(EXCHANGE)
    conn.close()

    ok = True
    for name, pattern in PATTERNS.items():
        print(f"{name} ({pattern}): {received[name]}")
        ok = ok and received[name] == EXPECTED[name]
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
