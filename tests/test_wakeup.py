"""The commit wakes the relay: NOTIFY on PostgreSQL, ``PRAGMA data_version`` on a SQLite
file, on_commit in the same process."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time

import pytest
from django.db import connection, connections, transaction

from django_outbox import publish_event
from django_outbox import wakeup as wakeup_module
from django_outbox.models import OutboxMessage
from django_outbox.wakeup import Wakeup, driver_of, wake_local

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
    """A wake-up whose listener uses ``driver``, deaf to this process's commits."""
    from django_outbox import wakeup as module

    monkeypatch.setattr(module, "driver_of", lambda alias: driver)
    wakeup = Wakeup(["default"], interval=0.2, table=OutboxMessage._meta.db_table)
    # The listener's first connection wakes it once (commits made while nobody listened).
    assert wakeup.wait(10)
    assert wakeup.listening == ({"default"} if driver in module.NOTIFYING else set())
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


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_a_sqlite_file_wakes_relays_elsewhere_at_commit_only(settings, monkeypatch, caplog):
    settings.OUTBOX_WAKE_RELAY = True
    assert driver_of("default") == "sqlite"  # the suite's SQLite databases are files
    with caplog.at_level("INFO", logger="django_outbox.wakeup"):
        wakeup = listening_with("sqlite", monkeypatch)
    try:
        # It wakes the relay sooner; the relay still polls the file as often as before.
        assert wakeup.listening == set()
        assert any("wakes it (PRAGMA data_version" in r.getMessage() for r in caplog.records)
        publish_from_another_thread(rollback=True)
        assert not wakeup.wait(1.5)  # a rollback changes nothing in the file
        publish_from_another_thread()
        assert wakeup.wait(10)  # True: the event was set, not a timeout
        # Another process: plain sqlite3, no Django, no on_commit.
        code = (
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
            "c.execute('CREATE TABLE IF NOT EXISTS wake_probe (n)'); c.commit(); c.close()"
        )
        subprocess.run([sys.executable, "-c", code, connection.settings_dict["NAME"]], check=True)
        assert wakeup.wait(10)
        assert not wakeup.wait(0.5)  # quiet again: no commit, no wake-up
    finally:
        wakeup.close()


@pytest.mark.skipif("connection.vendor != 'sqlite'")
def test_an_in_memory_sqlite_database_is_polled(monkeypatch, caplog):
    monkeypatch.setattr(connection, "is_in_memory_db", lambda: True)
    assert driver_of("default") is None  # no other process can write to it
    with caplog.at_level("INFO", logger="django_outbox.wakeup"):
        wakeup = Wakeup(["default"], interval=0.5)
        wakeup.close()
    assert wakeup.listening == set()
    assert any("polling every 0.5s" in r.getMessage() for r in caplog.records)


def test_a_sqlite_watch_never_creates_the_database_file(tmp_path):
    missing = tmp_path / "not-migrated-yet.sqlite3"
    with pytest.raises(sqlite3.OperationalError):
        with wakeup_module._connect_sqlite({"database": str(missing)}):
            pass
    assert not missing.exists()
    for name, uri in [
        (str(missing), f"{missing.as_uri()}?mode=rw"),
        ("file:db.sqlite3?cache=shared", "file:db.sqlite3?cache=shared&mode=rw"),
        ("file:db.sqlite3?mode=ro", "file:db.sqlite3?mode=ro"),
    ]:
        assert wakeup_module._existing_file_uri(name) == uri


def test_a_watch_that_cannot_open_its_database_says_so_and_tries_again(
    tmp_path, monkeypatch, caplog
):
    missing = tmp_path / "not-migrated-yet.sqlite3"
    monkeypatch.setattr(wakeup_module._Listener, "RETRY", 0.05)
    event = threading.Event()
    listener = wakeup_module._Listener("default", event, "sqlite")
    listener._params = {"database": str(missing)}
    tries: list[int] = []
    real_connect = wakeup_module._connect_sqlite

    def counted(params, table=None):
        tries.append(1)
        return real_connect(params, table)

    monkeypatch.setitem(wakeup_module._DRIVERS, "sqlite", (counted, wakeup_module._notified_watch))
    with caplog.at_level("WARNING", logger="django_outbox.wakeup"):
        listener.start()
        try:
            deadline = time.monotonic() + 10
            while len(tries) < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            listener.stop()
            listener.join(5)
    assert len(tries) >= 3 and not listener.is_alive()
    assert not listener.connected and not event.is_set()
    assert not missing.exists()  # it never creates the database
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "cannot listen for commits on 'default'" in said[0], said


def test_a_sqlite_watch_sees_commits_of_other_connections_only(tmp_path):
    path = tmp_path / "watched.sqlite3"
    writer = sqlite3.connect(path)
    writer.execute("CREATE TABLE t (n)")
    writer.commit()
    with wakeup_module._connect_sqlite({"database": str(path)}) as watch:
        assert not watch.changed(0.05)
        writer.execute("INSERT INTO t VALUES (1)")
        assert not watch.changed(0.05)  # not committed yet
        writer.rollback()
        assert not watch.changed(0.05)
        writer.execute("INSERT INTO t VALUES (2)")
        writer.commit()
        assert watch.changed(5)
        assert not watch.changed(0.05)  # seen once
        watch.connection.execute("SELECT count(*) FROM t").fetchone()
        assert watch.connection.in_transaction is False  # it holds no read transaction
    writer.close()


@pytest.mark.skipif("connection.vendor != 'mysql'")
def test_a_new_row_on_mariadb_wakes_relays_elsewhere(settings, monkeypatch, caplog):
    settings.OUTBOX_WAKE_RELAY = True
    assert driver_of("default") == "mysql"
    with caplog.at_level("INFO", logger="django_outbox.wakeup"):
        wakeup = listening_with("mysql", monkeypatch)
    try:
        assert wakeup.listening == set()  # it still polls as often as before
        assert any("a new row on 'default' wakes it" in r.getMessage() for r in caplog.records)
        publish_from_another_thread(rollback=True)
        assert not wakeup.wait(1.5)  # a rolled-back row was never there
        publish_from_another_thread()
        assert wakeup.wait(10)  # True: the event was set, not a timeout
        publish_from_another_thread()
        assert wakeup.wait(10)  # a fresh snapshot at each read (autocommit)
        # The newest row deleted: the highest id goes down, and the next row is seen.
        OutboxMessage.objects.filter(pk=OutboxMessage.objects.order_by("-pk")[0].pk).delete()
        assert not wakeup.wait(0.5)
        publish_from_another_thread()
        assert wakeup.wait(10)
    finally:
        wakeup.close()


@pytest.mark.skipif("connection.vendor != 'mysql'")
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
