"""Publish/subscribe: every subscriber gets its own copy of every event.

The publisher sends to a fanout exchange and knows nothing about its subscribers. Each
subscriber declares its own exclusive, server-named queue (the broker picks the name, and the
queue disappears with the subscriber's connection) and binds it to the exchange.

Checks: each of the three subscribers received all events, in publication order.
"""
import argparse
import os
import sys
import threading
import uuid

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()
params = pika.URLParameters(args.url)

EXCHANGE = f"examples.pubsub.events.{uuid.uuid4().hex[:8]}"
EVENTS = [f"price-update-{i}".encode() for i in range(5)]
SUBSCRIBERS = ["billing", "search-index", "audit-log"]

received = {name: [] for name in SUBSCRIBERS}
ready = {name: threading.Event() for name in SUBSCRIBERS}
done = {name: threading.Event() for name in SUBSCRIBERS}


def subscriber(name):
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue  # server-named, e.g. amq.gen-...
    ch.queue_bind(queue, EXCHANGE)
    print(f"{name}: listening on {queue}")

    def on_event(ch, method, properties, body):
        received[name].append(body)
        if len(received[name]) == len(EVENTS):
            done[name].set()

    ch.basic_consume(queue, on_event, auto_ack=True)
    ready[name].set()
    while not done[name].is_set():
        conn.process_data_events(time_limit=0.05)
    conn.close()  # the exclusive queue is deleted with the connection


def main():
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "fanout")
    threads = [threading.Thread(target=subscriber, args=(n,), daemon=True) for n in SUBSCRIBERS]
    try:
        for t in threads:
            t.start()
        # Publish once everybody is bound: a fanout exchange keeps nothing for queues that do
        # not exist yet (a subscriber only sees the events published after it subscribed).
        for name in SUBSCRIBERS:
            ready[name].wait(5)
        for event in EVENTS:
            ch.basic_publish(EXCHANGE, "", event)
        all_done = all(done[name].wait(5) for name in SUBSCRIBERS)
    finally:
        ch.exchange_delete(EXCHANGE)
        conn.close()

    ok = all_done
    for name in SUBSCRIBERS:
        got_all = received[name] == EVENTS
        ok = ok and got_all
        print(f"{name}: {len(received[name])} events, all in order: {got_all}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
