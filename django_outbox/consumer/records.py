"""Kafka records as the consumer sees them, and the event each one carries.

``parse()`` never raises: whatever the bytes, it returns the record's ``Event`` or
a ``Rejected`` that says why the consumer cannot use it. A record is read the same
way with or without this app's headers:

- the value must be a valid envelope (``Event.from_json``); it names the event
  type and id;
- a header ``event_id`` / ``event_type``, when present, must agree with the
  envelope: ids are compared as UUIDs, so any spelling ``uuid.UUID`` reads
  (upper-case, braces, ``urn:uuid:``, no dashes) agrees with the envelope's;
- records without them (a Go relay, any producer that sends key and value only)
  are handled like the others; ``outbox_db`` / ``outbox_id`` headers, when
  present, name the outbox row (see ``local.py``).
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django_outbox.envelope import (
    EVERY_GROUP,
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_OUTBOX_DB,
    HEADER_OUTBOX_ID,
    HEADER_REPLAY_GROUP,
    HEADER_REPLAY_RUN,
    Event,
)
from django_outbox.exceptions import MalformedEvent
from django_outbox.models.inbox import RejectionReason

_ABSENT = object()


@dataclass(frozen=True)
class Delivery:
    """One Kafka record, as the consumer got it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()
    #: The record's Kafka timestamp, ms since the epoch (the producer's send time).
    timestamp: int | None = None
    #: 0 when ``timestamp`` is the producer's (CreateTime), 1 the broker's (LogAppendTime).
    timestamp_type: int | None = None

    @classmethod
    def from_record(cls, record: Any) -> Delivery:
        return cls(
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
            timestamp=record.timestamp,
            timestamp_type=record.timestamp_type,
        )

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` as text, or None (absent, empty or not UTF-8)."""
        value = self._texts.get(name)
        return value if isinstance(value, str) and value else None

    def _header(self, name: str) -> Any:
        """The last value of ``name`` as text; None when it is not UTF-8; ``_ABSENT``."""
        return self._texts.get(name, _ABSENT)

    @functools.cached_property
    def _texts(self) -> dict[str, str | None]:
        """Each header's last value as text ("" for no value, None if not UTF-8): decoded once."""
        texts: dict[str, str | None] = {}
        for name, value in self.headers:
            if value is None:
                texts[name] = ""
                continue
            try:
                texts[name] = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                texts[name] = None
        return texts

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass(frozen=True)
class Rejected:
    """Why a record cannot be handled: a ``RejectionReason`` and the error."""

    reason: str
    error: str


@dataclass(frozen=True)
class ReplayMark:
    """What the headers of a record sent again by ``outbox_replay`` say: its run and group."""

    run: str
    group: str

    def is_for(self, group: str) -> bool:
        """True when consumer group ``group`` is to handle the replayed record."""
        return self.group in (EVERY_GROUP, group)


def replay_mark(delivery: Delivery) -> ReplayMark | None:
    """The replay a record belongs to (``outbox_replay_run`` header), or None for any other.

    A replay header without a group names no group: nobody handles it (never every group
    by accident).
    """
    run = delivery.header(HEADER_REPLAY_RUN)
    if run is None:
        return None
    return ReplayMark(run, delivery.header(HEADER_REPLAY_GROUP) or "")


def local_reference(delivery: Delivery) -> tuple[str, int] | None:
    """``(alias, pk)`` named by the headers ``outbox_db`` / ``outbox_id``, if well formed."""
    alias, outbox_id = delivery.header(HEADER_OUTBOX_DB), delivery.header(HEADER_OUTBOX_ID)
    if not alias or not outbox_id:
        return None
    try:
        return alias, int(outbox_id)
    except ValueError:
        return None


def parse(delivery: Delivery) -> Event | Rejected:
    """The record's event, or why there is none; never raises."""
    try:
        return _parse(delivery)
    except Exception as exc:  # RecursionError on deep JSON, anything a decoder may raise
        return Rejected(
            RejectionReason.MALFORMED,
            f"the value cannot be read as an event envelope: {type(exc).__name__}: {exc}",
        )


def _has_event_headers(delivery: Delivery) -> bool:
    return any(
        delivery._header(name) not in (_ABSENT, "") for name in (HEADER_EVENT_ID, HEADER_EVENT_TYPE)
    )


def _parse(delivery: Delivery) -> Event | Rejected:
    if delivery.value is None:
        return Rejected(RejectionReason.MALFORMED, "the record has no value (a tombstone)")
    try:
        event = Event.from_json(delivery.value)
    except MalformedEvent as exc:
        if not _has_event_headers(delivery):
            # Nothing says this record is an event at all.
            return Rejected(
                RejectionReason.MISSING_HEADERS,
                f"the record has no event_id/event_type headers and its value is not an "
                f"event envelope: {exc}",
            )
        return Rejected(RejectionReason.MALFORMED, str(exc))
    event_id, event_type = delivery._header(HEADER_EVENT_ID), delivery._header(HEADER_EVENT_TYPE)
    if event_type not in (_ABSENT, "") and event_type != event.event_type:
        return _disagree(event_id, event_type, event)
    if event_id not in (_ABSENT, ""):
        try:
            agrees = uuid.UUID(event_id) == event.event_id
        except (TypeError, ValueError, AttributeError):
            agrees = False
        if not agrees:
            return _disagree(event_id, event_type, event)
    return event


def _disagree(event_id: Any, event_type: Any, event: Event) -> Rejected:
    shown = [
        f"{name}={'absent' if value is _ABSENT else value!r}"
        for name, value in (("event_id", event_id), ("event_type", event_type))
    ]
    return Rejected(
        RejectionReason.MALFORMED,
        f"headers ({', '.join(shown)}) disagree with the envelope "
        f"(event_id={str(event.event_id)!r}, event_type={event.event_type!r})",
    )
