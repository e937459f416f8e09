#!/usr/bin/env python3
"""Soak and abuse benchmark (issue 9, item 8): Warren and RabbitMQ side by side, one at a time.

Each broker is started fresh (empty data directory) for every scenario and stopped after it,
so one broker runs at a time and no scenario inherits another's memory (RabbitMQ keeps
hundreds of MiB after 10,000 connections close, which would raise its alarm at once in the
flood). RabbitMQ runs through shared/tools/rabbitmq.sh with its own node, port and directory;
it takes 15-50 s to start, most of the run's time. Brokers run on core 0 (taskset, so tokio and Erlang size their
thread pools to one core), this client on the last core (--no-pin to let them share).

  idle       10,000 connections that finish the AMQP handshake (heartbeat 0) and sit idle:
             broker RSS before / with them open / after they closed, per connection.
  prehandshake  10,000 TCP connections that send nothing; RSS is measured 7.5 s after the
             first connect, before the 10 s handshake timeout closes them.
  churn      (not in the default run) --churn-cycles 5 rounds of opening 10,000 handshaken
             connections and closing them: RSS after each round.
  fdlimit    Warren only: started with a soft fd limit of 1024, 1,500 handshakes are tried;
             how many succeed, whether it stays up and accepts again once they close.
  slow       100,000 x 1 KiB transient messages in a queue, then a no-ack consumer whose
             client never reads its socket (SO_RCVBUF 64 KiB): broker RSS growth and how many
             messages left the queue (passive declare from another connection).
  flood      4 publishers, no consumer, 1 KiB transient messages to one queue for 60 s with
             the memory high watermark at 512 MiB: peak RSS (VmRSS every 0.5 s), when
             connection.blocked came, msg/s before it, data-dir disk use at the end.
  fanout     one 4 MiB persistent message to a fanout exchange bound to 50 durable queues,
             20 times, each confirmed: RSS, data-dir disk use, time per confirm.

  bench/abuse.py                          all scenarios, both brokers (about 9 minutes here)
  bench/abuse.py --brokers warren --scenarios idle,slow --connections 2000
  options: --connections 10000 --slow-secs 10 --flood-secs 60 --flood-publishers 4 --slow-messages 100000 --fanout-queues 50
           --fanout-rounds 20 --fanout-mib 4 --disk-cap-gib 5 --no-pin --skip-build --out DIR

Only the Python standard library: the client speaks AMQP 0-9-1 over raw sockets (a pika
client could not hold 10,000 connections or flood fast enough, and could not refrain from
reading its socket). Results: bench/results/<stamp>-abuse/{results.json,results.md,meta.json}
and broker logs; the markdown table has Warren / RabbitMQ ratios.
"""
import argparse, asyncio, json, os, resource, select, shutil, socket, struct, subprocess, sys
import tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAME_END = b"\xce"
MIB = 1 << 20


# ---- AMQP 0-9-1 encoding (just what the scenarios need) ------------------------------------

def shortstr(s):
    b = s.encode()
    return bytes([len(b)]) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def table(d):
    out = b""
    for k, v in d.items():
        out += shortstr(k)
        if isinstance(v, bool):
            out += b"t" + bytes([v])
        elif isinstance(v, dict):
            out += b"F" + table(v)
        elif isinstance(v, int):
            out += b"I" + struct.pack(">i", v)
        else:
            out += b"S" + longstr(str(v).encode())
    return struct.pack(">I", len(out)) + out


def frame(kind, channel, payload):
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + FRAME_END


def method(channel, cls, mid, args=b""):
    return frame(1, channel, struct.pack(">HH", cls, mid) + args)


PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
START_OK = method(0, 10, 11, table({
    "product": "warren bench/abuse.py",
    "capabilities": {"connection.blocked": True, "publisher_confirms": True,
                     "consumer_cancel_notify": True},
}) + shortstr("PLAIN") + longstr(b"\0guest\0guest") + shortstr("en_US"))
CONNECTION_OPEN = method(0, 10, 40, shortstr("/") + shortstr("") + b"\0")
CHANNEL_OPEN = method(1, 20, 10, shortstr(""))
CONFIRM_SELECT = method(1, 85, 10, b"\0")


def tune_ok(tune_args):
    channel_max, frame_max, _heartbeat = struct.unpack(">HIH", tune_args[:8])
    # heartbeat 0: idle connections must stay up however long the scenario holds them.
    return method(0, 10, 31, struct.pack(">HIH", channel_max or 2047, frame_max, 0)), frame_max


def queue_declare(name, passive=False, durable=False):
    bits = (1 if passive else 0) | (2 if durable else 0)
    return method(1, 50, 10, struct.pack(">H", 0) + shortstr(name) + bytes([bits]) + table({}))


def queue_delete(name):
    return method(1, 50, 40, struct.pack(">H", 0) + shortstr(name) + b"\0")


def queue_bind(queue, exchange):
    return method(1, 50, 20, struct.pack(">H", 0) + shortstr(queue) + shortstr(exchange)
                  + shortstr("") + b"\0" + table({}))


def exchange_declare(name, kind, durable=True):
    return method(1, 40, 10, struct.pack(">H", 0) + shortstr(name) + shortstr(kind)
                  + bytes([2 if durable else 0]) + table({}))


def exchange_delete(name):
    return method(1, 40, 20, struct.pack(">H", 0) + shortstr(name) + b"\0")


def basic_consume(queue, no_ack):
    return method(1, 60, 20, struct.pack(">H", 0) + shortstr(queue) + shortstr("")
                  + bytes([2 if no_ack else 0]) + table({}))


