"""Once-only handling of one Kafka record, and the bookkeeping of its outcome.

Two ways to make a handler's effects happen once:

- **Local row**: the record names an outbox row (headers ``outbox_db`` + ``outbox_id``)
  in a database of this process, and that row holds the same event. The row is
  locked, the handler runs and the row becomes ``consumed``, all in one transaction
  on that database. A repeat delivery finds it ``consumed`` and does nothing.
- **Inbox**: any other event. An ``InboxEntry`` (unique per consumer group and
  event id) is inserted in the handler's transaction on ``OUTBOX_DATABASE``; a
  repeat delivery hits the unique constraint and does nothing.

Either way only the handler's writes to *that same database* are once-only: a
handler that also writes elsewhere (another database, an HTTP call) must make
those effects idempotent itself.

``handle_batch`` does the same for a chunk of records in one transaction per
database: the local rows are locked in one query, each handler runs in a savepoint
of its own (a failing handler rolls back only its own writes), the successes become
``consumed`` in one ``UPDATE``, and the failures are counted afterwards, in one short
transaction. ``handle`` is the one-record path, kept for the records a chunk cannot
take (see ``consumer.py``).

Database errors (``OperationalError``/``InterfaceError``) propagate to the caller,
which retries the same record (or chunk); nothing here swallows them.
"""

from __future__ import annotations

import datetime
import enum
import functools
import logging
import traceback
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

from django.db import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    connections,
    transaction,
)
from django.db.models import Value
from django.db.models.functions import Coalesce
from django.db.transaction import TransactionManagementError
from django.utils import timezone

from .backoff import retry_delay
from .conf import outbox_settings
from .envelope import (
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_OUTBOX_DB,
    HEADER_OUTBOX_ID,
    Event,
)
from .exceptions import MalformedEvent, UnknownEventType
from .fields import clip_error, truncate_to_millis
from .inbox import InboxEntry, RejectedRecord, RejectionReason, encode_bytes, encode_headers
from .models import OutboxMessage, Status, retry_time
from .registry import Handler, HandlerRegistry, registry

logger = logging.getLogger(__name__)

#: Errors that mean "the database is unreachable right now", not "this record is bad".
DATABASE_ERRORS: tuple[type[Exception], ...] = (OperationalError, InterfaceError)

#: Statuses in which a row may still be handled. ``pending`` too: the consumer can get
#: the record before the relay has written ``published`` back.
HANDLEABLE = (Status.PENDING, Status.PUBLISHED)


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
class Delivery:
    """One Kafka record, as the consumer got it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()

    @classmethod
    def from_record(cls, record: Any) -> Delivery:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
        )

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text, or None (absent or not UTF-8)."""
        for header_name, value in reversed(self.headers):
            if header_name == name:
                try:
                    return None if value is None else value.decode("utf-8")
                except UnicodeDecodeError:
                    return None
        return None

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: str = ""


class _Duplicate(Exception):
    """The inbox entry of the event is there already (inserted by another consumer)."""


@dataclass
class _LocalFailure:
    index: int
    delivery: Delivery
    event: Event
    pk: int
    failure: Exception


class Rejected(Exception):
    def __init__(self, reason: str, error: str) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error


def describe_failure(exc: BaseException) -> str:
    """The handler's exception with its traceback, short enough for ``last_error``."""
    return clip_error("".join(traceback.format_exception(exc)).strip())


def _run(handler: Handler, event: Event, alias: str) -> Exception | None:
    """Call the handler; return what it raised, or None when it succeeded."""
    try:
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


