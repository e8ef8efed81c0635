"""Checks of what the outbox reports: Prometheus metrics (W020, E020) and the ordering
detector behind its out-of-order metric (E021)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from django_outbox.conf import DEFAULTS, outbox_settings


def check_metrics(**kwargs: Any) -> list[CheckMessage]:
    """W020: metrics asked for without prometheus-client; E020/E021: bad numbers."""
    from django_outbox.ops.metrics import INSTALL, available

    messages: list[CheckMessage] = []
    if outbox_settings.raw("METRICS") and not available():
        messages.append(
            Warning(
                "OUTBOX_METRICS is on, but prometheus-client is not installed: no metrics.",
                hint=f"{INSTALL}, or set OUTBOX_METRICS = False.",
                id="django_outbox.W020",
            )
        )
    interval = outbox_settings.raw("METRICS_INTERVAL")
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
        messages.append(
            Error(
                f"OUTBOX_METRICS_INTERVAL is {interval!r}.",
                hint="Use a number of seconds > 0 (default "
                f"{DEFAULTS['METRICS_INTERVAL']}) between two refreshes of the backlog gauges.",
                id="django_outbox.E020",
            )
        )
    keys = outbox_settings.raw("ORDERING_KEYS")
    if isinstance(keys, bool) or not isinstance(keys, int) or keys < 0:
        messages.append(
            Error(
                f"OUTBOX_ORDERING_KEYS is {keys!r}.",
                hint="Use a whole number >= 0: keys per partition the ordering detector "
                f"remembers (default {DEFAULTS['ORDERING_KEYS']}; 0 turns it off).",
                id="django_outbox.E021",
            )
        )
    return messages
