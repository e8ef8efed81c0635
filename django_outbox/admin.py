"""The outbox in the Django admin: read-only rows, a summary, and three actions.

Rows are never edited by hand and never deleted here: the table is shared with
the Go service, and a row is the only trace of an event. Operators act through
actions, each a single conditional ``UPDATE`` that leaves a note in
``last_error`` saying who did what and when.
"""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.db.models import CharField, F, Q, QuerySet, TextField, Value
from django.db.models.functions import Cast, Coalesce, Concat, Left
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from .admin_counts import COUNT_CAP, OutboxPaginator, capped_count, summary
from .admin_filters import EventTypeFilter, HeldFilter, StateFilter, TopicFilter
from .conf import outbox_settings
from .fields import TEXT_MAX_CHARS
from .models import OutboxMessage, OutboxMessageQuerySet, Status
from .ordering import release_keys

#: A search materialises at most this many matching ids, so that the list and its
#: count become primary-key lookups instead of repeating the search's table scan.
SEARCH_IDS = 1_000

STATE_LABELS = {
    "ready": _("ready"),
    "backing_off": _("backing off"),
    "in_flight": _("in flight"),
}


def pending_state(message: OutboxMessage, now: datetime.datetime) -> str | None:
    """Which of ready / backing_off / in_flight a pending row is in (None if not pending).

    The same rule as ``OutboxMessageQuerySet.due()/in_flight()/backing_off()``: a
    relay's lease ends on a whole second, a backoff never does.
    """
    if message.status != Status.PENDING:
        return None
    moment = message.next_retry_at
    if moment is None or moment <= now:
        return "ready"
    if moment.microsecond == 0:
        return "in_flight"
    return "backing_off"


def _short_time(value: datetime.datetime | None) -> SafeString | str:
    # Four time columns in Django's long format push the list off the screen:
    # today's times show the time of day only, the full moment is in the tooltip.
    if value is None:
        return "-"
    local = timezone.localtime(value)
    short = "%H:%M:%S" if local.date() == timezone.localdate() else "%Y-%m-%d %H:%M"
    return format_html(
        '<time datetime="{}" title="{}">{}</time>',
        value.isoformat(),
        local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + local.strftime(" %Z"),
        local.strftime(short),
    )


def _note(action: str, request: HttpRequest, now: datetime.datetime) -> str:
    return f"[{now:%Y-%m-%d %H:%M:%S} UTC] {action} by {request.user.get_username()} (was "


def _with_note(note: str) -> Left:
    """``last_error`` with ``note`` (then the old status and retry count) prepended, clipped.

    Put it first in ``update()``: MySQL evaluates ``SET`` assignments left to right,
    each seeing the columns already assigned.
    """
    return Left(
        Concat(
            Value(note),
            F("status"),
            Value(", "),
            Cast("retry_count", output_field=CharField()),
            Value("/"),
            Cast("max_retry", output_field=CharField()),
            Value(" retries)\n"),
            Coalesce("last_error", Value(""), output_field=TextField()),
            output_field=TextField(),
        ),
        TEXT_MAX_CHARS,
    )


