"""The consumer's progress line, every ``progress_interval`` and when it stops: records
per outcome, the rate, the lag, ordering violations, and a blockage if there is one."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django_outbox import kafka
from django_outbox.consumer.stats import ConsumerStats

logger = logging.getLogger("django_outbox.consumer")


class Progress:
    """When the last progress line was logged, and the next one."""

    def __init__(self, interval: float, stats: Callable[[], ConsumerStats]) -> None:
        self.interval = interval
        self._stats = stats
        self._last = (time.monotonic(), 0)

    def maybe_log(self, client: Any) -> None:
        if time.monotonic() - self._last[0] >= self.interval:
            self.log(client)

    def log(self, client: Any, final: bool = False) -> None:
        stats = self._stats()
        now = time.monotonic()
        since, records_then = self._last
        if final:
            since, records_then = stats.started, 0
        rate = (stats.records - records_then) / max(now - since, 1e-9)
        lag = None
        if client is not None:
            try:
                lag = kafka.consumer_lag(client)
            except Exception:  # lag is informative only; a rebalance may be under way
                lag = None
        blocked = ""
        if stats.blocked_by is not None:
            since = time.time() - (stats.blocked_since or time.time())
            blocked = f", BLOCKED by {stats.blocked_by} for {since:.0f} s"
        logger.info(
            "outbox consumer%s: %d records (%s), %.1f/s, lag %s, %d ordering violation(s)%s",
            " stopped" if final else "",
            stats.records,
            ", ".join(f"{n} {k}" for k, n in sorted(stats.outcomes.items())) or "none",
            rate,
            "unknown" if lag is None else lag,
            stats.ordering_violations,
            blocked,
            extra={
                "records": stats.records,
                "rate": rate,
                "lag": lag,
                "ordering_violations": stats.ordering_violations,
                "blocked_by": stats.blocked_by,
            },
        )
        self._last = (now, stats.records)
