"""Ordered processing per customer: competing workers, yet one customer's orders in order.

A work queue spreads orders over several workers, but two orders of the same customer must
never be processed at the same time or out of order (the second may depend on the first).
The queue argument `x-message-group-header` names the header carrying the customer id: the
broker hands out one message of a customer at a time and the next only once the previous is
acked, while other customers' orders go to the other workers in parallel (SQS FIFO's
MessageGroupId, built into Warren).

Checks: every order was processed once, each customer's orders in publication order, never
two of one customer at the same time, and more than one worker did work.
"""
import argparse
import os
import sys
import threading
import time
import uuid
from collections import defaultdict

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

QUEUE = f"examples.ordered.orders.{uuid.uuid4().hex[:8]}"
CUSTOMERS = [f"customer-{i}" for i in range(6)]
ORDERS_PER_CUSTOMER = 5
WORKERS = 3

processed = defaultdict(list)  # customer -> [order number]
in_progress = set()            # customers being worked on right now
overlaps = []                  # a customer found in progress twice at once
workers_used = set()
lock = threading.Lock()


def worker(name, ready, stop):
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)  # more than one at a time: the groups keep the order

    def handle(ch, method, props, body):
        customer = props.headers["customer"]
        with lock:
            if customer in in_progress:
                overlaps.append(customer)
            in_progress.add(customer)
        time.sleep(0.02)  # the work
        with lock:
            in_progress.discard(customer)
            processed[customer].append(int(body))
            workers_used.add(name)
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(QUEUE, handle)
    ready.release()  # consuming: the orders may come
    while not stop.is_set():
        conn.process_data_events(time_limit=0.05)
    conn.close()


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.queue_declare(QUEUE, arguments={"x-message-group-header": "customer"})
    # The workers start consuming first, so the orders are shared among all of them.
    stop = threading.Event()
    ready = threading.Semaphore(0)
    threads = [threading.Thread(target=worker, args=(f"worker-{i}", ready, stop))
               for i in range(WORKERS)]
    for t in threads:
        t.start()
    for _ in threads:
        ready.acquire()
    ch.confirm_delivery()
    # Each customer's orders back to back: without groups, round-robin would hand one
    # customer's consecutive orders to different workers at the same time.
    for customer in CUSTOMERS:
        for n in range(ORDERS_PER_CUSTOMER):
            ch.basic_publish("", QUEUE, str(n).encode(),
                             pika.BasicProperties(headers={"customer": customer}))

    total = len(CUSTOMERS) * ORDERS_PER_CUSTOMER
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with lock:
            if sum(map(len, processed.values())) >= total:
                break
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    ch.queue_delete(QUEUE)
    conn.close()

    in_order = all(processed[c] == list(range(ORDERS_PER_CUSTOMER)) for c in CUSTOMERS)
    print(f"processed: {sum(map(len, processed.values()))} of {total}")
    print(f"each customer's orders in order: {in_order}")
    print(f"two orders of one customer at once: {len(overlaps)}")
    print(f"workers that did work: {len(workers_used)}")
    ok = in_order and not overlaps and len(workers_used) > 1
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
