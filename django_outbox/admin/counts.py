"""Counting rows of a table that may hold millions of them, for the admin.

Nothing here reads the whole table: counts stop at ``COUNT_CAP`` (an index range
scan of at most that many entries), and the total of an unfiltered table comes
from the database's own row estimate (both in ``counting.py``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any, cast

from django.core.paginator import Paginator
from django.db.models import QuerySet
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.functional import cached_property
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from django_outbox.models import OutboxMessageQuerySet, Status, buckets
from django_outbox.models.counting import COUNT_CAP, capped_count, table_estimate
from django_outbox.ops.status import oldest_due


class OutboxPaginator(Paginator):
    """A paginator whose ``count`` never reads the whole table.

    A filtered list is counted up to ``COUNT_CAP + 1`` rows; an unfiltered one that
    is larger than that takes the database's estimate. ``count_is_exact`` and
    ``count_text`` tell the templates which of the two they show.
    """

    count_is_exact = True

    @cached_property
    def count(self) -> int:
        queryset = cast(QuerySet, self.object_list)
        counted = capped_count(queryset)
        if counted <= COUNT_CAP:
            return counted
        self.count_is_exact = False
        if not queryset.query.where:
            estimate = table_estimate(queryset.db)
            if estimate is not None:
                return max(estimate, counted)
        return counted

    @property
    def count_text(self) -> str:
        """The count as operators should read it: "42", "about 1,000,000", "more than 10,000"."""
        count = self.count
        if self.count_is_exact:
            return number_format(count, force_grouping=True)
        if count > COUNT_CAP + 1:
            return _("about %(count)s") % {"count": number_format(count, force_grouping=True)}
        return _("more than %(count)s") % {"count": number_format(COUNT_CAP, force_grouping=True)}


@dataclass
class StateCount:
    """One box of the summary: a state, its (capped) count and its filter value."""

    label: str
    state: str
    count: int
    exact: bool
    css: str

    @property
    def text(self) -> str:
        if self.exact:
            return number_format(self.count, force_grouping=True)
        return number_format(COUNT_CAP, force_grouping=True) + "+"


@dataclass
class Summary:
    """What the list page shows above the rows."""

    counts: list[StateCount] = field(default_factory=list)
    oldest_due_since: datetime.datetime | None = None
    oldest_due_id: int | None = None
    total_estimate: int | None = None
    #: The live relays and the buckets of the key space each owns (``buckets``).
    relays: list[dict[str, Any]] = field(default_factory=list)

    @property
    def oldest_due_age(self) -> datetime.timedelta | None:
        if self.oldest_due_since is None:
            return None
        return max(timezone.now() - self.oldest_due_since, datetime.timedelta(0))


#: (filter value, label, css class) of the states the summary counts, in display order.
SUMMARY_STATES = (
    ("ready", gettext_lazy("ready"), "ready"),
    ("scheduled", gettext_lazy("scheduled"), "scheduled"),
    ("backing_off", gettext_lazy("backing off"), "backing-off"),
    ("in_flight", gettext_lazy("in flight"), "in-flight"),
    ("published", gettext_lazy("published"), "published"),
    ("dead", gettext_lazy("dead"), "dead"),
    ("consumed", gettext_lazy("consumed"), "consumed"),
)


def state_queryset(
    queryset: OutboxMessageQuerySet, state: str, now: datetime.datetime
) -> OutboxMessageQuerySet:
    """Narrow ``queryset`` to one operator state (the values of ``StateFilter``)."""
    if state == "ready":
        return queryset.due(now)
    if state == "scheduled":
        return queryset.scheduled(now)
    if state == "backing_off":
        return queryset.backing_off(now)
    if state == "in_flight":
        return queryset.in_flight(now)
    if state in (Status.PUBLISHED, Status.CONSUMED, Status.DEAD):
        return queryset.filter(status=state)
    raise ValueError(f"unknown state {state!r}")


def summary(queryset: OutboxMessageQuerySet, now: datetime.datetime | None = None) -> Summary:
    """Capped counts per state and the oldest due row, from index range scans only.

    Every count reads at most ``COUNT_CAP + 1`` entries of the index
    ``(status, next_retry_at, biz_type)``; the oldest due row is ``status.oldest_due``.
    """
    now = now or timezone.now()
    result = Summary(total_estimate=table_estimate(queryset.db))
    for state, label, css in SUMMARY_STATES:
        counted = capped_count(state_queryset(queryset, state, now))
        result.counts.append(
            StateCount(str(label), state, min(counted, COUNT_CAP), counted <= COUNT_CAP, css)
        )
    found = oldest_due(queryset, now)
    if found is not None:
        result.oldest_due_since, result.oldest_due_id = found
    result.relays = [r for r in buckets.assignment(queryset.db, now) if r["alive"]]
    return result
