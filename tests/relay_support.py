"""Helpers shared by the relay and delivery tests (tests/test_relay*.py, test_delivery.py)."""

from __future__ import annotations

import codecs
import gc
import json
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.db import connections

from django_outbox.envelope import Event
from django_outbox.models import OutboxMessage, Status
from tests.kafka_fixtures import read_topic, topic_record_count

REPO_ROOT = Path(__file__).resolve().parent.parent


def fresh_python(script: str, settings_module: str = "tests.settings") -> str:
    """Run ``script`` in a fresh interpreter at the repository's root with
    ``DJANGO_SETTINGS_MODULE`` set; return its output (fails on a non-zero exit)."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": settings_module}
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


#: Producer options that make a broken broker cost a test seconds, not minutes.
FAST_FAIL_PRODUCER = {
    "bootstrap_timeout_ms": 1500,
    "max_block_ms": 1500,
    "request_timeout_ms": 1500,
    "delivery_timeout_ms": 3000,
    "reconnect_backoff_max_ms": 500,
}


def closed_port() -> int:
    """A loopback port nobody listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_rows(
    count: int,
    topic: str,
    *,
    keys: Iterable[str] | None = None,
    size: int = 100,
    using: str = "default",
    max_retry: int = 20,
) -> list[OutboxMessage]:
    """Write ``count`` pending rows straight to the table (what the Go service would do)."""
    key_list = list(keys) if keys is not None else [f"key-{i}" for i in range(count)]
    rows = []
    for index in range(count):
        key = key_list[index % len(key_list)]
        event = Event(
            event_type="test.happened",
            data={"n": index, "pad": "x" * size},
            key=key,
            headers={"trace": f"t{index}"},
        )
        rows.append(
            OutboxMessage(
                event_type=event.event_type,
                topic=topic,
                message_key=key,
                payload=event.to_json(),
                status=Status.PENDING,
                max_retry=max_retry,
            )
        )
    created = OutboxMessage.objects.using(using).bulk_create(rows, batch_size=500)
    if created and created[0].pk is None:  # MariaDB returns no ids from bulk_create
        return list(OutboxMessage.objects.using(using).order_by("id"))
    return created


def event_ids(records: Iterable) -> list[str]:
    """The ``event_id`` header of each Kafka record read."""
    return [dict(record.headers)["event_id"].decode() for record in records]


def row_event_ids(queryset) -> set[str]:
    return {
        json.loads(payload)["event_id"] for payload in queryset.values_list("payload", flat=True)
    }


def assert_each_row_once_in(bootstrap: str, topic: str) -> None:
    """The topic holds every row's event exactly once, and nothing else."""
    expected = row_event_ids(OutboxMessage.objects.all())
    assert topic_record_count(bootstrap, topic) == len(expected)
    records = read_topic(bootstrap, topic, expected_count=len(expected))
    assert Counter(event_ids(records)) == Counter(expected)


@contextmanager
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections and never answers (a hung broker)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        yield listener.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, message: str) -> None:
    """Poll ``condition`` until true; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(0.1)


def database_url(alias: str = "default") -> str:
    """A DATABASE_URL for the *test* database behind ``alias`` (for subprocesses).

    On SQLite that is the test database's file (tests/settings.py keeps it on disk).
    """
    config = connections[alias].settings_dict
    engine = config["ENGINE"]
    if engine == "django.db.backends.sqlite3":
        return f"sqlite:///{config['NAME']}"
    scheme = {"django.db.backends.postgresql": "postgres", "django.db.backends.mysql": "mysql"}[
        engine
    ]
    return (
        f"{scheme}://{config['USER']}:{config['PASSWORD']}@{config['HOST']}:{config['PORT']}"
        f"/{config['NAME']}"
    )


def relay_process(
    *args: str, bootstrap: str, env: dict[str, str] | None = None, output: Any = subprocess.PIPE
) -> subprocess.Popen[str]:
    """Start ``manage.py outbox_relay`` on the test database in a subprocess; its output
    goes to a pipe, or to ``output`` (a file: a long test that does not read the pipe)."""
    environment = dict(os.environ)
    environment.update(
        {
            "DJANGO_SETTINGS_MODULE": "tests.relay_subprocess_settings",
            "DATABASE_URL": database_url("default"),
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    environment.update(env or {})
    return subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "testproject" / "manage.py"), "outbox_relay", *args],
        env=environment,
        cwd=REPO_ROOT,
        stdout=output,
        stderr=subprocess.STDOUT,
        text=True,
    )


def run_in_thread(relay) -> threading.Thread:
    """Start ``relay.run()`` in a thread that closes its own database connections."""

    def target() -> None:
        try:
            relay.run()
        finally:
            connections.close_all()

    thread = threading.Thread(target=target, name="relay")
    thread.start()
    return thread


def unique_key() -> str:
    return uuid.uuid4().hex


#: kafka-python 3.0.12 does not close the socket of a refused connection
#: (kafka/net/inet.py ``sock_connect`` raises without ``sock.close()``); the garbage
#: collector closes it later with a ResourceWarning. Tests that point clients at a
#: dead broker ignore exactly that warning and collect the sockets before the next test.
IGNORE_LEAKED_SOCKETS = "ignore:unclosed <socket:ResourceWarning"


@contextmanager
def leaked_sockets_collected() -> Iterator[None]:
    """Around a test: keep kafka-python from logging at all (its log records hold the
    exceptions, hence the frames, hence the sockets, and pytest keeps the records it
    captures until the test's teardown is over), then collect the leaked sockets while
    their warning is ignored.

    The level, not ``propagate = False``: pytest (9+) attaches its capture handlers to
    non-propagating loggers too, at the start of each test phase."""
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        kafka_logger.setLevel(level)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "unclosed <socket", ResourceWarning)
            gc.collect()


def read_until(process: subprocess.Popen[str], marker: str, timeout: float) -> str:
    """Read ``process``'s output until it contains ``marker``; return what was read.

    Used between two signals: two signals that arrive before the process ran its
    Python-level handler are seen as one (or in signal-number order), so a test
    sends the second only once the first was handled.

    Reads the pipe's file descriptor directly: ``readline()`` on the text wrapper
    would buffer several lines at once, and ``select()`` would then wait for more
    output while the marker already sat in that buffer. Everything read is
    returned, so a later ``communicate()`` only sees what came after it.
    """
    assert process.stdout is not None
    fd = process.stdout.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(timeout=max(deadline - time.monotonic(), 0)):
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            seen.append(decoder.decode(chunk))
            if marker in "".join(seen):
                return "".join(seen)
    raise AssertionError(f"no {marker!r} in the output within {timeout}s:\n{''.join(seen)}")
