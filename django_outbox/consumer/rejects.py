"""Keeping what the consumer cannot handle: one ``RejectedRecord`` per record, always.

Any bytes are storable: key, value and header values that are not clean text
(invalid UTF-8, NUL, which PostgreSQL refuses) are kept as base64, header names
likewise, the error text is escaped, and a key or value longer than
``MAX_STORED_BYTES`` is kept in part (the error says how much). Should the database
still refuse the entry (a driver's own limit), it is stored again with every field
as base64 or ASCII, so that storing never fails for the record's content: only an
unreachable database stops it (that error propagates; the caller retries).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from django.db import DatabaseError, transaction

from django_outbox.consumer.database import DATABASE_ERRORS
from django_outbox.consumer.records import Delivery
from django_outbox.envelope import HEADER_EVENT_ID, HEADER_EVENT_TYPE, Event
from django_outbox.fields import clip_error
from django_outbox.models.inbox import (
    MAX_STORED_BYTES,
    RejectedRecord,
    encode_bytes,
    encode_headers,
    storable_text,
)

logger = logging.getLogger("django_outbox.consumer")


def _clip(value: bytes | None) -> tuple[bytes | None, str]:
    if value is None or len(value) <= MAX_STORED_BYTES:
        return value, ""
    return value[:MAX_STORED_BYTES], f"; only its first {MAX_STORED_BYTES} of {len(value)} bytes"


def _event_id(delivery: Delivery, event: Event | None) -> uuid.UUID | None:
    if event is not None:
        return event.event_id
    try:
        return uuid.UUID(delivery.header(HEADER_EVENT_ID) or "")
    except ValueError:
        return None


def _ascii(text: str) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii")


def reject(
    group: str,
    alias: str,
    delivery: Delivery,
    reason: str,
    error: str,
    *,
    event: Event | None = None,
    attempts: int = 1,
) -> RejectedRecord:
    """Log and keep a record the consumer cannot handle (one entry per offset)."""
    logger.warning(
        "rejected record %s (%s): %s",
        delivery,
        reason,
        storable_text(error),
        extra={
            "topic": delivery.topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "reason": reason,
        },
    )
    key, key_note = _clip(delivery.key)
    value, value_note = _clip(delivery.value)
    if key_note or value_note:
        error = f"{error} (kept: key{key_note or ' whole'}, value{value_note or ' whole'})"
    (key_text, value_text), encoding = encode_bytes(key, value)
    event_type = event.event_type if event else delivery.header(HEADER_EVENT_TYPE) or ""
    fields: dict[str, Any] = {
        "reason": reason,
        "error": clip_error(storable_text(error)),
        "key": key_text,
        "value": value_text,
        "encoding": encoding,
        "headers": encode_headers(delivery.headers),
        "event_id": _event_id(delivery, event),
        "event_type": storable_text(event_type)[:255],
        "attempts": attempts,
    }
    try:
        return _store(group, alias, delivery, fields)
    except DATABASE_ERRORS:
        raise
    except (DatabaseError, ValueError) as exc:
        logger.warning("rejected record %s: stored as ASCII only (%s)", delivery, exc)
    # Nothing but ASCII this time: base64 for all bytes, escapes for all text.
    (key_text, value_text), encoding = encode_bytes(key, value, binary=True)
    fields.update(
        error=clip_error(_ascii(error)),
        key=key_text,
        value=value_text,
        encoding=encoding,
        headers=encode_headers(delivery.headers, binary=True),
        event_type=_ascii(event_type)[:255],
    )
    return _store(group, alias, delivery, fields)


def _store(group: str, alias: str, delivery: Delivery, fields: dict[str, Any]) -> RejectedRecord:
    # A savepoint inside the chunk's transaction: a refused insert must not break it.
    with transaction.atomic(using=alias):
        record, _created = RejectedRecord.objects.using(alias).update_or_create(
            consumer_group=group,
            topic=delivery.topic,
            partition=delivery.partition,
            offset=delivery.offset,
            defaults=fields,
        )
    return record
