"""Waking the relay when a transaction that published events commits.

The request does no Kafka work: ``publish_event()`` only makes sure the relay
hears of the commit, and the relay (the only sender, so key order holds) delivers.

- PostgreSQL: ``pg_notify('django_outbox', '')`` in the very statement that inserts
  the row (no extra round trip). PostgreSQL delivers it at commit, drops it on
  rollback, and folds the repeats of one transaction into one; each relay holds
  one extra connection per PostgreSQL database that ``LISTEN``\\s.
- Every database: an ``on_commit`` callback wakes relays running in the same
  process (tests, a development server running a relay thread).
- SQLite (a database file): ``PRAGMA data_version`` on a connection of the relay's
  own changes whenever another connection, in any process, commits to the file. A
  thread reads it every ``_SqliteWatch.STEP`` seconds (5 ms; an in-process read of a
  counter, no disk access, no transaction) and wakes the relay when it moved. It
  cannot tell an outbox row from any other write: a commit elsewhere in the file
  costs an idle relay one claim, empty most of the time (at most one per step). The
  relay polls as before too (``Wakeup.listening``). An in-memory database has no
  other process to hear from.
- MySQL/MariaDB have no such channel. A thread of the relay reads the outbox
  table's highest id (``SELECT MAX(id)``: one look at the primary key's end, about
  80 µs on a local server) every ``_MaxIdWatch.STEP`` seconds (10 ms) on a
  connection of its own in autocommit mode, and wakes the relay when it grew: a
  committed new row. A row whose transaction commits after a later row's was seen
  leaves the highest id as it was: the relay finds it at its next poll of the due
  rows, every ``OUTBOX_POLL_INTERVAL`` seconds while idle (said once in the log at
  start-up), as before.

The listening connection uses Django's own driver: psycopg 3 (``notifies()``) or
psycopg2 (``select()`` on the connection, then ``poll()`` and ``notifies``); a
watch uses ``sqlite3`` or mysqlclient. Each reconnects every ``_Listener.RETRY``
seconds after the database went away.

A relay also polls a database it listens to (every ``--interval`` seconds) as a
safety net: a notification lost while its listening connection was down only
delays delivery, and a row that comes due by time (a retry's back-off ends) is no
commit.
"""

from __future__ import annotations

import contextlib
import logging
import select
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from django.db import connections

logger = logging.getLogger(__name__)

#: The PostgreSQL notification channel.
CHANNEL = "django_outbox"

_local_lock = threading.Lock()
_local_events: weakref.WeakSet[threading.Event] = weakref.WeakSet()


def wake_local() -> None:
    """Wake the relays of this process (an ``on_commit`` callback of ``publish_event``)."""
    with _local_lock:
        events = list(_local_events)
    for event in events:
        event.set()


#: Said once at a relay's start, per kind of database: how a commit there reaches it.
_HOW = {
    None: "no commit notifications from %s (no LISTEN there); polling every {interval}s",
    "sqlite": "a commit to %s wakes it (PRAGMA data_version, read every {step}s); "
    "it still polls every {interval}s",
    "mysql": "a new row on %s wakes it (the table's highest id, read every {step}s); "
    "it still polls every {interval}s",
}


def _announce(drivers: dict[str, str | None], interval: float) -> None:
    steps = {"sqlite": _SqliteWatch.STEP, "mysql": _MaxIdWatch.STEP}
    for kind, how in _HOW.items():
        aliases = [alias for alias, driver in drivers.items() if driver == kind]
        if aliases:
            text = how.format(interval=f"{interval:g}", step=f"{steps.get(kind or '', 0):g}")
            logger.info("outbox relay: " + text, ", ".join(map(repr, aliases)))


