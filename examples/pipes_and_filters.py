"""Pipes and filters: a processing chain of independent stages connected by queues.

Raw order lines go through three stages, each its own consumer with its own input queue:
  parse    - "sku,qty,unit_price" text -> a JSON order
  validate - drops orders with a non-positive quantity (a filter in the strict sense)
  price    - adds the line total
and the result lands on an output queue. A stage acks its input only after publishing its
output, so a stage that dies mid-way loses nothing. Stages can be scaled or replaced one by one.

Checks: the output holds exactly the valid orders, transformed by every stage, in order.
"""
import argparse
import json
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

RUN = uuid.uuid4().hex[:8]
PIPES = [f"examples.pipes.{name}.{RUN}" for name in ("raw", "parsed", "valid", "priced")]
stop = threading.Event()


def parse(body):
    sku, qty, unit_price = body.decode().split(",")
    return {"sku": sku, "qty": int(qty), "unit_price": float(unit_price)}


def validate(order):
    return order if order["qty"] > 0 else None  # None: drop the message


def price(order):
    return {**order, "total": round(order["qty"] * order["unit_price"], 2)}


def run_stage(name, transform, in_queue, out_queue, decode=json.loads):
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=10)

    def on_message(ch, method, props, body):
        result = transform(decode(body))
        if result is not None:
            ch.basic_publish("", out_queue, json.dumps(result).encode())
        else:
            print(f"{name}: dropped {body.decode()}")
        ch.basic_ack(method.delivery_tag)  # only after the output is on its way

    ch.basic_consume(in_queue, on_message)
    while not stop.is_set():
        conn.process_data_events(time_limit=0.05)
    conn.close()


def main():
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    for queue in PIPES:
        ch.queue_declare(queue)
    stages = [("parse", parse, lambda b: b), ("validate", validate, json.loads),
              ("price", price, json.loads)]
    threads = [threading.Thread(target=run_stage, args=(name, fn, PIPES[i], PIPES[i + 1], dec),
                                daemon=True) for i, (name, fn, dec) in enumerate(stages)]
    lines = ["apple,3,0.5", "pear,0,0.8", "plum,12,0.25", "fig,-1,2.0", "kiwi,4,0.35"]
    results = []
    try:
        for t in threads:
            t.start()
        for line in lines:
            ch.basic_publish("", PIPES[0], line.encode())
        expected = [  # pear and fig are filtered out
            {"sku": "apple", "qty": 3, "unit_price": 0.5, "total": 1.5},
            {"sku": "plum", "qty": 12, "unit_price": 0.25, "total": 3.0},
            {"sku": "kiwi", "qty": 4, "unit_price": 0.35, "total": 1.4}]
        for method, props, body in ch.consume(PIPES[-1], auto_ack=True, inactivity_timeout=5):
            if method is None:  # nothing for 5 s: give up
                break
            results.append(json.loads(body))
            print(f"output: {results[-1]}")
            if len(results) == len(expected):
                break
        ch.cancel()
    finally:
        stop.set()
        for t in threads:
            t.join(5)
        for queue in PIPES:
            ch.queue_delete(queue)
        conn.close()

    ok = results == expected
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
