"""The "Failures by error" screen: failed rows grouped by error, each group with its
counts, a link to the list filtered to it, and "Retry all in this group" (the grouping
itself is in ``failures``)."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.http import urlencode
from django.utils.translation import gettext, ngettext
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.actions import MessageActions
from django_outbox.admin.failures import group_failures


class FailuresPage(MessageActions):
    """The page at ``failures/`` next to the list, and its one action, "retry a group"."""

    def get_urls(self) -> list[URLPattern]:
        failures = path(
            "failures/",
            self.admin_site.admin_view(self.failures_view),
            name=f"{self.opts.app_label}_{self.opts.model_name}_failures",
        )
        return [failures, *super().get_urls()]

    def failures_view(self, request: HttpRequest) -> HttpResponse:
        """Failed rows grouped by error, each with its count, filter and "retry all"."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        may_retry = self.has_retry_permission(request)
        if request.method == "POST":
            if not may_retry:
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
