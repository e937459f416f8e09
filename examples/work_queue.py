"""Work queue: competing consumers share the jobs of one queue.

Two workers consume the same durable queue with prefetch 1 (a worker holds at most one
unacknowledged job, so a slow worker does not hoard work) and acknowledge each job only once it
is done. The first worker that receives job 3 "crashes" (its connection drops without the ack):
the broker redelivers that job, flagged `redelivered`, to the surviving worker.

Checks: every job was completed exactly once, and job 3 was completed after a redelivery.
"""
import argparse
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

QUEUE = f"examples.work_queue.jobs.{uuid.uuid4().hex[:8]}"
JOBS = [f"job-{i}" for i in range(10)]
CRASH_ON = "job-3"

lock = threading.Lock()
completed = []            # (worker, job, redelivered) for every acknowledged job
crashed = []              # the worker that crashed
all_done = threading.Event()


def worker(name):
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1)  # one job at a time

    def on_job(ch, method, properties, body):
        job = body.decode()
        with lock:
            crash = job == CRASH_ON and not crashed
            if crash:
                crashed.append(name)
        if crash:
            print(f"{name}: crashing while working on {job} (no ack)")
            conn.close()  # as if the process died: the unacked job goes back to the queue
            return
        # ... do the actual work here ...
        ch.basic_ack(method.delivery_tag)  # ack only when the work is done
        with lock:
            completed.append((name, job, method.redelivered))
            print(f"{name}: did {job}" + (" (redelivered)" if method.redelivered else ""))
            if len(completed) == len(JOBS):
                all_done.set()

    ch.basic_consume(QUEUE, on_job)
    while conn.is_open and not all_done.is_set():
        conn.process_data_events(time_limit=0.05)
    if conn.is_open:
        conn.close()


def main():
    conn = pika.BlockingConnection(params)
    ch = conn.channel()
    ch.queue_declare(QUEUE, durable=True)
    try:
        workers = [threading.Thread(target=worker, args=(f"worker-{i}",)) for i in (1, 2)]
        for w in workers:
            w.start()
        for job in JOBS:  # persistent jobs in a durable queue survive a broker restart
            ch.basic_publish("", QUEUE, job.encode(),
                             pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
        finished = all_done.wait(timeout=5)
        all_done.set()  # stop the workers either way
        for w in workers:
            w.join()
    finally:
        ch.queue_delete(QUEUE)
        conn.close()

    jobs_done = sorted(job for _, job, _ in completed)
    redelivered = [job for _, job, again in completed if again]
    ok = finished and jobs_done == sorted(JOBS) and redelivered == [CRASH_ON]
    print(f"{len(completed)} jobs completed, each once: {jobs_done == sorted(JOBS)}; "
          f"redelivered after the crash: {redelivered}")
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
