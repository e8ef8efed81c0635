"""Capped exponential backoff with jitter, for rows Kafka did not take."""

from __future__ import annotations

import random

from django_outbox.conf import outbox_settings

#: Past this many doublings the cap always wins; keeps ``2 ** n`` a small float.
_MAX_EXPONENT = 62


def backoff_delay(
    attempt: int,
    base: float,
    cap: float,
    *,
    jitter: float = 0.5,
    rand: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (1 for the first retry).

    The delay doubles from ``base`` on each attempt, never exceeds ``cap``, and is
    then drawn at random from ``[delay * (1 - jitter), delay]``: relays that failed
    together (a broker restart) come back spread out instead of all at once.
    """
    if base <= 0 or cap <= 0:
        raise ValueError("backoff base and cap must be positive")
    if not 0 <= jitter <= 1:
        raise ValueError("jitter must be between 0 and 1")
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    delay = min(cap, base * 2.0**exponent)
    draw = (rand or random).random()
    return delay * (1 - jitter * draw)


def retry_delay(attempt: int) -> float:
    """``backoff_delay`` with ``OUTBOX_RETRY_BACKOFF_BASE`` / ``OUTBOX_RETRY_BACKOFF_MAX``."""
    return backoff_delay(
        attempt, outbox_settings.retry_backoff_base, outbox_settings.retry_backoff_max
    )
