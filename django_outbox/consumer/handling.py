"""Once-only handling of Kafka records, and the bookkeeping of every outcome.

``Handling.handle_batch`` is the one place where the once-only rules are applied
(``handle`` is a chunk of one record). For a chunk, in one transaction per database:

- each record is parsed (``records.parse``, never raising); a record that cannot
  be used is kept as a ``RejectedRecord`` (``rejects.py``);
- the local rows the records name are locked in one query per database
  (``local.py``); an event whose row is here is handled on that row: the handler
  runs in a savepoint, the row becomes ``consumed`` with the chunk's commit;
- any other event goes through the inbox (``inbox.py``);
- failed local rows are counted after the commit, in one short transaction.

Only the handler's writes to *that same database* are once-only: a handler that
also writes elsewhere (another database, an HTTP call) must make those effects
idempotent itself. Database errors (``OperationalError``/``InterfaceError``)
propagate to the caller, which retries the same record (or chunk).
"""

from __future__ import annotations

import enum
import functools
import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass

from django.db import connections, transaction
from django.db.transaction import TransactionManagementError

from .. import metrics, tracing
from ..conf import outbox_settings
from ..envelope import Event
from ..exceptions import UnknownEventType
from ..inbox import RejectedRecord, RejectionReason
from ..models import OutboxMessage
from ..registry import Handler, HandlerRegistry, registry
from . import records, rejects
from .database import DATABASE_ERRORS
from .inbox import Duplicate, Inbox
from .local import LocalFailure, LocalRows, describe_failure, holds
from .records import Delivery, Rejected

logger = logging.getLogger("django_outbox.consumer")


class Outcome(str, enum.Enum):
    HANDLED = "handled"  # the handler ran and its effects committed
    DUPLICATE = "duplicate"  # handled before: nothing done
    RETRY = "retry"  # handler failed; the row is pending again, the relay re-delivers it
    DEAD = "dead"  # handler failed and the row ran out of retries
    RETRY_IN_PLACE = "retry_in_place"  # an inbox event's handler failed; try it here again
    FAILED = "failed"  # an inbox event's handler kept failing; recorded as rejected
    SKIPPED = "skipped"  # unknown event type, or a row that is dead already
    REJECTED = "rejected"  # malformed record, recorded as rejected


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: str = ""
    #: Why a record was kept as rejected (a ``RejectionReason``); empty otherwise.
    reason: str = ""


class HandlerBroke(Exception):
    """A handler left its transaction unusable beyond its savepoint's reach."""

    def __init__(self, failure: Exception) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _run(handler: Handler, event: Event, alias: str) -> Exception | None:
    """Call the handler; return what it raised, or None when it succeeded."""
    try:
        with tracing.handling(handler, event), metrics.handler_timer(event.event_type):
            handler(event)
    except Exception as exc:
        return exc
    if transaction.get_rollback(using=alias):
        # It caught a database error without a savepoint: nothing it wrote can commit.
        return TransactionManagementError(
            f"the handler of {event.event_type!r} swallowed a database error and left the "
            "transaction unusable; let the error propagate, or wrap the failing query in "
            "transaction.atomic()"
        )
    return None


