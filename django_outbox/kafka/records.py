"""The Kafka record of an outbox row: its key, value and headers.

Owns ``OutboxRecord``, the one builder of a record's headers (the outbox's own, the
envelope's, the CloudEvents binary mode ones), and the fast reader of an envelope's
head that gives the relay ``event_id``, ``occurred_at`` and ``headers`` without
parsing ``data``.

Imports the envelope and CloudEvents modules only: no Kafka client, no other module
of ``kafka/``.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from django_outbox import cloudevents
from django_outbox.envelope import (
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_OUTBOX_DB,
    HEADER_OUTBOX_ID,
    RESERVED_HEADERS,
)

if TYPE_CHECKING:
    from django_outbox.models import OutboxMessage


class OutboxRecord(NamedTuple):
    """One Kafka record, ready for ``send_records`` (None: a record without key, or value)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def record_headers(
    message: OutboxMessage, alias: str, extra: dict[str, str] | None = None
) -> list[tuple[str, bytes]]:
    """The headers of the Kafka record for ``message`` (row in database ``alias``).

    ``extra`` are the envelope's own headers; the reserved names always win.
    """
    event_id = occurred_at = ""
    try:
        event = message.event
        event_id, occurred_at = str(event.event_id), event.as_dict()["occurred_at"]
    except Exception:  # a malformed payload still gets delivered; the consumer records it
        pass
    return _headers(event_id, message.event_type, message.pk, alias, extra, occurred_at)


def _headers(
    event_id: str,
    event_type: str,
    pk: int,
    alias: str,
    extra: dict[str, str] | None,
    occurred_at: str = "",
) -> list[tuple[str, bytes]]:
    """The one builder of a record's headers (the trace context is among ``extra``)."""
    headers = [
        (name, value.encode())
        for name, value in (extra or {}).items()
        if name not in RESERVED_HEADERS
    ]
    headers += [
        (HEADER_EVENT_ID, event_id.encode()),
        (HEADER_EVENT_TYPE, event_type.encode()),
        (HEADER_OUTBOX_ID, str(pk).encode()),
        (HEADER_OUTBOX_DB, alias.encode()),
    ]
    return cloudevents.binary_headers(
        headers, event_id=event_id, event_type=event_type, occurred_at=occurred_at, alias=alias
    )


def outbox_headers(pk: int, event_type: str, payload: str, alias: str) -> list[tuple[str, bytes]]:
    """``record_headers`` for a row given as plain values (the relay's hot path).

    Reads only ``event_id``, ``occurred_at`` and ``headers`` from the payload: full envelope
    validation is the consumer's job, and a malformed payload is still delivered
    (with an empty event id) so that the consumer can record it.
    """
    head = _envelope_head(payload)
    if head is None:
        head = _envelope_head_parsed(payload)
    event_id, occurred_at, found = head
    extra = None
    if isinstance(found, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in found.items()
    ):
        extra = found
    return _headers(event_id, event_type, pk, alias, extra, occurred_at)


_JSON_STRING = r'"(?:[^"\\]++|\\.)*+"'
#: How ``envelope.dumps`` writes every envelope: compact, keys in this order, ``data``
#: last, ``event_id`` a UUID (nothing to unescape).
_CANONICAL_HEAD = re.compile(
    r'\{"event_id":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",'
    rf'"event_type":{_JSON_STRING},"version":\d+,"occurred_at":"([^"\\]*+)",'
    rf'"key":{_JSON_STRING},"headers":'
)
#: The scanner behind ``json.loads``: reads one value at an index, returns (value, end).
_scan_json_value: Callable[[str, int], tuple[Any, int]]
_scan_json_value = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _envelope_head(payload: str) -> tuple[str, str, Any] | None:
    """``(event_id, occurred_at, headers)`` of a canonical envelope, without parsing the rest.

    One regular expression finds ``event_id`` and the start of ``headers``; only
    ``headers`` is parsed, ``data`` (nearly all of a payload) is skipped unread.
    Anything else (another key order, as the Go service may write, whitespace, an
    upper-case UUID) returns None, and the caller parses the whole document. What
    is skipped is not validated: the consumer does that. Like any reader that stops
    early, this one would not see a duplicate key after ``data``; ``json.dumps`` of
    a dict never writes one.
    """
    head = _CANONICAL_HEAD.match(payload)
    if head is None:
        return None
    try:
        headers, position = _scan_json_value(payload, head.end())
    except (StopIteration, ValueError):  # not JSON after all
        return None
    if not payload.startswith(',"data":', position):
        return None
    return head.group(1), head.group(2), headers


def _envelope_head_parsed(payload: str) -> tuple[str, str, Any]:
    """``(event_id, occurred_at, headers)`` with one ``json.loads``; ``("", "", None)`` when
    malformed."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        return "", "", None
    if not isinstance(document, dict):
        return "", "", None
    occurred_at = document.get("occurred_at")
    return (
        _canonical_id(document.get("event_id")),
        occurred_at if isinstance(occurred_at, str) else "",
        document.get("headers"),
    )


def _canonical_id(value: Any) -> str:
    """A UUID in its canonical spelling (any spelling ``uuid.UUID`` reads), else as given.

    The Go service may write upper-case, braced, ``urn:uuid:`` or undashed ids; the
    header carries the one spelling the consumer compares with the envelope's.
    """
    if not value:
        return ""
    text = str(value)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text
