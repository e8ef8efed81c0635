"""Once-only handling of Kafka records, and the bookkeeping of every outcome.

``Handling.handle_batch`` is the one place where the once-only rules are applied
(``handle`` is a chunk of one record); ``running.run_handler`` is the one place that
calls a user's handler. For a chunk, in one transaction per database:

- each record is parsed once (``records.parse``, never raising); a record that
  cannot be used is kept as a ``RejectedRecord`` (``rejects.py``);
- the local rows the records name are locked in one query per database
  (``local.py``); an event whose row is here is handled on that row, and the rows
  whose handler succeeded become ``consumed`` in one ``UPDATE``, with the chunk;
- any other event goes through the inbox (``inbox.py``): its entry is inserted
  in the same transaction as the handler's writes;
- each handler runs once, batch handlers on their lists, each in a savepoint issued
  before its first query only; one that raises is rolled back alone (``chunk.py``,
  ``savepoints.py``). Rerun-safe handlers (an opt-in) share one savepoint per group
  and may run again when one of their group fails;
- failed local rows are counted after the commit, in one short transaction.

Only the handler's writes to *that same database* are once-only: a handler that
also writes elsewhere (another database, an HTTP call) must make those effects
idempotent itself; it runs again if the chunk's transaction is lost (a crash, a
lost connection, a failed commit).
Database errors (``OperationalError``/``InterfaceError``) propagate to the
caller, which retries the same record (or chunk).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack

from django.db import connections, transaction

from django_outbox.conf import outbox_settings
from django_outbox.consumer import records, rejects
from django_outbox.consumer.chunk import ChunkPass
from django_outbox.consumer.database import DATABASE_ERRORS
from django_outbox.consumer.inbox import Duplicate, Inbox, inbox_key
from django_outbox.consumer.local import LocalFailure, LocalRows, LockedRow, describe_failure, holds
from django_outbox.consumer.outcomes import Outcome, Result
from django_outbox.consumer.records import Delivery, Rejected
from django_outbox.consumer.running import HandlerBroke
from django_outbox.consumer.savepoints import LazySavepoints
from django_outbox.envelope import Event
from django_outbox.models.inbox import RejectedRecord, RejectionReason
from django_outbox.registry import HandlerRegistry, registry

logger = logging.getLogger("django_outbox.consumer")


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
        #: Records in the last chunk that ended at its savepoint cap: a size for the
        #: next chunks, so that they do not lock and parse records they leave behind.
        self.capped_chunk: int | None = None

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

        Each handler runs once, in a lazy savepoint (``chunk.py``): one that raises
        is rolled back alone. What a savepoint cannot undo rolls the whole chunk
        back: a database error that lost the transaction propagates, so does anything
        else that broke it (``HandlerBroke``) or a failed commit. The caller retries
        the chunk, or handles its records one by one with ``handle``. Records left
        for later are also those after the point where the chunk holds too many
        savepoints (PostgreSQL's subtransaction cache, ``OUTBOX_CONSUMER_SUBTRANSACTIONS``).
        """
        parsed = [records.parse(delivery) for delivery in deliveries]
        references = self.rows.references(deliveries, parsed)
        to_lock: dict[str, set[int]] = defaultdict(set)
        for reference in references:
            if reference is not None:
                to_lock[reference[0]].add(reference[1])
        try:
            done = self._pass(
                deliveries, parsed, references, to_lock, stop, database_errors_fail, ran
            )
        except Duplicate as duplicate:
            # Another consumer of the group handled one of the inbox events meanwhile
            # (a rebalance overlap): the chunk is rolled back and walked again, where
            # that event is a duplicate. The one case besides a lost transaction in
            # which the chunk's handlers run again.
            logger.info(
                "%s; the chunk %s..%s is handled again", duplicate, deliveries[0], deliveries[-1]
            )
            done = self._pass(
                deliveries, parsed, references, to_lock, stop, database_errors_fail, ran
            )
        if done.capped_at is not None:
            self.capped_chunk = max(done.capped_at, 1)
        # Committed. A crash before the failures are counted only makes the failed
        # records come again (their offsets are not committed yet).
        for alias, items in done.failures.items():
            counted = self.rows.record_failures(alias, items)
            for item, (outcome, error) in zip(items, counted, strict=True):
                done.results[item.index] = Result(
                    Outcome(outcome), error, failure=item.failure, attempts=item.attempts
                )
        done.resolve_copies()
        return done.results

    def _pass(
        self,
        deliveries: Sequence[Delivery],
        parsed: list[Event | Rejected],
        references: list[tuple[str, int] | None],
        to_lock: dict[str, set[int]],
        stop: Callable[[], bool],
        database_errors_fail: bool = False,
        ran: list[Event] | None = None,
    ) -> ChunkPass:
        """One pass over the chunk, committed (or rolled back by an exception)."""
        aliases = sorted({self.inbox_database, *to_lock})
        savepoints = LazySavepoints(aliases)
        done = ChunkPass(self, deliveries, savepoints, database_errors_fail, ran)
        with ExitStack() as transactions:
            # Always in the same order, so two consumers cannot wait on each other.
            for alias in aliases:
                transactions.enter_context(transaction.atomic(using=alias))
            locked = {alias: self.rows.lock(alias, pks) for alias, pks in to_lock.items()}
            named = [
                None if reference is None else locked[reference[0]].get(reference[1])
                for reference in references
            ]
            owned = [
                row
                if row is not None and isinstance(event, Event) and holds(row, event, delivery)
                else None
                for row, event, delivery in zip(named, parsed, deliveries, strict=True)
            ]
            handled = self.inbox.handled(
                [
                    inbox_key(delivery, event)
                    for event, row, delivery in zip(parsed, owned, deliveries, strict=True)
                    if row is None and isinstance(event, Event)
                ]
            )
            with savepoints.installed():
                done.walk(parsed, named, owned, handled, stop)
                done.close_group()
            if done.inboxed:
                self.inbox.insert_many((item.delivery, item.event) for item in done.inboxed)
            for alias, pks in done.consumed.items():
                self.rows.mark_consumed(alias, pks)
        return done

    def give_up(
        self, delivery: Delivery, error: str, attempts: int, failure: BaseException | None = None
    ) -> Result:
        """Record an inbox event whose handler failed ``attempts`` times as rejected."""
        event = records.parse(delivery)
        self.reject(
            delivery,
            RejectionReason.HANDLER_FAILED,
            error,
            event=event if isinstance(event, Event) else None,
            attempts=attempts,
        )
        return Result(
            Outcome.FAILED, error, RejectionReason.HANDLER_FAILED, failure, attempts=attempts
        )

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

    def _failed_alone(self, delivery: Delivery, event: Event, failure: Exception) -> Result:
        """A handler whose failure lost the whole transaction (``handle`` only)."""
        reference = self.rows.references([delivery], [event])[0]
        if reference is not None:
            alias, pk = reference
            item = LocalFailure(0, delivery, event, pk, failure)
            outcome, error = self.rows.record_failures(alias, [item])[0]
            if outcome != Outcome.SKIPPED.value:
                return Result(Outcome(outcome), error, failure=failure, attempts=item.attempts)
        return self.inbox_failed(delivery, event, failure)

    def inbox_failed(self, delivery: Delivery, event: Event, failure: Exception) -> Result:
        logger.warning(
            "handler of %s failed on event %s (record %s): %s",
            event.event_type,
            event.event_id,
            delivery,
            failure,
            extra={"event_id": str(event.event_id)},
        )
        return Result(Outcome.RETRY_IN_PLACE, describe_failure(failure), failure=failure)

    def rejected(self, delivery: Delivery, rejected: Rejected, row: LockedRow | None) -> Result:
        self.reject(delivery, rejected.reason, rejected.error)
        self.rows.malformed(delivery, row, rejected.error)
        return Result(Outcome.REJECTED, rejected.error, rejected.reason)

    def unknown_type(
        self, delivery: Delivery, event: Event, row: LockedRow | None, error: str
    ) -> Result:
        """Apply ``OUTBOX_UNKNOWN_EVENT_POLICY``; never spends a row's retry budget."""
        self.reject(delivery, RejectionReason.UNKNOWN_EVENT_TYPE, error, event=event)
        self.rows.unknown_type(row, error)
        return Result(Outcome.SKIPPED, error, RejectionReason.UNKNOWN_EVENT_TYPE)