# Pairs share a line on the detail page.
_MAIN_FIELDS = (
    ("id", "status_badge"),
    ("event_type", "event_id"),
    ("topic", "message_key"),
    ("retries", "next_retry_at"),
)
_TIME_FIELDS = (("created_at", "published_at"), ("consumed_at", "updated_at"))
_ALL_FIELDS = [name for pair in _MAIN_FIELDS + _TIME_FIELDS for name in pair]


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    """Read-only list and detail of the outbox, with retry / give up / deliver again.

    The actions ask for their own permission through ``has_<action>_permission``;
    the codenames are class attributes so a project can map them to permissions of
    its own.
    """

    list_display = (
        "id",
        "event_type",
        "topic",
        "message_key",
        "status_badge",
        "retries",
        "next_retry",
        "created",
        "published",
        "consumed",
    )
    list_display_links = ("id", "event_type")
    list_filter = (StateFilter, "status", EventTypeFilter, TopicFilter, HeldFilter)
    search_fields = ("=message_key", "=event_type")  # shows the box; see get_search_results
    search_help_text = _(
        "Exact message key or event type, an event id (UUID), or #id. "
        "Key and event type have no index: every search reads the table once."
    )
    ordering = ("-id",)
    sortable_by = ("id",)  # the only order an index serves on every filter
    show_full_result_count = False
    paginator = OutboxPaginator
    list_per_page = 100
    actions = ("retry_now", "give_up", "redeliver", "release_key")
    fieldsets = (
        (None, {"fields": _MAIN_FIELDS}),
        (_("Timeline"), {"fields": _TIME_FIELDS}),
        (_("Last error"), {"fields": ("last_error_text",)}),
        (_("Envelope"), {"fields": ("envelope",)}),
    )

    #: Permission codenames (app label ``django_outbox``) each action needs.
    retry_permission = "retry_outboxmessage"
    give_up_permission = "give_up_outboxmessage"
    redeliver_permission = "redeliver_outboxmessage"
    release_key_permission = "release_key_outboxmessage"

    # -- access -----------------------------------------------------------------

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

    def _has(self, request: HttpRequest, codename: str) -> bool:
        return request.user.has_perm(f"{self.opts.app_label}.{codename}")

    def has_retry_permission(self, request: HttpRequest) -> bool:
        return self._has(request, self.retry_permission)

    def has_give_up_permission(self, request: HttpRequest) -> bool:
        return self._has(request, self.give_up_permission)

    def has_release_key_permission(self, request: HttpRequest) -> bool:
        return self._has(request, self.release_key_permission)

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return self._has(request, self.redeliver_permission)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*_ALL_FIELDS, "last_error_text", "envelope"]

    # -- columns ----------------------------------------------------------------

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, obj: OutboxMessage) -> SafeString:
        state = pending_state(obj, timezone.now())
        known = obj.status in Status.values
        css = state.replace("_", "-") if state else (obj.status if known else "unknown")
        label = obj.get_status_display() if known else obj.status
        if state:
            label = f"{label} · {STATE_LABELS[state]}"
        return format_html('<span class="outbox-badge outbox-{}">{}</span>', css, label)

    @admin.display(description=_("retries / max"))
    def retries(self, obj: OutboxMessage) -> str:
        return f"{obj.retry_count} / {obj.max_retry}"

    @admin.display(description=_("next retry"))
    def next_retry(self, obj: OutboxMessage) -> SafeString | str:
        return _short_time(obj.next_retry_at)

    @admin.display(description=_("created"))
    def created(self, obj: OutboxMessage) -> SafeString | str:
        return _short_time(obj.created_at)

    @admin.display(description=_("published"))
    def published(self, obj: OutboxMessage) -> SafeString | str:
        return _short_time(obj.published_at)

    @admin.display(description=_("consumed"))
    def consumed(self, obj: OutboxMessage) -> SafeString | str:
        return _short_time(obj.consumed_at)

    @admin.display(description=_("event id"))
    def event_id(self, obj: OutboxMessage) -> str:
        try:
            document = json.loads(obj.payload)
            return str(document["event_id"])
        except (TypeError, ValueError, KeyError):
            return "-"

    @admin.display(description=_("last error"))
    def last_error_text(self, obj: OutboxMessage) -> SafeString | str:
        if not obj.last_error:
            return "-"
        return format_html('<pre class="outbox-pre">{}</pre>', obj.last_error)

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

    # -- list page --------------------------------------------------------------

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            "title": capfirst(self.opts.verbose_name_plural),
            **(extra_context or {}),
        }
        if self.has_view_or_change_permission(request):
            extra_context["outbox_summary"] = summary(self.get_queryset(request))
            extra_context["outbox_list_url"] = reverse(
                f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_changelist"
            )
        return super().changelist_view(request, extra_context)

    # -- actions ----------------------------------------------------------------

    def _report(
        self,
        request: HttpRequest,
        changed: int,
        done: tuple[str, str],
        nothing: str,
    ) -> None:
        if changed:
            self.message_user(
                request, ngettext(done[0], done[1], changed) % {"count": changed}, messages.SUCCESS
            )
        else:
            self.message_user(request, nothing, messages.WARNING)

    @admin.action(
        permissions=["retry"], description=_("Retry now (dead or pending, not in flight)")
    )
    def retry_now(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Dead or waiting pending rows become due now with a fresh retry budget.

        Rows a relay holds (in flight) and published or consumed rows are left alone.
        """
        now = timezone.now()
        changed = queryset.retry_now(now, _with_note(_note("retry requested", request, now)))
        self._report(
            request,
            changed,
            (
                "%(count)d outbox message will be retried now.",
                "%(count)d outbox messages will be retried now.",
            ),
            str(
                _(
                    "No message was retried: only dead messages and pending ones that no "
                    "relay holds (not in flight) can be retried."
                )
            ),
        )

    @admin.action(
        permissions=["release_key"],
        description=_("Release the key (strict order: later rows may go ahead of these dead rows)"),
    )
    def release_key(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Dead rows stop holding their key in strict order (``OUTBOX_STRICT_ORDER``)."""
        changed = release_keys(queryset, queryset.db, str(request.user))
        self._report(
            request,
            changed,
            (
                "%(count)d dead message no longer holds its key.",
                "%(count)d dead messages no longer hold their keys.",
            ),
            str(_("No key was released: only dead messages not released before can be.")),
        )

    @admin.action(permissions=["give_up"], description=_("Give up (mark dead)"))
    def give_up(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Pending rows that no relay holds become dead; in-flight rows are left alone."""
        now = timezone.now()
        changed = queryset.give_up_now(now, _with_note(_note("given up", request, now)))
        self._report(
            request,
            changed,
            ("%(count)d outbox message is now dead.", "%(count)d outbox messages are now dead."),
            str(
                _(
                    "No message was given up: only pending messages that no relay holds "
                    "(not in flight) can be given up."
                )
            ),
        )

    @admin.action(
        permissions=["redeliver"],
        description=_("Deliver again: re-run handlers of published or consumed messages"),
    )
    def redeliver(
        self, request: HttpRequest, queryset: OutboxMessageQuerySet
    ) -> HttpResponse | None:
        """After a confirmation page, published or consumed rows go through Kafka again."""
        targets = queryset.published() | queryset.consumed()
        if request.POST.get("post") != "yes":
            count = capped_count(targets)
            context = {
                **self.admin_site.each_context(request),
                "title": _("Deliver again?"),
                "opts": self.opts,
                "count": min(count, COUNT_CAP),
                "count_is_exact": count <= COUNT_CAP,
                "examples": list(targets.order_by("-pk")[:20]),
                "selected": request.POST.getlist(helpers.ACTION_CHECKBOX_NAME),
                "select_across": request.POST.get("select_across", "0"),
                "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
                "media": self.media,
            }
            request.current_app = self.admin_site.name
            return TemplateResponse(
                request, "admin/django_outbox/outboxmessage/redeliver_confirmation.html", context
            )
        now = timezone.now()
        changed = queryset.deliver_again(
            now, _with_note(_note("delivery requested again", request, now))
        )
        self._report(
            request,
            changed,
            (
                "%(count)d outbox message will be delivered again; its handler will run again.",
                "%(count)d outbox messages will be delivered again; their handlers will run again.",
            ),
            str(_("No message was delivered again: only published or consumed ones can be.")),
        )
        return None


from . import admin_inbox  # noqa: E402,F401  (the consumer's tables)
