"""Event-driven waiting helpers shared by the end-to-end tests.

Nothing here sleeps for synchronisation: every wait pumps pika's I/O loop
(``process_data_events(time_limit=...)``) or polls the broker with a synchronous method until
an expected event happens, and running into the deadline fails the test.
"""

import time

import pika
import pytest
from pika.exceptions import ChannelClosedByBroker

DEFAULT_TIMEOUT = 5.0
PUMP_SLICE = 0.02  # seconds pika may block per I/O-loop turn


def pump_until(connections, predicate, what, timeout=DEFAULT_TIMEOUT):
    """Process I/O on ``connections`` (one or a list) until ``predicate()`` is true.

    ``what`` describes the awaited event for the failure message; it may be a callable
    returning that text, evaluated only on failure (to report the state at the deadline).
    """
    if not isinstance(connections, (list, tuple)):
        connections = [connections]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for "
                        f"{what() if callable(what) else what}")
        for conn in connections:
            conn.process_data_events(time_limit=PUMP_SLICE)


def pump_for(connections, duration):
    """Process I/O for ``duration`` seconds.

    Only for *negative* checks ("nothing more arrives"): a window in which an unwanted event
    would be noticed, never to wait for something expected.
    """
    if not isinstance(connections, (list, tuple)):
        connections = [connections]
    end = time.monotonic() + duration
    while time.monotonic() < end:
        for conn in connections:
            conn.process_data_events(time_limit=PUMP_SLICE)


def get_messages(channel, queue, count, timeout=DEFAULT_TIMEOUT, auto_ack=True):
    """basic_get from ``queue`` until ``count`` messages arrived; returns a list of
    ``(method, properties, body)``. With ``auto_ack=False`` the caller settles them."""
    got = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        method, props, body = channel.basic_get(queue, auto_ack=auto_ack)
        if method is not None:
            got.append((method, props, body))
            continue
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s: got {len(got)} of {count} messages "
                        f"from {queue!r}: {[b for _, _, b in got]!r}")
        channel.connection.process_data_events(time_limit=PUMP_SLICE)
    return got


def get_bodies(channel, queue, count, timeout=DEFAULT_TIMEOUT):
    return [body for _, _, body in get_messages(channel, queue, count, timeout)]


def get_until(channel, queue, sentinel, timeout=DEFAULT_TIMEOUT):
    """basic_get (auto-ack) until a message whose body is ``sentinel``; returns the bodies
    received before it."""
    bodies = []
    deadline = time.monotonic() + timeout
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is not None:
            if body == sentinel:
                return bodies
            bodies.append(body)
            continue
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {sentinel!r} on {queue!r}; "
                        f"got {bodies!r}")
        channel.connection.process_data_events(time_limit=PUMP_SLICE)


def passive_declare(connection, queue):
    """Passive queue.declare on a fresh channel; returns the Queue.DeclareOk method, or
    raises ChannelClosedByBroker (that channel is then closed)."""
    ch = connection.channel()
    ok = ch.queue_declare(queue, passive=True).method
    ch.close()
    return ok


def message_count(connection, queue):
    return passive_declare(connection, queue).message_count


def wait_message_count(connection, queue, expected, timeout=DEFAULT_TIMEOUT):
    """Poll passive declare until the queue holds ``expected`` ready messages."""
    deadline = time.monotonic() + timeout
    while True:
        n = message_count(connection, queue)
        if n == expected:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s: {queue!r} has {n} messages, "
                        f"expected {expected}")
        connection.process_data_events(time_limit=PUMP_SLICE)


def wait_queue_gone(connection, queue, timeout=DEFAULT_TIMEOUT):
    """Poll passive declare (fresh channel each time) until the broker answers 404."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            passive_declare(connection, queue)
        except ChannelClosedByBroker as exc:
            assert exc.reply_code == 404, exc
            return exc
        if time.monotonic() > deadline:
            pytest.fail(f"queue {queue!r} still exists {timeout} s later")
        connection.process_data_events(time_limit=0.05)


def props(**kw):
    return pika.BasicProperties(**kw)
