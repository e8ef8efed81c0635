"""The consumer's own tables: the inbox and the rejected records.

``InboxEntry`` makes events that have no outbox row in this process's databases
(published by another service) take effect once: its row is inserted in the
handler's transaction, and ``(consumer_group, event_id)`` is unique.

``RejectedRecord`` keeps what the consumer could not handle (malformed bytes, an
unknown event type, a handler that kept failing) with enough of the Kafka record
(topic, partition, offset, key, headers, value) for an operator to find and replay it.

Both tables grow with traffic: prune them with ``manage.py outbox_consume --prune DAYS``
(or ``.prune()``). Keep inbox entries longer than Kafka keeps records (``retention.ms``):
an event re-delivered after its entry was pruned would be handled again.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Sequence
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import MillisecondDateTimeField
from django_outbox.models.pruning import delete_in_chunks


class _PrunableQuerySet(models.QuerySet):
    """The consumer's tables, pruned by age."""

    time_field = "created_at"

    def older_than(self, moment: datetime.datetime) -> _PrunableQuerySet:
        return self.filter(**{f"{self.time_field}__lt": moment})

    def prune(self, days: float, *, now: datetime.datetime | None = None) -> int:
        """Delete the rows older than ``days`` days, in chunks; return how many went."""
        cutoff = (now or timezone.now()) - datetime.timedelta(days=days)
        return delete_in_chunks(self.older_than(cutoff))


class InboxQuerySet(_PrunableQuerySet):
    time_field = "handled_at"


