"""The results of Django tasks run through the outbox (``django_outbox.tasks``), read-only."""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.inbox import ReadOnlyAdmin
from django_outbox.conf import outbox_settings
from django_outbox.models.task_results import TaskRecord


def _pretty(value: Any) -> SafeString:
    return format_html(
        '<pre class="outbox-pre">{}</pre>', json.dumps(value, indent=2, ensure_ascii=False)
    )


@admin.register(TaskRecord)
class TaskRecordAdmin(ReadOnlyAdmin):
    """One row per task enqueued through ``OutboxBackend``: its status and outcome."""

    list_display = ("id", "task_path", "status", "enqueued_at", "finished_at")
    list_filter = ("status",)
    search_fields = ("=id", "=task_path")
    ordering = ("-enqueued_at",)
    readonly_fields = (
        "id",
        "task_path",
        "event_type",
        "backend",
        "status",
        "outbox_row",
        "run_after",
        "enqueued_at",
        "started_at",
        "finished_at",
        "workers",
        "arguments",
        "returned",
        "errors_text",
    )
    fields = readonly_fields

    class Media:
        css = {"all": ("django_outbox/admin.css",)}

    def get_queryset(self, request: Any) -> Any:
        return super().get_queryset(request).using(outbox_settings.database)

    @admin.display(description=_("outbox row"))
    def outbox_row(self, obj: TaskRecord) -> SafeString | str:
        if obj.outbox_id is None:
            return "-"
        url = reverse("admin:django_outbox_outboxmessage_change", args=[obj.outbox_id])
        return format_html('<a href="{}">#{}</a>', url, obj.outbox_id)

    @admin.display(description=_("workers"))
    def workers(self, obj: TaskRecord) -> str:
        return ", ".join(obj.worker_ids) or "-"

    @admin.display(description=_("arguments"))
    def arguments(self, obj: TaskRecord) -> SafeString:
        return _pretty({"args": obj.args, "kwargs": obj.kwargs})

    @admin.display(description=_("return value"))
    def returned(self, obj: TaskRecord) -> SafeString | str:
        return _pretty(obj.return_value) if obj.status == "SUCCESSFUL" else "-"

    @admin.display(description=_("errors"))
    def errors_text(self, obj: TaskRecord) -> SafeString | str:
        if not obj.errors:
            return "-"
        return format_html_join(
            "",
            '<p>{}</p><pre class="outbox-pre">{}</pre>',
            ((e.get("exception_class_path", ""), e.get("traceback", "")) for e in obj.errors),
        )
