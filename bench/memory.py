#!/usr/bin/env python3
"""Memory held for queued messages, two cases from issue 9 (pika, one broker at a time):

* headers: 200 messages whose `headers` hold a 110,000-element array of voids (~120 KB on the
  wire, ~4 MB decoded): paging must count decoded properties, not just bodies.
* pinning: 15,000 one-byte messages queued while 60 KB messages pass through another queue
  (purged as it goes): a small body must not keep its 64 KiB read block alive.

Prints the broker's RSS before, with the messages queued, and after the queue is deleted.

    bench/memory.py --warren target/release/warren [--port 5698]
    bench/memory.py --url amqp://guest:guest@127.0.0.1:5680/%2f --pid <broker pid>
"""

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pika


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    return -1


def wait_for_port(port, deadline_s=20.0):
    end = time.monotonic() + deadline_s
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > end:
                sys.exit(f"nothing listens on port {port}")
            time.sleep(0.05)


def run_case(url, pid, case):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    ch.queue_declare(case)
    before = rss_mib(pid)
    if case == "headers":
        headers = {"big": [None] * 110_000}
        for _ in range(200):
            ch.basic_publish("", case, b"x", pika.BasicProperties(headers=headers))
    else:
        ch.queue_declare("sink")
        big = b"y" * 60_000
        for i in range(15_000):
            ch.basic_publish("", case, b"z")
            ch.basic_publish("", "sink", big)
            if i % 500 == 0:
                ch.queue_purge("sink")
        ch.queue_purge("sink")
    queued = ch.queue_declare(case, passive=True).method.message_count
    with_messages = rss_mib(pid)
    ch.queue_delete(case)
    conn.process_data_events(time_limit=0.5)
    after = rss_mib(pid)
    conn.close()
    return before, with_messages, queued, after


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--warren", help="start this Warren binary for each case")
    p.add_argument("--port", type=int, default=5698)
    p.add_argument("--url", help="an already running broker (with --pid)")
    p.add_argument("--pid", type=int)
    args = p.parse_args()
    print("| case | RSS before (MiB) | with messages queued | messages | after delete |")
    print("|---|---|---|---|---|")
    for case in ("headers", "pinning"):
        if args.warren:
            data = tempfile.mkdtemp(prefix="warren-memory-")
            proc = subprocess.Popen([args.warren, "--port", str(args.port), "--bind", "127.0.0.1",
                                     "--data-dir", data, "--log-level", "warn"])
            url, pid = f"amqp://guest:guest@127.0.0.1:{args.port}/%2f", proc.pid
            wait_for_port(args.port)
        else:
            if not (args.url and args.pid):
                sys.exit("give --warren, or --url and --pid")
            url, pid, proc = args.url, args.pid, None
        try:
            before, during, queued, after = run_case(url, pid, case)
            print(f"| {case} | {before} | {during} | {queued} | {after} |")
        finally:
            if proc:
                proc.terminate()
                proc.wait()
                shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
