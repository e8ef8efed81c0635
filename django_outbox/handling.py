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

Database errors (``OperationalError``/``InterfaceError``) propagate to the caller,
which retries the same record; nothing here swallows them.
"""

from __future__ import annotations

import enum
import logging
import traceback
import uuid
from collections.abc import Sequence
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
            self.reject(delivery, rejected.reason, rejected.error)
            self._malformed_row_dead(delivery, rejected.error)
            return Result(Outcome.REJECTED, rejected.error)
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
        if row is None:
            return None
        try:
            same = row.event.event_id == event.event_id
        except MalformedEvent:
            same = False
        return row if same else None

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
                if row.status == Status.CONSUMED:
                    return Result(Outcome.DUPLICATE)
                if row.status not in HANDLEABLE:
                    # A dead row stays dead: an operator revives it (back to pending) and
                    # the relay sends it again. Old copies in the topic must not run it.
                    logger.info(
                        "outbox row %s/%s is %s; record %s skipped",
                        alias,
                        pk,
                        row.status,
                        delivery,
                        extra={"outbox_id": pk, "event_id": str(event.event_id)},
                    )
                    return Result(Outcome.SKIPPED, f"row is {row.status}")
                failure, handler_ran = _run(handler, event, alias), True
                if failure is not None:
                    raise failure
                # Truncated here too: Value() bypasses the field's own truncation.
                now = truncate_to_millis(timezone.now())
                OutboxMessage.objects.using(alias).filter(pk=pk).update(
                    status=Status.CONSUMED,
                    consumed_at=now,
                    updated_at=now,
                    # Sent it was: the relay's own write-back may not have landed yet, and
                    # it never will (it is fenced on status='pending').
                    published_at=Coalesce(
                        "published_at",
                        Value(now, output_field=OutboxMessage._meta.get_field("published_at")),
                    ),
                )
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
        return self._local_failed(delivery, event, alias, pk, failure)

    def _local_failed(
        self, delivery: Delivery, event: Event, alias: str, pk: int, failure: Exception
    ) -> Result:
        """Count a failed attempt on the row: back to pending with a backoff, or dead."""
        error = describe_failure(failure)
        with transaction.atomic(using=alias):
            row = self._locked_row(alias, pk, event)
            if row is None or row.status not in HANDLEABLE:
                return Result(Outcome.SKIPPED, error)
            now = timezone.now()
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
        logger.log(
            logging.ERROR if dead else logging.WARNING,
            "handler of %s failed on outbox row %s/%s (attempt %d of %d, record %s)%s: %s",
            event.event_type,
            alias,
            pk,
            row.retry_count,
            row.max_retry,
            delivery,
            "; the row is dead" if dead else f"; retry at {row.next_retry_at}",
            failure,
            extra={"outbox_id": pk, "event_id": str(event.event_id)},
        )
        return Result(Outcome.DEAD if dead else Outcome.RETRY, error)

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

    def _handle_inbox(
        self, delivery: Delivery, event: Event, handler: Handler, database_errors_fail: bool
    ) -> Result:
        alias = self.inbox_database
        failure: Exception | None = None
        try:
            with transaction.atomic(using=alias):
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
