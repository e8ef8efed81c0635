"""What the relay tells its operator: the rate and backlog every ``progress_interval``,
and at the end of a burst the rows another relay still holds."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from django.utils import timezone

from django_outbox.models import OutboxMessage

logger = logging.getLogger(__name__)


def backlog(databases: Sequence[str]) -> tuple[int, float]:
    """(pending rows, age in seconds of the oldest due row) over ``databases``."""
    now = timezone.now()
    pending, oldest = 0, 0.0
    for alias in databases:
        rows = OutboxMessage.objects.using(alias)
        pending += rows.pending().count()
        created = rows.due(now).order_by("id").values_list("created_at", flat=True).first()
        if created is not None:
            oldest = max(oldest, (now - created).total_seconds())
    return pending, oldest


def report_leased(databases: Sequence[str]) -> None:
    """Say which rows a burst leaves to another relay's lease."""
    now = timezone.now()
    for alias in databases:
        try:
            leased = OutboxMessage.objects.using(alias).in_flight(now)
            count = leased.count()
            until = (
                leased.order_by("-next_retry_at").values_list("next_retry_at", flat=True).first()
            )
            if count:
                logger.warning(
                    "outbox relay: %d row(s) on %r are leased by another relay (until %s); "
                    "they are due again when that lease runs out",
                    count,
                    alias,
                    until.isoformat() if until else "?",
                )
        except Exception:
            pass


class Progress:
    """The progress line: rows delivered per second, pending rows, the oldest due row."""

    def __init__(self, databases: Sequence[str], interval: float) -> None:
        self.databases = databases
        self.interval = interval
        self._report_at = time.monotonic() + interval
        self._reported = 0

    def report(self, delivered: int) -> None:
        """Log the progress line, if ``interval`` has passed since the last one."""
        now = time.monotonic()
        if now < self._report_at:
            return
        elapsed = self.interval + (now - self._report_at)
        self._report_at = now + self.interval
        rate = (delivered - self._reported) / elapsed if elapsed > 0 else 0.0
        self._reported = delivered
        try:
            pending, oldest = backlog(self.databases)
        except Exception as exc:  # the report must not stop deliveries
            logger.info("outbox relay: %.1f rows/s delivered (backlog unknown: %s)", rate, exc)
            return
        logger.info(
            "outbox relay: %.1f rows/s delivered; %d pending; oldest due row waits %.1fs",
            rate,
            pending,
            oldest,
            extra={"delivered_per_second": rate, "pending": pending, "oldest_due_age": oldest},
        )
