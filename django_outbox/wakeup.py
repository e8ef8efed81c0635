"""Waking the relay when a transaction that published events commits.

The request does no Kafka work: ``publish_event()`` only makes sure the relay
hears of the commit, and the relay (the only sender, so key order holds) delivers.

- PostgreSQL: ``pg_notify('django_outbox', '')`` in the very statement that inserts
  the row (no extra round trip). PostgreSQL delivers it at commit, drops it on
  rollback, and folds the repeats of one transaction into one; each relay holds
  one extra connection per PostgreSQL database that ``LISTEN``\\s.
- Every database: an ``on_commit`` callback wakes relays running in the same
  process (tests, a development server running a relay thread).
- MySQL/MariaDB and SQLite have no such channel: a relay in another process polls
  the (indexed) due rows every ``OUTBOX_POLL_INTERVAL`` seconds while idle (said
  once in the log at start-up).

The listening connection uses Django's own driver: psycopg 3 (``notifies()``) or
psycopg2 (``select()`` on the connection, then ``poll()`` and ``notifies``); either
reconnects every ``_Listener.RETRY`` seconds after the database went away.

A relay also polls on a PostgreSQL database (every ``--interval`` seconds) as a
safety net: a notification lost while its listening connection was down only
delays delivery.
"""

from __future__ import annotations

import contextlib
import logging
import select
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
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


class Wakeup:
    """What an idle relay sleeps on: a commit anywhere (PostgreSQL) or in this process."""

    def __init__(
        self, aliases: Sequence[str], *, listen: bool = True, interval: float | None = None
    ) -> None:
        self.event = threading.Event()
        with _local_lock:
            _local_events.add(self.event)
        drivers = {alias: driver_of(alias) for alias in aliases} if listen else {}
        self._listeners = [
            _Listener(alias, self.event, driver) for alias, driver in drivers.items() if driver
        ]
        polled = [alias for alias, driver in drivers.items() if not driver]
        if polled and interval is not None:
            # Said once, at start-up: a commit there reaches the relay at its next look.
            logger.info(
                "outbox relay: no commit notifications from %s (no LISTEN there); "
                "polling every %gs",
                ", ".join(map(repr, polled)),
                interval,
            )
        for listener in self._listeners:
            listener.start()

    @property
    def listening(self) -> set[str]:
        """The aliases a notification reaches this relay from (others need polling)."""
        return {listener.alias for listener in self._listeners if listener.connected}

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


#: Connection parameters of Django's own driver that a LISTEN connection does without
#: (and that the other driver would refuse): the rest are libpq's, common to both.
_DJANGO_ONLY = ("context", "prepare_threshold", "cursor_factory")


def driver_of(alias: str) -> str | None:
    """The driver a ``LISTEN`` connection to ``alias`` uses: Django's own, if it can listen.

    ``"psycopg"`` (3) or ``"psycopg2"``; None for a database with no notifications
    (MySQL/MariaDB, SQLite).
    """
    connection = connections[alias]
    if connection.vendor != "postgresql":
        return None
    name = getattr(getattr(connection, "Database", None), "__name__", "")
    return name if name in _DRIVERS else None


class _Listener(threading.Thread):
    """A daemon thread holding a ``LISTEN`` connection to one PostgreSQL database."""

    #: Seconds between reconnection attempts after the database went away.
    RETRY = 2.0
    #: Seconds one wait for a notification lasts (how soon a stop is seen).
    TICK = 0.5

    def __init__(self, alias: str, event: threading.Event, driver: str) -> None:
        super().__init__(name=f"django-outbox-listen-{alias}", daemon=True)
        self.alias = alias
        self.event = event
        self.driver = driver
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
                with connect(self._params) as connection:
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
def _connect_psycopg(params: dict[str, Any]) -> Iterator[Any]:
    import psycopg

    with psycopg.connect(**params, autocommit=True) as connection:
        connection.execute(f"LISTEN {CHANNEL}")
        yield connection


def _notified_psycopg(connection: Any, timeout: float) -> bool:
    return any(True for _ in connection.notifies(timeout=timeout))


@contextlib.contextmanager
def _connect_psycopg2(params: dict[str, Any]) -> Iterator[Any]:
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


#: Per driver: open a connection that listens, wait up to N s for a notification on it.
_DRIVERS: dict[str, tuple[Callable[[dict[str, Any]], Any], Callable[[Any, float], bool]]] = {
    "psycopg": (_connect_psycopg, _notified_psycopg),
    "psycopg2": (_connect_psycopg2, _notified_psycopg2),
}
