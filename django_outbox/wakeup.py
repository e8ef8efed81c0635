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
  the (indexed) due rows every ``OUTBOX_POLL_INTERVAL`` seconds while idle.

A relay also polls on a PostgreSQL database (every ``--interval`` seconds) as a
safety net: a notification lost while its listening connection was down only
delays delivery.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
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

    def __init__(self, aliases: Sequence[str], *, listen: bool = True) -> None:
        self.event = threading.Event()
        with _local_lock:
            _local_events.add(self.event)
        self._listeners = [
            _Listener(alias, self.event)
            for alias in aliases
            if listen and connections[alias].vendor == "postgresql"
        ]
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


class _Listener(threading.Thread):
    """A daemon thread holding a ``LISTEN`` connection to one PostgreSQL database."""

    #: Seconds between reconnection attempts after the database went away.
    RETRY = 2.0

    def __init__(self, alias: str, event: threading.Event) -> None:
        super().__init__(name=f"django-outbox-listen-{alias}", daemon=True)
        self.alias = alias
        self.event = event
        self._stop_event = threading.Event()
        #: True while the LISTEN connection is up (psycopg2 cannot listen: never).
        self.connected = False
        self._params = dict(connections[alias].get_connection_params())

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        try:
            import psycopg
        except ImportError:  # psycopg2: no notifies(timeout=); the relay polls
            return
        failures = 0
        while not self._stop_event.is_set():
            try:
                with psycopg.connect(**self._params, autocommit=True) as connection:
                    connection.execute(f"LISTEN {CHANNEL}")
                    failures, self.connected = 0, True
                    self.event.set()  # commits made while nobody listened
                    self._listen(connection)
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

    def _listen(self, connection: Any) -> None:
        while not self._stop_event.is_set():
            for _ in connection.notifies(timeout=0.5):
                self.event.set()
