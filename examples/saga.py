"""Saga (orchestrated): a multi-service transaction undone step by step when a step fails.

Placing an order touches three services, each with its own data: inventory (reserve stock),
payment (charge the card) and shipping (book a courier). There is no distributed transaction:
an orchestrator sends each service a command over its queue and waits for the reply (RPC over
direct reply-to). If a step fails, it runs the compensating actions of the completed steps in
reverse order (refund, then release the stock).

Checks: order A completes in every service; order B, whose shipping fails, ends with its
payment refunded and its stock released (in that order) and leaves no trace of a booking.
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

RUN = uuid.uuid4().hex[:8]
stop = threading.Event()
journal = []  # (order, service, action): every command, in the order it was executed

# Each service: its own state, and its actions (a command returns True on success).
reserved, charged, booked = set(), set(), set()
SERVICES = {
    "inventory": {"reserve": lambda o: reserved.add(o) or True,
                  "release": lambda o: reserved.discard(o) or True},
    "payment": {"charge": lambda o: charged.add(o) or True,
                "refund": lambda o: charged.discard(o) or True},
    "shipping": {"book": lambda o: o != "order-B" and (booked.add(o) or True),  # no courier
                 "cancel": lambda o: booked.discard(o) or True},             # for order B
}
# The saga: (service, action, compensating action)
STEPS = [("inventory", "reserve", "release"), ("payment", "charge", "refund"),
         ("shipping", "book", "cancel")]


def queue_of(service):
    return f"examples.saga.{service}.{RUN}"


def run_service(name, ready):
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(queue_of(name), auto_delete=True)

    def on_command(ch, method, props, body):
        cmd = json.loads(body)
        ok = SERVICES[name][cmd["action"]](cmd["order"])
        journal.append((cmd["order"], name, cmd["action"]))
        ch.basic_publish("", props.reply_to, json.dumps({"ok": ok}).encode(),
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(queue_of(name), on_command)
    ready.set()
    while not stop.is_set():
        conn.process_data_events(time_limit=0.05)
    conn.close()


class Orchestrator:
    def __init__(self):
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.replies = {}
        self.ch.basic_consume("amq.rabbitmq.reply-to", auto_ack=True,
                              on_message_callback=lambda c, m, p, b: self.replies.update(
                                  {p.correlation_id: json.loads(b)}))

    def send(self, service, action, order):
        corr = str(uuid.uuid4())
        body = json.dumps({"action": action, "order": order})
        self.ch.basic_publish("", queue_of(service), body.encode(), pika.BasicProperties(
            reply_to="amq.rabbitmq.reply-to", correlation_id=corr))
        deadline = time.monotonic() + 5
        while corr not in self.replies and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.05)
        return self.replies.pop(corr, {"ok": False})["ok"]  # no reply in time = failure

    def place_order(self, order):
        done = []
        for service, action, compensate in STEPS:
            if self.send(service, action, order):
                done.append((service, compensate))
                continue
            print(f"{order}: {service}.{action} failed, compensating")
            for service_done, undo in reversed(done):
                self.send(service_done, undo, order)
            return False
        return True


def main():
    readies = {name: threading.Event() for name in SERVICES}
    threads = [threading.Thread(target=run_service, args=(n, readies[n]), daemon=True)
               for n in SERVICES]
    for t in threads:
        t.start()
    for e in readies.values():
        e.wait(5)
    orchestrator = Orchestrator()
    try:
        result = {order: orchestrator.place_order(order) for order in ("order-A", "order-B")}
    finally:
        orchestrator.conn.close()
        stop.set()
        for t in threads:
            t.join(5)

    print(f"results: {result}")
    print(f"reserved: {sorted(reserved)}, charged: {sorted(charged)}, booked: {sorted(booked)}")
    steps_b = [f"{service}.{action}" for order, service, action in journal if order == "order-B"]
    print(f"order-B: {' -> '.join(steps_b)}")
    ok = (result == {"order-A": True, "order-B": False}
          and reserved == charged == booked == {"order-A"}
          and steps_b == ["inventory.reserve", "payment.charge", "shipping.book",
                          "payment.refund", "inventory.release"])
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
