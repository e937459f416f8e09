"""Routing: a direct exchange delivers each log line by severity.

The alerting service only wants errors; the log archive wants info, warning and error; nobody
wants debug. Each binds its queue once per severity it is interested in, and the routing key
of a message (its severity) decides where it goes. Published with `mandatory`, on a channel
with publisher confirms, a message nobody is bound for comes back as unroutable.

Checks: each consumer got exactly its severities, in order, and debug was unroutable.
"""
import argparse
import os
import sys
import time
import uuid

import pika
from pika.exceptions import UnroutableError

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

EXCHANGE = f"examples.routing.logs.{uuid.uuid4().hex[:8]}"
INTERESTS = {"alerting": ["error"], "archive": ["info", "warning", "error"]}
LOG = [("info", "service started"), ("debug", "cache miss"), ("warning", "disk 85% full"),
       ("error", "payment gateway timeout"), ("info", "request served"), ("error", "db down")]


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "direct")
    queues = {}
    for service, severities in INTERESTS.items():
        queues[service] = ch.queue_declare("", exclusive=True).method.queue
        for severity in severities:
            ch.queue_bind(queues[service], EXCHANGE, routing_key=severity)

    received = {service: [] for service in INTERESTS}
    for service, queue in queues.items():
        ch.basic_consume(queue, lambda c, m, p, body, s=service: received[s].append(body.decode()),
                         auto_ack=True)

    pub = conn.channel()
    pub.confirm_delivery()  # so that basic_publish reports unroutable mandatory messages
    unroutable = []
    for severity, text in LOG:
        try:
            pub.basic_publish(EXCHANGE, severity, text.encode(), mandatory=True)
        except UnroutableError:
            unroutable.append(severity)

    expected = {s: [t for sev, t in LOG if sev in sevs] for s, sevs in INTERESTS.items()}
    # Wait for the deliveries (each queue keeps publication order, so once the last expected
    # line is there, any unexpected one would have shown up before it).
    deadline = time.monotonic() + 5
    while (any(len(received[s]) < len(expected[s]) for s in INTERESTS)
           and time.monotonic() < deadline):
        conn.process_data_events(time_limit=0.05)
    ch.exchange_delete(EXCHANGE)
    conn.close()

    ok = unroutable == ["debug"]
    print(f"unroutable: {unroutable}")
    for service in INTERESTS:
        print(f"{service} ({', '.join(INTERESTS[service])}): {received[service]}")
        ok = ok and received[service] == expected[service]
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
