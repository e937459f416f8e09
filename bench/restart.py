#!/usr/bin/env python3
"""Restart-time benchmark (durability issue, item 7).

Starts a release Warren on a fresh data directory, declares N durable queues, each bound to a
durable topic exchange, publishes M persistent messages spread over them (with confirms),
stops the broker with SIGTERM, starts it again and reports how long it took until it accepted
connections and until every queue was back with its messages.

  bench/restart.py [--queues 10000] [--messages 2000000] [--size 100] [--port 5699]
"""
import argparse, os, shutil, signal, socket, subprocess, sys, tempfile, threading, time
import pika

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_port(port, deadline=120):
    t0 = time.time()
    while time.time() - t0 < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return time.time() - t0
        except OSError:
            time.sleep(0.005)
    raise SystemExit("broker did not start")


def start(binary, port, data):
    return subprocess.Popen([binary, "--bind", "127.0.0.1", "--port", str(port), "--data-dir", data,
                             "--log-level", "info"], stdout=open(os.path.join(data, "..", "warren.log"), "a"),
                            stderr=subprocess.STDOUT)


def declare(url, names):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    for name in names:
        ch.queue_declare(name, durable=True)
        ch.queue_bind(name, "restart.x", routing_key=name)
    conn.close()


def publish(url, names, count, size):
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    body = b"x" * size
    props = pika.BasicProperties(delivery_mode=2)
    for i in range(count):
        ch.basic_publish("restart.x", names[i % len(names)], body, props)
    conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queues", type=int, default=10000)
    ap.add_argument("--messages", type=int, default=2000000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--port", type=int, default=5699)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "warren"))
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="warren-restart-")
    data = os.path.join(work, "data")
    os.makedirs(data)
    url = f"amqp://guest:guest@127.0.0.1:{a.port}/%2f"
    p = start(a.binary, a.port, data)
    wait_port(a.port)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    conn.channel().exchange_declare("restart.x", "topic", durable=True)
    conn.close()
    names = [f"restart.q.{i}" for i in range(a.queues)]
    t0 = time.time()
    threads = [threading.Thread(target=declare, args=(url, names[k::8])) for k in range(8)]
    [t.start() for t in threads]; [t.join() for t in threads]
    t_decl = time.time() - t0
    t0 = time.time()
    per = a.messages // 4
    threads = [threading.Thread(target=publish, args=(url, names[k::4], per, a.size)) for k in range(4)]
    [t.start() for t in threads]; [t.join() for t in threads]
    # No confirms (pika's blocking confirms wait for each one): count until all are in.
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    while sum(ch.queue_declare(n, passive=True).method.message_count for n in names) < a.messages:
        time.sleep(0.5)
    conn.close()
    t_pub = time.time() - t0
    p.send_signal(signal.SIGTERM); p.wait(60)
    disk = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(data) for f in fs)
    t0 = time.time()
    p = start(a.binary, a.port, data)
    t_listen = wait_port(a.port)
    conn = pika.BlockingConnection(pika.URLParameters(url))
    ch = conn.channel()
    total = sum(ch.queue_declare(n, passive=True).method.message_count for n in names)
    t_ready = time.time() - t0
    conn.close()
    with open(f"/proc/{p.pid}/status") as f:
        hwm = [l for l in f if l.startswith("VmHWM")][0].split()[1]
    p.send_signal(signal.SIGTERM); p.wait(60)
    print(f"queues {a.queues} (each bound), messages {a.messages} x {a.size} B")
    print(f"declare+bind: {t_decl:.1f} s ({2 * a.queues / t_decl:.0f} definitions/s, each fsynced)")
    print(f"publish: {t_pub:.1f} s ({a.messages / t_pub:.0f} msg/s from 4 pika publishers, persistent)")
    print(f"data dir: {disk / 1e6:.0f} MB")
    print(f"restart: listening after {t_listen:.2f} s; all {a.queues} queues answered with "
          f"{total} messages after {t_ready:.2f} s; peak RSS {int(hwm) // 1024} MiB")
    if total != a.messages:
        print(f"MISMATCH: {total} != {a.messages}", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
