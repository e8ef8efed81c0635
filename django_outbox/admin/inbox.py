"""Admin pages of the consumer's own tables: where operators find what it skipped, and replay it."""

from __future__ import annotations

import json
import uuid
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.display import long_time
from django_outbox.conf import outbox_settings
from django_outbox.envelope import HEADER_OUTBOX_DB, HEADER_OUTBOX_ID
from django_outbox.models import OutboxMessage
from django_outbox.models.inbox import InboxEntry, RejectedRecord, decode_headers


class ReadOnlyAdmin(admin.ModelAdmin):
    """Rows written by the consumer: viewed, never added or edited (pruned by the command)."""

    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def outbox_row_of(record: RejectedRecord) -> tuple[str, int] | None:
    """``(alias, id)`` of the outbox row a rejected record came from, if it is here."""
    headers = dict(decode_headers(record.headers or []))
    alias, pk = headers.get(HEADER_OUTBOX_DB), headers.get(HEADER_OUTBOX_ID)
    try:
        found = (alias.decode(), int(pk)) if alias is not None and pk is not None else None
    except (UnicodeDecodeError, ValueError):
        return None
    if found is None or found[0] != outbox_settings.database:
        return None  # the admin shows the outbox of OUTBOX_DATABASE only
    return found


@admin.register(RejectedRecord)
class RejectedRecordAdmin(ReadOnlyAdmin):
    """Rejected records, with two replays: to the topic, or through the handler here."""

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
        "replay_outcome",
    )
    list_filter = ("reason", "replay_outcome", "consumer_group", "topic")
    search_fields = ("=event_id", "=event_type")
    ordering = ("-id",)
    readonly_fields = (
        "outbox_row",
        "created_text",
        "updated_text",
        "replayed_at_text",
        "value_text",
        "headers_text",
    )
    exclude = ("value", "headers", "replayed_at")
    actions = ("rehandle", "resend")

    #: Permission codename (app label ``django_outbox``) the replays need.
    replay_permission = "replay_rejectedrecord"

    class Media:
        css = {"all": ("django_outbox/admin.css",)}

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{self.replay_permission}")

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet, search_term: str
    ) -> tuple[QuerySet, bool]:
        term = search_term.strip()
        try:
            return queryset.filter(event_id=uuid.UUID(term)), False
        except ValueError:
            return queryset.filter(event_type=term) if term else queryset, False

    def render_change_form(
        self, request: HttpRequest, context: dict[str, Any], *args: Any, **kwargs: Any
    ) -> HttpResponse:
        context["may_replay"] = self.has_replay_permission(request)
        return super().render_change_form(request, context, *args, **kwargs)

    @admin.display(description=_("outbox row"))
    def outbox_row(self, obj: RejectedRecord) -> SafeString | str:
        found = outbox_row_of(obj)
        if found is not None and OutboxMessage.objects.using(found[0]).filter(pk=found[1]).exists():
            url = reverse(
                f"{self.admin_site.name}:django_outbox_outboxmessage_change", args=[found[1]]
            )
            return format_html('<a href="{}">#{}</a>', url, found[1])
        if obj.event_id is None:
            return "-"
        listing = reverse(f"{self.admin_site.name}:django_outbox_outboxmessage_changelist")
        return format_html(
            '<a href="{}?{}">{}</a>',
            listing,
            urlencode({"q": str(obj.event_id)}),
            _("Search the outbox for this event id"),
        )

    @admin.display(description=_("created at"))
    def created_text(self, obj: RejectedRecord) -> str:
        return long_time(obj.created_at)

    @admin.display(description=_("updated at"))
    def updated_text(self, obj: RejectedRecord) -> str:
        return long_time(obj.updated_at)

    @admin.display(description=_("replayed at"))
    def replayed_at_text(self, obj: RejectedRecord) -> str:
        return long_time(obj.replayed_at)

    @admin.display(description=_("value"))
    def value_text(self, obj: RejectedRecord) -> SafeString:
        value = obj.value or ""
        try:
            value = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
        except ValueError:
            pass
        return format_html('<pre class="outbox-pre">{}</pre>', value)

    @admin.display(description=_("headers"))
    def headers_text(self, obj: RejectedRecord) -> SafeString:
        text = json.dumps(obj.headers, indent=2, ensure_ascii=False)
        return format_html('<pre class="outbox-pre">{}</pre>', text)

    # -- replays ----------------------------------------------------------------

    def _replayed(
        self, request: HttpRequest, records: list[RejectedRecord], done: int, failed: int
    ) -> None:
        for record in records:
            record.refresh_from_db(fields=["replay_outcome", "replay_note"])
        LogEntry.objects.log_actions(
            user_id=cast(int, request.user.pk),
            queryset=records,
            action_flag=CHANGE,
            change_message=gettext("Replayed (%(how)s).")
            % {"how": ", ".join(sorted({str(r.get_replay_outcome_display()) for r in records}))},
        )
        if done:
            self.message_user(
                request,
                ngettext(
                    "%(count)d rejected record was replayed.",
                    "%(count)d rejected records were replayed.",
                    done,
                )
                % {"count": done},
                messages.SUCCESS,
            )
        if failed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d rejected record failed again; its replay note says why.",
                    "%(count)d rejected records failed again; their replay notes say why.",
                    failed,
                )
                % {"count": failed},
                messages.WARNING,
            )
        if not done and not failed:
            self.message_user(request, gettext("No record was replayed."), messages.WARNING)

    @admin.action(
        permissions=["replay"], description=_("Replay: run through this project's handler now")
    )
    def rehandle(self, request: HttpRequest, queryset: QuerySet[RejectedRecord]) -> None:
        """Each record goes through the consumer's handling in this process (once-only rules)."""
        from django_outbox.consumer.replay import rehandle

        records = list(queryset.order_by("pk"))
        replayed = rehandle(records)
        self._replayed(request, records, replayed.done, replayed.failed)

    @admin.action(permissions=["replay"], description=_("Replay: send to its topic again"))
    def resend(self, request: HttpRequest, queryset: QuerySet[RejectedRecord]) -> None:
        """The stored bytes go back to their topic; every consumer group gets them again."""
        from django_outbox.consumer.replay import resend

        records = list(queryset.order_by("pk"))
        replayed = resend(records)
        self._replayed(request, records, replayed.done, replayed.failed)


@admin.register(InboxEntry)
class InboxEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "event_type", "event_id", "consumer_group", "topic", "handled_at")
    list_filter = ("consumer_group", "event_type")
    search_fields = ("=event_id",)
    ordering = ("-id",)
