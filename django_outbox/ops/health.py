"""Liveness of a worker: a file it touches on every turn of its loop.

``outbox_relay --health-file PATH`` and ``outbox_consume --health-file PATH`` pass a
``HealthFile`` to the worker as its ``heartbeat``. The worker calls it once per loop
turn: while busy, while idle (every ``--interval`` / poll timeout) and while the
broker is down (every pause between attempts, at most 30 s). A worker stuck inside
one turn (a handler that never returns, a hung database call) stops touching it,
and a probe that checks the file's age restarts it (see docs/operations.rst).

The file is empty while all is well. A consumer the broker refuses (an ACL missing,
see docs/consumer.rst, "Errors from the broker") keeps touching it, since a restart
would not help, and writes what blocks it into it, one ``name=value`` per line::

    blocked_by=TopicAuthorizationFailedError
    blocked_since=2026-01-01T12:00:00+00:00

A probe that only checks the file's age sees no difference; one that wants to alert
on a blocked consumer checks for ``blocked_by=``.

Readiness, whether the database and the broker answer, is a different question:
``manage.py outbox_ready``.
"""

from __future__ import annotations

import datetime
import logging
import os
import time
from pathlib import Path

logger = logging.getLogger(__name__)

#: Touch at most this often, seconds: a busy loop turns many times a second.
MIN_INTERVAL = 1.0


class HealthFile:
    """A callable heartbeat that sets the modification time of ``path`` to now."""

    def __init__(self, path: str | os.PathLike[str], min_interval: float = MIN_INTERVAL) -> None:
        self.path = Path(path)
        self.min_interval = min_interval
        self._touched_at: float | None = None
        self._failing = False
        self._state = ""
        self._written: str | None = None  # None: a file left by an earlier run is rewritten

    def set_blocked(self, error: str | None, since: float | None = None) -> None:
        """Say in the file what blocks the worker (an error's name, a Unix time), or nothing."""
        if error is None:
            self._state = ""
            return
        when = datetime.datetime.fromtimestamp(since or time.time(), datetime.UTC)
        self._state = f"blocked_by={error}\nblocked_since={when.isoformat(timespec='seconds')}\n"

    @property
    def blocked(self) -> bool:
        return bool(self._state)

    def __call__(self) -> None:
        now = time.monotonic()
        changed = self._state != self._written
        if (
            not changed
            and self._touched_at is not None
            and now - self._touched_at < self.min_interval
        ):
            return
        try:
            if changed:
                self.path.write_text(self._state)
                self._written = self._state
            else:
                self.path.touch()
        except OSError as exc:
            # The probe will see a stale file and restart us; say why once, keep working.
            if not self._failing:
                logger.error("cannot touch the health file %s: %s", self.path, exc)
            self._failing = True
            return
        self._failing = False
        self._touched_at = now

    def remove(self) -> None:
        """Remove the file (a stopped worker is not alive)."""
        self.path.unlink(missing_ok=True)


def age(path: str | os.PathLike[str]) -> float | None:
    """Seconds since ``path`` was last touched, or ``None`` if it does not exist."""
    try:
        return max(time.time() - Path(path).stat().st_mtime, 0.0)
    except FileNotFoundError:
        return None
