"""Deadlock victims, told apart and retried at once.

InnoDB (and, rarely, PostgreSQL) picks one of two transactions that wait on each other
and rolls it back whole. That is not a fact about the database being down: the relay's
statements that can meet one (a write-back, a bucket tick) run again at once, with a
little jitter, before an attempt counts as failed.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Deadlocks retried at once (with jitter) before the error is the caller's.
DEADLOCK_RETRIES = 10


def is_deadlock(exc: BaseException) -> bool:
    """MySQL/MariaDB's 1213 or PostgreSQL's 40P01: the transaction was rolled back whole."""
    cause = exc.__cause__ or exc
    args = getattr(cause, "args", ())
    return bool(args and args[0] == 1213) or getattr(cause, "sqlstate", None) == "40P01"


def retry_deadlocks(call: Callable[[], T], retries: int = DEADLOCK_RETRIES) -> T:
    """Run ``call`` (a whole transaction), again while it is a deadlock's victim."""
    deadlocks = 0
    while True:
        try:
            return call()
        except Exception as exc:
            if not is_deadlock(exc) or deadlocks >= retries:
                raise
            deadlocks += 1
            time.sleep(random.uniform(0.01, 0.1) * deadlocks)
