"""Claim check: keep big payloads out of the broker, send only a ticket.

A scanning service produces large documents (here 4 MiB). Instead of pushing them through the
broker, it stores the payload in a shared store (a directory here; S3 or a database in real
life) and publishes a small "claim check": the key under which the payload is stored, its size
and its SHA-256. The receiver redeems the ticket, verifies the payload and deletes it from the
store once processed.

Checks: the messages stayed small, every payload came back intact, and the store is empty.
"""
import argparse
import hashlib
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

QUEUE = f"examples.claim_check.documents.{uuid.uuid4().hex[:8]}"


class PayloadStore:
    """The "luggage room": put() returns a claim key, redeem() hands the payload back."""

    def __init__(self, root):
        self.root = Path(root)

    def put(self, data):
        key = uuid.uuid4().hex
        (self.root / key).write_bytes(data)
        return key

    def redeem(self, key):
        path = self.root / key
        data = path.read_bytes()
        path.unlink()  # claimed: remove it from the store
        return data


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.queue_declare(QUEUE)
    with tempfile.TemporaryDirectory(prefix="claim-check-store-") as root:
        store = PayloadStore(root)

        # Sender: store each document, publish the ticket.
        documents = {f"scan-{i}.pdf": os.urandom(4 * 1024 * 1024) for i in range(3)}
        for name, data in documents.items():
            ticket = {"document": name, "key": store.put(data), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()}
            ch.basic_publish("", QUEUE, json.dumps(ticket).encode(),
                             pika.BasicProperties(content_type="application/json"))

        # Receiver: redeem each ticket, check it, process the document.
        redeemed, largest_message = {}, 0
        for method, props, body in ch.consume(QUEUE, inactivity_timeout=5):
            if method is None:
                break
            largest_message = max(largest_message, len(body))
            ticket = json.loads(body)
            data = store.redeem(ticket["key"])
            intact = len(data) == ticket["size"] and \
                hashlib.sha256(data).hexdigest() == ticket["sha256"]
            print(f"{ticket['document']}: ticket of {len(body)} bytes -> "
                  f"{len(data)} bytes, intact: {intact}")
            redeemed[ticket["document"]] = data if intact else None
            ch.basic_ack(method.delivery_tag)
            if len(redeemed) == len(documents):
                break
        ch.cancel()
        leftovers = os.listdir(root)

    ch.queue_delete(QUEUE)
    conn.close()
    ok = redeemed == documents and largest_message < 1024 and not leftovers
    print(f"largest message: {largest_message} bytes; payloads left in the store: {len(leftovers)}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