class Wakeup:
    """What an idle relay sleeps on: a commit anywhere (PostgreSQL's LISTEN, the watch
    of a SQLite file or a MariaDB table) or in this process."""

    def __init__(
        self,
        aliases: Sequence[str],
        *,
        listen: bool = True,
        interval: float | None = None,
        table: str | None = None,
    ) -> None:
        """``table``: the outbox table, whose highest id a MySQL/MariaDB watch reads (none
        without it)."""
        self.event = threading.Event()
        with _local_lock:
            _local_events.add(self.event)
        drivers = {alias: driver_of(alias) for alias in aliases} if listen else {}
        if table is None:
            drivers = {a: None if d == "mysql" else d for a, d in drivers.items()}
        self._listeners = [
            _Listener(alias, self.event, driver, table)
            for alias, driver in drivers.items()
            if driver
        ]
        if interval is not None:
            _announce(drivers, interval)
        for listener in self._listeners:
            listener.start()

    @property
    def listening(self) -> set[str]:
        """The aliases a notification reaches this relay from, standing in for polling.

        A SQLite or MariaDB watch is not among them: it wakes the relay sooner, and the
        relay polls that database as often as before (``OUTBOX_POLL_INTERVAL``), so that
        nothing else about its timing changed with it.
        """
        return {
            listener.alias
            for listener in self._listeners
            if listener.connected and listener.driver in NOTIFYING
        }

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds`` or until woken; return whether something woke it."""
        woke = self.event.wait(max(seconds, 0))
        self.event.clear()
        return woke

    def close(self) -> None:
        for listener in self._listeners:
            listener.stop()
        for listener in self._listeners:
            listener.join(timeout=2)
        with _local_lock:
            _local_events.discard(self.event)


#: The drivers whose notifications stand in for polling (a ``LISTEN`` connection).
NOTIFYING = ("psycopg", "psycopg2")

#: Connection parameters of Django's own driver that a LISTEN connection does without
#: (and that the other driver would refuse): the rest are libpq's, common to both.
_DJANGO_ONLY = ("context", "prepare_threshold", "cursor_factory")


def driver_of(alias: str) -> str | None:
    """The driver a ``LISTEN`` connection to ``alias`` uses: Django's own, if it can listen.

    ``"psycopg"`` (3) or ``"psycopg2"``; ``"sqlite"`` for a database file, ``"mysql"``
    for MySQL/MariaDB (watches, see above); None for a database with no way to hear of
    a commit (an in-memory SQLite database, another backend).
    """
    connection = connections[alias]
    if connection.vendor == "sqlite":
        return None if connection.is_in_memory_db() else "sqlite"  # type: ignore[attr-defined]
    if connection.vendor == "mysql":
        return "mysql"
    if connection.vendor != "postgresql":
        return None
    name = getattr(getattr(connection, "Database", None), "__name__", "")
    return name if name in _DRIVERS else None


class _Listener(threading.Thread):
    """A daemon thread holding a ``LISTEN`` connection to one PostgreSQL database, or
    the connection of a watch (``_Watch``) of a SQLite file or a MariaDB table."""

    #: Seconds between reconnection attempts after the database went away.
    RETRY = 2.0
    #: Seconds one wait for a notification lasts (how soon a stop is seen).
    TICK = 0.5

    def __init__(
        self, alias: str, event: threading.Event, driver: str, table: str | None = None
    ) -> None:
        super().__init__(name=f"django-outbox-listen-{alias}", daemon=True)
        self.alias = alias
        self.event = event
        self.driver = driver
        self.table = table
        self._stop_event = threading.Event()
        #: True while the LISTEN connection is up.
        self.connected = False
        params = connections[alias].get_connection_params()
        self._params = {k: v for k, v in params.items() if k not in _DJANGO_ONLY}

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        connect, notified = _DRIVERS[self.driver]
        failures = 0
        while not self._stop_event.is_set():
            try:
                with connect(self._params, self.table) as connection:
                    failures, self.connected = 0, True
                    self.event.set()  # commits made while nobody listened
                    while not self._stop_event.is_set():
                        if notified(connection, self.TICK):
                            self.event.set()
            except Exception as exc:
                self.connected = False
                failures += 1
                if failures == 1:
                    logger.warning(
                        "outbox relay: cannot listen for commits on %r (%s); polling until "
                        "it is back",
                        self.alias,
                        exc,
                    )
                self._stop_event.wait(self.RETRY)


@contextlib.contextmanager
def _connect_psycopg(params: dict[str, Any], table: str | None = None) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(**params, autocommit=True) as connection:
        connection.execute(f"LISTEN {CHANNEL}")
        yield connection


def _notified_psycopg(connection: Any, timeout: float) -> bool:
    return any(True for _ in connection.notifies(timeout=timeout))


@contextlib.contextmanager
def _connect_psycopg2(params: dict[str, Any], table: str | None = None) -> Iterator[Any]:
    import psycopg2

    # psycopg2's ``with connection`` is a transaction, not its lifetime: close it here.
    with contextlib.closing(psycopg2.connect(**params)) as connection:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")
        yield connection


def _notified_psycopg2(connection: Any, timeout: float) -> bool:
    # No notifies(timeout=): wait until the socket is readable, then let psycopg2 read.
    readable, _, _ = select.select([connection], [], [], timeout)
    if not readable:
        return False
    connection.poll()
    if not connection.notifies:
        return False
    connection.notifies.clear()
    return True


class _Watch:
    """A number read every ``STEP`` seconds on a connection of its own; a commit moves it."""

    #: Seconds between two reads.
    STEP = 0.01

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.last = self._read()

    def _read(self) -> int:
        raise NotImplementedError

    def _moved(self, value: int) -> bool:
        """Whether ``value`` (read after ``self.last``) says a commit came."""
        return value != self.last

    def changed(self, timeout: float) -> bool:
        """Whether a commit came since the last look (waits up to ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self._read()
            moved, self.last = self._moved(value), value
            if moved:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(self.STEP, left))


