"""Which rows a replay sends again: a window on ``created_at``, types, keys, ids, statuses.

The same filters select rows of the table (``queryset``) and rows of an archive
(``matches``), and are kept in the run's record (``as_dict``/``from_dict``) so that
``--resume`` selects exactly what the run selected.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import models
from django.utils.dateparse import parse_datetime

from django_outbox.models import OutboxMessage, Status

#: What a replay sends by default: what Kafka had (published) or handled (consumed).
DEFAULT_STATUSES = (Status.PUBLISHED.value, Status.CONSUMED.value)
#: What a replay may send: never a pending row (the relay sends it).
REPLAYABLE_STATUSES = (Status.PUBLISHED.value, Status.CONSUMED.value, Status.DEAD.value)


def _time(value: datetime.datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _parse_time(value: str | None) -> datetime.datetime | None:
    return None if value is None else parse_datetime(value)


@dataclass(frozen=True)
class Selection:
    """The filters of one replay; every one given must match (empty: any)."""

    since: datetime.datetime | None = None
    until: datetime.datetime | None = None
    event_types: Sequence[str] = ()
    keys: Sequence[str] = ()
    ids: Sequence[int] = ()
    statuses: Sequence[str] = field(default=DEFAULT_STATUSES)

    def __post_init__(self) -> None:
        wrong = sorted(set(self.statuses) - set(REPLAYABLE_STATUSES))
        if wrong:
            raise ValueError(
                f"status(es) {wrong} cannot be replayed; choose among "
                f"{', '.join(REPLAYABLE_STATUSES)} (a pending row is the relay's)"
            )
        if self.since and self.until and self.since >= self.until:
            raise ValueError(f"--since ({self.since}) must be before --until ({self.until})")

    def queryset(self, alias: str) -> models.QuerySet[OutboxMessage]:
        rows = OutboxMessage.objects.using(alias).filter(status__in=list(self.statuses))
        if self.since is not None:
            rows = rows.filter(created_at__gte=self.since)
        if self.until is not None:
            rows = rows.filter(created_at__lt=self.until)
        if self.event_types:
            rows = rows.filter(event_type__in=list(self.event_types))
        if self.keys:
            rows = rows.filter(message_key__in=list(self.keys))
        if self.ids:
            rows = rows.filter(pk__in=list(self.ids))
        return rows

    def matches(self, row: Any) -> bool:
        """The same test on an archived row (``archive.ArchivedRow``)."""
        created = row.created_at
        return (
            row.status in self.statuses
            and (self.since is None or (created is not None and created >= self.since))
            and (self.until is None or (created is not None and created < self.until))
            and (not self.event_types or row.event_type in self.event_types)
            and (not self.keys or row.message_key in self.keys)
            and (not self.ids or row.id in self.ids)
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": _time(self.since),
            "until": _time(self.until),
            "event_types": list(self.event_types),
            "keys": list(self.keys),
            "ids": list(self.ids),
            "statuses": list(self.statuses),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selection:
        return cls(
            since=_parse_time(data.get("since")),
            until=_parse_time(data.get("until")),
            event_types=tuple(data.get("event_types") or ()),
            keys=tuple(data.get("keys") or ()),
            ids=tuple(data.get("ids") or ()),
            statuses=tuple(data.get("statuses") or DEFAULT_STATUSES),
        )
