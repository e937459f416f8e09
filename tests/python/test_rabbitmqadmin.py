"""RabbitMQ's own ``rabbitmqadmin`` (the Python 3 script shipped in Debian's rabbitmq-server
package) against Warren's management HTTP API: lists, declares, deletes, purge, export and
import, and ``show overview``, with the outputs parsed (``-f raw_json``).

The script is found at ``$RABBITMQADMIN``, else at ``<target>/rabbitmqadmin/rabbitmqadmin``
(``scripts/test`` fetches it there with ``apt-get download rabbitmq-server`` + ``dpkg -x``,
without installing Erlang). Without it the module is skipped, saying so; ``.ci/run`` makes
fetching it mandatory.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 20


def _script():
    candidates = [os.environ.get("RABBITMQADMIN")]
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        candidates.append(str(Path(target) / "rabbitmqadmin" / "rabbitmqadmin"))
    candidates.append(str(REPO / "target" / "rabbitmqadmin" / "rabbitmqadmin"))
    for c in candidates:
        if c and Path(c).is_file():
            return c
    return None


SCRIPT = _script()
pytestmark = pytest.mark.skipif(
    SCRIPT is None,
    reason="rabbitmqadmin not available: set RABBITMQADMIN or run scripts/test, which fetches "
           "it from Debian's rabbitmq-server package (apt-get download + dpkg -x)")


@pytest.fixture
def admin(mgmt_port):
    """``admin("list", "queues")`` runs rabbitmqadmin as guest and returns its stdout."""

    def run(*args, fmt="raw_json", check=True):
        cmd = [sys.executable, SCRIPT, "-H", "127.0.0.1", "-P", str(mgmt_port),
               "-u", "guest", "-p", "guest", "-f", fmt, *args]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} exited {done.returncode}\nstdout: {done.stdout}\n"
                        f"stderr: {done.stderr}", pytrace=False)
        return done

    return run


def listed(admin, kind, *extra):
    return json.loads(admin("list", kind, *extra).stdout)


def test_declare_list_purge_delete_queue_exchange_binding(admin, unique, connection):
    q, x = unique("q"), unique("x")
    admin("declare", "queue", f"name={q}", "durable=false")
    admin("declare", "exchange", f"name={x}", "type=topic")
    admin("declare", "binding", f"source={x}", f"destination={q}", "routing_key=a.#")

    ch = connection.channel()
    ch.confirm_delivery()
    for i in range(4):
        ch.basic_publish(exchange=x, routing_key="a.b", body=f"m{i}".encode())

    queues = {e["name"]: e for e in listed(admin, "queues", "name", "messages", "durable")}
    assert q in queues
    assert queues[q]["durable"] is False
    exchanges = {e["name"]: e for e in listed(admin, "exchanges")}
    assert exchanges[x]["type"] == "topic"
    assert "" in exchanges, "the default exchange is listed"
    bindings = [b for b in listed(admin, "bindings") if b["source"] == x]
    assert [(b["destination"], b["routing_key"]) for b in bindings] == [(q, "a.#")]

    # The queue holds the 4 messages (metrics are published after each batch: poll briefly).
    def messages():
        return {e["name"]: e for e in listed(admin, "queues", "name", "messages")}[q]["messages"]
    for _ in range(100):
        if messages() == 4:
            break
    assert messages() == 4

    admin("purge", "queue", f"name={q}")
    for _ in range(100):
        if messages() == 0:
            break
    assert messages() == 0

    admin("delete", "binding", f"source={x}", "destination_type=queue", f"destination={q}",
          "properties_key=a.%23")
    assert not [b for b in listed(admin, "bindings") if b["source"] == x]
    admin("delete", "exchange", f"name={x}")
    assert x not in {e["name"] for e in listed(admin, "exchanges")}
    admin("delete", "queue", f"name={q}")
    assert q not in {e["name"] for e in listed(admin, "queues")}


def test_connections_channels_consumers(admin, unique, connection):
    q = unique("q")
    ch = connection.channel()
    ch.queue_declare(q)
    ch.basic_qos(prefetch_count=5)
    tag = ch.basic_consume(q, lambda *a: None)

    connections = listed(admin, "connections", "name", "user", "channels", "vhost")
    assert any(c["user"] == "guest" for c in connections)
    channels = listed(admin, "channels", "name", "user", "prefetch_count", "consumer_count")
    mine = [c for c in channels if c["consumer_count"] == 1 and c["prefetch_count"] == 5]
    assert mine, channels
    consumers = [c for c in listed(admin, "consumers") if c["queue"]["name"] == q]
    assert [c["consumer_tag"] for c in consumers] == [tag]
    assert consumers[0]["channel_details"]["name"] == mine[0]["name"]
    ch.basic_cancel(tag)


def test_vhosts_users_nodes_and_overview(admin, unique):
    assert "/" in {v["name"] for v in listed(admin, "vhosts")}
    assert "guest" in {u["name"] for u in listed(admin, "users")}
    nodes = listed(admin, "nodes")
    assert len(nodes) == 1 and nodes[0]["running"] is True
    overview = json.loads(admin("show", "overview").stdout)[0]
    assert overview["rabbitmq_version"]
    assert overview["object_totals"]["queues"] >= 0
    assert "messages" in overview["queue_totals"]
    # The table format (rabbitmqadmin's default) renders too.
    q = unique("q")
    admin("declare", "queue", f"name={q}", "durable=false")
    table = admin("list", "queues", fmt="table").stdout
    assert "name" in table and "messages" in table and q in table
    admin("delete", "queue", f"name={q}")


def test_export_then_import_definitions(admin, unique, tmp_path, connection):
    q = unique("q")
    admin("declare", "queue", f"name={q}", "durable=true")
    exported = tmp_path / "defs.json"
    admin("export", str(exported))
    definitions = json.loads(exported.read_text())
    assert q in {e["name"] for e in definitions["queues"]}

    admin("delete", "queue", f"name={q}")
    assert q not in {e["name"] for e in listed(admin, "queues")}
    admin("import", str(exported))
    assert q in {e["name"] for e in listed(admin, "queues")}
    # The imported queue is a real one: AMQP sees it.
    connection.channel().queue_declare(q, passive=True)


def test_errors_come_back_as_rabbitmqadmin_reports_them(admin, unique):
    q = unique("q")
    admin("declare", "queue", f"name={q}", "durable=true")
    done = admin("declare", "queue", f"name={q}", "durable=false", check=False)
    assert done.returncode != 0
    assert "inequivalent arg 'durable'" in done.stdout + done.stderr
    done = admin("delete", "exchange", "name=amq.direct", check=False)
    assert done.returncode != 0
    admin("delete", "queue", f"name={q}")


def test_publish_and_get(admin, unique, connection):
    q = unique("q")
    ch = connection.channel()
    ch.queue_declare(q)
    done = admin("publish", "exchange=amq.default", f"routing_key={q}", "payload=hello",
                 'properties={"delivery_mode": 2, "headers": {"k": "v"}}', fmt="table")
    assert "Message published" in done.stdout and "NOT" not in done.stdout, done.stdout
    done = admin("publish", "exchange=amq.direct", "routing_key=nowhere", "payload=x",
                 fmt="table")
    assert "NOT routed" in done.stdout, done.stdout
    # Seen by a pika client: the message is in the queue (published with a confirm).
    assert ch.queue_declare(q, passive=True).method.message_count == 1

    got = json.loads(admin("get", f"queue={q}", "count=5", "ackmode=ack_requeue_true").stdout)
    assert [(m["payload"], m["properties"]["headers"], m["redelivered"]) for m in got] == [
        ("hello", {"k": "v"}, False)]
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    got = json.loads(admin("get", f"queue={q}", "ackmode=ack_requeue_false").stdout)
    assert [(m["payload"], m["redelivered"]) for m in got] == [("hello", True)]
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.queue_delete(q)
