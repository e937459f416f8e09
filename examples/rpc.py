"""RPC over direct reply-to: ask a service a question and wait for its answer.

The client consumes the pseudo-queue `amq.rabbitmq.reply-to` (no-ack, as required) and sends
each request with `reply_to="amq.rabbitmq.reply-to"` and a unique `correlation_id`. The broker
routes the server's reply straight back to the client's channel: no reply queue is declared.
The server replies to whatever `reply_to` says, copying the correlation id.

Checks: every request got exactly one reply, matched by correlation id, with the right answer.
"""
import argparse
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

RPC_QUEUE = f"examples.rpc.fib.{uuid.uuid4().hex[:8]}"
stop = threading.Event()


def fib(n):
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def server():
    """The Fibonacci service: one request at a time, ack after replying."""
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)

    def on_request(ch, method, props, body):
        answer = str(fib(int(body))).encode()
        ch.basic_publish("", props.reply_to, answer,
                         pika.BasicProperties(correlation_id=props.correlation_id))
        ch.basic_ack(method.delivery_tag)

    ch.basic_consume(RPC_QUEUE, on_request)
    while not stop.is_set():
        conn.process_data_events(time_limit=0.05)
    conn.close()


class FibClient:
    def __init__(self):
        self.conn = pika.BlockingConnection(params)
        self.ch = self.conn.channel()
        self.replies = {}  # correlation_id -> answer
        # Consume the reply pseudo-queue *before* publishing requests that name it.
        self.ch.basic_consume("amq.rabbitmq.reply-to", self.on_reply, auto_ack=True)

    def on_reply(self, ch, method, props, body):
        self.replies[props.correlation_id] = int(body)

    def call(self, n, timeout=5.0):
        corr_id = str(uuid.uuid4())
        self.ch.basic_publish("", RPC_QUEUE, str(n).encode(),
                              pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                                   correlation_id=corr_id))
        # Pump the connection until *our* reply is in (or the deadline passes).
        deadline = time.monotonic() + timeout
        while corr_id not in self.replies and time.monotonic() < deadline:
            self.conn.process_data_events(time_limit=0.05)
        return self.replies.pop(corr_id, None)


def main():
    setup = pika.BlockingConnection(params)
    setup_ch = setup.channel()
    setup_ch.queue_declare(RPC_QUEUE)
    worker = threading.Thread(target=server, daemon=True)
    worker.start()
    ok = True
    try:
        client = FibClient()
        for n in (1, 10, 30, 90):
            answer = client.call(n)
            print(f"fib({n}) = {answer}")
            ok = ok and answer == fib(n)
        ok = ok and not client.replies  # no stray or duplicate replies
        client.conn.close()
    finally:
        stop.set()
        worker.join(5)
        setup_ch.queue_delete(RPC_QUEUE)
        setup.close()
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
