"""The firehose tracer with pika: tracing switched on a vhost of its own over the management
API, a queue bound to ``amq.rabbitmq.trace`` with ``#``, and the ``publish.<exchange>`` /
``deliver.<queue>`` copies with RabbitMQ's headers. Trace copies are read with basic.get: each
is in the trace queue before the publish is confirmed or the delivery reaches the client."""

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
import uuid

import pika
import pytest

TRACE = "amq.rabbitmq.trace"


def _api(mgmt_url, method, path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(mgmt_url + path, data=data, method=method)
    token = base64.b64encode(b"guest:guest").decode()
    req.add_header("Authorization", f"Basic {token}")
    req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


@pytest.fixture
def traced_vhost(mgmt_url):
    """A fresh vhost guest may use; deleted after the test."""
    name = f"trace-{uuid.uuid4().hex[:8]}"
    path = "/api/vhosts/" + urllib.parse.quote(name, safe="")
    assert _api(mgmt_url, "PUT", path)[0] in (201, 204)
    perms = {"configure": ".*", "write": ".*", "read": ".*"}
    status, _ = _api(mgmt_url, "PUT",
                     "/api/permissions/" + urllib.parse.quote(name, safe="") + "/guest", perms)
    assert status in (201, 204)
    yield name, path
    _api(mgmt_url, "DELETE", path)


def _connect(amqp_url, vhost):
    params = pika.URLParameters(amqp_url)
    params.virtual_host = vhost
    return pika.BlockingConnection(params)


def _next_trace(ch, queue):
    method, props, body = ch.basic_get(queue, auto_ack=True)
    assert method is not None, f"no trace message in {queue}"
    return method, props, body


def test_publish_and_deliver_copies_with_rabbitmq_headers(amqp_url, mgmt_url, traced_vhost):
    vhost, path = traced_vhost
    conn = _connect(amqp_url, vhost)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        traces = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(traces, TRACE, routing_key="#")
        ch.exchange_declare("x.py", exchange_type="fanout")
        app = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(app, "x.py")

        assert _api(mgmt_url, "PUT", path, {"tracing": True})[0] == 204
        status, shown = _api(mgmt_url, "GET", path)
        assert status == 200 and shown["tracing"] is True

        props = pika.BasicProperties(content_type="text/plain", delivery_mode=2,
                                     headers={"h": "v"}, message_id="m-1")
        ch.basic_publish("x.py", "key", b"payload", props)
        method, tprops, body = _next_trace(ch, traces)
        assert method.exchange == TRACE
        assert method.routing_key == "publish.x.py"
        assert body == b"payload"
        h = tprops.headers
        assert h["exchange_name"] == "x.py"
        assert h["routing_keys"] == ["key"]
        assert h["routed_queues"] == [app]
        assert h["vhost"] == vhost
        assert h["user"] == "guest"
        assert h["channel"] == ch.channel_number
        assert h["connection"].startswith("127.0.0.1:")
        _, overview = _api(mgmt_url, "GET", "/api/overview")
        assert h["node"] == overview["node"]
        assert h["properties"] == {"content_type": "text/plain", "delivery_mode": 2,
                                   "headers": {"h": "v"}, "message_id": "m-1"}
        assert "redelivered" not in h

        method, _, body = ch.basic_get(app, auto_ack=True)
        assert body == b"payload"
        method, tprops, body = _next_trace(ch, traces)
        assert method.routing_key == f"deliver.{app}"
        assert body == b"payload"
        assert tprops.headers["redelivered"] == 0
        assert tprops.headers["exchange_name"] == "x.py"
        assert "routed_queues" not in tprops.headers

        # Tracing off: nothing more is copied; the trace queue's own gets were never traced.
        assert _api(mgmt_url, "PUT", path, {"tracing": False})[0] == 204
        ch.basic_publish("x.py", "key", b"quiet")
        assert ch.basic_get(traces, auto_ack=True)[0] is None
        _, shown = _api(mgmt_url, "GET", path)
        assert shown["tracing"] is False
    finally:
        conn.close()


def test_publishing_to_the_trace_exchange_is_refused(amqp_url, traced_vhost):
    vhost, _ = traced_vhost
    conn = _connect(amqp_url, vhost)
    try:
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            ch.basic_publish(TRACE, "publish.x", b"forged")
        assert closed.value.reply_code == 403
        assert f"cannot publish to internal exchange '{TRACE}' in vhost '{vhost}'" \
            in closed.value.reply_text
    finally:
        conn.close()
