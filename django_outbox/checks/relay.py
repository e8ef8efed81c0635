"""Checks of the delivery settings the relay reads: retries, lease, polling, batch
(E006, E007), strict key order (E011), and the retired fast-path settings (W004)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from django_outbox.conf import DEFAULTS, RETIRED, outbox_settings


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_numbers(**kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    max_retry = outbox_settings.raw("MAX_RETRY")
    if not isinstance(max_retry, int) or isinstance(max_retry, bool) or max_retry < 0:
        messages.append(
            Error(
                f"OUTBOX_MAX_RETRY is {max_retry!r}.",
                hint=f"Use a whole number >= 0 (default {DEFAULTS['MAX_RETRY']}).",
                id="django_outbox.E006",
            )
        )
    for name in (
        "LEASE_SECONDS",
        "POLL_INTERVAL",
        "RETRY_BACKOFF_BASE",
        "RETRY_BACKOFF_MAX",
        "BATCH_SIZE",
    ):
        value = outbox_settings.raw(name)
        if not _is_number(value) or value <= 0:
            messages.append(
                Error(
                    f"OUTBOX_{name} is {value!r}.",
                    hint=f"Use a positive number (default {DEFAULTS[name]}).",
                    id="django_outbox.E007",
                )
            )
    return messages


def check_strict_order(**kwargs: Any) -> list[CheckMessage]:
    strict = outbox_settings.raw("STRICT_ORDER")
    if isinstance(strict, bool) or (
        isinstance(strict, list | tuple | set | frozenset)
        and all(isinstance(t, str) for t in strict)
    ):
        return []
    return [
        Error(
            f"OUTBOX_STRICT_ORDER is {strict!r}.",
            hint="Use True, False, or a list of event types held in strict key order.",
            id="django_outbox.E011",
        )
    ]


def check_retired_settings(**kwargs: Any) -> list[CheckMessage]:
    return [
        Warning(
            f"OUTBOX_{name} is set but no longer used: {why}.",
            hint=f"Remove OUTBOX_{name} from your settings (see README, 'Delivery').",
            id="django_outbox.W004",
        )
        for name, why in RETIRED.items()
        if outbox_settings.is_set(name)
    ]
