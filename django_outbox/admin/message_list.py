"""The outbox list: its columns, its search and the summary above it (the filters are in
``filters`` and ``failures``)."""

from __future__ import annotations

import datetime
import uuid
from typing import Any

from django.contrib import admin
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.counts import summary
from django_outbox.admin.display import breakable, short_time
from django_outbox.admin.rows import OutboxRowsAdmin, has_handler, next_attempt_at
from django_outbox.models import OutboxMessage, Status

#: A search materialises at most this many matching ids, so that the list and its
#: count become primary-key lookups instead of repeating the search's table scan.
SEARCH_IDS = 1_000

STATE_LABELS = {
    "ready": _("ready"),
    "scheduled": _("scheduled"),
    "backing_off": _("backing off"),
    "in_flight": _("in flight"),
}


def pending_state(message: OutboxMessage, now: datetime.datetime) -> str | None:
    """Which of ready / scheduled / backing_off / in_flight a pending row is in (None if
    not pending).

    The same rule as ``OutboxMessageQuerySet.due()/in_flight()/scheduled()/backing_off()``:
    a relay's lease ends on a whole second, a backoff or a scheduled time never does; a
    scheduled row was never tried and has no error.
    """
    if message.status != Status.PENDING:
        return None
    moment = message.next_retry_at
    if moment is None or moment <= now:
        return "ready"
    if moment.microsecond == 0:
        return "in_flight"
    if message.retry_count == 0 and message.last_error is None:
        return "scheduled"
    return "backing_off"


class MessageList(OutboxRowsAdmin):
    """The list's columns (``list_display``), its search and the summary above it."""

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: OutboxMessage) -> SafeString:
        state = pending_state(obj, timezone.now())
        known = obj.status in Status.values
        css = state.replace("_", "-") if state else (obj.status if known else "unknown")
        label = obj.get_status_display() if known else obj.status
        title = label
        if state:
            # The state says "pending" already; the tooltip has both.
            title = f"{label} · {STATE_LABELS[state]}"
            label = str(STATE_LABELS[state])
        badge = format_html(
            '<span class="outbox-badge outbox-{}" title="{}">{}</span>', css, title, label
        )
        if obj.status != Status.CONSUMED and not has_handler(obj.event_type):
            badge = format_html(
                '{} <span class="outbox-badge outbox-no-handler" title="{}">{}</span>',
                badge,
                _("No handler is registered for this event type in this project."),
                _("no handler"),
            )
        return badge

    @admin.display(description=_("event type"))
    def type(self, obj: OutboxMessage) -> SafeString:
        return breakable(obj.event_type)

    @admin.display(description=_("topic"))
    def topic_text(self, obj: OutboxMessage) -> SafeString:
        return breakable(obj.topic)

    @admin.display(description=_("key"))
    def key(self, obj: OutboxMessage) -> SafeString:
        return format_html('<span class="outbox-key" title="{0}">{0}</span>', obj.message_key)

    @admin.display(description=_("retries"))
    def retries(self, obj: OutboxMessage) -> str:
        return f"{obj.retry_count} / {obj.max_retry}"

    @admin.display(description=_("next retry"))
    def next_retry(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(next_attempt_at(obj))

    @admin.display(description=_("created"))
    def created(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(obj.created_at)

    @admin.display(description=_("published"))
    def published(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(obj.published_at)

    @admin.display(description=_("consumed"))
    def consumed(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(obj.consumed_at)

    # -- search -----------------------------------------------------------------

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        """Exact key or event type, ``#id``, or an event id.

        A UUID is first looked up as a message key (the default key is the event
        id); only when no key matches are the payloads searched with ``LIKE``,
        which reads every payload of the table.
        """
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.startswith("#") and term[1:].isdigit():
            return queryset.filter(pk=int(term[1:])), False
        try:
            event_id = str(uuid.UUID(term))
        except ValueError:
            condition = Q(message_key=term) | Q(event_type=term)
            if term.isdigit():
                condition |= Q(pk=int(term))
            return self._matching(queryset, condition), False
        found = self._matching(queryset, Q(message_key__in={term, event_id}))
        if found.exists():
            return found, False
        return self._matching(queryset, Q(payload__contains=event_id)), False

    def _matching(self, queryset: QuerySet, condition: Q) -> QuerySet:
        # One scan for the ids; the page and its count then read them by primary key.
        matches = queryset.filter(condition).order_by("-pk").values_list("pk", flat=True)
        ids = list(matches[: SEARCH_IDS + 1])
        if len(ids) > SEARCH_IDS:
            return queryset.filter(condition)
        return queryset.filter(pk__in=ids)

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            "title": capfirst(self.opts.verbose_name_plural),
            **(extra_context or {}),
        }
        if self.has_view_or_change_permission(request):
            extra_context["outbox_summary"] = summary(self.get_queryset(request))
            extra_context["outbox_list_url"] = self._url("changelist")
            extra_context["outbox_failures_url"] = self._url("failures")
        return super().changelist_view(request, extra_context)
