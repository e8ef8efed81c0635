"""A row's page: its fields in pairs, the timeline, its journey (``journey``), the last
error, the failed attempts, the rejected copies of its event and the envelope."""

from __future__ import annotations

import json
import uuid
from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.display import detail_time, long_time
from django_outbox.admin.journey import journey
from django_outbox.admin.rows import OutboxRowsAdmin, has_handler, next_attempt_at
from django_outbox.conf import outbox_settings
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.attempts import FailedAttempt
from django_outbox.models.inbox import RejectedRecord

#: Failed attempts and rejected copies shown on a row's page at most.
HISTORY_ROWS = 50

# Pairs share a line on the page.
MAIN_FIELDS = (
    ("id", "status_badge"),
    ("event_type", "event_id"),
    ("topic", "message_key"),
    ("retries", "next_retry_text"),
    ("handler_text",),
)
TIME_FIELDS = (("created_text", "published_text"), ("consumed_text", "updated_text"))
#: Every field of the page; all read-only.
PAGE_FIELDS = [
    *(name for pair in MAIN_FIELDS + TIME_FIELDS for name in pair),
    "journey_text",
    "last_error_text",
    "attempts_table",
    "rejected_text",
    "envelope",
]


def event_id_of(obj: OutboxMessage) -> str | None:
    """The event id in a row's payload, as a UUID string (None when it has none)."""
    try:
        return str(uuid.UUID(str(json.loads(obj.payload)["event_id"])))
    except (TypeError, ValueError, KeyError, AttributeError):
        return None


def rejected_copies(obj: OutboxMessage) -> QuerySet[RejectedRecord]:
    """The rejected records of a row's event (by event id: indexed)."""
    event_id = event_id_of(obj)
    records = RejectedRecord.objects.using(outbox_settings.database)
    if event_id is None:
        return records.none()
    return records.filter(event_id=event_id).order_by("-id")


class MessagePage(OutboxRowsAdmin):
    """The fields of a row's page (the ``fieldsets`` of ``OutboxMessageAdmin``), read-only."""

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return list(PAGE_FIELDS)

    @admin.display(description=_("next retry at"))
    def next_retry_text(self, obj: OutboxMessage) -> SafeString | str:
        return detail_time(next_attempt_at(obj))

    @admin.display(description=_("created at"))
    def created_text(self, obj: OutboxMessage) -> SafeString | str:
        return detail_time(obj.created_at)

    @admin.display(description=_("published at"))
    def published_text(self, obj: OutboxMessage) -> SafeString | str:
        return detail_time(obj.published_at)

    @admin.display(description=_("consumed at"))
    def consumed_text(self, obj: OutboxMessage) -> SafeString | str:
        return detail_time(obj.consumed_at)

    @admin.display(description=_("updated at"))
    def updated_text(self, obj: OutboxMessage) -> SafeString | str:
        return detail_time(obj.updated_at)

    @admin.display(description=_("handler"))
    def handler_text(self, obj: OutboxMessage) -> SafeString | str:
        if has_handler(obj.event_type):
            return str(_("registered in this project"))
        if obj.status == Status.CONSUMED:
            return str(_("none registered in this project (another service consumed it)"))
        return format_html(
            '<span class="outbox-warning">{}</span>',
            _(
                "No handler is registered for this event type in this project: no consumer "
                "here will mark it consumed (OUTBOX_UNKNOWN_EVENT_POLICY decides what it does "
                "with the record). Register one, or prune published rows of this type "
                "(outbox_prune --published)."
            ),
        )

    @admin.display(description=_("event id"))
    def event_id(self, obj: OutboxMessage) -> str:
        try:
            document = json.loads(obj.payload)
            return str(document["event_id"])
        except (TypeError, ValueError, KeyError):
            return "-"

    @admin.display(description=_("journey"))
    def journey_text(self, obj: OutboxMessage) -> SafeString:
        found = journey(obj, site=self.admin_site.name)
        steps = [{**vars(step), "time_text": long_time(step.at)} for step in found.steps]
        return render_to_string(
            "admin/django_outbox/outboxmessage/journey.html",
            {"journey": {**vars(found), "steps": steps}},
        )

    @admin.display(description=_("last error"))
    def last_error_text(self, obj: OutboxMessage) -> SafeString | str:
        if not obj.last_error:
            return "-"
        return format_html('<pre class="outbox-pre">{}</pre>', obj.last_error)

    @admin.display(description=_("failed attempts"))
    def attempts_table(self, obj: OutboxMessage) -> SafeString | str:
        alias = obj._state.db or outbox_settings.database
        attempts = list(FailedAttempt.objects.using(alias).of(obj.pk)[:HISTORY_ROWS])
        if not attempts:
            return str(_("None recorded."))
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>"
            '<td><pre class="outbox-pre outbox-short">{}</pre></td></tr>',
            (
                (
                    a.attempt,
                    detail_time(a.failed_at),
                    a.get_source_display(),
                    a.worker,
                    gettext("yes") if a.dead else "",
                    a.error,
                )
                for a in attempts
            ),
        )
        return format_html(
            '<table class="outbox-attempts"><thead><tr><th>{}</th><th>{}</th><th>{}</th>'
            "<th>{}</th><th>{}</th><th>{}</th></tr></thead><tbody>{}</tbody></table>",
            _("#"),
            _("failed at"),
            _("source"),
            _("worker (host:pid)"),
            _("dead"),
            _("error"),
            rows,
        )

    @admin.display(description=_("rejected copies"))
    def rejected_text(self, obj: OutboxMessage) -> SafeString | str:
        records = list(rejected_copies(obj)[:HISTORY_ROWS])
        if not records:
            return str(_("None: no consumer group rejected a record of this event."))
        listing = reverse(f"{self.admin_site.name}:django_outbox_rejectedrecord_changelist")
        items = format_html_join(
            "",
            '<li><a href="{}">{}</a> — {} ({})</li>',
            (
                (
                    reverse(
                        f"{self.admin_site.name}:django_outbox_rejectedrecord_change",
                        args=[r.pk],
                    ),
                    str(r),
                    r.get_reason_display(),
                    r.consumer_group,
                )
                for r in records
            ),
        )
        return format_html(
            '<ul class="outbox-rejected">{}</ul><a href="{}?{}">{}</a>',
            items,
            listing,
            urlencode({"event_id": event_id_of(obj) or ""}),
            _("All rejected records of this event"),
        )

    @admin.display(description=_("envelope"))
    def envelope(self, obj: OutboxMessage) -> SafeString:
        try:
            text = json.dumps(json.loads(obj.payload), indent=2, ensure_ascii=False)
        except ValueError:
            return format_html(
                '<p class="errornote">{}</p><pre class="outbox-pre">{}</pre>',
                _("The payload is not valid JSON; shown as stored."),
                obj.payload,
            )
        return format_html('<pre class="outbox-pre">{}</pre>', text)
