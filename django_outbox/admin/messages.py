"""The outbox in the Django admin: ``OutboxMessageAdmin``, the screens of the outbox rows.

Rows are never edited by hand and never deleted here: the table is shared with
the Go service, and a row is the only trace of an event. Operators act through
actions, each a single conditional ``UPDATE`` per chunk of rows, recorded in
Django's own history (``LogEntry``: "History" on a row's page, "Recent actions").

The class only declares the screens; what they do is in one module each:
``message_list`` (columns, search, summary), ``message_page`` (a row's fields, and its ``journey``),
``failures_page`` (failures by error), ``actions`` (the operators' actions and their
permissions), over ``rows`` (read-only rows of ``OUTBOX_DATABASE``).
"""

from __future__ import annotations

from django.contrib import admin
from django.utils.translation import gettext_lazy as _

from django_outbox.admin.actions import MessageActions
from django_outbox.admin.counts import OutboxPaginator
from django_outbox.admin.failures import FailureFilter
from django_outbox.admin.failures_page import FailuresPage
from django_outbox.admin.filters import EventTypeFilter, HeldFilter, StateFilter, TopicFilter
from django_outbox.admin.message_list import MessageList
from django_outbox.admin.message_page import MAIN_FIELDS, TIME_FIELDS, MessagePage
from django_outbox.models import OutboxMessage


@admin.register(OutboxMessage)
class OutboxMessageAdmin(MessageList, MessagePage, FailuresPage, MessageActions):
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
        (None, {"fields": MAIN_FIELDS}),
        (_("Timeline"), {"fields": TIME_FIELDS}),
        (_("Journey"), {"fields": ("journey_text",)}),
        (_("Last error"), {"fields": ("last_error_text",)}),
        (_("Failed attempts"), {"fields": ("attempts_table",)}),
        (_("Rejected copies"), {"fields": ("rejected_text",)}),
        (_("Envelope"), {"fields": ("envelope",)}),
    )

    class Media:
        css = {"all": ("django_outbox/admin.css",)}
