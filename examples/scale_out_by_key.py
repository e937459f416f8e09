"""Scale out by key: several workers, and all events of one key always go to the same worker.

Events of one customer must be handled in order by one worker (it may cache that customer's
state), yet the load must spread over several workers. A consistent-hash exchange
(`x-consistent-hash`) picks one bound queue per message by hashing its routing key (here the
customer id); each worker consumes its own queue. The binding key is the queue's weight.

Checks: every event was delivered once, each customer's events all reached the same worker in
publication order, and the customers spread over more than one worker.
"""
import argparse
import os
import sys
import time
import uuid
from collections import defaultdict

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

RUN = uuid.uuid4().hex[:8]
EXCHANGE = f"examples.scale_out.customer-events.{RUN}"
WORKERS = ["worker-1", "worker-2", "worker-3"]
CUSTOMERS = [f"customer-{i}" for i in range(30)]
EVENTS_PER_CUSTOMER = 5


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, "x-consistent-hash")
    seen = defaultdict(list)  # customer -> [(worker, sequence number)]
    for worker in WORKERS:
        queue = f"examples.scale_out.{worker}.{RUN}"
        ch.queue_declare(queue, exclusive=True)
        ch.queue_bind(queue, EXCHANGE, routing_key="1")  # equal weights
        # In production each worker is its own process; here each is a consumer on the channel.
        ch.basic_consume(queue, lambda c, m, p, body, w=worker:
                         seen[m.routing_key].append((w, int(body))), auto_ack=True)

    for seq in range(EVENTS_PER_CUSTOMER):
        for customer in CUSTOMERS:
            ch.basic_publish(EXCHANGE, customer, str(seq).encode())  # routing key = the hash key

    total = len(CUSTOMERS) * EVENTS_PER_CUSTOMER
    deadline = time.monotonic() + 5
    while sum(map(len, seen.values())) < total and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)
    ch.exchange_delete(EXCHANGE)
    conn.close()

    owner = {}
    ok = sum(map(len, seen.values())) == total and set(seen) == set(CUSTOMERS)
    for customer in CUSTOMERS:
        workers = {w for w, _ in seen[customer]}
        in_order = [s for _, s in seen[customer]] == list(range(EVENTS_PER_CUSTOMER))
        ok = ok and len(workers) == 1 and in_order
        owner[customer] = workers.pop() if len(workers) == 1 else sorted(workers)
    load = {w: sum(1 for o in owner.values() if o == w) for w in WORKERS}
    print(f"customers per worker: {load}")
    ok = ok and sum(1 for n in load.values() if n > 0) > 1
    print(f"{total} events; each customer on exactly one worker, in order: {ok}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
