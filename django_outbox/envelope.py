"""The event envelope: the JSON stored in ``payload`` and sent to Kafka as the value.

Format (all keys required), published as ``docs/envelope.schema.json`` with shared test
vectors in ``tests/vectors/`` that the Go peer checks too::

    {
      "event_id": "7d0c1d0e-4a4b-4a56-9a4e-2b1f0e6c2f61",   # UUID, unique per event
      "event_type": "chat.message.created",                # 1 to 64 characters
      "version": 1,                                        # schema version of ``data``
      "occurred_at": "2026-11-27T19:00:00.123456Z",        # ISO 8601 with a zone
      "key": "conversation-42",                            # Kafka key, at most 128 characters
      "headers": {"trace_id": "abc"},                      # str -> str (traceparent: tracing.py)
      "data": {"text": "hello"}                            # any JSON value
    }

Parsing is lenient where the meaning is unambiguous and strict where it is not:

- ``event_id`` may be spelled in any of the forms Go's ``uuid.Parse`` reads (dashed,
  ``{braced}``, ``urn:uuid:``, 32 hex digits; any case); it becomes a ``uuid.UUID``.
  Other shapes (a number, dashes elsewhere) are rejected.
- Unknown keys are ignored; key order and whitespace do not matter.
- ``occurred_at`` needs a zone (a time without one means different instants to
  different readers); any offset is accepted and converted to UTC.
- A string with a lone UTF-16 surrogate (``"\ud800"``) is rejected: Python would keep
  it and fail later when it is written anywhere, Go's ``encoding/json`` would turn it
  into U+FFFD silently; neither reading is the producer's.
- JSON nested too deeply for the parser is rejected (``MalformedEvent``, never
  ``RecursionError``); Go's ``encoding/json`` stops at 10,000 levels, Python's at
  about 1,000 (the interpreter's recursion limit): keep ``data`` well under both.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.serializers.json import DjangoJSONEncoder

from django_outbox.exceptions import MalformedEvent

#: Kafka headers every outbox record carries (values are UTF-8 bytes); the
#: envelope's own ``headers`` are copied too, but may not use these names.
HEADER_EVENT_ID = "event_id"
HEADER_EVENT_TYPE = "event_type"
HEADER_OUTBOX_ID = "outbox_id"  # the row's primary key
HEADER_OUTBOX_DB = "outbox_db"  # the Django database alias the row lives in
#: On a record sent again by ``manage.py outbox_replay``: the run (a UUID), and the one
#: consumer group that is to handle it (``*``: every group). See docs/replay.rst.
HEADER_REPLAY_RUN = "outbox_replay_run"
HEADER_REPLAY_GROUP = "outbox_replay_group"
#: ``HEADER_REPLAY_GROUP`` of a replay that every consumer group handles again.
EVERY_GROUP = "*"
RESERVED_HEADERS = frozenset(
    {
        HEADER_EVENT_ID,
        HEADER_EVENT_TYPE,
        HEADER_OUTBOX_ID,
        HEADER_OUTBOX_DB,
        HEADER_REPLAY_RUN,
        HEADER_REPLAY_GROUP,
    }
)

FIELDS = ("event_id", "event_type", "version", "occurred_at", "key", "headers", "data")
#: The columns the envelope's values must fit (``biz_type``, ``message_key``).
MAX_EVENT_TYPE_LENGTH = 64
MAX_KEY_LENGTH = 128

_HEX = "[0-9a-fA-F]"
_DASHED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
#: The spellings of a UUID that Go's ``uuid.Parse`` (github.com/google/uuid) reads.
_UUID_SPELLING = re.compile(rf"(?:(?i:urn:uuid:)?{_DASHED}|\{{{_DASHED}\}}|{_HEX}{{32}})")
_DASHED_SPELLING = re.compile(_DASHED)
#: A JSON text that might hold a surrogate: one as an escape, or (a ``str``) as is.
_MAYBE_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]|[\ud800-\udfff]")
#: ... and in bytes, which ``json.loads`` decodes with ``surrogatepass``: an escape, or a
#: surrogate encoded as if it were a character (ED A0..BF, not valid UTF-8).
_MAYBE_SURROGATE_BYTES = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")


def dumps(value: Any) -> str:
    """Compact JSON with Django's encoder (datetimes, Decimals, UUIDs); no NaN."""
    return json.dumps(
        value, cls=DjangoJSONEncoder, ensure_ascii=False, separators=(",", ":"), allow_nan=False
    )


