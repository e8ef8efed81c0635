"""Once-only on local rows: records whose outbox row lives in a database of this process.

The row is locked, its handler runs, and the row becomes ``consumed``, in one
transaction on that database; a repeat delivery finds it ``consumed`` and does
nothing. Which row a record names:

- its headers ``outbox_db`` + ``outbox_id`` (the relay sends them), when the alias
  is one of ``settings.DATABASES``;
- for a record without them (a Go relay, any producer that sends key and value
  only), the row of the same event type, topic and key whose payload holds the
  event id, looked up in the relay's databases (``OUTBOX_DATABASES``): one query
  per chunk and database (see docs/consumer.rst, "Records without headers").

A record sent again by ``outbox_replay`` names no row here: it goes through the inbox
(``inbox.py``). Only the group ``OUTBOX_CONSUMER_GROUP`` handles records on their rows:
a row has one ``consumed`` flag, so a second group on the same database goes through its inbox.
Either way the row only counts when its payload holds the record's event id:
another service may use the same alias and ids. All row locks of the consumer are
taken by ``lock()``, in ascending id order (see ``locked_for_handling``).
"""

from __future__ import annotations

import datetime
import logging
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from operator import or_
from typing import cast

from django.db import connections, transaction
from django.db.models import Q
from django.utils import timezone

from django_outbox.backoff import retry_delay
from django_outbox.conf import outbox_settings
from django_outbox.consumer.records import Delivery, Rejected, local_reference, replay_mark
from django_outbox.envelope import HEADER_OUTBOX_DB, HEADER_OUTBOX_ID, Event
from django_outbox.exceptions import MalformedEvent
from django_outbox.fields import clip_error
from django_outbox.models import OutboxMessage, OutboxMessageQuerySet, Status

logger = logging.getLogger("django_outbox.consumer")

Reference = tuple[str, int]


@dataclass(frozen=True, slots=True)
class LockedRow:
    """An outbox row locked for a chunk: what handling the chunk reads of it."""

    alias: str
    pk: int
    status: str
    payload: str

    @property
    def event(self) -> Event:
        """The envelope in ``payload`` (raises ``MalformedEvent``)."""
        return Event.from_json(self.payload)


def describe_failure(exc: BaseException) -> str:
    """The handler's exception with its traceback, short enough for ``last_error``."""
    return clip_error("".join(traceback.format_exception(exc)).strip())


def holds(row: OutboxMessage | LockedRow, event: Event, delivery: Delivery | None = None) -> bool:
    """True when ``row`` holds ``event``: another service may use the same alias and ids.

    A record whose value is the row's payload, byte for byte, holds it without
    parsing the payload again (the relay sends it as is).
    """
    if delivery is not None and delivery.value is not None:
        if row.payload.encode("utf-8", "surrogatepass") == delivery.value:
            return True
    try:
        return row.event.event_id == event.event_id
    except (MalformedEvent, RecursionError):
        return False


@dataclass
class LocalFailure:
    """A handler that failed on a local row; counted after the chunk's commit."""

    index: int
    delivery: Delivery
    event: Event
    pk: int
    failure: Exception
    #: The row's ``retry_count`` once this failure is counted.
    attempts: int = 0


