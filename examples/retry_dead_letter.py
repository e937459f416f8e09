"""Retry with back-off, then park: transient failures are retried later, poison is set aside.

A consumer that fails to process a message does not requeue it at once (that would spin on a
broken dependency). It republishes it to a *wait queue* for that attempt - a queue with a
message TTL (the back-off: 100 ms, then 200 ms) and no consumers, whose dead-letter exchange
sends expired messages back to the work queue. The attempt number is read from the `x-death`
header the broker adds on every expiry. After MAX_ATTEMPTS the consumer rejects the message,
and the work queue dead-letters it to a *parking lot* queue for a human to look at.
A message that crashes the consumer (it never gets to ack or reject) is caught by the work
queue's `x-delivery-limit`: past the limit it is dead-lettered to the parking lot too.

Checks: "ok" succeeds at once, "flaky" succeeds on attempt 3 after both back-offs,
"poison" is parked after 3 attempts, "crasher" is parked by the delivery limit.
"""
import argparse
import os
import sys
import time
import uuid

import pika

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--url", help="broker URL (default: $AMQP_URL, else guest@localhost)",
                    default=os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/%2f"))
args = parser.parse_args()

RUN = uuid.uuid4().hex[:8]
WORK, PARKING = f"examples.retry.work.{RUN}", f"examples.retry.parking-lot.{RUN}"
PARKING_X = f"examples.retry.parking-x.{RUN}"
BACKOFF_MS = [100, 200]            # wait before attempt 2, before attempt 3
MAX_ATTEMPTS = len(BACKOFF_MS) + 1
DELIVERY_LIMIT = 2                 # crashes tolerated before a message is parked


def wait_queue(attempt):
    return f"examples.retry.wait-{attempt}.{RUN}"


def attempt_of(props):
    """1 + the number of back-off waits the message went through (from x-death)."""
    deaths = (props.headers or {}).get("x-death", [])
    return 1 + sum(d["count"] for d in deaths if d["reason"] == "expired")


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(PARKING_X, "fanout")
    ch.queue_declare(PARKING)
    ch.queue_bind(PARKING, PARKING_X)
    # A quorum queue, so that x-delivery-limit works on RabbitMQ too (Warren has it on any queue).
    ch.queue_declare(WORK, durable=True, arguments={"x-queue-type": "quorum",
                                                    "x-dead-letter-exchange": PARKING_X,
                                                    "x-delivery-limit": DELIVERY_LIMIT})
    for attempt, ttl in enumerate(BACKOFF_MS, start=1):
        ch.queue_declare(wait_queue(attempt), arguments={
            "x-message-ttl": ttl,                 # the back-off
            "x-dead-letter-exchange": "",         # on expiry: back to the work queue
            "x-dead-letter-routing-key": WORK})

    failures_left = {"flaky": 2}
    succeeded, parked, crashes = {}, {}, 0
    started = time.monotonic()

    def on_work(ch, method, props, body):
        nonlocal crashes
        job, attempt = body.decode(), attempt_of(props)
        if job == "crasher":                      # the consumer "dies" before settling it
            crashes += 1
            ch.basic_nack(method.delivery_tag, requeue=True)
            return
        if job == "poison" or failures_left.get(job, 0) > 0:
            failures_left[job] = failures_left.get(job, 0) - 1
            if attempt < MAX_ATTEMPTS:
                print(f"{job}: attempt {attempt} failed, retrying in {BACKOFF_MS[attempt-1]} ms")
                ch.basic_publish("", wait_queue(attempt), body, props)  # keeps x-death
                ch.basic_ack(method.delivery_tag)
            else:
                print(f"{job}: attempt {attempt} failed, giving up")
                ch.basic_reject(method.delivery_tag, requeue=False)  # -> parking lot
            return
        succeeded[job] = (attempt, time.monotonic() - started)
        print(f"{job}: processed on attempt {attempt}")
        ch.basic_ack(method.delivery_tag)

    def on_parked(ch, method, props, body):
        parked[body.decode()] = props.headers["x-death"][0]["reason"]  # most recent death
        print(f"parking lot: {body.decode()} ({parked[body.decode()]})")

    ch.basic_consume(WORK, on_work)
    ch.basic_consume(PARKING, on_parked, auto_ack=True)
    for job in ("ok", "flaky", "poison", "crasher"):
        ch.basic_publish("", WORK, job.encode())
    deadline = time.monotonic() + 5
    while (len(succeeded) < 2 or len(parked) < 2) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.05)

    for queue in (WORK, PARKING, wait_queue(1), wait_queue(2)):
        ch.queue_delete(queue)
    ch.exchange_delete(PARKING_X)
    conn.close()

    backoff_s = sum(BACKOFF_MS) / 1000
    ok = (succeeded.get("ok", (0,))[0] == 1
          and succeeded.get("flaky", (0, 0))[0] == 3 and succeeded["flaky"][1] >= backoff_s
          and parked == {"poison": "rejected", "crasher": "delivery_limit"}
          and crashes == DELIVERY_LIMIT + 1)
    print(f"succeeded: {succeeded}; parked: {parked}; crasher delivered {crashes} times")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
