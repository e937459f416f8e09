"""The web UI in a real headless Chromium (Playwright for Python, the system's Chromium: no
``playwright install``), against the Warren started by conftest.

The flow: a bad login shows the API's error; log in as guest; declare a queue with the UI's
form; publish a message to it from its page and see its count become 1; declare a second queue;
move the message into it with the move dialog (checked with pika too); get it back from the
second queue; delete both queues from their pages.

Without ``/usr/bin/chromium`` (or ``$CHROMIUM``) or the ``playwright`` package the module is
skipped, saying why, unless ``WARREN_REQUIRE_CHROMIUM=1`` (set by ``.ci/run``), which makes it
fail. ``WARREN_UI_SCREENSHOTS=1`` saves the screenshots of ``docs/management.md`` to
``docs/screenshots/``.
"""

import base64
import json
import os
import re
import signal
import threading
import urllib.error
import urllib.request
from urllib.parse import quote
from pathlib import Path

import pika
import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REQUIRED = os.environ.get("WARREN_REQUIRE_CHROMIUM") == "1"
SCREENSHOTS = os.environ.get("WARREN_UI_SCREENSHOTS") == "1"
SHOTS_DIR = REPO / "docs" / "screenshots"
# Each UI expectation waits up to this long: a queue page refreshes every 5 s.
EXPECT_TIMEOUT_MS = 15_000
# The whole flow drives a browser: more than conftest's default watchdog.
FLOW_TIMEOUT_S = 120

try:
    from playwright.sync_api import expect, sync_playwright
    _import_error = None
except ImportError as exc:  # pragma: no cover - depends on the environment
    _import_error = exc


def _missing():
    if _import_error is not None:
        return f"the playwright package is not installed ({_import_error})"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    return None


_why = _missing()
if _why and REQUIRED:
    raise RuntimeError(f"WARREN_REQUIRE_CHROMIUM=1 but {_why}")
pytestmark = pytest.mark.skipif(_why is not None, reason=f"web UI test skipped: {_why}")


@pytest.fixture(autouse=True)
def _longer_watchdog():
    # Runs after conftest's watchdog fixture armed the timer; re-arms it for a browser flow.
    if hasattr(signal, "setitimer") and signal.getitimer(signal.ITIMER_REAL)[0] > 0:
        signal.setitimer(signal.ITIMER_REAL, FLOW_TIMEOUT_S)
    yield


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, mgmt_url):
    context = browser.new_context(viewport={"width": 1366, "height": 768}, base_url=mgmt_url)
    pg = context.new_page()
    pg.set_default_timeout(EXPECT_TIMEOUT_MS)
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: d.accept())  # purge/delete confirmations
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def shot(pg, name):
    if not SCREENSHOTS:
        return
    SHOTS_DIR.mkdir(parents=True, exist_ok=True)
    pg.evaluate("document.getElementById('flash').replaceChildren(); window.scrollTo(0, 0)")
    pg.screenshot(path=str(SHOTS_DIR / f"{name}.png"))