class LocalRows:
    """The outbox rows of this process's databases, as one consumer group handles them."""

    def __init__(self, group: str) -> None:
        self.group = group

    # ------------------------------------------------------------------ which row

    def references(
        self, deliveries: Sequence[Delivery], parsed: Sequence[Event | Rejected]
    ) -> list[Reference | None]:
        """The row each record names, if it is in a database of this process.

        None for all when this group is not ``OUTBOX_CONSUMER_GROUP``: a row records
        one group's outcome (``consumed``), so any other group handles every event
        through its inbox, once, and leaves the rows alone.
        """
        if self.group != outbox_settings.consumer_group:
            return [None] * len(deliveries)
        references: list[Reference | None] = []
        headerless: list[int] = []
        for index, delivery in enumerate(deliveries):
            if replay_mark(delivery) is not None:
                # A replay runs the handler again whatever the row says: through the
                # inbox, once per run (inbox.py), and the row keeps its status.
                references.append(None)
                continue
            reference = local_reference(delivery)
            if reference is not None and reference[0] not in connections.settings:
                reference = None
            references.append(reference)
            if (
                reference is None
                and isinstance(parsed[index], Event)
                and delivery.header(HEADER_OUTBOX_DB) is None
                and delivery.header(HEADER_OUTBOX_ID) is None
            ):
                headerless.append(index)
        if headerless:
            events = [cast(Event, parsed[i]) for i in headerless]
            found = self._find(events, [deliveries[i] for i in headerless])
            for index, reference in zip(headerless, found, strict=True):
                references[index] = reference
        return references

    def _find(
        self, events: Sequence[Event], deliveries: Sequence[Delivery]
    ) -> list[Reference | None]:
        """Rows for records without outbox headers: by type, topic, key and event id."""
        wanted: dict[tuple[str, str, str], list[int]] = {}
        conditions = []
        for index, (event, delivery) in enumerate(zip(events, deliveries, strict=True)):
            spelled = str(event.event_id)
            wanted.setdefault((event.event_type, delivery.topic, spelled), []).append(index)
            # Every spelling uuid.Parse reads holds one of these (braces and urn:uuid:
            # wrap the dashed form; the undashed one is the hex).
            spellings = (spelled, spelled.upper(), event.event_id.hex, event.event_id.hex.upper())
            conditions.append(
                Q(event_type=event.event_type, topic=delivery.topic)
                & reduce(or_, (Q(payload__contains=s) for s in spellings))
            )
        found: list[Reference | None] = [None] * len(events)
        condition = reduce(or_, conditions)
        for alias in outbox_settings.databases:
            if alias not in connections.settings:
                continue
            candidates = OutboxMessage.objects.using(alias).filter(condition).order_by("pk")
            for row in candidates.only("pk", "event_type", "topic", "payload"):
                try:
                    event_id = str(row.event.event_id)
                except (MalformedEvent, RecursionError):
                    continue
                for index in wanted.get((row.event_type, row.topic, event_id), ()):
                    if found[index] is None:
                        found[index] = (alias, row.pk)
        return found

    # ------------------------------------------------------------------ locks and outcomes

    def lock(self, alias: str, pks: set[int]) -> dict[int, LockedRow]:
        """The rows ``pks`` of ``alias`` that exist, locked: the consumer's only row lock.

        As ``LockedRow``\\ s, with the columns a chunk reads: building model instances
        (five timestamps to convert each) cost more than a no-op handler.
        """
        rows = OutboxMessage.objects.using(alias).locked_for_handling(pks)
        return {
            pk: LockedRow(alias, pk, status, payload)
            for pk, status, payload in rows.values_list("pk", "status", "payload")
        }

    def not_handleable(
        self, delivery: Delivery, event: Event, alias: str, row: LockedRow
    ) -> str | None:
        """``"duplicate"`` or ``"skipped"`` for a row consumed or dead already; else None."""
        if row.status == Status.CONSUMED:
            return "duplicate"
        if row.status in OutboxMessageQuerySet.handleable_statuses:
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
        return "skipped"

    def mark_consumed(self, alias: str, pks: Sequence[int]) -> None:
        OutboxMessage.objects.using(alias).mark_consumed(pks, timezone.now())

    def malformed(self, delivery: Delivery, row: LockedRow | None, error: str) -> None:
        """A local row whose payload no consumer can read is dead, not ``published`` for ever.

        Only when the row holds exactly the record's value: the alias and id alone could
        be another service's. ``row`` is locked by the caller.
        """
        if row is None or delivery.value is None:
            return
        if row.payload.encode("utf-8", "surrogatepass") != delivery.value:
            return
        error = clip_error(f"consumer group {self.group!r} rejected it: {error}")
        OutboxMessage.objects.using(row.alias).abandon(row.pk, error)

    def unknown_type(self, row: LockedRow | None, error: str) -> None:
        """Apply ``OUTBOX_UNKNOWN_EVENT_POLICY`` to ``row`` (locked); never spends a retry."""
        policy = outbox_settings.unknown_event_policy
        if row is None or policy not in ("retry", "dead"):
            return
        error = clip_error(f"consumer group {self.group!r}: {error}")
        rows = OutboxMessage.objects.using(row.alias)
        if policy == "dead":
            rows.abandon(row.pk, error)
        else:
            # Back to the relay later, as if it had not been sent: waiting for a
            # handler to be deployed costs nothing.
            rows.send_again_later(row.pk, error, outbox_settings.retry_backoff_max)

    def record_failures(
        self, alias: str, failures: Sequence[LocalFailure]
    ) -> list[tuple[str, str]]:
        """Count a failed attempt on each row: back to pending with a backoff, or dead.

        One short transaction for all of them; a row that is not ours, or no longer
        pending/published, is left alone. One ``(outcome, error)`` per failure.
        """
        results: list[tuple[str, str]] = []
        with transaction.atomic(using=alias):
            locked = OutboxMessage.objects.using(alias).locked_for_handling(
                {item.pk for item in failures}
            )
            rows = {row.pk: row for row in locked}
            queryset = OutboxMessage.objects.using(alias)
            now = timezone.now()
            for item in failures:
                error = describe_failure(item.failure)
                row = rows.get(item.pk)
                if (
                    row is None
                    or not holds(row, item.event, item.delivery)
                    or row.status not in queryset.handleable_statuses
                ):
                    results.append(("skipped", error))
                    continue
                dead = queryset.handler_failed(row, error, now, retry_delay(row.retry_count + 1))
                item.attempts = row.retry_count
                results.append(("dead" if dead else "retry", error))
                _log_failure(alias, item, row, dead)
        return results


def _log_failure(alias: str, item: LocalFailure, row: OutboxMessage, dead: bool) -> None:
    retry_at: datetime.datetime | None = row.next_retry_at
    logger.log(
        logging.ERROR if dead else logging.WARNING,
        "handler of %s failed on outbox row %s/%s (attempt %d of %d, record %s)%s: %s",
        item.event.event_type,
        alias,
        item.pk,
        row.retry_count,
        row.max_retry,
        item.delivery,
        "; the row is dead" if dead else f"; retry at {retry_at}",
        item.failure,
        extra={"outbox_id": item.pk, "event_id": str(item.event.event_id)},
    )
