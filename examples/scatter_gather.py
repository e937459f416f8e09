"""Scatter-gather: ask every quoting service at once, take the answers that come in time.

A shipping-cost request is published once to a fanout exchange; every quoting service bound to
it answers on the requester's direct reply-to channel with the same correlation id. The
requester aggregates the replies until all known services answered or the deadline passed.
One service ("slow-freight") takes longer than the deadline: its quote must not be included.

Checks: the aggregate holds exactly the quotes of the timely services, and the best is picked.
"""
import argparse
import json
import os
import sys
import threading
import time
import uuid

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()
params = pika.URLParameters(args.url)

EXCHANGE = f"examples.scatter_gather.quote_requests.{uuid.uuid4().hex[:8]}"
DEADLINE_S = 1.0
SERVICES = {"fast-post": (0.0, 12.50), "parcel-co": (0.1, 9.90), "slow-freight": (2.0, 5.00)}
stop = threading.Event()
ready = threading.Barrier(len(SERVICES) + 1)


def quoting_service(name, delay, price):
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, EXCHANGE)

    def on_request(ch, method, props, body):
        request = json.loads(body)
        if stop.wait(delay):  # "working" for `delay` seconds (or shut down meanwhile)
            return
        quote = {"service": name, "price": price * request["kg"]}
        ch.basic_publish("", props.reply_to, json.dumps(quote).encode(),
                         pika.BasicProperties(correlation_id=props.correlation_id))

    ch.basic_consume(queue, on_request, auto_ack=True)
    ready.wait()
    while not stop.is_set():
        conn.process_data_events(time_limit=0.05)
    conn.close()


def request_quotes(ch, kg):
    corr_id = str(uuid.uuid4())
    quotes = []

    def on_reply(ch, method, props, body):
        if props.correlation_id == corr_id:  # ignore late replies to earlier requests
            quotes.append(json.loads(body))

    ch.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
    ch.basic_publish(EXCHANGE, "", json.dumps({"kg": kg}).encode(),
                     pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id=corr_id))
    deadline = time.monotonic() + DEADLINE_S
    while len(quotes) < len(SERVICES) and time.monotonic() < deadline:
        ch.connection.process_data_events(time_limit=max(0.0, deadline - time.monotonic()))
    return list(quotes)  # whatever arrives after the deadline is not part of the answer


def main():
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "fanout")
    threads = [threading.Thread(target=quoting_service, args=(n, d, p), daemon=True)
               for n, (d, p) in SERVICES.items()]
    try:
        for t in threads:
            t.start()
        ready.wait(5)  # all services bound
        started = time.monotonic()
        quotes = request_quotes(ch, kg=2)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        ch.exchange_delete(EXCHANGE)
        conn.close()
        for t in threads:
            t.join(5)

    for q in quotes:
        print(f"quote from {q['service']}: {q['price']:.2f}")
    best = min(quotes, key=lambda q: q["price"]) if quotes else None
    print(f"gathered {len(quotes)} quotes in {elapsed:.2f} s; best: {best and best['service']}")
    timely = {n for n, (delay, _) in SERVICES.items() if delay < DEADLINE_S}
    ok = ({q["service"] for q in quotes} == timely and len(quotes) == len(timely)
          and best["service"] == "parcel-co" and elapsed < DEADLINE_S + 0.5)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
