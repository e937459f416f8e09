"""Wire tap: watch the messages of a live flow without changing its publishers or consumers.

To debug an order flow in place, switch on the broker's firehose tracer for the vhost (RabbitMQ's
`rabbitmqctl trace_on`; here `PUT /api/vhosts/{vhost}` `{"tracing": true}` on the management
API). While it is on, the broker copies every publish to the topic exchange
`amq.rabbitmq.trace` with the routing key `publish.<exchange>` and every delivery with
`deliver.<queue>`, the original's routing in the copy's headers (`exchange_name`,
`routing_keys`, `routed_queues`, `redelivered`, ...). The tap is a queue bound there for just
this flow's exchange and queue, so other traffic in the vhost does not reach it. Tracing is
switched back to what it was at the end.

Checks: the tap saw each of the 3 publishes (exchange, routing key, queue routed to) and each
of the 4 deliveries (one a redelivery after the order service requeued it), and the flow
itself was unaffected.
"""
import argparse
import base64
import json
import os
import sys
import time
import urllib.parse
import urllib.request
import uuid

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
parser.add_argument("--mgmt-url", help="management API (default: $MGMT_URL, else localhost:15672)",
                    default=os.environ.get("MGMT_URL", "http://localhost:15672"))
args = parser.parse_args()

RUN = uuid.uuid4().hex[:8]
EXCHANGE, QUEUE = f"examples.wire-tap.orders.{RUN}", f"examples.wire-tap.order-service.{RUN}"
ORDERS = ["order-1", "order-2", "order-3"]
PARAMS = pika.URLParameters(args.url)


def mgmt(method, path, body=None):
    """A management API call, with the AMQP URL's user and password."""
    creds = PARAMS.credentials
    auth = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
    req = urllib.request.Request(args.mgmt_url.rstrip("/") + path, method=method,
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"Basic {auth}",
                                          "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        data = resp.read()
        return json.loads(data) if data else None


def main():
    vhost_path = "/api/vhosts/" + urllib.parse.quote(PARAMS.virtual_host, safe="")
    was_tracing = mgmt("GET", vhost_path).get("tracing", False)
    conn = pika.BlockingConnection(PARAMS)
    ch = conn.channel()
    try:
        mgmt("PUT", vhost_path, {"tracing": True})
        ch.exchange_declare(EXCHANGE, "direct")
        ch.queue_declare(QUEUE)
        ch.queue_bind(QUEUE, EXCHANGE, routing_key="new")
        tap = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(tap, "amq.rabbitmq.trace", routing_key=f"publish.{EXCHANGE}")
        ch.queue_bind(tap, "amq.rabbitmq.trace", routing_key=f"deliver.{QUEUE}")

        tapped, processed = [], []

        def on_tap(ch, method, props, body):
            tapped.append((method.routing_key.split(".", 1)[0], body.decode(), props.headers))

        def on_order(ch, method, props, body):
            if body == b"order-2" and not method.redelivered:  # a hiccup: back to the queue
                ch.basic_nack(method.delivery_tag, requeue=True)
                return
            processed.append(body.decode())
            ch.basic_ack(method.delivery_tag)

        ch.basic_consume(tap, on_tap, auto_ack=True)
        ch.basic_consume(QUEUE, on_order)
        for order in ORDERS:  # the flow under observation: it knows nothing of the tap
            ch.basic_publish(EXCHANGE, "new", order.encode())
        deadline = time.monotonic() + 5
        while ((len(processed) < len(ORDERS) or len(tapped) < 7)
               and time.monotonic() < deadline):
            conn.process_data_events(time_limit=0.05)
        conn.process_data_events(time_limit=0.2)  # anything unexpected would show up now
        ch.queue_delete(QUEUE)
        ch.exchange_delete(EXCHANGE)
    finally:
        mgmt("PUT", vhost_path, {"tracing": was_tracing})
        conn.close()

    published = sorted((body, h["exchange_name"], tuple(h["routing_keys"]),
                        tuple(h["routed_queues"])) for kind, body, h in tapped
                       if kind == "publish")
    delivered = sorted((body, h["redelivered"]) for kind, body, h in tapped if kind == "deliver")
    for entry in published:
        print(f"tap: publish {entry[0]} to {entry[1]} with {list(entry[2])} -> {list(entry[3])}")
    for body, redelivered in delivered:
        print(f"tap: deliver {body} from {QUEUE} redelivered={redelivered}")
    print(f"order service processed: {sorted(processed)}")
    print(f"tap saw {len(published)} publishes and {len(delivered)} deliveries "
          f"({sum(r for _, r in delivered)} redelivered)")
    ok = (published == [(o, EXCHANGE, ("new",), (QUEUE,)) for o in ORDERS]
          and delivered == [("order-1", 0), ("order-2", 0), ("order-2", 1), ("order-3", 0)]
          and sorted(processed) == ORDERS and len(tapped) == 7)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
