"""List filters of the outbox admin; none of them reads the whole table to draw itself."""

from __future__ import annotations

from typing import Any, cast

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.counts import SUMMARY_STATES, state_queryset
from django_outbox.conf import outbox_settings
from django_outbox.models import OutboxMessageQuerySet, Status
from django_outbox.models.ordering import blocked
from django_outbox.registry import registry

#: How many of the newest rows the event type and topic filters look at for choices.
RECENT_ROWS = 10_000


class StateFilter(admin.SimpleListFilter):
    """The states operators think in; ``pending`` splits into ready, scheduled, backing off,
    in flight."""

    title = _("state")
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [(state, label) for state, label, _css in SUMMARY_STATES]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        value = self.value()
        if value not in {state for state, _label, _css in SUMMARY_STATES}:
            return None
        return state_queryset(cast(OutboxMessageQuerySet, queryset), str(value), timezone.now())


def _recent_values(queryset: QuerySet, field_name: str) -> set[str]:
    # SELECT DISTINCT over a million rows is a full scan; the newest RECENT_ROWS
    # (a range of the primary key) hold every type and topic that is still in use.
    boundary = queryset.order_by("-pk").values_list("pk", flat=True)[RECENT_ROWS - 1 : RECENT_ROWS]
    recent = queryset.order_by()
    first = next(iter(boundary), None)
    if first is not None:
        recent = recent.filter(pk__gte=first)
    return set(recent.values_list(field_name, flat=True).distinct())


class _ValueFilter(admin.SimpleListFilter):
    field_name = ""

    def configured(self) -> set[str]:
        raise NotImplementedError

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        recent = _recent_values(model_admin.get_queryset(request), self.field_name)
        values = self.configured() | recent
        if self.value():
            values.add(str(self.value()))  # keep a chosen value visible once its rows are old
        return [(value, value) for value in sorted(values)]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() is None:
            return None
        return queryset.filter(**{self.field_name: self.value()})


class EventTypeFilter(_ValueFilter):
    """Event types with a handler or in the newest rows."""

    title = _("event type")
    parameter_name = "event_type"
    field_name = "event_type"

    def configured(self) -> set[str]:
        return set(registry) | set(outbox_settings.topics)


class TopicFilter(_ValueFilter):
    """Configured topics and those of the newest rows."""

    title = _("topic")
    parameter_name = "topic"
    field_name = "topic"

    def configured(self) -> set[str]:
        topics = set(outbox_settings.topics.values())
        if outbox_settings.default_topic:
            topics.add(outbox_settings.default_topic)
        return topics


class HeldFilter(admin.SimpleListFilter):
    """Strict order (``OUTBOX_STRICT_ORDER``): pending rows waiting behind an earlier open row."""

    title = _("key order")
    parameter_name = "held"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        if outbox_settings.strict_order is False:
            return []
        return [("yes", _("held behind an earlier row of its key"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet | None:
        if self.value() != "yes":
            return None
        return blocked(queryset.filter(status=Status.PENDING), queryset.db)
