"""The runs of ``manage.py outbox_replay``: who sent what again, when, how far; read-only."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.inbox import ReadOnlyAdmin
from django_outbox.conf import outbox_settings
from django_outbox.models.replay_runs import ReplayRun


@admin.register(ReplayRun)
class ReplayRunAdmin(ReadOnlyAdmin):
    """One row per replay run; an interrupted one is resumed from the command line."""

    list_display = (
        "id",
        "started_at",
        "operator",
        "group",
        "source",
        "state",
        "sent",
        "matched",
        "finished_at",
    )
    list_filter = ("state",)
    search_fields = ("=id", "=operator", "=target_group")
    ordering = ("-id",)
    show_full_result_count = False
    readonly_fields = (
        "id",
        "token",
        "operator",
        "group",
        "source",
        "pretty_filters",
        "state",
        "matched",
        "sent",
        "last_id",
        "error",
        "started_at",
        "updated_at",
        "finished_at",
    )
    fields = readonly_fields

    class Media:
        css = {"all": ("django_outbox/admin.css",)}

    def get_queryset(self, request: Any) -> Any:
        return super().get_queryset(request).using(outbox_settings.database)

    @admin.display(description=_("consumer group"), ordering="target_group")
    def group(self, obj: ReplayRun) -> str:
        return obj.group_label

    @admin.display(description=_("filters"))
    def pretty_filters(self, obj: ReplayRun) -> SafeString:
        return format_html(
            '<pre class="outbox-pre">{}</pre>',
            json.dumps(obj.filters, indent=2, ensure_ascii=False),
        )
