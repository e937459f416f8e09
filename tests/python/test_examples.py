"""Runs every program in ``examples/`` against the broker under test.

Each example is a standalone pika program that checks its own outcome and exits with status 0
only if the messaging pattern worked (see examples/README.md). Here each runs as a subprocess
(``python examples/X.py --url <amqp_url>``, plus ``--mgmt-url <mgmt_url>`` for those in
``NEEDS_MGMT``) with a timeout; the test asserts the exit status, the final ``OK`` line and one
line of output specific to the example. The examples use uuid-suffixed names and clean up, so
they can run repeatedly against one broker.
"""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUN_TIMEOUT_S = 20  # each example takes well under 5 s; this only bounds a hang

# example -> a line its output must contain
EXPECTED_LINE = {
    "work_queue": "redelivered after the crash: ['job-3']",
    "publish_subscribe": "audit-log: 5 events, all in order: True",
    "routing": "unroutable: ['debug']",
    "topics": "critical (*.critical): ['kern.critical', 'app.critical']",
    "rpc": "fib(90) = 2880067194370816120",
    "scatter_gather": "best: parcel-co",
    "pipes_and_filters": "validate: dropped {\"sku\": \"fig\"",
    "claim_check": "payloads left in the store: 0",
    "saga": "order-B: inventory.reserve -> payment.charge -> shipping.book -> payment.refund -> "
            "inventory.release",
    "retry_dead_letter": "parking lot: crasher (delivery_limit)",
    "scale_out_by_key": "each customer on exactly one worker, in order: True",
    "ordered_per_customer": "two orders of one customer at once: 0",
    "content_router": "analytics {\"channel\": [{\"anything-but\": \"test\"}]}: ['b1', 'b2', 'b5']",
    "idempotent_receiver": "times each order was processed: {'order-1': 1, 'order-2': 1, "
                           "'order-3': 1, 'order-4': 1, 'order-5': 1}",
    "wire_tap": "tap saw 3 publishes and 4 deliveries (1 redelivered)",
    "delayed_retry": "succeeded: {'ok': 1, 'flaky': 3}; parked: {'poison': 4}; "
                     "retries that came early: []",
}
# Examples needing a Warren feature that a stock RabbitMQ lacks.
WARREN_ONLY = {
    "scale_out_by_key",     # x-consistent-hash: a plugin in RabbitMQ
    "content_router",       # x-match: filter (SNS-style filter policies)
    "idempotent_receiver",  # x-message-deduplication: a plugin in RabbitMQ
    "wire_tap",             # firehose copies' headers as Warren documents them
    "delayed_retry",        # x-delayed-message: a plugin in RabbitMQ
    "ordered_per_customer", # x-message-group-header: FIFO message groups
}
# Examples that also take the management API's URL (``--mgmt-url``).
NEEDS_MGMT = {"wire_tap"}


def _params():
    for name in EXPECTED_LINE:
        marks = [pytest.mark.warren_only] if name in WARREN_ONLY else []
        yield pytest.param(name, marks=marks, id=name)


@pytest.mark.parametrize("name", list(_params()))
def test_example(name, amqp_url, request):
    cmd = [sys.executable, str(EXAMPLES / f"{name}.py"), "--url", amqp_url]
    if name in NEEDS_MGMT:
        cmd += ["--mgmt-url", request.getfixturevalue("mgmt_url")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    output = f"--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"
    assert proc.returncode == 0, f"{name}.py exited with {proc.returncode}\n{output}"
    lines = proc.stdout.splitlines()
    assert lines and lines[-1] == "OK", output
    assert EXPECTED_LINE[name] in proc.stdout, output


def test_every_example_is_run_and_documented():
    programs = {p.stem for p in EXAMPLES.glob("*.py")}
    assert programs == set(EXPECTED_LINE)
    readme = (EXAMPLES / "README.md").read_text()
    missing = [p for p in sorted(programs) if f"examples/{p}.py" not in readme]
    assert not missing, f"not described in examples/README.md: {missing}"
