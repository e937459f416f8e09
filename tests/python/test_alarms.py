"""Resource alarms seen through pika: a broker started with a disk free limit it cannot meet
has its disk alarm raised from the start, so a publishing connection gets
connection.blocked (pika's blocked callback) while a connection that only consumes keeps
working."""

import os
import socket
import subprocess
import time
from pathlib import Path

import pika
import pytest

from conftest import REPO, _free_port, _stop

STARTUP_DEADLINE_S = 20.0


@pytest.fixture
def warren_with_disk_alarm(tmp_path):
    if os.environ.get("AMQP_URL"):
        pytest.skip("needs a Warren started with --disk-free-limit")
    binary = Path(os.environ.get("WARREN_BIN") or REPO / "target" / "debug" / "warren")
    port = _free_port()
    cmd = [str(binary), "--bind", "127.0.0.1", "--port", str(port), "--mgmt-port", "0",
           "--prometheus-port", "0",
           "--data-dir", str(tmp_path / "data"), "--disk-free-limit", "1000000TB"]
    with open(tmp_path / "warren.log", "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + STARTUP_DEADLINE_S
        while True:
            assert proc.poll() is None, (tmp_path / "warren.log").read_text()
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "Warren did not start"
                time.sleep(0.05)
        yield f"amqp://guest:guest@127.0.0.1:{port}/%2f"
    finally:
        _stop(proc)


def test_publisher_gets_connection_blocked_and_consumers_keep_working(warren_with_disk_alarm):
    url = warren_with_disk_alarm
    publisher = pika.BlockingConnection(pika.URLParameters(url))
    blocked = []
    publisher.add_on_connection_blocked_callback(
        lambda _conn, method: blocked.append(method.method.reason))
    ch = publisher.channel()
    ch.queue_declare("alarm-q")
    ch.basic_publish("", "alarm-q", b"first")
    deadline = time.monotonic() + 10
    while not blocked and time.monotonic() < deadline:
        publisher.process_data_events(time_limit=0.1)
    assert blocked == ["low on disk space"]

    # A connection that never published is not blocked: it reads what got through.
    consumer = pika.BlockingConnection(pika.URLParameters(url))
    cch = consumer.channel()
    method, _props, body = cch.basic_get("alarm-q", auto_ack=True)
    assert body == b"first"
    consumer.close()
