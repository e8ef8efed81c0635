"""The one place that calls a user's handler (``run_handler``), a handler run once in a
lazy savepoint of its chunk's transaction (``run_in_savepoint``), or under a savepoint
that a group of rerun-safe handlers shares (``run_in_group``), and the undoing of a
failed run (``undo``).

A handler's ``transaction.on_commit()`` callbacks are isolated: one that raises at
commit does not cancel the callbacks of the other events of the chunk.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from django.db import connections, transaction
from django.db.transaction import TransactionManagementError

from django_outbox import compat, signals
from django_outbox.consumer.database import DATABASE_ERRORS
from django_outbox.consumer.savepoints import LazySavepoints, RollbackFailed
from django_outbox.envelope import Event
from django_outbox.ops import metrics, tracing
from django_outbox.registry import Registration

if TYPE_CHECKING:
    from django_outbox.consumer.chunk import Unit

logger = logging.getLogger("django_outbox.consumer")


class HandlerBroke(Exception):
    """A handler left its transaction unusable beyond its savepoint's reach."""

    def __init__(self, failure: Exception) -> None:
        super().__init__(str(failure))
        self.failure = failure


def run_handler(registration: Registration, events: list[Event], alias: str) -> Exception | None:
    """Call the user's handler: the only place that does. What it raised, or None.

    A batch handler gets ``events`` (a list of its own), any other the one event.
    The ``transaction.on_commit()`` callbacks it registers are isolated
    (``_isolate_on_commit``): one that raises at commit does not cancel the others.
    """
    connection = connections[alias]
    hooks_before = compat.on_commit_count(connection)
    try:
        with (
            tracing.consuming(events, alias),
            tracing.handling(registration.func, events),
            metrics.handler_timer(events[0].event_type),
        ):
            if registration.batch:
                registration.func(list(events))
            else:
                registration.func(events[0])
    except Exception as exc:
        return exc
    finally:
        compat.wrap_on_commit_callbacks(
            connection, hooks_before, lambda func: _isolate_on_commit(func, events, alias)
        )
    if transaction.get_rollback(using=alias):
        # It caught a database error without a savepoint of its own.
        return _swallowed(events[0].event_type, alias)
    return None


def _isolate_on_commit(
    func: Callable[[], object], events: Sequence[Event], alias: str
) -> Callable[[], None]:
    """``func`` as a callback that never raises into Django's commit.

    Django runs a transaction's on-commit callbacks in order and stops at the first
    that raises; the chunk holds the callbacks of many events, so one event's failing
    callback (an SMTP server down) would cancel the callbacks of the events after it,
    whose effects are committed. The event stays consumed: the callback runs after
    its effects committed, it is not a handler failure.
    """

    def isolated() -> None:
        try:
            func()
        except Exception as exc:
            ids = ", ".join(str(event.event_id) for event in events)
            logger.error(
                "outbox consumer: an on_commit callback of %s (event %s, database %r) "
                "raised; the event stays consumed, the other callbacks still run",
                events[0].event_type,
                ids,
                alias,
                exc_info=True,
                extra={"event_ids": ids, "event_type": events[0].event_type},
            )
            metrics.on_commit_failed(events[0].event_type)
            signals.send(
                signals.on_commit_failed, "consumer", events=list(events), alias=alias, error=exc
            )

    isolated.__wrapped__ = func  # type: ignore[attr-defined]  # inspect.unwrap() finds it
    return isolated


def run_in_savepoint(
    savepoints: LazySavepoints, unit: Unit, database_errors_fail: bool, ran: list[Event] | None
) -> Exception | None:
    """Run a unit's handler once, in a lazy savepoint of the chunk's transaction.

    What it raised, or None. A failure rolls back the handler's writes and drops its
    ``on_commit`` callbacks, nothing else (``savepoints.py``, ``undo``).
    """
    savepoints.arm()
    try:
        failure = run_in_group(savepoints, unit, ran)
    finally:
        savepoints.disarm()
    if failure is None:
        savepoints.keep()
        return None
    return undo(savepoints, failure, database_errors_fail)


def run_in_group(
    savepoints: LazySavepoints, unit: Unit, ran: list[Event] | None
) -> Exception | None:
    """Run a unit's handler under the savepoints armed already, without undoing anything.

    What it raised (or how it broke the transaction), or None. A rerun-safe handler
    runs so under the savepoint its group shares (``chunk.py``); ``run_in_savepoint``
    arms one for a single handler first.
    """
    events = unit.events
    if ran is not None:
        ran.extend(events)
    failure = run_handler(unit.registration, events, unit.alias)
    if failure is None:
        broken = savepoints.broken()
        if broken is not None:
            failure = _swallowed(events[0].event_type, broken)
    return failure


def undo(savepoints: LazySavepoints, failure: Exception, database_errors_fail: bool) -> Exception:
    """Roll back what ran since ``savepoints.arm()`` after ``failure``; ``failure``.

    When the savepoint cannot be rolled back (the connection is lost, MariaDB rolled
    the transaction back for a deadlock, PostgreSQL's transaction broke without a
    savepoint), the chunk's transaction is lost: a database error propagates (unless
    ``database_errors_fail``), anything else as ``HandlerBroke``. So does a database
    error of a handler that made no query here (is the database away?).
    """
    database_error = isinstance(failure, DATABASE_ERRORS) and not database_errors_fail
    # A savepoint rolled back proves the database answers; without one, a database
    # error may mean it does not: the caller's retries find out (the chunk again).
    answered = bool(savepoints.issued)
    try:
        savepoints.rollback()
    except RollbackFailed:
        if database_error:
            raise failure from None
        raise HandlerBroke(failure) from failure
    if database_error and not answered:
        raise failure
    return failure


def _swallowed(event_type: str, alias: str) -> TransactionManagementError:
    return TransactionManagementError(
        f"the handler of {event_type!r} swallowed a database error and left the "
        f"transaction on {alias!r} unusable; let the error propagate, or wrap the failing "
        "query in transaction.atomic()"
    )
