"""Fixtures for Warren's Python end-to-end suite (pytest + pika).

* ``amqp_url`` (session): the broker under test. If the environment variable ``AMQP_URL`` is
  set it is used as is (e.g. a reference RabbitMQ:
  ``AMQP_URL=amqp://guest:guest@127.0.0.1:5680/%2f``). Otherwise the Warren binary
  (``$WARREN_BIN``, default ``<repo>/target/debug/warren``) is started as
  ``warren --bind 127.0.0.1 --port <free port> --data-dir <tmpdir>/data`` with its output in
  ``<tmpdir>/warren.log``, waited for (TCP accept, 20 s deadline) and stopped at session end
  (SIGTERM, then SIGKILL after 10 s). A failing test gets the tail of that log in its report.
* ``prometheus_url`` (session): ``http://127.0.0.1:<port>`` of the started Warren's Prometheus
  listener (a free port chosen here, ``--prometheus-port``); with ``AMQP_URL`` it is
  ``$PROMETHEUS_URL`` (e.g. ``http://127.0.0.1:15692``), and tests that need it are skipped
  when that is unset.
* ``mgmt_port`` / ``mgmt_url`` (session): the management HTTP API of the Warren started above
  (``--mgmt-port <free port>``), e.g. ``http://127.0.0.1:<port>``. With ``AMQP_URL`` set, the
  environment variable ``MGMT_URL`` names it (default ``http://127.0.0.1:15672``).
* ``connect``: a factory of fresh ``pika.BlockingConnection`` objects, all closed after the test.
* ``connection``: one fresh ``pika.BlockingConnection`` per test, closed after it.
* ``unique``: ``unique("kind")`` returns a uuid-based name no other test (or other run against
  a shared broker) uses; queues and exchanges with those names are deleted after the test.

Tests marked ``@pytest.mark.warren_only`` are skipped when the broker under test does not
announce ``product: Warren`` in its connection.start server properties (e.g. RabbitMQ).

Every test also runs under a watchdog (``$WARREN_TEST_TIMEOUT`` seconds, default 30) so that a
broker that never answers a synchronous method fails the test instead of hanging the suite.
"""

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pika
import pytest

REPO = Path(__file__).resolve().parents[2]
STARTUP_DEADLINE_S = 20.0
STOP_GRACE_S = 10.0
TEST_TIMEOUT_S = float(os.environ.get("WARREN_TEST_TIMEOUT", "30"))

# Path of the log of the Warren we started (None when testing an external broker).
_warren_log = None
# Base URL of the started Warren's Prometheus listener.
_prometheus_url = None
# The management API port of the Warren we started (None when testing an external broker).
_mgmt_port = None


def _log_tail(path, max_lines=60):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(lines[-max_lines:]) or "<empty log>"


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc):
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def amqp_url(tmp_path_factory):
    global _warren_log, _prometheus_url, _mgmt_port
    url = os.environ.get("AMQP_URL")
    if url:
        yield url
        return

    binary = Path(os.environ.get("WARREN_BIN") or REPO / "target" / "debug" / "warren")
    if not binary.is_file():
        pytest.fail(f"Warren binary not found at {binary} (build it, set WARREN_BIN, "
                    f"or set AMQP_URL to test an already running broker)", pytrace=False)
    tmp = tmp_path_factory.mktemp("warren")
    data_dir = tmp / "data"
    data_dir.mkdir()
    log_path = tmp / "warren.log"
    port = _free_port()
    mgmt_port = _free_port()
    while mgmt_port == port:
        mgmt_port = _free_port()
    prometheus_port = _free_port()
    while prometheus_port in (port, mgmt_port):
        prometheus_port = _free_port()
    cmd = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--mgmt-port",
           str(mgmt_port), "--prometheus-port", str(prometheus_port), "--data-dir", str(data_dir)]
    _prometheus_url = f"http://127.0.0.1:{prometheus_port}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    _warren_log = log_path
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"Warren exited with status {proc.returncode} before accepting "
                            f"connections\ncommand: {' '.join(cmd)}\n--- {log_path} (tail) ---\n"
                            f"{_log_tail(log_path)}", pytrace=False)
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"Warren did not accept TCP connections on 127.0.0.1:{port} within "
                            f"{STARTUP_DEADLINE_S:.0f} s\ncommand: {' '.join(cmd)}\n"
                            f"--- {log_path} (tail) ---\n{_log_tail(log_path)}", pytrace=False)
            try:  # doubles as the poll interval and as the early-exit detector
                proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
        _mgmt_port = mgmt_port
        yield f"amqp://guest:guest@127.0.0.1:{port}/%2f"
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def prometheus_url(amqp_url):
    """Base URL of the broker's Prometheus endpoint (see the module docstring)."""
    if os.environ.get("AMQP_URL"):
        url = os.environ.get("PROMETHEUS_URL")
        if not url:
            pytest.skip("AMQP_URL is set without PROMETHEUS_URL")
        return url.rstrip("/")
    return _prometheus_url