def _holds(row: OutboxMessage, event: Event) -> bool:
    """True when ``row`` holds ``event``: another service may use the same alias and ids."""
    try:
        return row.event.event_id == event.event_id
    except MalformedEvent:
        return False


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

    # ------------------------------------------------------------------ entry points

    def handle(self, delivery: Delivery, *, database_errors_fail: bool = False) -> Result:
        """Handle ``delivery`` once and record the outcome.

        A handler's exception is recorded as a failure, except database errors, which
        propagate (the caller retries the record) unless ``database_errors_fail``:
        the caller sets it once the database answers again but the handler keeps
        raising them, so that such a handler cannot block its partition for ever.
        """
        try:
            event = self.parse(delivery)
        except Rejected as rejected:
            return self._rejected(delivery, rejected)
        local = self.local_reference(delivery)
        try:
            handler = self.handlers.get(event.event_type)
        except UnknownEventType as exc:
            return self._unknown_type(delivery, event, local, str(exc))
        if local is not None:
            result = self._handle_local(delivery, event, handler, *local, database_errors_fail)
            if result is not None:
                return result
        return self._handle_inbox(delivery, event, handler, database_errors_fail)

    def handle_batch(
        self, deliveries: Sequence[Delivery], *, stop: Callable[[], bool] = lambda: False
    ) -> list[Result | None]:
        """Handle a chunk of records, once each, in one transaction per database.

        One result per delivery, in order. None marks a record left for later: one
        that comes after an inbox event of the same partition whose handler failed
        (the caller retries that event in place, then hands the rest in again, so a
        partition keeps its order), or after ``stop()`` turned true.

        A handler's database error propagates and rolls the whole chunk back; so does
        anything that breaks the chunk's transaction. The caller retries the chunk, or
        handles its records one by one with ``handle``.
        """
        results: list[Result | None] = [None] * len(deliveries)
        parsed: list[Event | Rejected] = []
        for delivery in deliveries:
            try:
                parsed.append(self.parse(delivery))
            except Rejected as rejected:
                parsed.append(rejected)
        references = [self.local_reference(delivery) for delivery in deliveries]
        to_lock: dict[str, set[int]] = defaultdict(set)
        for reference in references:
            if reference is not None:
                to_lock[reference[0]].add(reference[1])
        failures: dict[str, list[_LocalFailure]] = defaultdict(list)
        with ExitStack() as transactions:
            # Always in the same order, so two consumers cannot wait on each other.
            for alias in sorted({self.inbox_database, *to_lock}):
                transactions.enter_context(transaction.atomic(using=alias))
            rows = {alias: self._lock_rows(alias, pks) for alias, pks in to_lock.items()}
            owned: list[OutboxMessage | None] = []
            for reference, event in zip(references, parsed, strict=True):
                row = None
                if reference is not None and isinstance(event, Event):
                    row = rows[reference[0]].get(reference[1])
                    row = row if row is not None and _holds(row, event) else None
                owned.append(row)
            foreign = [
                event.event_id
                for event, row in zip(parsed, owned, strict=True)
                if row is None and isinstance(event, Event)
            ]
            inboxed = self._inbox_entries(foreign)
            blocked: set[tuple[str, int]] = set()  # partitions with an inbox retry in hand
            seen: dict[tuple[str, int], Outcome] = {}  # local rows handled in this chunk
            consumed: dict[str, list[int]] = defaultdict(list)
            for index, (delivery, event, reference, row) in enumerate(
                zip(deliveries, parsed, references, owned, strict=True)
            ):
                if stop():
                    break
                if (delivery.topic, delivery.partition) in blocked:
                    continue
                if isinstance(event, Rejected):
                    results[index] = self._rejected(delivery, event)
                    continue
                try:
                    handler = self.handlers.get(event.event_type)
                except UnknownEventType as exc:
                    results[index] = self._unknown_type(delivery, event, reference, str(exc))
                    continue
                if row is not None:
                    alias = reference[0]  # type: ignore[index]
                    earlier = seen.get((alias, row.pk))
                    if earlier is not None:
                        # The same event twice in one chunk: the first copy decided.
                        results[index] = (
                            Result(Outcome.DUPLICATE)
                            if earlier is Outcome.HANDLED
                            else Result(Outcome.SKIPPED, "its handler failed earlier in the chunk")
                        )
                        continue
                    status_result = self._not_handleable(delivery, event, alias, row)
                    if status_result is not None:
                        results[index] = status_result
                        continue
                    failure = self._run_in_savepoint(alias, handler, event)
                    if failure is None:
                        seen[(alias, row.pk)] = Outcome.HANDLED
                        consumed[alias].append(row.pk)
                        results[index] = Result(Outcome.HANDLED)
                    else:
                        seen[(alias, row.pk)] = Outcome.RETRY
                        failures[alias].append(
                            _LocalFailure(index, delivery, event, row.pk, failure)
                        )
                    continue
                if event.event_id in inboxed:
                    results[index] = Result(Outcome.DUPLICATE)
                    continue
                try:
                    failure = self._run_in_savepoint(
                        self.inbox_database,
                        handler,
                        event,
                        before=functools.partial(self._insert_inbox_entry, delivery, event),
                    )
                except _Duplicate:
                    failure = None
                    results[index] = Result(Outcome.DUPLICATE)
                else:
                    if failure is not None:
                        results[index] = self._inbox_failed(delivery, event, failure)
                        blocked.add((delivery.topic, delivery.partition))
                        continue
                    results[index] = Result(Outcome.HANDLED)
                inboxed.add(event.event_id)
            now = truncate_to_millis(timezone.now())
            for alias, pks in consumed.items():
                self._mark_consumed(alias, pks, now)
        # Committed. A crash before the failures are counted only makes the failed
        # records come again (their offsets are not committed yet).
        for alias, items in failures.items():
            for item, result in zip(items, self._record_local_failures(alias, items), strict=True):
                results[item.index] = result
        return results

    def give_up(self, delivery: Delivery, error: str, attempts: int) -> Result:
        """Record an inbox event whose handler failed ``attempts`` times as rejected."""
        event = self.parse(delivery)
        self.reject(delivery, RejectionReason.HANDLER_FAILED, error, event=event, attempts=attempts)
        return Result(Outcome.FAILED, error)

    # ------------------------------------------------------------------ parsing

    def parse(self, delivery: Delivery) -> Event:
        """The record's event; raises ``Rejected`` for anything the consumer cannot use."""
        if not delivery.headers:
            raise Rejected(RejectionReason.MISSING_HEADERS, "the record has no headers")
        event_id, event_type = delivery.header(HEADER_EVENT_ID), delivery.header(HEADER_EVENT_TYPE)
        missing = [
            name
            for name, value in ((HEADER_EVENT_ID, event_id), (HEADER_EVENT_TYPE, event_type))
            if not value
        ]
        if missing:
            raise Rejected(
                RejectionReason.MISSING_HEADERS, f"the record lacks the header(s) {missing}"
            )
        if delivery.value is None:
            raise Rejected(RejectionReason.MALFORMED, "the record has no value (a tombstone)")
        try:
            event = Event.from_json(delivery.value)
        except MalformedEvent as exc:
            raise Rejected(RejectionReason.MALFORMED, str(exc)) from None
        if str(event.event_id) != event_id or event.event_type != event_type:
            raise Rejected(
                RejectionReason.MALFORMED,
                f"headers (event_id={event_id!r}, event_type={event_type!r}) disagree with the "
                f"envelope (event_id={str(event.event_id)!r}, event_type={event.event_type!r})",
            )
        return event

    def local_reference(self, delivery: Delivery) -> tuple[str, int] | None:
        """(alias, pk) when the headers name a row in a database of this process."""
        alias, outbox_id = delivery.header(HEADER_OUTBOX_DB), delivery.header(HEADER_OUTBOX_ID)
        if not alias or not outbox_id or alias not in connections.settings:
            return None
        try:
            return alias, int(outbox_id)
        except ValueError:
            return None

    # ------------------------------------------------------------------ local rows

    def _locked_row(self, alias: str, pk: int, event: Event) -> OutboxMessage | None:
        """The row holding ``event``, locked; None when it is not ours.

        Another service may use the same alias and ids: only the event id tells.
        """
        row = OutboxMessage.objects.using(alias).select_for_update().filter(pk=pk).first()
        return row if row is not None and _holds(row, event) else None

    def _lock_rows(self, alias: str, pks: set[int]) -> dict[int, OutboxMessage]:
        """The rows ``pks`` of ``alias`` that exist, locked in one query, by id (no deadlock)."""
        rows = OutboxMessage.objects.using(alias).select_for_update().filter(pk__in=sorted(pks))
        return {row.pk: row for row in rows.order_by("pk")}

    def _not_handleable(
        self, delivery: Delivery, event: Event, alias: str, row: OutboxMessage
    ) -> Result | None:
        """The outcome of a record whose row is consumed or dead already; None otherwise."""
        if row.status == Status.CONSUMED:
            return Result(Outcome.DUPLICATE)
        if row.status in HANDLEABLE:
            return None
        # A dead row stays dead: an operator revives it (back to pending) and the
        # relay sends it again. Old copies in the topic must not run it.
        logger.info(
            "outbox row %s/%s is %s; record %s skipped",
            alias,
            row.pk,
            row.status,
            delivery,
            extra={"outbox_id": row.pk, "event_id": str(event.event_id)},
        )
        return Result(Outcome.SKIPPED, f"row is {row.status}")

    def _mark_consumed(self, alias: str, pks: Sequence[int], now: datetime.datetime) -> None:
        """One ``UPDATE`` for all the rows whose handler succeeded (locked by us)."""
        OutboxMessage.objects.using(alias).filter(pk__in=pks, status__in=HANDLEABLE).update(
            status=Status.CONSUMED,
            consumed_at=now,
            updated_at=now,
            # Sent it was: the relay's own write-back may not have landed yet, and it
            # never will (it is fenced on status='pending').
            # Truncated: Value() bypasses the field's own truncation.
            published_at=Coalesce(
                "published_at",
                Value(now, output_field=OutboxMessage._meta.get_field("published_at")),
            ),
        )

    def _handle_local(
        self,
        delivery: Delivery,
        event: Event,
        handler: Handler,
        alias: str,
        pk: int,
        database_errors_fail: bool,
    ) -> Result | None:
        failure: Exception | None = None
        handler_ran = False
        try:
            with transaction.atomic(using=alias):
                row = self._locked_row(alias, pk, event)
                if row is None:
                    return None
                status_result = self._not_handleable(delivery, event, alias, row)
                if status_result is not None:
                    return status_result
                failure, handler_ran = _run(handler, event, alias), True
                if failure is not None:
                    raise failure
                self._mark_consumed(alias, [pk], truncate_to_millis(timezone.now()))
                return Result(Outcome.HANDLED)
        except Exception as exc:
            if failure is None:
                if not handler_ran or isinstance(exc, DATABASE_ERRORS):
                    raise  # our own bookkeeping failed: the caller retries
                # The handler broke the transaction behind our back (a database error
                # caught without a savepoint, on PostgreSQL): its failure, not ours.
                failure = exc
        if isinstance(failure, DATABASE_ERRORS) and not database_errors_fail:
            raise failure
        return self._record_local_failures(alias, [_LocalFailure(0, delivery, event, pk, failure)])[
            0
        ]

    def _record_local_failures(self, alias: str, failures: Sequence[_LocalFailure]) -> list[Result]:
        """Count a failed attempt on each row: back to pending with a backoff, or dead.

        One short transaction for all of them; a row that is not ours, or no longer
        pending/published, is left alone.
        """
        results = []
        with transaction.atomic(using=alias):
            rows = self._lock_rows(alias, {item.pk for item in failures})
            now = timezone.now()
            for item in failures:
                error = describe_failure(item.failure)
                row = rows.get(item.pk)
                if row is None or not _holds(row, item.event) or row.status not in HANDLEABLE:
                    results.append(Result(Outcome.SKIPPED, error))
                    continue
                row.retry_count += 1
                row.last_error = error
                if row.retry_count >= row.max_retry:
                    row.status = Status.DEAD
                    row.next_retry_at = None
                else:
                    row.status = Status.PENDING
                    row.next_retry_at = retry_time(now, retry_delay(row.retry_count))
                row.save(
                    using=alias,
                    update_fields=[
                        "retry_count",
                        "last_error",
                        "status",
                        "next_retry_at",
                        "updated_at",
                    ],
                )
                dead = row.status == Status.DEAD
                results.append(Result(Outcome.DEAD if dead else Outcome.RETRY, error))
                logger.log(
                    logging.ERROR if dead else logging.WARNING,
                    "handler of %s failed on outbox row %s/%s (attempt %d of %d, record %s)%s: %s",
                    item.event.event_type,
                    alias,
                    item.pk,
                    row.retry_count,
                    row.max_retry,
                    item.delivery,
                    "; the row is dead" if dead else f"; retry at {row.next_retry_at}",
                    item.failure,
                    extra={"outbox_id": item.pk, "event_id": str(item.event.event_id)},
                )
        return results

    def _run_in_savepoint(
        self,
        alias: str,
        handler: Handler,
        event: Event,
        before: Callable[[], object] | None = None,
    ) -> Exception | None:
        """Run the handler in a savepoint of the chunk's transaction; what it raised, or None.

        A failure rolls back the handler's writes only. Raises instead when the failure
        is a database error, or when the savepoint could not be rolled back: the chunk's
        transaction is then lost as a whole.
        """
        failure: Exception | None = None
        try:
            with transaction.atomic(using=alias):
                if before is not None:
                    before()
                failure = _run(handler, event, alias)
                if failure is not None:
                    raise failure
        except _Duplicate:
            raise
        except Exception as exc:
            if failure is None:
                failure = exc  # the handler broke the transaction; the release failed
        if failure is not None and (
            isinstance(failure, DATABASE_ERRORS) or transaction.get_rollback(using=alias)
        ):
            raise failure
        return failure

    def _malformed_row_dead(self, delivery: Delivery, error: str) -> None:
        """A local row whose payload no consumer can read is dead, not ``published`` for ever.

        Only when the row holds exactly the record's value: the alias and id alone could
        be another service's.
        """
        local = self.local_reference(delivery)
        if local is None or delivery.value is None:
            return
        alias, pk = local
        with transaction.atomic(using=alias):
            row = OutboxMessage.objects.using(alias).select_for_update().filter(pk=pk).first()
            if row is None or row.status not in HANDLEABLE:
                return
            if row.payload.encode("utf-8") != delivery.value:
                return
            row.status, row.next_retry_at = Status.DEAD, None
            row.last_error = clip_error(f"consumer group {self.group!r} rejected it: {error}")
            row.save(
                using=alias, update_fields=["status", "next_retry_at", "last_error", "updated_at"]
            )

    # ------------------------------------------------------------------ inbox

    def _inbox_entries(self, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``event_ids`` that this group has handled already (one query)."""
        if not event_ids:
            return set()
        entries = InboxEntry.objects.using(self.inbox_database).filter(
            consumer_group=self.group, event_id__in=set(event_ids)
        )
        return set(entries.values_list("event_id", flat=True))

    def _insert_inbox_entry(self, delivery: Delivery, event: Event) -> None:
        """The event's entry, in the handler's transaction; ``_Duplicate`` if it exists."""
        alias = self.inbox_database
        try:
            with transaction.atomic(using=alias):  # a savepoint, for the duplicate
                InboxEntry.objects.using(alias).create(
                    consumer_group=self.group,
                    event_id=event.event_id,
                    event_type=event.event_type,
                    topic=delivery.topic,
                    partition=delivery.partition,
                    offset=delivery.offset,
                )
        except IntegrityError:
            raise _Duplicate from None

    def _handle_inbox(
        self, delivery: Delivery, event: Event, handler: Handler, database_errors_fail: bool
    ) -> Result:
        alias = self.inbox_database
        failure: Exception | None = None
        try:
            with transaction.atomic(using=alias):
                try:
                    self._insert_inbox_entry(delivery, event)
                except _Duplicate:
                    return Result(Outcome.DUPLICATE)
                failure = _run(handler, event, alias)
                if failure is not None:
                    raise failure
                return Result(Outcome.HANDLED)
        except Exception:
            if failure is None:
                raise
        if isinstance(failure, DATABASE_ERRORS) and not database_errors_fail:
            raise failure
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

    # ------------------------------------------------------------------ rejects

    def _rejected(self, delivery: Delivery, rejected: Rejected) -> Result:
        self.reject(delivery, rejected.reason, rejected.error)
        self._malformed_row_dead(delivery, rejected.error)
        return Result(Outcome.REJECTED, rejected.error)

    def _unknown_type(
        self, delivery: Delivery, event: Event, local: tuple[str, int] | None, error: str
    ) -> Result:
        """Apply ``OUTBOX_UNKNOWN_EVENT_POLICY``; never spends a row's retry budget."""
        policy = outbox_settings.unknown_event_policy
        self.reject(delivery, RejectionReason.UNKNOWN_EVENT_TYPE, error, event=event)
        if local is not None and policy in ("retry", "dead"):
            alias, pk = local
            with transaction.atomic(using=alias):
                row = self._locked_row(alias, pk, event)
                if row is not None and row.status in HANDLEABLE:
                    row.last_error = clip_error(f"consumer group {self.group!r}: {error}")
                    if policy == "dead":
                        row.status, row.next_retry_at = Status.DEAD, None
                    else:
                        # Back to the relay later, as if it had not been sent; retry_count
                        # is left alone, so waiting for a handler costs nothing.
                        row.status = Status.PENDING
                        row.next_retry_at = retry_time(
                            timezone.now(), outbox_settings.retry_backoff_max
                        )
                    row.save(
                        using=alias,
                        update_fields=["status", "next_retry_at", "last_error", "updated_at"],
                    )
        return Result(Outcome.SKIPPED, error)

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
        logger.warning(
            "rejected record %s (%s): %s",
            delivery,
            reason,
            error,
            extra={
                "topic": delivery.topic,
                "partition": delivery.partition,
                "offset": delivery.offset,
                "reason": reason,
            },
        )
        (key, value), encoding = encode_bytes(delivery.key, delivery.value)
        event_id: uuid.UUID | None = event.event_id if event else None
        if event_id is None:
            try:
                event_id = uuid.UUID(delivery.header(HEADER_EVENT_ID) or "")
            except ValueError:
                event_id = None
        event_type = event.event_type if event else delivery.header(HEADER_EVENT_TYPE) or ""
        record, _created = RejectedRecord.objects.using(self.inbox_database).update_or_create(
            consumer_group=self.group,
            topic=delivery.topic,
            partition=delivery.partition,
            offset=delivery.offset,
            defaults={
                "reason": reason,
                "error": clip_error(error),
                "key": key,
                "value": value,
                "encoding": encoding,
                "headers": encode_headers(delivery.headers),
                "event_id": event_id,
                "event_type": event_type[:255],
                "attempts": attempts,
            },
        )
        return record
