"""``publish_event()``: write an event to the outbox in the caller's transaction."""

from __future__ import annotations

import contextlib
import datetime
import logging
import uuid
from collections.abc import Mapping
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.utils import timezone

from django_outbox import compat, signals, wakeup
from django_outbox.conf import outbox_settings
from django_outbox.envelope import RESERVED_HEADERS, Event
from django_outbox.exceptions import ImproperlyConfiguredOutbox, InvalidEvent
from django_outbox.models import OutboxMessage, scheduled_time
from django_outbox.ops import tracing
from django_outbox.topics import topic_problem

logger = logging.getLogger(__name__)

EVENT_TYPE_MAX = 64
KEY_MAX = 128


def publish_event(
    event_type: str,
    data: Any,
    *,
    key: str | None = None,
    topic: str | None = None,
    headers: Mapping[str, str] | None = None,
    using: str | None = None,
    max_retry: int | None = None,
    version: int = 1,
    deliver_at: datetime.datetime | None = None,
    delay: datetime.timedelta | None = None,
) -> OutboxMessage:
    """Write ``data`` as a ``pending`` event of ``event_type`` and return the new row.

    The row is written through the ``using`` database alias (default:
    ``OUTBOX_DATABASE``) inside whatever transaction the caller holds there, so it
    commits or rolls back with the business data. Everything is validated first:
    bad input raises ``InvalidEvent`` (or ``ImproperlyConfiguredOutbox`` when no
    topic is configured) and writes nothing.

    ``deliver_at`` (an aware datetime) or ``delay`` (a ``timedelta``), not both,
    schedules the event: the row waits ``pending`` until then and no relay sends it
    earlier (docs/scheduling.rst). A time that is not in the future means now
    (logged at INFO, but for ``delay`` zero).
    """
    alias = _served_alias(using)
    _check_event_type(event_type)
    event_id = uuid.uuid4()
    key = _checked_key(str(event_id) if key is None else key)
    topic = _checked_topic(event_type, topic)
    headers = _checked_headers({} if headers is None else headers)
    max_retry = _checked_max_retry(outbox_settings.max_retry if max_retry is None else max_retry)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InvalidEvent(f"version must be a positive integer, not {version!r}")
    now = timezone.now()
    not_before = _not_before(now, deliver_at, delay)
    if not_before is None:
        _say_if_past(event_type, now, deliver_at, delay)

    event = Event(
        event_type=event_type,
        data=data,
        key=key,
        event_id=event_id,
        version=version,
        headers=tracing.with_trace_context(dict(headers)),
    )
    try:
        payload = event.to_json()
    except (TypeError, ValueError) as exc:
        raise InvalidEvent(f"data of {event_type!r} cannot be serialised to JSON: {exc}") from exc
    message = _write(alias, event_type, topic, key, payload, max_retry, not_before)
    signals.send(signals.event_written, OutboxMessage, alias=alias, message=message, event=event)
    return message


def _served_alias(using: str | None) -> str:
    """The database alias to write through; ``ImproperlyConfiguredOutbox`` if no relay serves it."""
    alias = using or outbox_settings.database or DEFAULT_DB_ALIAS
    if alias not in connections:
        raise ImproperlyConfiguredOutbox(
            f"database alias {alias!r} is not in settings.DATABASES (publish_event(using=...) "
            "or OUTBOX_DATABASE)"
        )
    served = outbox_settings.databases
    if alias not in served:
        raise ImproperlyConfiguredOutbox(
            f"no relay serves database {alias!r} (OUTBOX_DATABASES is {served}): its events "
            "would never leave; add it to OUTBOX_DATABASES"
        )
    return alias


def _check_event_type(event_type: Any) -> None:
    if not isinstance(event_type, str) or not event_type.strip():
        raise InvalidEvent(f"event_type must be a non-empty string, not {event_type!r}")
    if len(event_type) > EVENT_TYPE_MAX:
        raise InvalidEvent(
            f"event_type {event_type[:40]!r}... is {len(event_type)} characters; "
            f"the biz_type column holds at most {EVENT_TYPE_MAX}"
        )


def _checked_key(key: Any) -> str:
    if not isinstance(key, str) or not key:
        raise InvalidEvent(f"key must be a non-empty string, not {key!r}")
    if len(key) > KEY_MAX:
        raise InvalidEvent(
            f"key {key[:40]!r}... is {len(key)} characters; message_key holds at most {KEY_MAX}"
        )
    return key