class Handling:
    """Handles records for one consumer group and records every outcome."""

    def __init__(
        self,
        group: str | None = None,
        *,
        handlers: HandlerRegistry = registry,
        inbox_database: str | None = None,
    ) -> None:
        self.group = group or outbox_settings.consumer_group
        self.handlers = handlers
        self.inbox_database = inbox_database or outbox_settings.database
        self.rows = LocalRows(self.group)
        self.inbox = Inbox(self.group, self.inbox_database)

    # ------------------------------------------------------------------ entry points

    def handle(self, delivery: Delivery, *, database_errors_fail: bool = False) -> Result:
        """Handle ``delivery`` once, on its own, and record the outcome.

        A handler's exception is recorded as a failure, except database errors, which
        propagate (the caller retries the record) unless ``database_errors_fail``:
        the caller sets it once the database answers again but the handler keeps
        raising them, so that such a handler cannot block its partition for ever. So
        is a handler that breaks the transaction beyond its savepoint, or whose
        writes fail at ``COMMIT`` (a deferred constraint).
        """
        ran: list[Event] = []
        try:
            result = self.handle_batch(
                [delivery], database_errors_fail=database_errors_fail, ran=ran
            )[0]
        except Exception as exc:
            if not ran or (isinstance(exc, DATABASE_ERRORS) and not database_errors_fail):
                raise  # our own bookkeeping failed (or the database is away): retry it
            failure = exc.failure if isinstance(exc, HandlerBroke) else exc
            return self._failed_alone(delivery, ran[0], failure)
        assert result is not None  # nothing stops a chunk of one
        return result

    def handle_batch(
        self,
        deliveries: Sequence[Delivery],
        *,
        stop: Callable[[], bool] = lambda: False,
        database_errors_fail: bool = False,
        ran: list[Event] | None = None,
    ) -> list[Result | None]:
        """Handle a chunk of records, once each, in one transaction per database.

        One result per delivery, in order. None marks a record left for later: one
        that comes after an inbox event of the same partition whose handler failed
        (the caller retries that event in place, then hands the rest in again, so a
        partition keeps its order), or after ``stop()`` turned true.

        A handler's database error propagates and rolls the whole chunk back; so does
        anything that breaks the chunk's transaction (``HandlerBroke``). The caller
        retries the chunk, or handles its records one by one with ``handle``.
        """
        results: list[Result | None] = [None] * len(deliveries)
        parsed = [records.parse(delivery) for delivery in deliveries]
        references = self.rows.references(deliveries, parsed)
        to_lock: dict[str, set[int]] = defaultdict(set)
        for reference in references:
            if reference is not None:
                to_lock[reference[0]].add(reference[1])
        failures: dict[str, list[LocalFailure]] = defaultdict(list)
        run = functools.partial(self._run_in_savepoint, database_errors_fail, ran)
        with ExitStack() as transactions:
            # Always in the same order, so two consumers cannot wait on each other.
            for alias in sorted({self.inbox_database, *to_lock}):
                transactions.enter_context(transaction.atomic(using=alias))
            locked = {alias: self.rows.lock(alias, pks) for alias, pks in to_lock.items()}
            named = [
                None if reference is None else locked[reference[0]].get(reference[1])
                for reference in references
            ]
            owned = [
                row if row is not None and isinstance(event, Event) and holds(row, event) else None
                for row, event in zip(named, parsed, strict=True)
            ]
            inboxed = self.inbox.handled(
                [
                    event.event_id
                    for event, row in zip(parsed, owned, strict=True)
                    if row is None and isinstance(event, Event)
                ]
            )
            blocked: set[tuple[str, int]] = set()  # partitions with an inbox retry in hand
            seen: dict[tuple[str, int], Outcome] = {}  # local rows handled in this chunk
            consumed: dict[str, list[int]] = defaultdict(list)
            for index, delivery in enumerate(deliveries):
                event, row = parsed[index], owned[index]
                if stop():
                    break
                if (delivery.topic, delivery.partition) in blocked:
                    continue
                if isinstance(event, Rejected):
                    results[index] = self._rejected(delivery, event, named[index])
                    continue
                try:
                    handler = self.handlers.get(event.event_type)
                except UnknownEventType as exc:
                    results[index] = self._unknown_type(delivery, event, row, str(exc))
                    continue
                if row is not None:
                    alias = row._state.db or ""
                    earlier = seen.get((alias, row.pk))
                    if earlier is not None:
                        # The same event twice in one chunk: the first copy decided.
                        results[index] = (
                            Result(Outcome.DUPLICATE)
                            if earlier is Outcome.HANDLED
                            else Result(Outcome.SKIPPED, "its handler failed earlier in the chunk")
                        )
                        continue
                    status = self.rows.not_handleable(delivery, event, alias, row)
                    if status is not None:
                        error = "" if status == "duplicate" else f"row is {row.status}"
                        results[index] = Result(Outcome(status), error)
                        continue
                    failure = run(alias, handler, event)
                    if failure is None:
                        seen[(alias, row.pk)] = Outcome.HANDLED
                        consumed[alias].append(row.pk)
                        results[index] = Result(Outcome.HANDLED)
                    else:
                        seen[(alias, row.pk)] = Outcome.RETRY
                        failures[alias].append(
                            LocalFailure(index, delivery, event, row.pk, failure)
                        )
                    continue
                if event.event_id in inboxed:
                    results[index] = Result(Outcome.DUPLICATE)
                    continue
                try:
                    failure = run(
                        self.inbox_database,
                        handler,
                        event,
                        before=functools.partial(self.inbox.insert, delivery, event),
                    )
                except Duplicate:
                    results[index] = Result(Outcome.DUPLICATE)
                else:
                    if failure is not None:
                        results[index] = self._inbox_failed(delivery, event, failure)
                        blocked.add((delivery.topic, delivery.partition))
                        continue
                    results[index] = Result(Outcome.HANDLED)
                inboxed.add(event.event_id)
            for alias, pks in consumed.items():
                self.rows.mark_consumed(alias, pks)
        # Committed. A crash before the failures are counted only makes the failed
        # records come again (their offsets are not committed yet).
        for alias, items in failures.items():
            counted = self.rows.record_failures(alias, items)
            for item, (outcome, error) in zip(items, counted, strict=True):
                results[item.index] = Result(Outcome(outcome), error)
        return results

    def give_up(self, delivery: Delivery, error: str, attempts: int) -> Result:
        """Record an inbox event whose handler failed ``attempts`` times as rejected."""
        event = records.parse(delivery)
        self.reject(
            delivery,
            RejectionReason.HANDLER_FAILED,
            error,
            event=event if isinstance(event, Event) else None,
            attempts=attempts,
        )
        return Result(Outcome.FAILED, error, RejectionReason.HANDLER_FAILED)

    def reject(
        self,
        delivery: Delivery,
        reason: str,
        error: str,
        *,
        event: Event | None = None,
        attempts: int = 1,
    ) -> RejectedRecord:
        """Log and keep a record the consumer cannot handle (once per offset)."""
        return rejects.reject(
            self.group, self.inbox_database, delivery, reason, error, event=event, attempts=attempts
        )

    def databases(self, deliveries: Sequence[Delivery]) -> set[str]:
        """The databases that handling ``deliveries`` needs."""
        aliases = {self.inbox_database}
        for delivery in deliveries:
            reference = records.local_reference(delivery)
            if reference is not None and reference[0] in connections.settings:
                aliases.add(reference[0])
        return aliases

    # ------------------------------------------------------------------ outcomes

    def _run_in_savepoint(
        self,
        database_errors_fail: bool,
        ran: list[Event] | None,
        alias: str,
        handler: Handler,
        event: Event,
        before: Callable[[], object] | None = None,
    ) -> Exception | None:
        """Run the handler in a savepoint of the chunk's transaction; what it raised, or None.

        A failure rolls back the handler's writes only. Raises instead when the failure
        is a database error (unless ``database_errors_fail``), or ``HandlerBroke`` when
        the savepoint could not be rolled back: the chunk's transaction is lost.
        """
        failure: Exception | None = None
        try:
            with tracing.consuming(event, alias, ok=(Duplicate,)), transaction.atomic(using=alias):
                if before is not None:
                    before()
                if ran is not None:
                    ran.append(event)
                failure = _run(handler, event, alias)
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

    def _failed_alone(self, delivery: Delivery, event: Event, failure: Exception) -> Result:
        """A handler whose failure lost the whole transaction (``handle`` only)."""
        reference = self.rows.references([delivery], [event])[0]
        if reference is not None:
            alias, pk = reference
            item = LocalFailure(0, delivery, event, pk, failure)
            outcome, error = self.rows.record_failures(alias, [item])[0]
            if outcome != Outcome.SKIPPED.value:
                return Result(Outcome(outcome), error)
        return self._inbox_failed(delivery, event, failure)

    def _inbox_failed(self, delivery: Delivery, event: Event, failure: Exception) -> Result:
        logger.warning(
            "handler of %s failed on event %s (record %s): %s",
            event.event_type,
            event.event_id,
            delivery,
            failure,
            extra={"event_id": str(event.event_id)},
        )
        return Result(Outcome.RETRY_IN_PLACE, describe_failure(failure))

    def _rejected(
        self, delivery: Delivery, rejected: Rejected, row: OutboxMessage | None
    ) -> Result:
        self.reject(delivery, rejected.reason, rejected.error)
        self.rows.malformed(delivery, row, rejected.error)
        return Result(Outcome.REJECTED, rejected.error, rejected.reason)

    def _unknown_type(
        self, delivery: Delivery, event: Event, row: OutboxMessage | None, error: str
    ) -> Result:
        """Apply ``OUTBOX_UNKNOWN_EVENT_POLICY``; never spends a row's retry budget."""
        self.reject(delivery, RejectionReason.UNKNOWN_EVENT_TYPE, error, event=event)
        self.rows.unknown_type(row, error)
        return Result(Outcome.SKIPPED, error, RejectionReason.UNKNOWN_EVENT_TYPE)
