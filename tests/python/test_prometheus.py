"""Prometheus metrics (``--prometheus-port``): the scrape is valid text exposition format by
Debian's ``promtool check metrics`` (run on the real output of the binary), and the counters
RabbitMQ's dashboards use move with traffic.

``promtool`` comes from ``$PROMTOOL`` or ``PATH``; without it the format check is skipped,
except under CI (``WARREN_CI=1``, set by ``.ci/run``, which installs it), where it fails.
"""

import os
import shutil
import subprocess
import urllib.request

import pika
import pytest


def scrape(base, path="/metrics"):
    with urllib.request.urlopen(base + path, timeout=10) as response:
        assert response.status == 200
        content_type = response.headers["Content-Type"]
        return content_type, response.read().decode("utf-8")


def sample(text, name):
    """The value of an unlabelled sample ``name``."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split(" ")[1])
    raise AssertionError(f"no sample {name} in the scrape")


def promtool():
    path = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if path:
        return path
    if os.environ.get("WARREN_CI") == "1":
        pytest.fail("promtool is missing under CI (.ci/run installs it)", pytrace=False)
    pytest.skip("promtool is not installed (Debian: prometheus)")


@pytest.mark.warren_only
def test_scrape_passes_promtool_check(prometheus_url, connection, unique):
    tool = promtool()
    # Some traffic first, so that counters and per-object labels have values.
    ch = connection.channel()
    queue = unique("queue")
    ch.queue_declare(queue=queue)
    ch.basic_publish(exchange="", routing_key=queue, body=b"x")
    for path in ["/metrics", "/metrics/per-object",
                 "/metrics/detailed?family=queue_coarse_metrics&family=queue_metrics"
                 "&family=connection_coarse_metrics&family=channel_metrics"
                 "&family=exchange_names&family=vhost_status&family=queue_info"]:
        content_type, text = scrape(prometheus_url, path)
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        result = subprocess.run([tool, "check", "metrics"], input=text.encode(),
                                capture_output=True, timeout=60)
        assert result.returncode == 0, (
            f"promtool check metrics on {path}:\n{result.stdout.decode()}{result.stderr.decode()}")


@pytest.mark.warren_only
def test_counters_move_with_traffic(prometheus_url, connection, unique):
    ch = connection.channel()
    ch.confirm_delivery()
    queue = unique("queue")
    ch.queue_declare(queue=queue)
    _, before = scrape(prometheus_url)
    for _ in range(3):
        ch.basic_publish(exchange="", routing_key=queue, body=b"hello")
    method, _, _ = ch.basic_get(queue=queue, auto_ack=False)
    ch.basic_ack(method.delivery_tag)
    ch.queue_declare(queue=queue, passive=True)  # a round trip: the ack was handled
    # The connection's counters are written by its task as it works; the basic.get-ok
    # above came after every publish and confirm, so they are already counted.
    _, after = scrape(prometheus_url)

    def moved(name):
        return sample(after, name) - sample(before, name)

    assert moved("rabbitmq_channel_messages_published_total") == 3
    assert moved("rabbitmq_channel_messages_confirmed_total") == 3
    assert moved("rabbitmq_channel_get_ack_total") == 1
    assert moved("rabbitmq_channel_messages_acked_total") == 1
    assert sample(after, "rabbitmq_connections") >= 1
    assert sample(after, "rabbitmq_process_resident_memory_bytes") > 0
    assert 'rabbitmq_identity_info{rabbitmq_node="' in after


def test_the_overview_lists_the_prometheus_listener(prometheus_url, mgmt_url):
    """RabbitMQ's overview shows `http/prometheus` among the node's listeners."""
    import base64
    import json
    request = urllib.request.Request(mgmt_url + "/api/overview", headers={
        "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    with urllib.request.urlopen(request, timeout=10) as response:
        listeners = json.load(response)["listeners"]
    port = int(prometheus_url.rsplit(":", 1)[1])
    assert {"protocol": "http/prometheus", "port": port} in [
        {"protocol": entry["protocol"], "port": entry["port"]} for entry in listeners], listeners
