"""What every screen of the outbox rows shares: the rows read from ``OUTBOX_DATABASE``,
never added, edited or deleted by hand; the links between the screens; and what both the
list and a row's page show of a row (its handler here, its next attempt)."""

from __future__ import annotations

import datetime
from typing import Any, cast

from django.contrib import admin
from django.http import HttpRequest
from django.urls import reverse

from django_outbox.conf import outbox_settings
from django_outbox.models import FINAL_STATUSES, OutboxMessage, OutboxMessageQuerySet
from django_outbox.registry import registry


def has_handler(event_type: str) -> bool:
    """True when this project registered a handler for ``event_type``."""
    return event_type in registry


def next_attempt_at(obj: OutboxMessage) -> datetime.datetime | None:
    # A final row has no next attempt, whatever the column still holds.
    return None if obj.status in FINAL_STATUSES else obj.next_retry_at


class OutboxRowsAdmin(admin.ModelAdmin):
    """The outbox rows, read-only: operators change them through actions only."""

    def get_queryset(self, request: HttpRequest) -> OutboxMessageQuerySet:
        queryset = super().get_queryset(request).using(outbox_settings.database)
        return cast(OutboxMessageQuerySet, queryset)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # "change" lets a user run actions from the list; no one edits a row's fields.
        if obj is not None:
            return False
        return super().has_change_permission(request)

    def _url(self, name: str) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}"
        )
