from __future__ import annotations

import fcntl
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

pytest_plugins = ["tests.kafka_fixtures", "tests.chaos_fixtures"]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(
    django_db_modify_db_settings_parallel_suffix: None,
) -> Iterator[None]:
    """Create the directory of the SQLite test databases (see tests/settings.py) before
    pytest-django creates them there; remove it, with what SQLite left beside them
    (-wal, -shm), after it destroyed them."""
    directory = Path(settings.SQLITE_TEST_DIR)
    uses_sqlite = any(
        config["ENGINE"].endswith("sqlite3") for config in settings.DATABASES.values()
    )
    created = uses_sqlite and not directory.exists()
    if created:
        directory.mkdir(parents=True)
    try:
        yield
    finally:
        if created:
            shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def kafka_broker_control(kafka_broker_control):
    """tests.kafka_fixtures' private broker, held by one test at a time across pytest
    processes: concurrent runs (several engineers, CI jobs on one host) share the port,
    and one run's ``stop()`` would break another run's outage test."""
    lock_path = Path(tempfile.gettempdir(), f"django-outbox-kafka-{kafka_broker_control.port}.lock")
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            kafka_broker_control.start()  # another run may have stopped it meanwhile
            yield kafka_broker_control
            kafka_broker_control.start()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def vendor() -> str:
    from django.db import connection

    return connection.vendor


@pytest.fixture
def relay_settings(settings, kafka_bootstrap, kafka_topic):
    """Settings for a relay test: the real broker, a fresh topic, producers that give
    up in seconds (tests.relay_support.FAST_FAIL_PRODUCER)."""
    from tests.relay_support import FAST_FAIL_PRODUCER

    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_KAFKA_PRODUCER = dict(FAST_FAIL_PRODUCER)
    return settings


@pytest.fixture(params=["kafka-python", "confluent"])
def producer_client(request, relay_settings):
    """The relay's producer on each client (``OUTBOX_KAFKA_CLIENT``): a relay test that
    asks for it runs on both."""
    relay_settings.OUTBOX_KAFKA_CLIENT = request.param
    return request.param


@pytest.fixture(autouse=True)
def _no_relay_left_over(request):
    """A database test starts with no relay membership, bucket or claim fence left by an
    earlier test: a relay's database thread (a transactional test's, ``drain()``'s) commits
    its own, outside any test's transaction, and a bucket still leased to a relay that is
    gone hides its rows from every claim. In an ordinary test the cleanup is rolled back
    with the test."""
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
    from django_outbox.models.buckets import RelayBucket, RelayMember
    from django_outbox.models.fencing import ClaimFence

    RelayMember.objects.all().delete()
    RelayBucket.objects.all().delete()
    ClaimFence.objects.all().delete()
