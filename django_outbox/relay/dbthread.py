"""The relay's database thread: its claims and write-backs, one after another, off the Kafka path.

The relay's main thread spends its time in the Kafka client (building records,
``send()``); the database work of the other batches in flight runs here at the same
time, on connections of its own (Django's connections belong to the thread that
opened them). psycopg, mysqlclient and sqlite3 release the GIL while they wait, so
the two threads overlap: the database and the broker are busy at once.

Jobs run in the order they were handed over, so a claim sees every write-back
handed over before it (strict order relies on that). No job waits for Kafka: a
transaction opened here never lasts longer than its own statements.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from django.db import close_old_connections, connections

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: ``DatabaseThread.submit``, as the relay's parts are handed it: (alias, function, *args).
Submit = Callable[..., Future[Any]]

#: Seconds between two drops of broken or expired connections (``close_old_connections``).
CHECK_INTERVAL = 1.0


class DatabaseThread:
    """A daemon thread running database jobs in order; ``submit`` returns their ``Future``.

    A job that raises has its database's connection closed (in this thread, the only
    one that can), so the next job of that database starts on a fresh one.
    """

    def __init__(self, name: str = "django-outbox-db") -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], str, Callable[[], Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._checked_at = 0.0
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def submit(
        self, alias: str, function: Callable[..., T], *args: Any, **kwargs: Any
    ) -> Future[T]:
        """Run ``function(*args, **kwargs)`` on the thread, after the jobs handed over before."""
        future: Future[T] = Future()
        self._jobs.put((future, alias, lambda: function(*args, **kwargs)))
        return future

    def close(self, timeout: float | None = None) -> None:
        """Finish the jobs handed over, close this thread's connections, stop.

        ``timeout=0`` (a forced stop) does not wait: the daemon thread dies with the process.
        """
        self._jobs.put(None)
        if timeout != 0:
            self._thread.join(timeout)

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                future, alias, call = job
                if not future.set_running_or_notify_cancel():
                    continue
                if time.monotonic() - self._checked_at >= CHECK_INTERVAL:
                    close_old_connections()
                    self._checked_at = time.monotonic()
                try:
                    result = call()
                except BaseException as exc:
                    _close(alias)
                    future.set_exception(exc)
                else:
                    future.set_result(result)
        finally:
            connections.close_all()


def _close(alias: str) -> None:
    try:
        connections[alias].close()
    except Exception:  # a connection that is already gone may fail to close
        pass
