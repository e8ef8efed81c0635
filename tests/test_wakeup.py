"""The commit wakes the relay: NOTIFY on PostgreSQL, on_commit in the same process."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from django_outbox import publish_event
from django_outbox.wakeup import Wakeup, wake_local

pytestmark = pytest.mark.django_db(transaction=True)


def publish_from_another_thread(rollback: bool = False) -> None:
    """Publish on a connection of its own, as another process would."""

    def target() -> None:
        try:
            with transaction.atomic():
                publish_event("a.b", {})
                if rollback:
                    transaction.set_rollback(True)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)


def test_a_commit_in_this_process_wakes_a_relay():
    wakeup = Wakeup(["default"], listen=False)
    try:
        assert not wakeup.wait(0)
        wake_local()
        assert wakeup.wait(5)
        assert not wakeup.wait(0)  # cleared by the wait that saw it
    finally:
        wakeup.close()


def importable(name: str) -> bool:
    try:
        __import__(name)
    except ImportError:
        return False
    return True


#: Each driver the listener can use; Django itself may run on the other one.
DRIVERS = [
    "psycopg",
    pytest.param(
        "psycopg2",
        marks=pytest.mark.skipif(not importable("psycopg2"), reason="psycopg2 not installed"),
    ),
]


def listening_with(driver: str, monkeypatch: pytest.MonkeyPatch) -> Wakeup:
    """A wake-up whose LISTEN connection uses ``driver``, deaf to this process's commits."""
    from django_outbox import wakeup as module

    monkeypatch.setattr(module, "driver_of", lambda alias: driver)
    wakeup = Wakeup(["default"])
    # The listener's first connection wakes it once (commits made while nobody listened).
    assert wakeup.wait(10)
    assert wakeup.listening == {"default"}
    assert [listener.driver for listener in wakeup._listeners] == [driver]
    # A commit in another connection must reach it through NOTIFY, not on_commit: the
    # local hook is switched off by dropping the wake-up's local registration.
    with module._local_lock:
        module._local_events.discard(wakeup.event)
    wakeup.event.clear()
    return wakeup


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.parametrize("driver", DRIVERS)
def test_postgresql_notifies_relays_elsewhere_at_commit_only(settings, monkeypatch, driver):
    settings.OUTBOX_WAKE_RELAY = True
    wakeup = listening_with(driver, monkeypatch)
    try:
        publish_from_another_thread(rollback=True)
        assert not wakeup.wait(1.5)  # a rollback notifies nobody
        publish_from_another_thread()
        assert wakeup.wait(10)  # True: the event was set, not a timeout
    finally:
        wakeup.close()


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.parametrize("driver", DRIVERS)
def test_a_listener_whose_connection_was_killed_listens_again(settings, monkeypatch, driver):
    settings.OUTBOX_WAKE_RELAY = True
    monkeypatch.setattr("django_outbox.wakeup._Listener.RETRY", 0.2)
    wakeup = listening_with(driver, monkeypatch)
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE query = %s AND datname = current_database() AND pid <> pg_backend_pid()",
                ["LISTEN django_outbox"],
            )
            assert cursor.fetchone()[0] == 1
        # Back on a new connection: it wakes the relay once more (commits meanwhile) ...
        assert wakeup.wait(15)
        assert wakeup.listening == {"default"}
        wakeup.event.clear()
        # ... and a commit elsewhere reaches it again.
        publish_from_another_thread()
        assert wakeup.wait(10)
    finally:
        wakeup.close()


@pytest.mark.skipif("connection.vendor == 'postgresql'")
def test_a_database_with_no_notifications_says_once_that_it_is_polled(caplog):
    with caplog.at_level("INFO", logger="django_outbox.wakeup"):
        wakeup = Wakeup(["default"], interval=0.5)
        wakeup.close()
    said = [r.getMessage() for r in caplog.records if "polling every" in r.getMessage()]
    assert said == [
        "outbox relay: no commit notifications from 'default' (no LISTEN there); polling every 0.5s"
    ]
    assert wakeup.listening == set()


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_the_notification_rides_on_the_insert(settings, django_assert_num_queries):
    settings.OUTBOX_WAKE_RELAY = True
    with transaction.atomic():
        with django_assert_num_queries(1):
            publish_event("a.b", {})
    assert connection.vendor == "postgresql"