def api_json(mgmt_url, path):
    req = urllib.request.Request(mgmt_url + path, headers={
        "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    with urllib.request.urlopen(req, timeout=10) as res:
        return json.loads(res.read())


def api_status(mgmt_url, path):
    req = urllib.request.Request(mgmt_url + path, headers={
        "Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            return res.status
    except urllib.error.HTTPError as e:
        return e.code


def log_in(pg, user, password):
    pg.goto("/")
    pg.fill("#login-username", user)
    pg.fill("#login-password", password)
    pg.click("#login-submit")


def declare_queue(pg, name):
    pg.goto("/#/queues")
    pg.select_option("#queue-add-vhost", "/")
    pg.fill("#queue-add-name", name)
    pg.click("#queue-add-submit")
    pg.fill("#queues-filter", name)
    link = pg.locator("a.queue-link", has_text=name)
    expect(link).to_have_count(1)
    return link


def open_queue(pg, name):
    pg.goto(f"/#/queues/%2F/{name}")
    expect(pg.locator("#queue-name")).to_have_text(name)


def api_call(mgmt_url, method, path, body=None, user=b"guest:guest"):
    """(status, parsed JSON body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(mgmt_url + path, data=data, method=method, headers={
        "Authorization": "Basic " + base64.b64encode(user).decode(),
        "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as res:
            raw = res.read()
            return res.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw) if raw else None


def test_bad_login_shows_the_api_error(page, mgmt_url, unique):
    log_in(page, "guest", "not-the-password")
    expect(page.locator("#login-error")).to_have_text("Login failed")
    expect(page.locator("#shell")).to_be_hidden()

    # A user without a management tag: the API's refusal (401, as RabbitMQ) is what the form shows.
    name = unique("plain")
    status, _ = api_call(mgmt_url, "PUT", f"/api/users/{quote(name, safe='')}",
                         {"password": "pw", "tags": ""})
    assert status in (201, 204)
    try:
        status, body = api_call(mgmt_url, "GET", "/api/whoami", user=f"{name}:pw".encode())
        assert status == 401
        log_in(page, name, "pw")
        expect(page.locator("#login-error")).to_have_text(f"Login failed: {body['reason']}")
        expect(page.locator("#shell")).to_be_hidden()
    finally:
        api_call(mgmt_url, "DELETE", f"/api/users/{quote(name, safe='')}")


def test_a_refusal_does_not_log_out(page, mgmt_url, unique):
    """RabbitMQ answers a logged-in user's refusal with 401 too: the UI must show it and stay
    logged in (only wrong credentials log out)."""
    name = unique("mgmtuser")
    status, _ = api_call(mgmt_url, "PUT", f"/api/users/{quote(name, safe='')}",
                         {"password": "pw", "tags": "management"})
    assert status in (201, 204)
    try:
        status, body = api_call(mgmt_url, "GET", "/api/users", user=f"{name}:pw".encode())
        assert status == 401 and body["reason"] == "Not administrator user"
        log_in(page, name, "pw")
        expect(page.locator("#whoami")).to_have_text(name)
        page.goto("/#/admin")
        expect(page.locator("main .error, #flash .err").first).to_contain_text(
            "Not administrator user")
        expect(page.locator("#shell")).to_be_visible()
        expect(page.locator("#login")).to_be_hidden()
    finally:
        api_call(mgmt_url, "DELETE", f"/api/users/{quote(name, safe='')}")


def test_queue_publish_move_get_delete(page, mgmt_url, amqp_url, connection, unique):
    first, second = unique("ui1"), unique("ui2")
    traffic = fill_for_screenshots(amqp_url, connection, unique) if SCREENSHOTS else None

    log_in(page, "guest", "guest")
    expect(page.locator("#whoami")).to_have_text("guest")
    expect(page.locator("#total-queues")).not_to_be_empty()
    if traffic:
        # A few samples of the live charts while messages flow.
        expect(page.locator("#rate-chart")).to_be_visible()
        page.wait_for_timeout(31_000)
        traffic.set()
    shot(page, "overview")

    # Declare through the form; the paged list (filtered server-side) shows it.
    declare_queue(page, first).click()
    expect(page.locator("#queue-name")).to_have_text(first)
    expect(page.locator("#queue-messages-total")).to_have_text("0")

    # Publish from the queue's page (default exchange, routing key = queue name).
    expect(page.locator("#publish-routing-key")).to_have_value(first)
    page.fill("#publish-payload", "hello from the UI")
    page.click("#publish-submit")
    expect(page.locator("#queue-messages-total")).to_have_text("1")
    expect(page.locator("#queue-messages-ready")).to_have_text("1")
    shot(page, "queue-detail")

    declare_queue(page, second)
    if SCREENSHOTS:
        page.fill("#queues-filter", "")
        page.wait_for_timeout(500)
        shot(page, "queues")

    # Move the message with the dialog.
    open_queue(page, first)
    expect(page.locator("#queue-messages-total")).to_have_text("1")
    page.click("#move-open")
    page.select_option("#move-kind", "queue")
    page.fill("#move-destination", second)
    shot(page, "move-dialog")
    page.click("#move-submit")
    expect(page.locator("#flash")).to_contain_text("Moved 1 message")
    expect(page.locator("#queue-messages-total")).to_have_text("0")

    # pika agrees: the message is in the second queue.
    ch = connection.channel()
    assert ch.queue_declare(second, passive=True).method.message_count == 1
    assert ch.queue_declare(first, passive=True).method.message_count == 0

    # Get it from the second queue, acknowledging it.
    open_queue(page, second)
    expect(page.locator("#queue-messages-total")).to_have_text("1")
    page.select_option("#get-ackmode", "ack_requeue_false")
    page.fill("#get-count", "5")
    page.click("#get-submit")
    expect(page.locator("#get-results .payload")).to_have_text(["hello from the UI"])
    expect(page.locator("#queue-messages-total")).to_have_text("0")

    # Delete both from their pages.
    for name in (second, first):
        open_queue(page, name)
        page.click("#queue-delete")
        expect(page).to_have_url(re.compile(r"#/queues$"))
        assert api_status(mgmt_url, f"/api/queues/%2F/{name}") == 404


def fill_for_screenshots(amqp_url, connection, unique):
    """A few queues with messages and some traffic, so the screenshots show something.
    Returns an event that stops the traffic."""
    ch = connection.channel()
    names = []
    for i, count in enumerate([3, 120, 0, 42, 7]):
        name = unique(f"shot{i}")
        names.append(name)
        ch.queue_declare(name)
        for n in range(count):
            ch.basic_publish("", name, f"message {n}".encode())
    stop = threading.Event()

    def flow():
        conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
        try:
            c = conn.channel()
            n = 0
            while not stop.is_set():
                n += 1
                for _ in range(20 + 10 * (n % 7)):
                    c.basic_publish("", names[2], b"traffic")
                for _ in range(15 + 5 * (n % 5)):
                    method, _, _ = c.basic_get(names[2])
                    if method is None:
                        break
                    c.basic_ack(method.delivery_tag)
                conn.sleep(0.5)
        finally:
            conn.close()

    threading.Thread(target=flow, daemon=True).start()
    return stop


def test_every_page_renders_and_names_are_text(page, connection, unique):
    """Each page loads without a JavaScript error; a hostile queue name is shown as text."""
    hostile = unique("x") + "<img src=x onerror=alert(1)>#%/"
    ch = connection.channel()
    ch.queue_declare(hostile)
    ch.exchange_declare(unique("ex"), "topic")
    ch.basic_consume(hostile, lambda *args: None, consumer_tag="ui-test-consumer")
    log_in(page, "guest", "guest")
    expect(page.locator("#whoami")).to_have_text("guest")
    for path, heading in [("connections", "Connections"), ("channels", "Channels"),
                          ("exchanges", "Exchanges"), ("admin", "Admin"),
                          ("definitions", "Definitions"), ("nodes", "Nodes"),
                          ("queues", "Queues")]:
        page.goto(f"/#/{path}")
        expect(page.locator("main h1")).to_have_text(heading)
        expect(page.locator("main table, main button").first).to_be_visible()
        expect(page.locator("main .error, #flash .err")).to_have_count(0)
    expect(page.locator("#connections, #admin-users, #queues").first).to_be_visible()
    page.fill("#queues-filter", hostile)
    link = page.locator("a.queue-link")
    expect(link).to_have_text([hostile])
    assert page.locator("main img").count() == 0
    link.click()
    expect(page.locator("#queue-name")).to_have_text(hostile)
    expect(page.locator("#queue-messages-total")).to_have_text("0")
    expect(page.locator("#queue-consumers")).to_contain_text("ui-test-consumer")
    page.goto("/#/exchanges/%2F/amq.topic")
    expect(page.locator("#exchange-name")).to_have_text("amq.topic")
    page.click("#logout")
    expect(page.locator("#login-form")).to_be_visible()


def test_close_a_connection_with_a_reason(page, mgmt_url, connect):
    before = {c["name"] for c in api_json(mgmt_url, "/api/connections")}
    victim = connect()
    after = {c["name"] for c in api_json(mgmt_url, "/api/connections")}
    (name,) = after - before
    log_in(page, "guest", "guest")
    expect(page.locator("#whoami")).to_have_text("guest")
    page.goto("/#/connections")
    page.fill("#connections-filter", name)
    row = page.locator("#connections tbody tr")
    expect(row).to_have_count(1)
    row.get_by_label("Close reason").fill("closed from the UI test")
    row.get_by_role("button", name="Close").click()
    expect(page.locator("#flash")).to_contain_text("Closed")
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
        for _ in range(100):
            victim.process_data_events(time_limit=0.1)
    assert "closed from the UI test" in str(closed.value)


def test_admin_forms_and_definitions(page, mgmt_url, tmp_path, unique):
    vhost, user, policy = unique("vh"), unique("user"), unique("pol")
    log_in(page, "guest", "guest")
    expect(page.locator("#whoami")).to_have_text("guest")
    page.goto("/#/admin")
    page.fill("#vhost-name", vhost)
    page.get_by_role("button", name="Add vhost").click()
    expect(page.locator("#admin-vhosts")).to_contain_text(vhost)
    page.fill("#user-name", user)
    page.fill("#user-password", "s3cret")
    page.fill("#user-tags", "monitoring")
    page.get_by_role("button", name="Add / update user").click()
    expect(page.locator("#admin-users tr", has_text=user)).to_contain_text("monitoring")
    page.fill("#perm-user", user)
    page.select_option("select[name=perm-vhost]", vhost)
    page.fill("#perm-write", "^$")
    page.get_by_role("button", name="Set permission").click()
    expect(page.locator("#admin-permissions tr", has_text=user)).to_contain_text("^$")
    page.select_option("select[name=policy-vhost]", vhost)
    page.fill("#policy-name", policy)
    page.fill("#policy-definition", '{"max-length": 10}')
    page.get_by_role("button", name="Add / update policy").click()
    expect(page.locator("#admin-policies")).to_contain_text(policy)
    page.select_option("select[name=limit-vhost]", vhost)
    page.fill("#limit-value", "7")
    page.get_by_role("button", name="Set limit").click()
    expect(page.locator("#admin-limits tr", has_text=vhost)).to_contain_text("max-connections")
    assert api_json(mgmt_url, f"/api/vhost-limits/{quote(vhost, safe='')}")[0]["value"] == {
        "max-connections": 7}

    # A bad policy definition: the API's reason is shown.
    page.fill("#policy-name", policy + "-bad")
    page.fill("#policy-definition", "not json")
    page.get_by_role("button", name="Add / update policy").click()
    expect(page.locator("#flash .err")).to_contain_text("not valid JSON")

    # Definitions: download, then upload a document declaring a queue in the new vhost.
    page.goto("/#/definitions")
    with page.expect_download() as info:
        page.click("#definitions-download")
    exported = json.loads(Path(info.value.path()).read_text())
    assert any(p["name"] == policy for p in exported["policies"])
    doc = tmp_path / "defs.json"
    doc.write_text(json.dumps({"queues": [{"name": "from-upload", "vhost": vhost, "durable": True,
                                           "auto_delete": False, "arguments": {}}]}))
    page.set_input_files("#definitions-file", str(doc))
    page.click("#definitions-upload")
    expect(page.locator("#flash")).to_contain_text("Definitions imported")
    assert api_status(mgmt_url, f"/api/queues/{quote(vhost, safe='')}/from-upload") == 200

    # Remove what was added, from the tables.
    page.goto("/#/admin")
    for table, key in (("#admin-users", user), ("#admin-vhosts", vhost)):
        row = page.locator(f"{table} tr", has_text=key)
        row.get_by_role("button", name="Delete").click()
        expect(page.locator(f"{table} tr", has_text=key)).to_have_count(0)
    assert api_status(mgmt_url, f"/api/users/{quote(user, safe='')}") == 404
    assert api_status(mgmt_url, f"/api/vhosts/{quote(vhost, safe='')}") == 404


def test_connection_and_channel_pages(page, mgmt_url, connect, unique):
    """From the connections list to one connection (client properties, its channels) and on to
    one channel (its consumer)."""
    before = {c["name"] for c in api_json(mgmt_url, "/api/connections")}
    client = connect()
    (name,) = {c["name"] for c in api_json(mgmt_url, "/api/connections")} - before
    ch = client.channel()
    q = unique("q")
    ch.queue_declare(q, exclusive=True)
    ch.basic_qos(prefetch_count=7)
    ch.basic_consume(q, lambda *args: None, consumer_tag="page-test-consumer")
    log_in(page, "guest", "guest")
    expect(page.locator("#whoami")).to_have_text("guest")
    page.goto("/#/connections")
    page.fill("#connections-filter", name)
    page.locator("a.connection-link").click()
    expect(page.locator("#connection-name")).to_have_text(name)
    expect(page.locator("#connection-client")).to_contain_text("Pika")
    expect(page.locator("#connection-channel-count")).to_have_text("1")
    page.locator("#connection-channels a").click()
    expect(page.locator("#channel-name")).to_have_text(f"{name} (1)")
    expect(page.locator("#channel-consumer-count")).to_have_text("1")
    expect(page.locator("#channel-consumers")).to_contain_text("page-test-consumer")
    expect(page.locator("main .error, #flash .err")).to_have_count(0)


def test_nodes_page(page, mgmt_url):
    """One node, with its memory and descriptors and the AMQP and HTTP listeners."""
    (node,) = api_json(mgmt_url, "/api/nodes")
    log_in(page, "guest", "guest")
    expect(page.locator("#whoami")).to_have_text("guest")
    page.goto("/#/nodes")
    expect(page.locator("#nodes tbody tr").first).to_contain_text(node["name"])
    expect(page.locator("#nodes")).to_contain_text("amqp")
    expect(page.locator("#nodes")).to_contain_text("http")
