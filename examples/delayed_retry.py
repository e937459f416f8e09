"""Delayed retry: failed jobs come back after an exponential back-off, then go to a parking lot.

A worker whose job fails for a transient reason (a dependency is down) should retry later,
later still if it fails again, and give up eventually. Instead of one TTL "wait queue" per
attempt (see retry_dead_letter.py), the worker re-publishes the failed job to a delayed-message
exchange (`x-delayed-message`, routing like `x-delayed-type: direct`; the API of RabbitMQ's
delayed-message plugin) with an `x-delay` header of 100, 200, then 400 ms and its own
`attempt` header, and acks the original. The exchange holds each message for its delay, then
routes it back to the work queue. After MAX_ATTEMPTS failures the job goes to a parking-lot
queue for a human to look at.

Checks: "ok" succeeds at once, "flaky" on attempt 3, "poison" is parked after 4 attempts,
and no retry arrived before its delay had passed since it was re-published.
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
DELAYED = f"examples.delayed-retry.retry.{RUN}"
WORK, PARKING = f"examples.delayed-retry.work.{RUN}", f"examples.delayed-retry.parking-lot.{RUN}"
BACKOFF_MS = [100, 200, 400]        # x-delay before attempt 2, 3, 4
MAX_ATTEMPTS = len(BACKOFF_MS) + 1


def main():
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.exchange_declare(DELAYED, "x-delayed-message", arguments={"x-delayed-type": "direct"})
    ch.queue_declare(WORK)
    ch.queue_bind(WORK, DELAYED, routing_key="work")
    ch.queue_declare(PARKING)

    failures_left = {"flaky": 2, "poison": MAX_ATTEMPTS}
    retried_at = {}                       # (job, attempt) -> when it was re-published
    waited = []                           # (job, attempt, x-delay ms, measured ms)
    succeeded, parked = {}, {}

    def on_work(ch, method, props, body):
        job, attempt = body.decode(), (props.headers or {}).get("attempt", 1)
        if (job, attempt) in retried_at:
            measured_ms = (time.monotonic() - retried_at[job, attempt]) * 1000
            waited.append((job, attempt, BACKOFF_MS[attempt - 2], measured_ms))
        if failures_left.get(job, 0) > 0:  # the job fails this time
            failures_left[job] -= 1
            if attempt < MAX_ATTEMPTS:
                delay = BACKOFF_MS[attempt - 1]
                print(f"{job}: attempt {attempt} failed, retrying in {delay} ms")
                retried_at[job, attempt + 1] = time.monotonic()
                ch.basic_publish(DELAYED, "work", body, pika.BasicProperties(
                    headers={"attempt": attempt + 1, "x-delay": delay}))
            else:
                print(f"{job}: attempt {attempt} failed, parking it")
                ch.basic_publish("", PARKING, body, pika.BasicProperties(
                    headers={"attempts": attempt, "error": "dependency unavailable"}))
        else:
            succeeded[job] = attempt
            print(f"{job}: processed on attempt {attempt}")
        ch.basic_ack(method.delivery_tag)  # the retry (or the parked copy) replaces it

    def on_parked(ch, method, props, body):
        parked[body.decode()] = props.headers["attempts"]
        print(f"parking lot: {body.decode()} after {props.headers['attempts']} attempts")

    ch.basic_consume(WORK, on_work)
    ch.basic_consume(PARKING, on_parked, auto_ack=True)
    for job in ("ok", "flaky", "poison"):
        ch.basic_publish(DELAYED, "work", job.encode())  # no x-delay: routed at once
    deadline = time.monotonic() + 5
    while (len(succeeded) < 2 or len(parked) < 1) and time.monotonic() < deadline:
        conn.process_data_events(time_limit=0.02)

    for queue in (WORK, PARKING):
        ch.queue_delete(queue)
    ch.exchange_delete(DELAYED)
    conn.close()

    for job, attempt, delay, measured in waited:
        print(f"{job}: attempt {attempt} arrived {measured:.0f} ms after its retry "
              f"(x-delay {delay} ms)")
    early = [(job, attempt) for job, attempt, delay, measured in waited if measured < delay]
    print(f"succeeded: {succeeded}; parked: {parked}; retries that came early: {early}")
    ok = (succeeded == {"ok": 1, "flaky": 3} and parked == {"poison": MAX_ATTEMPTS}
          and len(waited) == 2 + len(BACKOFF_MS) and not early)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
