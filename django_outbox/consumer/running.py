"""The one place that calls a user's handler (``run_handler``), and a handler run in a
savepoint of its chunk's transaction (``run_in_savepoint``).

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
from django_outbox.consumer.inbox import Duplicate, Inbox
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
        # It caught a database error without a savepoint: nothing it wrote can commit.
        return TransactionManagementError(
            f"the handler of {events[0].event_type!r} swallowed a database error and left "
            "the transaction unusable; let the error propagate, or wrap the failing query in "
            "transaction.atomic()"
        )
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
    inbox_rows: Inbox, unit: Unit, database_errors_fail: bool, ran: list[Event] | None
) -> Exception | None:
    """Run a unit's handler in a savepoint of the chunk's transaction; what it raised.

    Inbox events get their entries in the same savepoint (``Duplicate`` when one is
    there already). A failure rolls back the handler's writes only. Raises instead
    when the failure is a database error (unless ``database_errors_fail``), or
    ``HandlerBroke`` when the savepoint could not be rolled back: the chunk's
    transaction is lost.
    """
    alias, events = unit.alias, unit.events
    inbox = [(item.delivery, item.event) for item in unit.items if item.row is None]
    failure: Exception | None = None
    try:
        with transaction.atomic(using=alias):
            if inbox:
                inbox_rows.insert_many(inbox)
            if ran is not None:
                ran.extend(events)
            failure = run_handler(unit.registration, events, alias)
            if failure is not None:
                raise failure
    except Duplicate:
        raise
    except Exception as exc:
        if failure is None:
            failure = exc  # the handler broke the transaction; the release failed
    if failure is None:
        return None
    if isinstance(failure, DATABASE_ERRORS) and not database_errors_fail:
        raise failure
    if transaction.get_rollback(using=alias):
        raise HandlerBroke(failure) from failure
    return failure
