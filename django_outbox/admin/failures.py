"""Failures grouped by error, for the admin: which errors, how many rows, a filter per group.

Only failed rows are grouped: ``dead`` ones and pending ones backing off after a
failure (their ids read from the ``(status, next_retry_at, biz_type)`` index, their
errors then by primary key), the newest ``GROUPED_ROWS`` of them. A group is the
error's type and first line: the first line of ``last_error``, or for a handler's
traceback (the consumer stores the whole traceback) its last line, ``Type:
message``. Only the first and last ``EDGE_CHARS`` characters of each error are read.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Left, Right
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_outbox.models import OutboxMessageQuerySet, Status

#: Failed rows grouped at most (the newest); the page says when there are more. Each costs
#: one read of its row by primary key (a random page of the table).
GROUPED_ROWS = 5_000
#: Failed rows the list's error filter groups for its choices (it is drawn on every list view
#: of failed rows, the failures page only when asked for).
FILTER_ROWS = 1_000
#: Ids of each kind of failed row read from the index at most, to find the newest.
ID_CAP = 100_000
#: Characters of a group's text at most.
GROUP_CHARS = 200
#: Rows whose errors one query reads.
FETCH_CHUNK = 500
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


@dataclass
class FailureGroup:
    error: str
    dead: int = 0
    backing_off: int = 0
    #: The rows of the group, newest first.
    ids: list[int] = field(default_factory=list, repr=False)

    @property
    def count(self) -> int:
        return self.dead + self.backing_off


@dataclass
class Grouping:
    groups: list[FailureGroup]
    rows: int
    complete: bool

    def ids_of(self, error: str) -> list[int]:
        """The rows of the group ``error`` (none when no such group)."""
        return next((group.ids for group in self.groups if group.error == error), [])


def group_failures(
    queryset: OutboxMessageQuerySet,
    now: datetime.datetime | None = None,
    limit: int = GROUPED_ROWS,
) -> Grouping:
    """The newest ``limit`` failed rows of ``queryset`` by error group, largest group first.

    The list's filter and "retry all in this group" take their rows from here too, so
    they always match the counts shown.
    """
    now = now or timezone.now()
    # The ids of each kind from the index alone (it holds the primary key), then the
    # errors of the newest rows by primary key: an ``ORDER BY id`` over both kinds at
    # once walks the table backwards on MariaDB, reading the consumed rows too.
    ids: set[int] = set()
    for kind in (queryset.dead(), queryset.backing_off(now)):
        # Unordered: a range of the index; sorted here (an ORDER BY sorts the same ids).
        ids.update(kind.order_by().values_list("pk", flat=True)[:ID_CAP])
    newest = sorted(ids, reverse=True)
    complete = len(newest) <= limit
    chosen = newest[:limit]
    groups: dict[str, FailureGroup] = {}
    for start in range(0, len(chosen), FETCH_CHUNK):
        rows = (
            queryset.filter(pk__in=chosen[start : start + FETCH_CHUNK])
            .order_by("-pk")
            .annotate(head=Left("last_error", EDGE_CHARS), tail=Right("last_error", EDGE_CHARS))
            .values_list("pk", "status", "head", "tail")
        )
        for pk, status, head, tail in rows:
            error = error_group(head, tail)
            group = groups.setdefault(error, FailureGroup(error))
            if status == Status.DEAD:
                group.dead += 1
            else:
                group.backing_off += 1
            group.ids.append(pk)
    ordered = sorted(groups.values(), key=lambda g: (-g.count, g.error))
    return Grouping(ordered, len(chosen), complete)


class FailureFilter(admin.SimpleListFilter):
    """Failed rows (dead, or backing off) of one error group.

    Its choices are the groups, listed only while the list shows failed rows
    (``state=dead`` or ``state=backing_off``) or one group already, from the newest
    ``FILTER_ROWS`` failed rows; the plain list page does not pay for it.
    """

    title = _("error")
    parameter_name = "failure"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        self._rows: OutboxMessageQuerySet = model_admin.get_queryset(request)
        self._groupings: dict[int, Grouping] = {}
        state = request.GET.get("state")
        chosen = self.value()
        if state not in ("dead", "backing_off") and chosen is None:
            return []
        grouping = self._grouping(GROUPED_ROWS if chosen is not None else FILTER_ROWS)
        choices = [(g.error, f"{g.error} ({g.count})") for g in grouping.groups[:20]]
        if chosen is not None and chosen not in {value for value, _label in choices}:
            choices.append((str(chosen), str(chosen)))
        return choices

    def _grouping(self, limit: int) -> Grouping:
        # Once per request: the choices and the rows of a chosen group share it.
        if limit not in self._groupings:
            self._groupings[limit] = group_failures(self._rows, limit=limit)
        return self._groupings[limit]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() is None:
            return None
        return queryset.filter(pk__in=self._grouping(GROUPED_ROWS).ids_of(str(self.value())))
