"""Read-only admin pages of the consumer's own tables: where operators find what it skipped."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from .inbox import InboxEntry, RejectedRecord


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the consumer: viewed, never added or edited (pruned by the command)."""

    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RejectedRecord)
class RejectedRecordAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "reason",
        "topic",
        "partition",
        "offset",
        "event_type",
        "event_id",
        "attempts",
        "created_at",
    )
    list_filter = ("reason", "consumer_group", "topic")
    search_fields = ("=event_id", "=event_type")
    ordering = ("-id",)
    readonly_fields = ("value_text", "headers_text")
    exclude = ("value", "headers")

    @admin.display(description=_("value"))
    def value_text(self, obj: RejectedRecord) -> SafeString:
        value = obj.value or ""
        try:
            value = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        return format_html("<pre>{}</pre>", value)

    @admin.display(description=_("headers"))
    def headers_text(self, obj: RejectedRecord) -> SafeString:
        return format_html("<pre>{}</pre>", json.dumps(obj.headers, indent=2, ensure_ascii=False))


@admin.register(InboxEntry)
class InboxEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "event_type", "event_id", "consumer_group", "topic", "handled_at")
    list_filter = ("consumer_group", "event_type")
    search_fields = ("=event_id",)
    ordering = ("-id",)
