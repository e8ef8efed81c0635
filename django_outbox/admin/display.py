"""How the outbox's screens show moments and dotted names (times with milliseconds
and zone, names that wrap after their dots)."""

from __future__ import annotations

import datetime

from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe


def long_time(value: datetime.datetime | None) -> str:
    """A moment with milliseconds and zone (current time zone): 2026-12-01 23:05:09.120 UTC."""
    if value is None:
        return "-"
    local = timezone.localtime(value)
    zone = local.strftime("%Z") or local.strftime("%z")
    return local.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + f" {zone}"


def short_time(value: datetime.datetime | None) -> SafeString | str:
    # Four time columns in Django's long format push the list off the screen:
    # today's times show the time of day only, the full moment is in the tooltip.
    if value is None:
        return "-"
    local = timezone.localtime(value)
    if local.date() == timezone.localdate():
        shown = format_html("{}", local.strftime("%H:%M:%S"))
    else:  # the date above the time: the column stays as narrow as a time
        shown = format_html("{}<br>{}", local.strftime("%Y-%m-%d"), local.strftime("%H:%M"))
    return format_html(
        '<time datetime="{}" title="{}">{}</time>', value.isoformat(), long_time(value), shown
    )


def detail_time(value: datetime.datetime | None) -> SafeString | str:
    if value is None:
        return "-"
    return format_html('<time datetime="{}">{}</time>', value.isoformat(), long_time(value))


def breakable(name: str) -> SafeString:
    """A dotted name that may wrap after its dots (``chat.<wbr>message.<wbr>created``)."""
    parts = name.split(".")
    return format_html_join(mark_safe(".<wbr>"), "{}", ((part,) for part in parts))