class InboxEntry(models.Model):
    """An event from elsewhere that a consumer group has handled (once)."""

    id = models.BigAutoField(_("id"), primary_key=True)
    consumer_group = models.CharField(_("consumer group"), max_length=255)
    event_id = models.UUIDField(_("event id"))
    event_type = models.CharField(_("event type"), max_length=64)
    topic = models.CharField(_("topic"), max_length=255)
    partition = models.IntegerField(_("partition"))
    offset = models.BigIntegerField(_("offset"))
    handled_at = MillisecondDateTimeField(_("handled at"), auto_now_add=True)

    objects = InboxQuerySet.as_manager()

    class Meta:
        db_table = "django_outbox_inbox"
        verbose_name = _("inbox entry")
        verbose_name_plural = _("inbox entries")
        constraints = [
            # The once-only guarantee: a second insert of the same event fails.
            models.UniqueConstraint(
                fields=["consumer_group", "event_id"], name="outbox_inbox_group_event_uniq"
            )
        ]
        indexes = [
            models.Index(fields=["handled_at"], name="outbox_inbox_handled_idx"),
            # An event's outcome in every group (the admin's time line of a row).
            models.Index(fields=["event_id"], name="outbox_inbox_event_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.event_type} {self.event_id} ({self.consumer_group})"


class RejectionReason(models.TextChoices):
    MALFORMED = "malformed", _("malformed record")
    MISSING_HEADERS = "missing_headers", _("missing headers")
    UNKNOWN_EVENT_TYPE = "unknown_event_type", _("unknown event type")
    HANDLER_FAILED = "handler_failed", _("handler failed")


class Encoding(models.TextChoices):
    UTF8 = "utf-8", _("UTF-8 text")
    BASE64 = "base64", _("base64 of raw bytes")


#: Bytes of a rejected record's key or value kept at most; beyond, the start is kept
#: and the error says so. Kafka's default record limit is 1 MB; this leaves room
#: for base64 within MariaDB's default ``max_allowed_packet`` (16 MB).
MAX_STORED_BYTES = 4 * 1024 * 1024


def _is_clean_text(value: bytes) -> bool:
    """True when every database can hold ``value`` as text: UTF-8 without NUL.

    PostgreSQL refuses NUL in text and JSON (psycopg 3 raises ``DataError``,
    psycopg2 ``ValueError``); anything else valid UTF-8 stores everywhere.
    """
    if b"\x00" in value:
        return False
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def encode_bytes(*values: bytes | None, binary: bool = False) -> tuple[list[str | None], str]:
    """Text for each value, and how it is encoded: UTF-8 if all are clean text, else base64.

    ``binary``: base64 whatever the values.
    """
    if not binary and all(v is None or _is_clean_text(v) for v in values):
        return [None if v is None else v.decode("utf-8") for v in values], Encoding.UTF8
    return [
        None if v is None else base64.b64encode(v).decode("ascii") for v in values
    ], Encoding.BASE64


def storable_text(text: str) -> str:
    """``text`` that every database can hold: NUL and lone surrogates escaped."""
    if "\x00" in text:
        text = text.replace("\x00", "\\x00")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def encode_headers(
    headers: Sequence[tuple[str, bytes | None]], *, binary: bool = False
) -> list[dict[str, str | None]]:
    """Kafka headers as JSON that every database can store.

    ``{"name", "value"}`` for text; ``"base64"`` instead of ``"value"`` for a value
    that is not clean text (binary, NUL); ``"name_base64"`` instead of ``"name"``
    for a name that is not (NUL, lone surrogates). ``binary``: base64 for all.
    """
    encoded: list[dict[str, str | None]] = []
    for name, value in headers:
        raw_name = name.encode("utf-8", "surrogatepass") if isinstance(name, str) else bytes(name)
        item: dict[str, str | None]
        if not binary and _is_clean_text(raw_name):
            item = {"name": raw_name.decode("utf-8")}
        else:
            item = {"name_base64": base64.b64encode(raw_name).decode("ascii")}
        if value is None:
            item["value"] = None
        elif not binary and _is_clean_text(value):
            item["value"] = value.decode("utf-8")
        else:
            item["base64"] = base64.b64encode(value).decode("ascii")
        encoded.append(item)
    return encoded


def decode_headers(encoded: Sequence[Any]) -> list[tuple[str, bytes | None]]:
    """The Kafka headers ``encode_headers`` stored, as the record carried them."""
    headers: list[tuple[str, bytes | None]] = []
    for item in encoded:
        if isinstance(item, (list, tuple)):  # ``[name, value]``, as tests and hand-made rows write
            name, text = (str(item[0]), item[1]) if len(item) == 2 else ("", None)
            headers.append((name, None if text is None else str(text).encode("utf-8")))
            continue
        if item.get("name_base64") is not None:
            name = base64.b64decode(item["name_base64"] or "").decode("utf-8", "surrogateescape")
        else:
            name = item.get("name") or ""
        if item.get("base64") is not None:
            value: bytes | None = base64.b64decode(item["base64"] or "")
        else:
            text = item.get("value")
            value = None if text is None else text.encode("utf-8")
        headers.append((name, value))
    return headers


class RejectedQuerySet(_PrunableQuerySet):
    time_field = "created_at"


class ReplayOutcome(models.TextChoices):
    SENT = "sent", _("sent to its topic again")
    HANDLED = "handled", _("handled")
    DUPLICATE = "duplicate", _("handled before (duplicate)")
    FAILED = "failed", _("failed again")


class RejectedRecord(models.Model):
    """A Kafka record a consumer group could not handle, kept for an operator."""

    id = models.BigAutoField(_("id"), primary_key=True)
    consumer_group = models.CharField(_("consumer group"), max_length=255)
    reason = models.CharField(_("reason"), max_length=32, choices=RejectionReason.choices)
    error = models.TextField(_("error"), blank=True, default="")
    topic = models.CharField(_("topic"), max_length=255)
    partition = models.IntegerField(_("partition"))
    offset = models.BigIntegerField(_("offset"))
    key = models.TextField(_("key"), null=True, blank=True)
    value = models.TextField(_("value"), null=True, blank=True)
    encoding = models.CharField(
        _("encoding of key and value"),
        max_length=8,
        choices=Encoding.choices,
        default=Encoding.UTF8,
    )
    headers = models.JSONField(_("headers"), default=list, blank=True)
    event_id = models.UUIDField(_("event id"), null=True, blank=True)
    event_type = models.CharField(_("event type"), max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(_("attempts"), default=1)
    created_at = MillisecondDateTimeField(_("created at"), auto_now_add=True)
    updated_at = MillisecondDateTimeField(_("updated at"), auto_now=True)
    # Set by an operator's replay (consumer/replay.py); the last replay only.
    replayed_at = MillisecondDateTimeField(_("replayed at"), null=True, blank=True)
    replay_outcome = models.CharField(
        _("replay outcome"), max_length=16, choices=ReplayOutcome.choices, blank=True, default=""
    )
    replay_note = models.TextField(_("replay note"), blank=True, default="")

    objects = RejectedQuerySet.as_manager()

    class Meta:
        db_table = "django_outbox_rejected_record"
        verbose_name = _("rejected record")
        verbose_name_plural = _("rejected records")
        permissions = [("replay_rejectedrecord", _("Can replay rejected records"))]
        constraints = [
            # A record delivered again updates its entry instead of adding one.
            models.UniqueConstraint(
                fields=["consumer_group", "topic", "partition", "offset"],
                name="outbox_rejected_record_uniq",
            )
        ]
        indexes = [
            models.Index(fields=["created_at"], name="outbox_rejected_created_idx"),
            models.Index(fields=["event_id"], name="outbox_rejected_event_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}: {self.reason}"

    @property
    def raw_value(self) -> bytes | None:
        """The record's value as the bytes Kafka held."""
        if self.value is None:
            return None
        if self.encoding == Encoding.BASE64:
            return base64.b64decode(self.value)
        return self.value.encode("utf-8")

    @property
    def raw_key(self) -> bytes | None:
        if self.key is None:
            return None
        if self.encoding == Encoding.BASE64:
            return base64.b64decode(self.key)
        return self.key.encode("utf-8")