def _format_time(value: datetime.datetime) -> str:
    value = value.astimezone(datetime.timezone.utc)
    return value.isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_event_id(value: Any) -> uuid.UUID:
    """A UUID in any spelling ``uuid.Parse`` reads; ``ValueError`` otherwise."""
    if isinstance(value, str) and _DASHED_SPELLING.fullmatch(value):
        return uuid.UUID(value)  # the spelling of this app and most others, read fastest
    if not isinstance(value, str) or not _UUID_SPELLING.fullmatch(value):
        raise ValueError(f"not a UUID spelling: {value!r}")
    return uuid.UUID(hex=re.sub(r"(?i)^urn:uuid:|[{}-]", "", value))


def _has_lone_surrogate(document: Any) -> bool:
    try:
        json.dumps(document, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        return True
    except RecursionError:  # as deep as json.loads could go, not deeper: no verdict
        raise MalformedEvent("event envelope is nested too deeply to check") from None
    return False


def _parse_time(value: str) -> datetime.datetime:
    parsed = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed.astimezone(datetime.timezone.utc)


@dataclass(frozen=True)
class Event:
    """One event, as handlers receive it."""

    event_type: str
    data: Any
    key: str
    event_id: uuid.UUID = field(default_factory=uuid.uuid4)
    version: int = 1
    occurred_at: datetime.datetime = field(
        default_factory=lambda: datetime.datetime.now(datetime.timezone.utc)
    )
    headers: Mapping[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "event_id": str(self.event_id),
            "event_type": self.event_type,
            "version": self.version,
            "occurred_at": _format_time(self.occurred_at),
            "key": self.key,
            "headers": dict(self.headers),
            "data": self.data,
        }

    def to_json(self) -> str:
        """Serialise; raises ``TypeError``/``ValueError`` for data JSON cannot hold."""
        return dumps(self.as_dict())

    def to_bytes(self) -> bytes:
        return self.to_json().encode()

    @classmethod
    def from_json(cls, raw: str | bytes | bytearray | memoryview) -> Event:
        """Parse an envelope; anything malformed raises ``MalformedEvent``."""
        if isinstance(raw, memoryview | bytearray):
            raw = bytes(raw)
        try:
            document = json.loads(raw)
        except (TypeError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise MalformedEvent(f"event envelope is not valid JSON: {exc}") from exc
        except RecursionError:
            raise MalformedEvent("event envelope is nested too deeply to parse") from None
        # Only a text that holds a surrogate escape pays for the walk over the document.
        maybe: object
        if isinstance(raw, str):
            maybe = _MAYBE_SURROGATE.search(raw)
        else:  # a byte search first: far faster than the pattern over the whole value
            maybe = (b"\\u" in raw or b"\xed" in raw) and _MAYBE_SURROGATE_BYTES.search(raw)
        if maybe and _has_lone_surrogate(document):
            raise MalformedEvent(
                "event envelope holds a lone UTF-16 surrogate (\\ud800-\\udfff not in a pair)"
            )
        return cls.from_dict(document)

    @classmethod
    def from_dict(cls, document: Any) -> Event:
        if not isinstance(document, dict):
            raise MalformedEvent(
                f"event envelope must be a JSON object, not {type(document).__name__}"
            )
        missing = [name for name in FIELDS if name not in document]
        if missing:
            raise MalformedEvent(f"event envelope lacks {', '.join(missing)}")
        event_type, key, headers = document["event_type"], document["key"], document["headers"]
        version = document["version"]
        if not isinstance(event_type, str) or not event_type:
            raise MalformedEvent("event_type must be a non-empty string")
        if len(event_type) > MAX_EVENT_TYPE_LENGTH:
            raise MalformedEvent(
                f"event_type is longer than {MAX_EVENT_TYPE_LENGTH} characters: {event_type[:80]!r}"
            )
        if not isinstance(key, str):
            raise MalformedEvent("key must be a string")
        if len(key) > MAX_KEY_LENGTH:
            raise MalformedEvent(f"key is longer than {MAX_KEY_LENGTH} characters")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise MalformedEvent("version must be a positive integer")
        if not isinstance(headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
        ):
            raise MalformedEvent("headers must be an object of strings")
        try:
            event_id = parse_event_id(document["event_id"])
        except ValueError:
            raise MalformedEvent(f"event_id is not a UUID: {document['event_id']!r}") from None
        try:
            occurred_at = _parse_time(document["occurred_at"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise MalformedEvent(
                f"occurred_at is not an ISO 8601 time with zone: {document['occurred_at']!r}"
            ) from exc
        return cls(
            event_type=event_type,
            data=document["data"],
            key=key,
            event_id=event_id,
            version=version,
            occurred_at=occurred_at,
            headers=headers,
        )
