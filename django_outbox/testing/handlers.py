"""``run_handlers()``: the registered handlers of some events, in-process, no Kafka.

Each event becomes the Kafka record the relay would send (``relay.send.build_record``
for an outbox row: same key, value and headers), and the records go through the
consumer's own code (``Consumer.handle_records``: chunks, once-only on the row or
through the inbox, batch handlers, retries in place, rejection), as if one poll had
returned them. Only the broker is left out. Nothing here decides an outcome.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django_outbox.conf import outbox_settings
from django_outbox.consumer import Consumer, Delivery, Outcome
from django_outbox.envelope import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Event
from django_outbox.models import OutboxMessage
from django_outbox.registry import HandlerRegistry, registry
from django_outbox.relay.send import build_record
from django_outbox.testing.capture import CapturedEvent

#: The topic of a bare ``Event`` whose type no setting maps to a topic.
FALLBACK_TOPIC = "django_outbox.testing"

#: Outcomes that are not a failure.
FINE = {Outcome.HANDLED, Outcome.DUPLICATE}


@dataclass(frozen=True)
class Handled:
    """What the consumer's code made of one event: an ``Outcome`` and its error."""

    event: Event
    outcome: Outcome
    error: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in FINE


class HandlerFailed(AssertionError):
    """A handler raised (or its record was rejected) in ``run_handlers(check=True)``."""

    def __init__(self, failed: list[Handled]) -> None:
        self.failed = failed
        lines = [f"{len(failed)} event(s) not handled:"]
        for one in failed:
            lines.append(
                f"- {one.event.event_type} {one.event.event_id} (key {one.event.key!r}): "
                f"{one.outcome.value}{f' ({one.reason})' if one.reason else ''}"
            )
            lines += [f"    {line}" for line in one.error.splitlines()]
        super().__init__("\n".join(lines))


def _delivery(item: Any, offset: int) -> tuple[Event, Delivery]:
    """The record the relay would send for ``item``, as the consumer would read it."""
    timestamp = int(time.time() * 1000)
    if isinstance(item, CapturedEvent):
        item, alias = item.row, item.alias
    elif isinstance(item, OutboxMessage):
        alias = item._state.db or outbox_settings.database
    elif isinstance(item, Event):
        topic = outbox_settings.topic_for(item.event_type) or FALLBACK_TOPIC
        headers = [
            (HEADER_EVENT_ID, str(item.event_id).encode()),
            (HEADER_EVENT_TYPE, item.event_type.encode()),
            *((name, value.encode()) for name, value in item.headers.items()),
        ]
        delivery = Delivery(
            topic, 0, offset, item.key.encode(), item.to_bytes(), tuple(headers), timestamp
        )
        return item, delivery
    else:
        raise TypeError(
            f"run_handlers() takes captured events, outbox rows or Events, not {item!r}"
        )
    record = build_record(item, alias)
    delivery = Delivery(
        record.topic, 0, offset, record.key, record.value, tuple(record.headers), timestamp
    )
    return item.event, delivery


def run_handlers(
    events: Iterable[CapturedEvent | OutboxMessage | Event],
    *,
    group: str | None = None,
    check: bool = True,
    inbox_attempts: int = 1,
    handlers: HandlerRegistry = registry,
) -> list[Handled]:
    """Run the registered handlers of ``events`` through the consumer's code; no Kafka.

    ``events``: a capture (``capture_events()``), its ``CapturedEvent``\\ s, outbox
    rows or bare ``Event``\\ s (an event from another service: handled through the
    inbox). The group is ``OUTBOX_CONSUMER_GROUP`` unless ``group`` says otherwise:
    that group handles a local row on the row (it becomes ``consumed``), any other
    through its inbox. Running an event twice runs its handler once. Events of a type
    without a handler are left out (``Outcome.SKIPPED``). With ``check`` (the
    default), a handler that raised fails with ``HandlerFailed`` after every event
    was handled; else see each ``Handled.outcome``. ``inbox_attempts``: how often an
    inbox event is tried before it is recorded as rejected (the consumer's 3 by
    default; 1 here, with no waiting).
    """
    items = [_delivery(item, offset) for offset, item in enumerate(events)]
    results: dict[int, Handled] = {}
    runnable = []
    for offset, (event, delivery) in enumerate(items):
        if event.event_type in handlers:
            runnable.append(delivery)
        else:
            error = f"no handler registered for {event.event_type!r}"
            results[offset] = Handled(event, Outcome.SKIPPED, error)
    if runnable:
        consumer = Consumer(
            sorted({delivery.topic for delivery in runnable}),
            group=group,
            handlers=handlers,
            inbox_attempts=inbox_attempts,
            inbox_retry_max_delay=0,
            database_retry_delay=0.05,
        )
        for delivery, result in consumer.handle_records(runnable):
            event = items[delivery.offset][0]
            results[delivery.offset] = Handled(event, result.outcome, result.error, result.reason)
    handled = [results[offset] for offset in sorted(results)]
    failed = [one for one in handled if not one.ok and one.outcome is not Outcome.SKIPPED]
    if check and failed:
        raise HandlerFailed(failed)
    return handled
