"""The outbox in the Django admin: read-only rows, a summary, actions, failures by error.

Rows are never edited by hand and never deleted here: the table is shared with
the Go service, and a row is the only trace of an event. Operators act through
actions, each a single conditional ``UPDATE`` per chunk of rows, recorded in
Django's own history (``LogEntry``: "History" on a row's page, "Recent actions").
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any, cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.db.models import Q, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode
from django.utils.safestring import SafeString
from django.utils.text import capfirst
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.counts import COUNT_CAP, OutboxPaginator, capped_count, summary
from django_outbox.admin.display import breakable, detail_time, long_time, short_time
from django_outbox.admin.failures import FailureFilter, group_failures
from django_outbox.admin.filters import EventTypeFilter, HeldFilter, StateFilter, TopicFilter
from django_outbox.conf import outbox_settings
from django_outbox.fields import truncate_to_millis
from django_outbox.models import FINAL_STATUSES, OutboxMessage, OutboxMessageQuerySet, Status
from django_outbox.models.attempts import FailedAttempt
from django_outbox.models.inbox import RejectedRecord
from django_outbox.models.ordering import release_keys
from django_outbox.registry import registry

#: A search materialises at most this many matching ids, so that the list and its
#: count become primary-key lookups instead of repeating the search's table scan.
SEARCH_IDS = 1_000
#: Rows changed (and logged) per statement by an action.
ACTION_CHUNK = 500
#: Failed attempts and rejected copies shown on a row's page at most.
HISTORY_ROWS = 50

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


def has_handler(event_type: str) -> bool:
    """True when this project registered a handler for ``event_type``."""
    return event_type in registry


def event_id_of(obj: OutboxMessage) -> str | None:
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


# Pairs share a line on the detail page.
_MAIN_FIELDS = (
    ("id", "status_badge"),
    ("event_type", "event_id"),
    ("topic", "message_key"),
    ("retries", "next_retry_text"),
    ("handler_text",),
)
_TIME_FIELDS = (("created_text", "published_text"), ("consumed_text", "updated_text"))
_ALL_FIELDS = [name for pair in _MAIN_FIELDS + _TIME_FIELDS for name in pair]
#: Columns an action reads to say in the history what a row was.
_LOGGED = ("pk", "event_type", "status", "retry_count", "max_retry", "next_retry_at")


class OutboxMedia:
    css = {"all": ("django_outbox/admin.css",)}


@admin.register(OutboxMessage)
class OutboxMessageAdmin(admin.ModelAdmin):
    """Read-only list and detail of the outbox, with retry / give up / deliver again.

    The actions ask for their own permission through ``has_<action>_permission``;
    the codenames are class attributes so a project can map them to permissions of
    its own. Every change an action makes is in Django's ``LogEntry`` history.
    """

    list_display = (
        "id",
        "type",
        "topic_text",
        "key",
        "status_badge",
        "retries",
        "next_retry",
        "created",
        "published",
        "consumed",
    )
    list_display_links = ("id", "type")
    list_filter = (StateFilter, "status", EventTypeFilter, TopicFilter, HeldFilter, FailureFilter)
    search_fields = ("=message_key", "=event_type")  # shows the box; see get_search_results
    search_help_text = _(
        "Exact message key or event type, an event id (UUID), or #id. "
        "Key and event type have no index: every search reads the table once."
    )
    ordering = ("-id",)
    sortable_by = ("id",)  # the only order an index serves on every filter
    show_full_result_count = False
    show_facets = admin.ShowFacets.NEVER  # a count per filter choice reads the whole table
    paginator = OutboxPaginator
    list_per_page = 100
    actions = ("retry_now", "give_up", "send_now", "cancel_scheduled", "redeliver", "release_key")
    fieldsets = (
        (None, {"fields": _MAIN_FIELDS}),
        (_("Timeline"), {"fields": _TIME_FIELDS}),
        (_("Last error"), {"fields": ("last_error_text",)}),
        (_("Failed attempts"), {"fields": ("attempts_table",)}),
        (_("Rejected copies"), {"fields": ("rejected_text",)}),
        (_("Envelope"), {"fields": ("envelope",)}),
    )
    Media = OutboxMedia

    #: Permission codenames (app label ``django_outbox``) each action needs.
    retry_permission = "retry_outboxmessage"
    give_up_permission = "give_up_outboxmessage"
    redeliver_permission = "redeliver_outboxmessage"
    release_key_permission = "release_key_outboxmessage"
    send_now_permission = "send_now_outboxmessage"
    cancel_permission = "cancel_outboxmessage"

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

    def has_send_now_permission(self, request: HttpRequest) -> bool:
        return self._has(request, self.send_now_permission)

    def has_cancel_permission(self, request: HttpRequest) -> bool:
        return self._has(request, self.cancel_permission)

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        return self._has(request, self.redeliver_permission)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*_ALL_FIELDS, "last_error_text", "attempts_table", "rejected_text", "envelope"]

    # -- columns ----------------------------------------------------------------

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

    def _next_retry_at(self, obj: OutboxMessage) -> datetime.datetime | None:
        # A final row has no next attempt, whatever the column still holds.
        return None if obj.status in FINAL_STATUSES else obj.next_retry_at

    @admin.display(description=_("next retry"))
    def next_retry(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(self._next_retry_at(obj))

    @admin.display(description=_("created"))
    def created(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(obj.created_at)

    @admin.display(description=_("published"))
    def published(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(obj.published_at)

    @admin.display(description=_("consumed"))
    def consumed(self, obj: OutboxMessage) -> SafeString | str:
        return short_time(obj.consumed_at)

    # -- detail -----------------------------------------------------------------

    @admin.display(description=_("next retry at"))
    def next_retry_text(self, obj: OutboxMessage) -> SafeString | str:
        return detail_time(self._next_retry_at(obj))

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

    # -- pages ------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        failures = path(
            "failures/",
            self.admin_site.admin_view(self.failures_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_failures",
        )
        return [failures, *super().get_urls()]

    def _url(self, name: str) -> str:
        return reverse(
            f"{self.admin_site.name}:{self.opts.app_label}_{self.opts.model_name}_{name}"
        )

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

    def failures_view(self, request: HttpRequest) -> HttpResponse:
        """Failed rows grouped by error, each with its count, filter and "retry all"."""
        if not self.has_view_or_change_permission(request):
            from django.core.exceptions import PermissionDenied

            raise PermissionDenied
        may_retry = self.has_retry_permission(request)
        if request.method == "POST":
            if not may_retry:
                from django.core.exceptions import PermissionDenied

                raise PermissionDenied
            self._retry_group(request, request.POST.get("group", ""))
            return HttpResponseRedirect(self._url("failures"))
        grouping = group_failures(self.get_queryset(request))
        listing = self._url("changelist")
        context = {
            **self.admin_site.each_context(request),
            "title": _("Failures by error"),
            "opts": self.opts,
            "grouping": grouping,
            "groups": [
                (group, f"{listing}?{urlencode({'failure': group.error})}")
                for group in grouping.groups
            ],
            "may_retry": may_retry,
            "media": self.media,
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, "admin/django_outbox/outboxmessage/failures.html", context)

    def _retry_group(self, request: HttpRequest, group: str) -> None:
        now = timezone.now()
        rows = self.get_queryset(request)
        ids = group_failures(rows, now).ids_of(group)
        eligible = rows.retryable(now).filter(pk__in=ids)
        changed = self._apply(request, eligible, lambda q: q.retry_now(now), now, "retry")
        if changed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d message of the group %(group)s will be retried now.",
                    "%(count)d messages of the group %(group)s will be retried now.",
                    changed,
                )
                % {"count": changed, "group": f"“{group}”"},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                gettext("No message of the group %(group)s was retried.") % {"group": f"“{group}”"},
                messages.WARNING,
            )

    # -- actions ----------------------------------------------------------------

    def _apply(
        self,
        request: HttpRequest,
        eligible: OutboxMessageQuerySet,
        transition: Callable[[OutboxMessageQuerySet], int],
        now: datetime.datetime,
        verb: str,
    ) -> int:
        """Run ``transition`` on the rows of ``eligible``, a chunk at a time, and log each row.

        ``transition`` checks its conditions again in its ``UPDATE``: a row that changed
        since it was read (a relay claimed it) is left alone and not logged.
        """
        found = list(eligible.order_by("pk").only(*_LOGGED))
        rows = self.get_queryset(request)
        changed = 0
        for start in range(0, len(found), ACTION_CHUNK):
            chunk = found[start : start + ACTION_CHUNK]
            ids = [row.pk for row in chunk]
            count = transition(rows.filter(pk__in=ids))
            if count < len(chunk):
                written = set(
                    rows.filter(pk__in=ids, updated_at=truncate_to_millis(now)).values_list(
                        "pk", flat=True
                    )
                )
                chunk = [row for row in chunk if row.pk in written]
            changed += count
            self._log(request, chunk, verb)
        return changed

    def _log(self, request: HttpRequest, chunk: Sequence[OutboxMessage], verb: str) -> None:
        by_message: dict[str, list[OutboxMessage]] = defaultdict(list)
        for row in chunk:
            by_message[_history_message(verb, row)].append(row)
        for message, logged in by_message.items():
            LogEntry.objects.log_actions(
                user_id=cast(int, request.user.pk),
                queryset=logged,
                action_flag=CHANGE,
                change_message=message,
            )

    @admin.action(
        permissions=["retry"], description=_("Retry now (dead or pending, not in flight)")
    )
    def retry_now(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Dead or waiting pending rows become due now with a fresh retry budget.

        Rows a relay holds (in flight) and published or consumed rows are left alone.
        """
        now = timezone.now()
        changed = self._apply(
            request, queryset.retryable(now), lambda q: q.retry_now(now), now, "retry"
        )
        if changed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d outbox message will be retried now.",
                    "%(count)d outbox messages will be retried now.",
                    changed,
                )
                % {"count": changed},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                gettext(
                    "No message was retried: only dead messages and pending ones that no "
                    "relay holds (not in flight) can be retried."
                ),
                messages.WARNING,
            )

    @admin.action(
        permissions=["release_key"],
        description=_("Release the key (strict order: later rows may go ahead of these dead rows)"),
    )
    def release_key(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Dead rows stop holding their key in strict order (``OUTBOX_STRICT_ORDER``)."""
        before = set(queryset.dead().values_list("pk", flat=True))
        changed = release_keys(queryset, queryset.db, str(request.user))
        if changed:
            from django_outbox.models.ordering import ReleasedRow

            released = ReleasedRow.objects.using(queryset.db).filter(
                database=queryset.db, outbox_id__in=before, released_by=str(request.user)[:150]
            )
            ids = set(released.values_list("outbox_id", flat=True))
            self._log(request, list(queryset.filter(pk__in=ids).only(*_LOGGED)), "release_key")
            self.message_user(
                request,
                ngettext(
                    "%(count)d dead message no longer holds its key.",
                    "%(count)d dead messages no longer hold their keys.",
                    changed,
                )
                % {"count": changed},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                gettext("No key was released: only dead messages not released before can be."),
                messages.WARNING,
            )

    @admin.action(permissions=["give_up"], description=_("Give up (mark dead)"))
    def give_up(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Pending rows that no relay holds become dead; in-flight rows are left alone."""
        now = timezone.now()
        eligible = queryset.due(now) | queryset.backing_off(now)
        changed = self._apply(request, eligible, lambda q: q.give_up_now(now), now, "give_up")
        if changed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d outbox message is now dead.",
                    "%(count)d outbox messages are now dead.",
                    changed,
                )
                % {"count": changed},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                gettext(
                    "No message was given up: only pending messages that no relay holds "
                    "(not in flight) can be given up."
                ),
                messages.WARNING,
            )

    @admin.action(permissions=["send_now"], description=_("Send now (scheduled messages)"))
    def send_now(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Scheduled rows become due now; their retry budget is not touched."""
        now = timezone.now()
        changed = self._apply(
            request, queryset.scheduled(now), lambda q: q.send_now(now), now, "send_now"
        )
        self._report(
            request,
            changed,
            ngettext(
                "%(count)d scheduled message will be sent now.",
                "%(count)d scheduled messages will be sent now.",
                changed,
            ),
            gettext(
                "No message was sent now: only scheduled messages (pending, not due yet, "
                "never tried) can be."
            ),
        )

    @admin.action(permissions=["cancel"], description=_("Cancel (scheduled messages: mark dead)"))
    def cancel_scheduled(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Scheduled rows become dead, "cancelled by <user>"; in strict order their keys
        are released at once (a cancelled event holds back nothing)."""
        now = timezone.now()
        who = str(request.user)
        error = gettext("cancelled by %(user)s (admin)") % {"user": who}
        before = set(queryset.scheduled(now).values_list("pk", flat=True))
        changed = self._apply(
            request,
            queryset.scheduled(now),
            lambda q: q.cancel_scheduled(now, error),
            now,
            "cancel",
        )
        if changed and outbox_settings.strict_order is not False:
            cancelled = queryset.filter(
                pk__in=before, status=Status.DEAD, updated_at=truncate_to_millis(now)
            )
            release_keys(cancelled, queryset.db, who)
        self._report(
            request,
            changed,
            ngettext(
                "%(count)d scheduled message was cancelled (now dead).",
                "%(count)d scheduled messages were cancelled (now dead).",
                changed,
            ),
            gettext(
                "No message was cancelled: only scheduled messages (pending, not due yet, "
                "never tried) can be."
            ),
        )

    def _report(self, request: HttpRequest, changed: int, done: str, nothing: str) -> None:
        """``done`` (with ``%(count)d``) as a success when rows changed, else ``nothing``."""
        if changed:
            self.message_user(request, done % {"count": changed}, messages.SUCCESS)
        else:
            self.message_user(request, nothing, messages.WARNING)

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
        changed = self._apply(request, targets, lambda q: q.deliver_again(now), now, "redeliver")
        if changed:
            self.message_user(
                request,
                ngettext(
                    "%(count)d outbox message will be delivered again; its handler will run again.",
                    "%(count)d outbox messages will be delivered again; their handlers will run "
                    "again.",
                    changed,
                )
                % {"count": changed},
                messages.SUCCESS,
            )
        else:
            self.message_user(
                request,
                gettext("No message was delivered again: only published or consumed ones can be."),
                messages.WARNING,
            )
        return None


def _history_message(verb: str, row: OutboxMessage) -> str:
    """What an action did to ``row``, for its history (``LogEntry.change_message``)."""
    was = {"status": row.status, "retries": row.retry_count, "max": row.max_retry}
    if verb == "retry":
        return gettext("Retry requested (was %(status)s, %(retries)d/%(max)d retries).") % was
    if verb == "give_up":
        return gettext("Given up (was %(status)s, %(retries)d/%(max)d retries).") % was
    if verb == "redeliver":
        return gettext("Delivery requested again (was %(status)s).") % was
    if verb == "send_now":
        return gettext("Sent now (was scheduled for %(at)s).") % {
            "at": long_time(row.next_retry_at)
        }
    if verb == "cancel":
        return gettext("Cancelled (was scheduled for %(at)s).") % {
            "at": long_time(row.next_retry_at)
        }
    return gettext("Key released (strict order).")
