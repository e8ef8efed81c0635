"""The operators' actions on outbox rows: retry now, give up, send now, cancel, deliver
again, release a key. Each asks for its own permission, changes rows through a named
method of the model's queryset, says what it changed (``ngettext``, a warning when
nothing did) and records every changed row in Django's history (``LogEntry``)."""

from __future__ import annotations

import datetime
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import cast

from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.models import CHANGE, LogEntry
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.counts import COUNT_CAP, capped_count
from django_outbox.admin.display import long_time
from django_outbox.admin.rows import OutboxRowsAdmin
from django_outbox.conf import outbox_settings
from django_outbox.fields import truncate_to_millis
from django_outbox.models import OutboxMessage, OutboxMessageQuerySet, Status
from django_outbox.models.ordering import release_keys

#: Rows changed (and logged) per statement by an action.
ACTION_CHUNK = 500
#: Columns an action reads to say in the history what a row was.
LOGGED = ("pk", "event_type", "status", "retry_count", "max_retry", "next_retry_at")


class ActionPermissions(OutboxRowsAdmin):
    """``has_<action>_permission`` for each action (``@admin.action(permissions=...)``).

    The codenames are class attributes so a project can map them to permissions of
    its own.
    """

    #: Permission codenames (app label ``django_outbox``) each action needs.
    retry_permission = "retry_outboxmessage"
    give_up_permission = "give_up_outboxmessage"
    redeliver_permission = "redeliver_outboxmessage"
    release_key_permission = "release_key_outboxmessage"
    send_now_permission = "send_now_outboxmessage"
    cancel_permission = "cancel_outboxmessage"

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


class MessageActions(ActionPermissions):
    """The actions (named in ``OutboxMessageAdmin.actions``) and how they change and log rows."""

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
        found = list(eligible.order_by("pk").only(*LOGGED))
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
            by_message[history_message(verb, row)].append(row)
        for message, logged in by_message.items():
            LogEntry.objects.log_actions(
                user_id=cast(int, request.user.pk),
                queryset=logged,
                action_flag=CHANGE,
                change_message=message,
            )

    def _report(self, request: HttpRequest, changed: int, done: str, nothing: str) -> None:
        """``done`` (with ``%(count)d``) as a success when rows changed, else ``nothing``."""
        if changed:
            self.message_user(request, done % {"count": changed}, messages.SUCCESS)
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
        changed = self._apply(
            request, queryset.retryable(now), lambda q: q.retry_now(now), now, "retry"
        )
        self._report(
            request,
            changed,
            ngettext(
                "%(count)d outbox message will be retried now.",
                "%(count)d outbox messages will be retried now.",
                changed,
            ),
            gettext(
                "No message was retried: only dead messages and pending ones that no "
                "relay holds (not in flight) can be retried."
            ),
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
            self._log(request, list(queryset.filter(pk__in=ids).only(*LOGGED)), "release_key")
        self._report(
            request,
            changed,
            ngettext(
                "%(count)d dead message no longer holds its key.",
                "%(count)d dead messages no longer hold their keys.",
                changed,
            ),
            gettext("No key was released: only dead messages not released before can be."),
        )

    @admin.action(permissions=["give_up"], description=_("Give up (mark dead)"))
    def give_up(self, request: HttpRequest, queryset: OutboxMessageQuerySet) -> None:
        """Pending rows that no relay holds become dead; in-flight rows are left alone."""
        now = timezone.now()
        eligible = queryset.due(now) | queryset.backing_off(now)
        changed = self._apply(request, eligible, lambda q: q.give_up_now(now), now, "give_up")
        self._report(
            request,
            changed,
            ngettext(
                "%(count)d outbox message is now dead.",
                "%(count)d outbox messages are now dead.",
                changed,
            ),
            gettext(
                "No message was given up: only pending messages that no relay holds "
                "(not in flight) can be given up."
            ),
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
        self._report(
            request,
            changed,
            ngettext(
                "%(count)d outbox message will be delivered again; its handler will run again.",
                "%(count)d outbox messages will be delivered again; their handlers will run again.",
                changed,
            ),
            gettext("No message was delivered again: only published or consumed ones can be."),
        )
        return None


def history_message(verb: str, row: OutboxMessage) -> str:
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
