"""The management API of the ``warren`` binary knows the node it runs in: its AMQP listener
(health checks, overview ``listeners``) and its alarm monitor (``/api/nodes`` limits)."""

import base64
import json
import urllib.error
import urllib.parse
import urllib.request

import pytest


def _get(mgmt_url, path):
    req = urllib.request.Request(mgmt_url + path)
    token = base64.b64encode(b"guest:guest").decode()
    req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.mark.warren_only
def test_listeners_and_alarm_limits_come_from_the_broker(mgmt_url, mgmt_port, amqp_url):
    amqp_port = urllib.parse.urlparse(amqp_url).port
    assert _get(mgmt_url, f"/api/health/checks/port-listener/{amqp_port}") == \
        (200, {"status": "ok"})
    assert _get(mgmt_url, f"/api/health/checks/port-listener/{mgmt_port}")[0] == 200
    assert _get(mgmt_url, "/api/health/checks/protocol-listener/amqp")[0] == 200
    status, body = _get(mgmt_url, "/api/health/checks/protocol-listener/mqtt")
    assert status == 503 and body["status"] == "failed"
    assert _get(mgmt_url, "/api/health/checks/alarms") == (200, {"status": "ok"})

    _, overview = _get(mgmt_url, "/api/overview")
    ports = {(l["protocol"], l["port"]) for l in overview["listeners"]}
    assert ("amqp", amqp_port) in ports and ("http", mgmt_port) in ports

    _, nodes = _get(mgmt_url, "/api/nodes")
    node = nodes[0]
    assert node["mem_limit"] > 0, "the memory high watermark of the alarm monitor"
    assert node["disk_free_limit"] > 0
    assert node["disk_free"] > 0
    assert node["mem_alarm"] is False and node["disk_free_alarm"] is False
    assert node["sockets_used"] >= 2, "at least the two listeners"
