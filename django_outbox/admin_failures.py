"""Failures grouped by error, for the admin: which errors, how many rows, a filter per group.

Only failed rows are grouped: ``dead`` ones and pending ones backing off after a
failure (both read through the ``(status, next_retry_at, biz_type)`` index), the
newest ``GROUPED_ROWS`` of them. A group is the error's type and first line: the
first line of ``last_error``, or for a handler's traceback (the consumer stores
the whole traceback) its last line, ``Type: message``. Only the first and last
``EDGE_CHARS`` characters of each error are read.
"""

from __future__ import annotations

import datetime
from collections import Counter
from dataclasses import dataclass
from typing import Any, cast

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.db.models.functions import Left, Right
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from .models import OutboxMessageQuerySet, Status

#: Failed rows grouped at most (the newest); the page says when there are more.
GROUPED_ROWS = 10_000
#: Failed rows the list's error filter groups for its choices (it is drawn on every list view
#: of failed rows, the failures page only when asked for).
FILTER_ROWS = 2_000
#: Characters of a group's text at most.
GROUP_CHARS = 200
#: Characters read from each end of an error.
EDGE_CHARS = 400
TRACEBACK = "Traceback (most recent call last):"
NO_ERROR = "-"


def error_group(head: str | None, tail: str | None = None) -> str:
    """The group of an error: its first line, or a traceback's last line, clipped."""
    head = (head or "").strip()
    if not head:
        return NO_ERROR
    if head.startswith(TRACEBACK):
        lines = (tail if tail is not None else head).strip().splitlines()
        line = lines[-1].strip() if lines else TRACEBACK
    else:
        line = head.splitlines()[0].strip()
    return line[:GROUP_CHARS]


def failed_rows(queryset: OutboxMessageQuerySet, now: datetime.datetime) -> OutboxMessageQuerySet:
    """Dead rows and pending rows backing off after a failure."""
    return queryset.dead() | queryset.backing_off(now)


def in_group(queryset: QuerySet, group: str) -> QuerySet:
    """The rows of ``queryset`` whose error falls in ``group`` (see ``error_group``)."""
    if group == NO_ERROR:
        return queryset.filter(Q(last_error__isnull=True) | Q(last_error=""))
    first_line = Q(last_error=group) | Q(last_error__startswith=group + "\n")
    last_line = Q(last_error__startswith=TRACEBACK) & Q(last_error__endswith="\n" + group)
    if len(group) >= GROUP_CHARS:  # clipped: the line goes on
        first_line = Q(last_error__startswith=group)
        last_line = Q(last_error__startswith=TRACEBACK) & Q(last_error__contains="\n" + group)
    # Stored errors are stripped of outer blanks; the condition still checks them again.
    return queryset.filter(first_line | last_line)


@dataclass
class FailureGroup:
    error: str
    dead: int = 0
    backing_off: int = 0

    @property
    def count(self) -> int:
        return self.dead + self.backing_off


@dataclass
class Grouping:
    groups: list[FailureGroup]
    rows: int
    complete: bool


def group_failures(
    queryset: OutboxMessageQuerySet,
    now: datetime.datetime | None = None,
    limit: int = GROUPED_ROWS,
) -> Grouping:
    """The newest ``limit`` failed rows of ``queryset`` by error group, largest group first."""
    now = now or timezone.now()
    rows = (
        failed_rows(queryset, now)
        .order_by("-pk")
        .annotate(head=Left("last_error", EDGE_CHARS), tail=Right("last_error", EDGE_CHARS))
        .values_list("status", "head", "tail")[: limit + 1]
    )
    fetched = list(rows)
    complete = len(fetched) <= limit
    counts: Counter[tuple[str, bool]] = Counter()
    for status, head, tail in fetched[:limit]:
        counts[(error_group(head, tail), status == Status.DEAD)] += 1
    groups: dict[str, FailureGroup] = {}
    for (error, dead), count in counts.items():
        group = groups.setdefault(error, FailureGroup(error))
        if dead:
            group.dead += count
        else:
            group.backing_off += count
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.error))
    return Grouping(ordered, min(len(fetched), limit), complete)


class FailureFilter(admin.SimpleListFilter):
    """Failed rows (dead, or backing off) of one error group.

    Its choices are the groups, listed only while the list shows failed rows
    (``state=dead`` or ``state=backing_off``) or one group already, from the newest
    ``FILTER_ROWS`` failed rows; the plain list page does not pay for it.
    """

    title = _("error")
    parameter_name = "failure"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        state = request.GET.get("state")
        chosen = self.value()
        if state not in ("dead", "backing_off") and chosen is None:
            return []
        grouping = group_failures(model_admin.get_queryset(request), limit=FILTER_ROWS)
        choices = [(g.error, f"{g.error} ({g.count})") for g in grouping.groups[:20]]
        if chosen is not None and chosen not in {value for value, _label in choices}:
            choices.append((str(chosen), str(chosen)))
        return choices

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() is None:
            return None
        failed = failed_rows(cast(OutboxMessageQuerySet, queryset), timezone.now())
        return in_group(failed, str(self.value()))