def publish(exchange, routing_key, body, frame_max, persistent=False):
    out = method(1, 60, 40, struct.pack(">H", 0) + shortstr(exchange) + shortstr(routing_key) + b"\0")
    out += frame(2, 1, struct.pack(">HHQH", 60, 0, len(body), 0x1000) + bytes([2 if persistent else 1]))
    chunk = frame_max - 8
    for i in range(0, len(body), chunk):
        out += frame(3, 1, body[i:i + chunk])
    return out


class BrokerClosed(Exception):
    pass


class Conn:
    """One blocking AMQP connection with channel 1 open."""

    def __init__(self, port, rcvbuf=None, timeout=60):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            # Set before connect, so the window is small from the start (and autotuning is off).
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.blocked = []  # (monotonic time, True for blocked / False for unblocked)
        self.sock.sendall(PROTOCOL_HEADER)
        self.wait(10, 10)
        self.sock.sendall(START_OK)
        reply, self.frame_max = tune_ok(self.wait(10, 30))
        self.sock.sendall(reply + CONNECTION_OPEN)
        self.wait(10, 41)
        self.rpc(CHANNEL_OPEN, 20, 11)

    def frames(self):
        """Yields (kind, channel, payload) as they arrive."""
        while True:
            while len(self.buf) >= 7:
                kind, channel, size = struct.unpack_from(">BHI", self.buf)
                if len(self.buf) < size + 8:
                    break
                payload = bytes(self.buf[7:7 + size])
                del self.buf[:size + 8]
                yield kind, channel, payload
            data = self.sock.recv(1 << 16)
            if not data:
                raise BrokerClosed("socket closed by the broker")
            self.buf += data

    def handle(self, kind, payload):
        """Common frames; returns (class, method, args) for other methods, else None."""
        if kind != 1:
            return None
        cls, mid = struct.unpack_from(">HH", payload)
        if (cls, mid) == (10, 60):
            self.blocked.append((time.monotonic(), True))
        elif (cls, mid) == (10, 61):
            self.blocked.append((time.monotonic(), False))
        elif (cls, mid) in ((10, 50), (20, 40)):
            code = struct.unpack_from(">H", payload, 4)[0]
            text = payload[7:7 + payload[6]].decode(errors="replace")
            raise BrokerClosed(f"{'connection' if cls == 10 else 'channel'}.close {code} {text}")
        return cls, mid, payload[4:]

    def wait(self, cls, mid):
        for kind, _channel, payload in self.frames():
            m = self.handle(kind, payload)
            if m and m[:2] == (cls, mid):
                return m[2]

    def rpc(self, request, cls, mid):
        self.sock.sendall(request)
        return self.wait(cls, mid)

    def depth(self, queue):
        """Ready messages in a queue (passive declare)."""
        args = self.rpc(queue_declare(queue, passive=True), 50, 11)
        n = args[0]
        return struct.unpack_from(">I", args, 1 + n)[0]

    def wait_confirms(self, last_tag):
        while True:
            args = self.wait(60, 80)
            tag = struct.unpack_from(">Q", args)[0]
            if tag >= last_tag:
                return

    def abort(self):
        """Closes with a reset: no TIME_WAIT left behind, no close handshake to wait for."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.sock.close()
        except OSError:
            pass

    def close(self):
        try:
            self.sock.settimeout(5)
            self.rpc(method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)), 10, 51)
        except (OSError, BrokerClosed):
            pass
        self.abort()


async def read_method(reader, cls, mid):
    while True:
        kind, _channel, size = struct.unpack(">BHI", await reader.readexactly(7))
        payload = await reader.readexactly(size + 1)
        if kind == 1 and struct.unpack_from(">HH", payload) == (cls, mid):
            return payload[4:size]
        if kind == 1 and struct.unpack_from(">HH", payload) == (10, 50):
            raise BrokerClosed("connection.close during handshake")


async def async_handshake(port, limit, timeout):
    async with limit:
        writer = None
        try:
            async def go():
                nonlocal writer
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(PROTOCOL_HEADER)
                await read_method(reader, 10, 10)
                writer.write(START_OK)
                reply, _ = tune_ok(await read_method(reader, 10, 30))
                writer.write(reply + CONNECTION_OPEN)
                await read_method(reader, 10, 41)
                return reader, writer
            return await asyncio.wait_for(go(), timeout)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, BrokerClosed) as e:
            if writer is not None:
                reset(writer.get_extra_info("socket"))
                writer.close()
            return f"{type(e).__name__}({getattr(e, 'errno', None) or ''})"


def reset(sock):
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except (OSError, AttributeError):
        pass


async def open_many(port, count, concurrency=256, timeout=20.0):
    """Opens `count` handshaken connections; returns (connections, {error: count})."""
    limit = asyncio.Semaphore(concurrency)
    results = await asyncio.gather(*(async_handshake(port, limit, timeout) for _ in range(count)))
    ok = [r for r in results if isinstance(r, tuple)]
    errors = {}
    for r in results:
        if isinstance(r, str):
            errors[r] = errors.get(r, 0) + 1
    return ok, errors


def close_many(conns):
    for _reader, writer in conns:
        reset(writer.get_extra_info("socket"))
        writer.close()


# ---- measuring ------------------------------------------------------------------------------

def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def disk_kb(path):
    total = 0
    for root, _dirs, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_blocks * 512
            except OSError:
                pass
    return total // 1024


def fd_count(pid):
    """Descriptors the broker holds: the connections it has accepted, among others."""
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


class Sampler(threading.Thread):
    """Samples VmRSS (and the data directory's size) every `interval` s until stopped."""

    def __init__(self, pid, data_dir=None, interval=0.5):
        super().__init__(daemon=True)
        self.pid, self.data_dir, self.interval = pid, data_dir, interval
        self.samples = []  # (seconds since start, rss kB, disk kB or None)
        self.stopping = threading.Event()
        self.t0 = time.monotonic()

    def run(self):
        while not self.stopping.is_set():
            d = disk_kb(self.data_dir) if self.data_dir else None
            self.samples.append((round(time.monotonic() - self.t0, 2), rss_kb(self.pid), d))
            self.stopping.wait(self.interval)

    def stop(self):
        self.stopping.set()
        self.join()
        return self

    def peak_rss_kb(self):
        return max((s[1] for s in self.samples), default=0)

    def peak_disk_kb(self):
        return max((s[2] or 0 for s in self.samples), default=0)

    def latest_disk_kb(self):
        return self.samples[-1][2] if self.samples else None


def settle(pid, secs=2.0):
    """RSS after a short pause (lets RabbitMQ's garbage collector run)."""
    time.sleep(secs)
    return rss_kb(pid)


def log(msg):
    print(f"[abuse {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- brokers --------------------------------------------------------------------------------

def wait_port(port, secs=60):
    t0 = time.time()
    while time.time() - t0 < secs:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listening on {port} after {secs} s")


class Warren:
    name = "warren"

    def __init__(self, a):
        self.a, self.port, self.proc, self.data_dir = a, a.warren_port, None, None
        self.binary = os.path.join(a.target_dir, "release", "warren")
        self.version = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout.strip()

    def start(self, flags=(), nofile=None):
        self.data_dir = tempfile.mkdtemp(prefix="warren-abuse-")
        cmd = self.a.broker_prefix + [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--prometheus-port", "0",
                                      "--data-dir", self.data_dir, "--log-level", "warn", *flags]

        def limits():
            if nofile:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
        self.log = open(os.path.join(self.a.out, "logs", "warren.log"), "a")
        self.log.write(f"--- {' '.join(cmd)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=limits)
        wait_port(self.port)
        self.pid = self.proc.pid  # taskset execs, so this is Warren's pid
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def set_memory_watermark(self, _bytes):
        raise NotImplementedError  # Warren takes it as a flag; see scenario_flood

    def stop(self):
        if self.proc:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.log.close()
        if self.data_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        self.proc = self.data_dir = None


class RabbitMQ:
    name = "rabbitmq"

    def __init__(self, a):
        self.a, self.port = a, a.rmq_port
        self.dir = a.rmq_dir
        self.env = dict(os.environ, RMQ_PORT=str(a.rmq_port), RMQ_MGMT_PORT=str(a.rmq_port + 10000),
                        RMQ_DIR=self.dir, RMQ_NODE=a.rmq_node)
        self.data_dir = os.path.join(self.dir, "mnesia")
        self.version = ""

    def sh(self, *args, prefix=(), check=True):
        return subprocess.run([*prefix, a_rabbitmq_sh(self.a), *args], env=self.env, capture_output=True,
                              text=True, check=check).stdout.strip()

    def start(self):
        self.sh("stop", check=False)
        shutil.rmtree(self.dir, ignore_errors=True)
        t0 = time.time()
        log(self.sh("start", prefix=self.a.broker_prefix))
        self.start_secs = time.time() - t0
        self.pid = int(self.sh("pid"))
        self.version = "RabbitMQ " + self.sh("ctl", "version").splitlines()[-1] + " (Erlang/OTP " + \
            self.sh("ctl", "eval", "erlang:system_info(otp_release).").strip('"') + ")"
        return self

    def alive(self):
        try:
            os.kill(self.pid, 0)
            return True
        except OSError:
            return False

    def set_memory_watermark(self, value):
        # 'absolute <bytes>' or a fraction of memory (RabbitMQ's default is 0.4).
        args = ["absolute", str(value)] if isinstance(value, int) else [str(value)]
        self.sh("ctl", "set_vm_memory_high_watermark", *args)

    def stop(self):
        self.sh("stop", check=False)
        if not self.a.keep_rabbitmq_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def a_rabbitmq_sh(a):
    for c in (a.rabbitmq_sh, os.path.join(ROOT, "..", "shared", "tools", "rabbitmq.sh"),
              "/work/shared/tools/rabbitmq.sh"):
        if c and os.access(c, os.X_OK):
            return c
    raise SystemExit("rabbitmq.sh not found; pass --rabbitmq-sh")


# ---- scenarios ------------------------------------------------------------------------------

def scenario_idle(a, broker):
    """10,000 connections that finish the handshake (heartbeat 0) and sit idle."""
    before, fds = settle(broker.pid), fd_count(broker.pid)
    rec, errors = asyncio.run(_hold(a, broker, a.connections))
    rec.update(connections=a.connections, rss_before_kb=before, broker_fds_before=fds, errors=errors)
    log(f"  idle handshaken: {rec}")
    return rec


def scenario_prehandshake(a, broker):
    """10,000 TCP connections that never send a byte."""
    n = a.connections
    # Pre-handshake: TCP connects that send nothing. Opened as fast as possible, measured
    # before the 10 s handshake timeout, then watched to see the broker close them.
    before, fds_before = settle(broker.pid, 2.0), fd_count(broker.pid)
    socks, failed = [], 0
    t0 = time.monotonic()
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect_ex(("127.0.0.1", broker.port))
            socks.append(s)
        except OSError:
            failed += 1
            s.close()
    by_fd = {s.fileno(): s for s in socks}
    poller = select.poll()
    for fd in by_fd:
        poller.register(fd, select.POLLOUT)
    pending, connect_failed = set(by_fd), 0
    while pending and time.monotonic() - t0 < 8:
        for fd, _ev in poller.poll(200):
            poller.unregister(fd)
            pending.discard(fd)
            if by_fd[fd].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                connect_failed += 1
    failed += connect_failed
    opened_secs = time.monotonic() - t0
    sampler = Sampler(broker.pid, interval=0.25)
    sampler.start()
    # Measure while every one is still open (the first accepted times out 10 s after accept).
    wait_until = t0 + 7.5
    time.sleep(max(0.0, wait_until - time.monotonic()))
    during, fds_during = rss_kb(broker.pid), fd_count(broker.pid)
    closed_by_broker, first_close = 0, None
    poller = select.poll()
    open_fds = set(by_fd) - pending
    for fd in open_fds:
        poller.register(fd, select.POLLIN)
    deadline = t0 + 30
    while open_fds and time.monotonic() < deadline:
        for fd, _ev in poller.poll(200):
            try:
                data = by_fd[fd].recv(64)
            except OSError:
                data = b""
            if not data:
                closed_by_broker += 1
                first_close = first_close or time.monotonic() - t0
                open_fds.discard(fd)
                poller.unregister(fd)
    sampler.stop()
    for s in socks:
        reset(s)
        s.close()
    after_close = settle(broker.pid, 2.0)
    rec = {
        "connections": n, "opened": n - failed - len(pending), "failed": failed + len(pending),
        "opened_secs": round(opened_secs, 2),
        "rss_before_kb": before, "rss_open_kb": during, "rss_peak_kb": sampler.peak_rss_kb(),
        # Per connection the broker accepted (its descriptors), not per client connect: a full
        # accept backlog leaves connections the client thinks open but the broker never saw.
        "broker_fds_before": fds_before, "broker_fds_open": fds_during,
        "accepted_by_broker": fds_during - fds_before,
        "rss_per_connection_bytes": round((during - before) * 1024 / max(1, fds_during - fds_before)),
        "closed_by_broker_within_30s": closed_by_broker,
        "first_close_secs": round(first_close, 1) if first_close else None,
        "rss_after_close_kb": after_close,
    }
    log(f"  pre-handshake: {rec}")
    return rec


async def _hold(a, broker, n):
    t0 = time.monotonic()
    conns, errors = await open_many(broker.port, n)
    open_secs = time.monotonic() - t0
    await asyncio.sleep(3)  # let the broker settle (GC, lazy allocations)
    after, fds = rss_kb(broker.pid), fd_count(broker.pid)
    await asyncio.sleep(2)
    after2 = rss_kb(broker.pid)
    alive_probe = Conn(broker.port, timeout=30)  # does it still take a new connection?
    alive_probe.close()
    close_many(conns)
    await asyncio.sleep(0.5)
    rec = {"opened": len(conns), "open_secs": round(open_secs, 1),
           "rate_per_sec": round(len(conns) / open_secs) if open_secs else None,
           "rss_after_kb": max(after, after2), "broker_fds_open": fds}
    after_close = settle(broker.pid, 3.0)
    rec["rss_after_close_kb"] = after_close
    return rec, errors


def scenario_churn(a, broker):
    """Not in the default run: cycles of opening and closing 10,000 handshaken connections;
    RSS after each (does memory come back, or ratchet?)."""
    async def cycles():
        out = []
        for _ in range(a.churn_cycles):
            conns, errors = await open_many(broker.port, a.connections)
            await asyncio.sleep(2)
            rss_open = rss_kb(broker.pid)
            close_many(conns)
            await asyncio.sleep(3)
            out.append({"opened": len(conns), "errors": errors, "rss_open_kb": rss_open,
                        "rss_closed_kb": rss_kb(broker.pid), "broker_fds": fd_count(broker.pid)})
            log(f"  churn: {out[-1]}")
        return out
    before = settle(broker.pid)
    rec = {"rss_before_kb": before, "cycles": asyncio.run(cycles())}
    rec["rss_after_last_kb"] = rec["cycles"][-1]["rss_closed_kb"]
    return rec


def scenario_fdlimit(a, broker):
    """Warren only: a soft RLIMIT_NOFILE of 1024 and 1,500 handshakes."""
    n = 1500
    async def fill():
        conns, errors = await open_many(broker.port, n, timeout=5.0)
        alive = broker.alive()
        close_many(conns)
        await asyncio.sleep(1.5)
        return len(conns), errors, alive
    opened, errors, alive = asyncio.run(fill())
    rec = {"nofile_soft": 1024, "tried": n, "opened": opened, "errors": errors, "alive_while_full": alive}
    try:
        c = Conn(broker.port, timeout=10)
        c.close()
        rec["accepts_after_close"] = True
    except (OSError, BrokerClosed) as e:
        rec["accepts_after_close"] = f"no: {e}"
    rec["alive_after"] = broker.alive()
    log(f"  fd limit: {rec}")
    return rec


def scenario_slow(a, broker):
    """A queue of 100,000 x 1 KiB, then a no-ack consumer that never reads its socket."""
    q, n = "abuse.slow", a.slow_messages
    c = Conn(broker.port)
    c.rpc(queue_delete(q), 50, 41)
    c.rpc(queue_declare(q), 50, 11)
    rss_empty = settle(broker.pid, 1.0)
    c.rpc(CONFIRM_SELECT, 85, 11)
    msg = publish("", q, b"x" * 1024, c.frame_max)
    t0 = time.monotonic()
    batch = 1000
    for i in range(0, n, batch):
        c.sock.sendall(msg * min(batch, n - i))
    c.wait_confirms(n)
    fill_secs = time.monotonic() - t0
    depth_full = c.depth(q)
    rss_full = settle(broker.pid, 2.0)
    sampler = Sampler(broker.pid, interval=0.25)
    sampler.start()
    slow = Conn(broker.port, rcvbuf=a.slow_rcvbuf)
    slow.sock.sendall(basic_consume(q, no_ack=True))  # and never read again
    depths = []
    for _ in range(a.slow_secs):
        time.sleep(1)
        depths.append(c.depth(q))
    sampler.stop()
    rec = {"messages": n, "message_bytes": 1024, "client_rcvbuf_bytes": a.slow_rcvbuf,
           "fill_secs": round(fill_secs, 1), "depth_before_consume": depth_full,
           "rss_empty_queue_kb": rss_empty, "rss_full_queue_kb": rss_full,
           "rss_peak_while_stuck_kb": sampler.peak_rss_kb(), "rss_end_kb": rss_kb(broker.pid),
           "rss_growth_kb": sampler.peak_rss_kb() - rss_full,
           "depth_per_second": depths, "left_queue": depth_full - depths[-1],
           "stuck_secs": a.slow_secs}
    slow.abort()
    time.sleep(0.5)
    try:
        c.rpc(queue_delete(q), 50, 41)
    except BrokerClosed:
        pass
    c.close()
    log(f"  slow consumer: left the queue {rec['left_queue']}, rss {rss_full // 1024} -> "
        f"{rec['rss_peak_while_stuck_kb'] // 1024} MiB")
    return rec


def ready(sock, events, timeout_ms=200):
    """poll(), not select(): these descriptors may be numbered past select's 1024."""
    p = select.poll()
    p.register(sock, events)
    return bool(p.poll(timeout_ms))


class FloodPublisher:
    def __init__(self, port, queue, stop, disk_stop):
        self.conn = Conn(port)
        self.msg = publish("", queue, b"x" * 1024, self.conn.frame_max)
        self.chunk = self.msg * 256
        self.sent_bytes = 0
        self.stop, self.disk_stop = stop, disk_stop
        self.closed = None
        self.sock = self.conn.sock
        self.sock.setblocking(False)
        self.threads = [threading.Thread(target=self.send_loop, daemon=True),
                        threading.Thread(target=self.read_loop, daemon=True)]
        self.count_at_first_block = None

    def sent(self):
        return self.sent_bytes // len(self.msg)

    def send_loop(self):
        view, off = memoryview(self.chunk), 0
        while not self.stop.is_set() and not self.disk_stop.is_set() and self.closed is None:
            if not ready(self.sock, select.POLLOUT):
                continue
            try:
                n = self.sock.send(view[off:])
            except BlockingIOError:
                continue
            except OSError as e:
                self.closed = f"send: {e}"
                return
            self.sent_bytes += n
            off = (off + n) % len(self.chunk)

    def read_loop(self):
        while not self.stop.is_set() and self.closed is None:
            if not ready(self.sock, select.POLLIN):
                continue
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                continue
            except OSError as e:
                self.closed = f"recv: {e}"
                return
            if not data:
                self.closed = "socket closed by the broker"
                return
            self.conn.buf += data
            while len(self.conn.buf) >= 7:
                kind, _ch, size = struct.unpack_from(">BHI", self.conn.buf)
                if len(self.conn.buf) < size + 8:
                    break
                payload = bytes(self.conn.buf[7:7 + size])
                del self.conn.buf[:size + 8]
                try:
                    self.conn.handle(kind, payload)
                except BrokerClosed as e:
                    self.closed = str(e)
                    return
                if self.conn.blocked and self.count_at_first_block is None:
                    self.count_at_first_block = self.sent()


def scenario_flood(a, broker):
    """Publishers flooding one queue, no consumer, memory high watermark 512 MiB."""
    watermark = 512 * MIB  # Warren was started with --memory-high-watermark 512MiB
    if isinstance(broker, RabbitMQ):
        broker.set_memory_watermark(watermark)
    q = "abuse.flood"
    c = Conn(broker.port)
    c.rpc(queue_declare(q), 50, 11)
    rss_before = settle(broker.pid, 1.0)
    disk_before = disk_kb(broker.data_dir)
    # The cap, or less if the disk has less to spare (leave 2 GiB for everyone else).
    free = shutil.disk_usage(broker.data_dir)
    cap_kb = min(a.disk_cap_gib * MIB, max(0, free.free // 1024 - 2 * MIB))
    stop, disk_stop = threading.Event(), threading.Event()
    pubs = [FloodPublisher(broker.port, q, stop, disk_stop) for _ in range(a.flood_publishers)]
    sampler = Sampler(broker.pid, broker.data_dir, interval=0.5)
    sampler.start()
    t0 = time.monotonic()
    for p in pubs:
        for t in p.threads:
            t.start()
    per_second, series = [], []  # cumulative sent: each second; each 0.1 s
    while time.monotonic() - t0 < a.flood_secs and not disk_stop.is_set():
        time.sleep(0.1)
        series.append((time.monotonic() - t0, sum(p.sent() for p in pubs)))
        if len(series) % 10:
            continue
        per_second.append(series[-1][1])
        d = sampler.latest_disk_kb()
        if d and d > cap_kb:
            log(f"  flood: data dir passed {cap_kb / MIB:.1f} GiB: stopping the publishers early")
            disk_stop.set()
    elapsed = time.monotonic() - t0
    stop.set()
    for p in pubs:
        for t in p.threads:
            t.join(2)
    sampler.stop()
    sent = sum(p.sent() for p in pubs)
    events = sorted((t - t0, blocked) for p in pubs for (t, blocked) in p.conn.blocked)
    first_block = next((t for t, b in events if b), None)
    # Messages sent by all publishers until the first connection.blocked arrived (from the
    # 0.1 s series); a rate only if that took a second or more.
    if first_block is not None:
        before_block = max((n for t, n in series if t <= first_block), default=0)
        rate_before = before_block / first_block if first_block >= 1 else None
    else:
        before_block, rate_before = sent, sent / elapsed
    # Share of publisher-time spent blocked.
    blocked_secs = 0.0
    for p in pubs:
        since = None
        for t, b in p.conn.blocked:
            if b and since is None:
                since = t
            elif not b and since is not None:
                blocked_secs += t - since
                since = None
        if since is not None:
            blocked_secs += t0 + elapsed - since
    for p in pubs:
        p.conn.abort()
    time.sleep(1)
    try:
        probe = Conn(broker.port, timeout=120)
        depth = probe.depth(q)
        probe.close()
    except (OSError, BrokerClosed) as e:
        depth = f"error: {e}"
    rec = {
        "publishers": a.flood_publishers, "secs": round(elapsed, 1), "watermark_bytes": watermark,
        "stopped_early_at_disk_cap": disk_stop.is_set(), "disk_cap_kb": int(cap_kb),
        "sent_by_client": sent, "queue_depth_end": depth,
        "rss_before_kb": rss_before, "rss_peak_kb": sampler.peak_rss_kb(),
        "rss_end_kb": rss_kb(broker.pid),
        "disk_before_kb": disk_before, "disk_end_kb": disk_kb(broker.data_dir), "disk_peak_kb": sampler.peak_disk_kb(),
        "blocked": first_block is not None, "first_blocked_secs": round(first_block, 2) if first_block else None,
        "blocked_events": [(round(t, 2), "blocked" if b else "unblocked") for t, b in events][:40],
        "sent_before_first_block": before_block,
        "blocked_share": round(blocked_secs / (elapsed * len(pubs)), 3),
        "rate_before_block_per_sec": round(rate_before) if rate_before else None,
        "sent_per_second_cumulative": per_second,
        "publisher_closed": [p.closed for p in pubs if p.closed],
        "rss_series": [(t, r) for t, r, _d in sampler.samples],
        "disk_series": [(t, d) for t, _r, d in sampler.samples][::4],
    }
    t1 = time.monotonic()
    try:
        c.sock.settimeout(300)
        c.rpc(queue_delete(q), 50, 41)
    except (OSError, BrokerClosed) as e:
        rec["delete_error"] = str(e)
    rec["delete_secs"] = round(time.monotonic() - t1, 1)
    c.close()
    if isinstance(broker, RabbitMQ):
        broker.set_memory_watermark(0.4)
    log(f"  flood: sent {sent:,}, depth {depth}, peak rss {rec['rss_peak_kb'] // 1024} MiB, first blocked "
        f"{rec['first_blocked_secs']} s, disk {rec['disk_end_kb'] // 1024} MiB")
    return rec


def scenario_fanout(a, broker):
    """One 4 MiB persistent message to a fanout exchange bound to 50 durable queues, 20 times."""
    x, queues = "abuse.fanout", [f"abuse.fan.{i}" for i in range(a.fanout_queues)]
    c = Conn(broker.port)
    c.rpc(exchange_declare(x, "fanout"), 40, 11)
    for q in queues:
        c.rpc(queue_declare(q, durable=True), 50, 11)
        c.rpc(queue_bind(q, x), 50, 21)
    c.rpc(CONFIRM_SELECT, 85, 11)
    rss_before = settle(broker.pid, 1.0)
    disk_before = disk_kb(broker.data_dir)
    sampler = Sampler(broker.pid, broker.data_dir, interval=0.5)
    sampler.start()
    msg = publish(x, "", os.urandom(a.fanout_mib * MIB), c.frame_max, persistent=True)
    confirm_secs = []
    for i in range(a.fanout_rounds):
        t = time.monotonic()
        c.sock.sendall(msg)
        c.wait_confirms(i + 1)
        confirm_secs.append(round(time.monotonic() - t, 3))
    rss_end = settle(broker.pid, 2.0)
    sampler.stop()
    disk_end = disk_kb(broker.data_dir)
    depths = [c.depth(q) for q in queues]
    for q in queues:
        c.rpc(queue_delete(q), 50, 41)
    c.rpc(exchange_delete(x), 40, 21)
    time.sleep(3)
    rec = {"queues": len(queues), "rounds": a.fanout_rounds, "message_mib": a.fanout_mib,
           "logical_mib": a.fanout_rounds * a.fanout_mib,
           "rss_before_kb": rss_before, "rss_peak_kb": sampler.peak_rss_kb(), "rss_end_kb": rss_end,
           "disk_before_kb": disk_before, "disk_end_kb": disk_end, "disk_peak_kb": max(sampler.peak_disk_kb(), disk_end),
           "disk_after_delete_kb": disk_kb(broker.data_dir),
           "confirm_secs": confirm_secs, "total_secs": round(sum(confirm_secs), 2),
           "depths_ok": all(d == a.fanout_rounds for d in depths), "depths": sorted(set(depths))}
    c.close()
    log(f"  fanout: disk {disk_before // 1024} -> {disk_end // 1024} MiB, peak rss {rec['rss_peak_kb'] // 1024} MiB, "
        f"{rec['total_secs']} s")
    return rec


SCENARIOS = {"churn": scenario_churn, "idle": scenario_idle, "prehandshake": scenario_prehandshake, "fdlimit": scenario_fdlimit, "slow": scenario_slow,
             "flood": scenario_flood, "fanout": scenario_fanout}


# ---- report ---------------------------------------------------------------------------------

def rows(results):
    """(scenario, metric, key function, lower is better) for the table."""
    def g(*path):
        def f(r):
            for p in path:
                if r is None:
                    return None
                r = r.get(p) if isinstance(r, dict) else None
            return r
        return f

    def mib(*path):
        return lambda r: (g(*path)(r) or 0) / 1024 if g(*path)(r) is not None else None

    def diff_mib(a, b):
        return lambda r: (g(*a)(r) - g(*b)(r)) / 1024 if g(*a)(r) is not None and g(*b)(r) is not None else None

    def per_conn(key_after, key_before, n_key):
        def f(r):
            after, before, n = g(*key_after)(r), g(*key_before)(r), g(*n_key)(r)
            return (after - before) * 1024 / n if None not in (after, before) and n else None
        return f
    cycles = max((len(g("churn", "cycles")(r) or []) for r in results.values()), default=0)
    churn = []
    for i in range(cycles):
        churn += [("churn", f"round {i + 1}: RSS with 10,000 open (MiB)",
                   lambda r, i=i: (g("churn", "cycles")(r)[i]["rss_open_kb"] / 1024) if g("churn", "cycles")(r) else None, True),
                  ("churn", f"round {i + 1}: RSS after they closed (MiB)",
                   lambda r, i=i: (g("churn", "cycles")(r)[i]["rss_closed_kb"] / 1024) if g("churn", "cycles")(r) else None, True)]
    return [
        ("idle", "handshaken connections opened", g("idle", "opened"), False),
        ("idle", "RSS before (MiB)", mib("idle", "rss_before_kb"), True),
        ("idle", "RSS with them open (MiB)", mib("idle", "rss_after_kb"), True),
        ("idle", "RSS per connection (KiB)",
         lambda r: (per_conn(("idle", "rss_after_kb"), ("idle", "rss_before_kb"), ("idle", "opened"))(r) or 0) / 1024
         if g("idle")(r) else None, True),
        ("idle", "handshakes per second", g("idle", "rate_per_sec"), False),
        ("idle", "RSS after they closed (MiB)", mib("idle", "rss_after_close_kb"), True),
        ("prehandshake", "connections open", g("prehandshake", "opened"), False),
        ("prehandshake", "RSS before (MiB)", mib("prehandshake", "rss_before_kb"), True),
        ("prehandshake", "RSS with them open (MiB)", mib("prehandshake", "rss_open_kb"), True),
        ("prehandshake", "connections the broker accepted", g("prehandshake", "accepted_by_broker"), False),
        ("prehandshake", "RSS per accepted connection (KiB)",
         lambda r: (g("prehandshake", "rss_per_connection_bytes")(r) or 0) / 1024 if g("prehandshake")(r) else None, True),
        ("prehandshake", "closed by the broker within 30 s", g("prehandshake", "closed_by_broker_within_30s"), False),
        ("churn", "RSS before (MiB)", mib("churn", "rss_before_kb"), True),
        *churn,
        ("slow", "RSS with the queue full (MiB)", mib("slow", "rss_full_queue_kb"), True),
        ("slow", "RSS growth, consumer stuck (MiB)", mib("slow", "rss_growth_kb"), True),
        ("slow", "messages that left the queue", g("slow", "left_queue"), True),
        ("flood", "publishing time (s)", g("flood", "secs"), False),
        ("flood", "client-sent messages in the run", g("flood", "sent_by_client"), False),
        ("flood", "queue depth at the end", g("flood", "queue_depth_end"), False),
        ("flood", "RSS before (MiB)", mib("flood", "rss_before_kb"), True),
        ("flood", "peak RSS (MiB)", mib("flood", "rss_peak_kb"), True),
        ("flood", "first connection.blocked (s)", g("flood", "first_blocked_secs"), False),
        ("flood", "msg/s before blocking (the whole run if never blocked)", g("flood", "rate_before_block_per_sec"), False),
        ("flood", "share of publisher time blocked", g("flood", "blocked_share"), False),
        ("flood", "data dir at the end (MiB)", diff_mib(("flood", "disk_end_kb"), ("flood", "disk_before_kb")), True),
        ("fanout", "RSS before (MiB)", mib("fanout", "rss_before_kb"), True),
        ("fanout", "peak RSS (MiB)", mib("fanout", "rss_peak_kb"), True),
        ("fanout", "data dir growth (MiB)", diff_mib(("fanout", "disk_end_kb"), ("fanout", "disk_before_kb")), True),
        ("fanout", "data dir after deleting the queues (MiB)", diff_mib(("fanout", "disk_after_delete_kb"), ("fanout", "disk_before_kb")), True),
        ("fanout", "time for all confirmed publishes (s)", g("fanout", "total_secs"), True),
    ]


def fmt(v):
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, float)):
        if abs(v) >= 100:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.2f}"
    return str(v)


def report(out, results, meta):
    w, r = results.get("warren", {}), results.get("rabbitmq", {})
    lines = [f"Soak and abuse, {meta['date']}: {meta['warren_version']} vs {meta.get('rabbitmq_version', '–')}",
             f"`{meta['command']}`; {meta['cpu']}, {meta['nproc']} cores, {meta['memory']}; "
             f"load average {meta['load_start']} at the start, {meta.get('load_end', '?')} at the end.", "",
             "| Scenario | Metric | Warren | RabbitMQ | Warren / RabbitMQ |", "|---|---|---:|---:|---:|"]
    last = None
    for sc, metric, f, _lower in rows(results):
        if sc not in w and sc not in r:
            continue
        wv, rv = f(w), f(r)
        ratio = wv / rv if isinstance(wv, (int, float)) and isinstance(rv, (int, float)) and rv else None
        lines.append(f"| {'**' + sc + '**' if sc != last else ''} | {metric} | {fmt(wv)} | {fmt(rv)} | {fmt(ratio)} |")
        last = sc
    if "fdlimit" in w:
        fd = w["fdlimit"]
        lines += ["", f"Warren with a soft fd limit of {fd['nofile_soft']}: {fd['opened']} of {fd['tried']} "
                      f"handshakes completed (errors {fd['errors']}), alive: {fmt(fd['alive_while_full'])}, "
                      f"accepts again after they closed: {fmt(fd['accepts_after_close'])}."]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(text)
    print(text)


# ---- main -----------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="warren,rabbitmq")
    ap.add_argument("--scenarios", default="idle,prehandshake,fdlimit,slow,flood,fanout")
    ap.add_argument("--connections", type=int, default=10000)
    ap.add_argument("--churn-cycles", type=int, default=5)
    ap.add_argument("--slow-messages", type=int, default=100000)
    ap.add_argument("--slow-secs", type=int, default=10, help="how long the consumer stays stuck")
    ap.add_argument("--slow-rcvbuf", type=int, default=65536)
    ap.add_argument("--flood-secs", type=int, default=60)
    ap.add_argument("--flood-publishers", type=int, default=4)
    ap.add_argument("--fanout-queues", type=int, default=50)
    ap.add_argument("--fanout-rounds", type=int, default=20)
    ap.add_argument("--fanout-mib", type=int, default=4)
    ap.add_argument("--disk-cap-gib", type=float, default=5.0,
                    help="flood stops early past this data-dir size (or the free disk less 2 GiB)")
    ap.add_argument("--warren-port", type=int, default=5686)
    ap.add_argument("--rmq-port", type=int, default=5688)
    ap.add_argument("--rmq-dir", default="/tmp/rabbitmq-abuse")
    ap.add_argument("--rmq-node", default="warrenabuse@localhost")
    ap.add_argument("--keep-rabbitmq-dir", action="store_true")
    ap.add_argument("--rabbitmq-sh", default=os.environ.get("RABBITMQ_SH"))
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--keep-logs", action="store_true", help="keep Warren's full log, not just a summary")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--skip-build", action="store_true")
    ap.add_argument("--out")
    ap.add_argument("--report", metavar="DIR", help="only rewrite DIR/results.md from its JSON files")
    a = ap.parse_args()
    if a.report:
        with open(os.path.join(a.report, "results.json")) as f, open(os.path.join(a.report, "meta.json")) as m:
            report(a.report, json.load(f), json.load(m))
        return
    command = "bench/abuse.py" + "".join(" " + x for x in sys.argv[1:])
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    a.out = a.out or os.path.join(ROOT, "bench", "results", f"{stamp}-abuse")
    os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = a.connections + 1000
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    if hard < want:
        log(f"fd hard limit {hard} < {want}: --connections may fail (raise it with ulimit -Hn)")

    ncpu = os.cpu_count()
    a.broker_prefix = []
    if not a.no_pin and ncpu >= 2 and shutil.which("taskset"):
        a.broker_prefix = ["taskset", "-c", "0"]
        os.sched_setaffinity(0, {ncpu - 1})

    if not a.skip_build:
        log(f"building warren (release) into {a.target_dir}")
        subprocess.run(["cargo", "build", "--release", "-p", "warren"], cwd=ROOT, check=True,
                       env=dict(os.environ, CARGO_TARGET_DIR=a.target_dir))
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal")), "0")
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    meta = {"stamp": stamp, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "command": command,
            "cpu": cpu, "nproc": ncpu, "memory": f"{int(mem) / MIB:.0f} GiB", "kernel": os.uname().release,
            "pinned": not a.no_pin, "fd_limit_client": resource.getrlimit(resource.RLIMIT_NOFILE),
            "load_start": loadavg(), "git": git, "args": {k: v for k, v in vars(a).items() if k != "broker_prefix"}}
    results = {}
    scenarios = a.scenarios.split(",")
    for name in a.brokers.split(","):
        broker = Warren(a) if name == "warren" else RabbitMQ(a)
        results[name] = {}
        for sc in scenarios:
            if sc == "fdlimit" and name != "warren":
                continue
            log(f"{name}: {sc}: starting a fresh broker")
            if name == "warren":
                broker.start(flags=["--memory-high-watermark", "512MiB"] if sc == "flood" else [],
                             nofile=1024 if sc == "fdlimit" else None)
                meta["warren_version"] = f"{broker.version} ({git})"
            else:
                broker.start()
                meta["rabbitmq_version"] = broker.version
                meta.setdefault("rabbitmq_start_secs", []).append(round(broker.start_secs, 1))
            if sc != "fdlimit":
                meta[f"{name}_fd_limit"] = open(f"/proc/{broker.pid}/limits").read().split("Max open files")[1].split()[:2]
            load0 = loadavg()
            log(f"{name}: {sc} (load average {load0})")
            try:
                rec = SCENARIOS[sc](a, broker)
            except (OSError, BrokerClosed) as e:
                rec = {"error": f"{type(e).__name__}: {e}"}
                log(f"  {sc} failed: {rec['error']}")
            finally:
                rec_alive = broker.alive()
                broker.stop()
            rec["load_average"] = [load0, loadavg()]
            rec["broker_alive_after"] = rec_alive
            results[name][sc] = rec
            with open(os.path.join(a.out, "results.json"), "w") as f:
                json.dump(results, f, indent=1)
    meta["load_end"] = loadavg()
    with open(os.path.join(a.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    summarize_log(os.path.join(a.out, "logs", "warren.log"), a.keep_logs)
    report(a.out, results, meta)
    log(f"results in {a.out}")


def summarize_log(path, keep):
    """Warren logs a line per timed-out handshake (10,000 here): keep a count per message
    instead of the megabyte, unless --keep-logs."""
    if not os.path.exists(path):
        return
    counts = {}
    with open(path, errors="replace") as f:
        for line in f:
            parts = line.split(None, 2)
            key = line.strip() if line.startswith("---") else (
                parts[1] + " " + parts[2].split(" connection=")[0].split(" peer=")[0].strip() if len(parts) == 3 else line.strip())
            counts[key] = counts.get(key, 0) + 1
    with open(path + ".summary", "w") as f:
        for key, n in counts.items():
            f.write(f"{n:>7}  {key}\n")
    if not keep:
        os.remove(path)


if __name__ == "__main__":
    main()