class _SqliteWatch(_Watch):
    """Commits to a SQLite file by other connections, seen in ``PRAGMA data_version``."""

    STEP = 0.005

    def _read(self) -> int:
        return int(self.connection.execute("PRAGMA data_version").fetchone()[0])


def _existing_file_uri(name: str) -> str:
    """A URI that opens the database ``name`` only if it exists (``mode=rw``): a relay
    started before ``migrate`` must not leave an empty database file behind."""
    if not name.startswith("file:"):
        return f"{Path(name).resolve().as_uri()}?mode=rw"
    if "mode=" in name:
        return name
    return f"{name}{'&' if '?' in name else '?'}mode=rw"


@contextlib.contextmanager
def _connect_sqlite(params: dict[str, Any], table: str | None = None) -> Iterator[_SqliteWatch]:
    # Autocommit (no implicit transaction: a reader holding one would hold up WAL
    # checkpoints); only the file's name and how to open it, not Django's options.
    connection = sqlite3.connect(
        _existing_file_uri(str(params["database"])),
        uri=True,
        timeout=float(params.get("timeout", 5)),
        isolation_level=None,
        check_same_thread=False,
    )
    with contextlib.closing(connection):
        yield _SqliteWatch(connection)


class _MaxIdWatch(_Watch):
    """New rows of the outbox table on MySQL/MariaDB, seen in its highest id (a round
    trip per read: about 100 a second)."""

    def __init__(self, connection: Any, table: str) -> None:
        self.sql = f"SELECT MAX(id) FROM `{table.replace('`', '``')}`"
        super().__init__(connection)

    def _read(self) -> int:
        with contextlib.closing(self.connection.cursor()) as cursor:
            cursor.execute(self.sql)
            (value,) = cursor.fetchone()
        return int(value or 0)

    def _moved(self, value: int) -> bool:
        # Only a higher id is a new row. A lower one (the newest rows deleted, the table
        # truncated) becomes the mark all the same, so that the next row is seen.
        return value > self.last


@contextlib.contextmanager
def _connect_mysql(params: dict[str, Any], table: str | None = None) -> Iterator[_MaxIdWatch]:
    import MySQLdb

    if table is None:
        raise ValueError("a MySQL/MariaDB watch needs the outbox table's name")
    connection = MySQLdb.connect(**params)
    with contextlib.closing(connection):
        # Each read its own transaction: under REPEATABLE READ, one long transaction
        # would read the same snapshot, and the same highest id, forever.
        connection.autocommit(True)
        yield _MaxIdWatch(connection, table)


def _notified_watch(watch: _Watch, timeout: float) -> bool:
    return watch.changed(timeout)


#: Per driver: open a connection that listens, wait up to N s for a notification on it.
_DRIVERS: dict[
    str, tuple[Callable[[dict[str, Any], str | None], Any], Callable[[Any, float], bool]]
] = {
    "psycopg": (_connect_psycopg, _notified_psycopg),
    "psycopg2": (_connect_psycopg2, _notified_psycopg2),
    "sqlite": (_connect_sqlite, _notified_watch),
    "mysql": (_connect_mysql, _notified_watch),
}