def _checked_topic(event_type: str, topic: str | None) -> str:
    if topic is None:
        topic = outbox_settings.topic_for(event_type)
        if topic is None:
            raise ImproperlyConfiguredOutbox(
                f"no topic for event type {event_type!r}: pass topic=..., or set "
                "OUTBOX_TOPICS[event_type] or OUTBOX_DEFAULT_TOPIC"
            )
    problem = topic_problem(topic)
    if problem:
        raise InvalidEvent(problem)
    return topic


def _checked_headers(headers: Any) -> Mapping[str, str]:
    if not isinstance(headers, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidEvent(f"headers must map strings to strings, not {headers!r}")
    reserved = sorted(RESERVED_HEADERS.intersection(headers))
    if reserved:
        raise InvalidEvent(f"header names {reserved} are reserved for the outbox's own headers")
    return headers


def _checked_max_retry(max_retry: Any) -> int:
    if not isinstance(max_retry, int) or isinstance(max_retry, bool) or max_retry < 0:
        raise InvalidEvent(f"max_retry must be a non-negative integer, not {max_retry!r}")
    return max_retry


def _write(
    alias: str,
    event_type: str,
    topic: str,
    key: str,
    payload: str,
    max_retry: int,
    not_before: datetime.datetime | None,
) -> OutboxMessage:
    """Insert the ``pending`` row (held until ``not_before``, if given); wake the relay."""
    wake = outbox_settings.wake_relay
    rows = OutboxMessage.objects.using(alias)
    # A scheduled row is inserted and held in one transaction: no relay sees it due.
    with transaction.atomic(using=alias) if not_before else contextlib.nullcontext():
        message = rows.create_pending(
            event_type=event_type,
            topic=topic,
            message_key=key,
            payload=payload,
            max_retry=max_retry,
            notify=wake,
        )
        if not_before:
            rows.hold_until(message.pk, not_before)
            message.next_retry_at = not_before
    if wake and connections[alias].vendor != "postgresql":
        # PostgreSQL's NOTIFY (sent with the row) reaches this process's relays too.
        _wake_relay_at_commit(alias)
    return message


def _not_before(
    now: datetime.datetime,
    deliver_at: datetime.datetime | None,
    delay: datetime.timedelta | None,
) -> datetime.datetime | None:
    """When a scheduled event is due (``None``: now); ``InvalidEvent`` on bad input."""
    if deliver_at is not None and delay is not None:
        raise InvalidEvent("pass deliver_at or delay, not both")
    if delay is not None:
        if not isinstance(delay, datetime.timedelta):
            raise InvalidEvent(f"delay must be a datetime.timedelta, not {delay!r}")
        return scheduled_time(now, now + delay)
    if deliver_at is None:
        return None
    if not isinstance(deliver_at, datetime.datetime):
        raise InvalidEvent(f"deliver_at must be a datetime.datetime, not {deliver_at!r}")
    if settings.USE_TZ:
        if timezone.is_naive(deliver_at):
            raise InvalidEvent(
                f"deliver_at {deliver_at.isoformat()} has no time zone: pass an aware "
                "datetime (timezone.now() + timedelta(...), or datetime(..., tzinfo=...))"
            )
    elif timezone.is_aware(deliver_at):
        deliver_at = timezone.make_naive(deliver_at)
    return scheduled_time(now, deliver_at)


def _say_if_past(
    event_type: str,
    now: datetime.datetime,
    deliver_at: datetime.datetime | None,
    delay: datetime.timedelta | None,
) -> None:
    """Log a time asked for that had passed already (the event is due at once); no
    time asked, or ``delay`` zero, says nothing."""
    if deliver_at is not None:
        asked = f"deliver_at {deliver_at.isoformat()}"
    elif delay is not None and delay < datetime.timedelta(0):
        asked = f"delay {delay}"
    else:
        return
    logger.info(
        "publish_event(%r): %s is not in the future (now %s): the event is due at once",
        event_type,
        asked,
        now.isoformat(),
        extra={"event_type": event_type},
    )


def _wake_relay_at_commit(alias: str) -> None:
    """Once per transaction: wake this process's relays at commit (MariaDB, SQLite).

    (On PostgreSQL every relay, in this process or another, hears of the commit from
    the ``NOTIFY`` that ``create_pending`` sends with the row.) A rollback, of the
    transaction or of the savepoint that registered the callback, discards it, so the
    next publish registers it again.
    """
    connection = connections[alias]
    if connection.in_atomic_block and any(
        entry[1] is wakeup.wake_local for entry in compat.on_commit_callbacks(connection)
    ):
        return
    transaction.on_commit(wakeup.wake_local, using=alias)