@pytest.fixture(scope="session")
def mgmt_url(amqp_url):
    """Base URL of the management HTTP API (no trailing slash), accepting connections."""
    if _mgmt_port is None:
        return os.environ.get("MGMT_URL", "http://127.0.0.1:15672").rstrip("/")
    deadline = time.monotonic() + STARTUP_DEADLINE_S
    while True:
        try:
            with socket.create_connection(("127.0.0.1", _mgmt_port), timeout=0.5):
                break
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the management API did not accept connections on port "
                            f"{_mgmt_port} within {STARTUP_DEADLINE_S:.0f} s", pytrace=False)
            time.sleep(0.05)
    return f"http://127.0.0.1:{_mgmt_port}"


@pytest.fixture(scope="session")
def mgmt_port(mgmt_url):
    """Port of the management HTTP API."""
    return int(mgmt_url.rsplit(":", 1)[1])


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _warren_log is not None:
        rep.sections.append((f"warren log tail ({_warren_log})", _log_tail(_warren_log)))


@pytest.fixture(scope="session")
def broker_product(amqp_url):
    """The ``product`` server property of the broker under test (e.g. "Warren", "RabbitMQ")."""
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        product = conn._impl.server_properties.get("product")
    finally:
        _close_quietly(conn)
    return product.decode() if isinstance(product, bytes) else product


@pytest.fixture(autouse=True)
def _skip_warren_only(request):
    if request.node.get_closest_marker("warren_only") is None:
        return
    product = request.getfixturevalue("broker_product")
    if product != "Warren":
        pytest.skip(f"Warren-only behaviour; the broker under test is {product!r}")


class WatchdogTimeout(Exception):
    """Raised by the per-test watchdog."""


@pytest.fixture(autouse=True)
def _watchdog():
    if TEST_TIMEOUT_S <= 0 or not hasattr(signal, "setitimer"):
        yield
        return

    def fire(signum, frame):
        raise WatchdogTimeout(f"test still running after {TEST_TIMEOUT_S:.0f} s "
                          f"(broker not answering?)")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, TEST_TIMEOUT_S)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _close_quietly(conn):
    try:
        if conn.is_open:
            conn.close()
    except Exception:  # already closed by the broker, socket gone, ...
        pass


@pytest.fixture
def connect(amqp_url):
    """Factory: ``connect()`` opens another BlockingConnection, closed after the test."""
    opened = []

    def make():
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        opened.append(conn)
        return conn

    yield make
    for conn in reversed(opened):
        _close_quietly(conn)


@pytest.fixture
def connection(connect):
    return connect()


@pytest.fixture
def unique(request, amqp_url):
    """``unique(kind)`` -> a collision-free queue/exchange name; deleted after the test."""
    names = []
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:48]

    def make(kind="q"):
        name = f"pytest.{test}.{kind}.{uuid.uuid4().hex[:12]}"
        names.append(name)
        return name

    yield make
    if not names:
        return
    # Best effort: never let cleanup turn a result into an error.
    try:
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    except Exception:
        return
    try:
        ch = None
        for name in names:
            for delete in ("queue_delete", "exchange_delete"):
                try:
                    if ch is None or not ch.is_open:
                        ch = conn.channel()
                    getattr(ch, delete)(name)
                except Exception:
                    ch = None
    finally:
        _close_quietly(conn)
