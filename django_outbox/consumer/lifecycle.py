"""The consumer's signs of life: the heartbeat of each loop turn (``--health-file``), and
a broker that refuses it, shown in the stats, the health file and the metrics while
the loop pauses."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django_outbox.consumer.broker import Blockage
from django_outbox.consumer.stats import ConsumerStats
from django_outbox.ops import metrics
from django_outbox.shutdown import Shutdown

logger = logging.getLogger("django_outbox.consumer")


class Health:
    """The heartbeat and the blockage of one consumer, as its operator sees them."""

    def __init__(
        self,
        heartbeat: Callable[[], None] | None,
        blockage: Blockage,
        shutdown: Shutdown,
        stats: Callable[[], ConsumerStats],
    ) -> None:
        #: Called once per loop turn (idle, busy or waiting for the broker).
        self.heartbeat = heartbeat
        self.blockage = blockage
        self.shutdown = shutdown
        self._stats = stats

    def beat(self) -> None:
        if self.heartbeat is not None:
            try:
                self.heartbeat()
            except Exception:  # a health probe must never stop the consumer
                logger.exception("outbox consumer: the heartbeat callback failed")

    def pause_blocked(self, exc: BaseException, where: str) -> None:
        """The broker refused a poll or a commit: say so everywhere, wait, skip nothing."""
        delay = self.blockage.blocked(exc, where)
        self._stats().blocked_turns += 1
        metrics.consumer_blocked(type(exc).__name__)
        self.show_blocked()
        self.beat()  # the health file says it at once
        self.shutdown.wait(delay)

    def worked(self, where: str) -> None:
        """A poll or a commit went through: the end of a blockage, if there was one."""
        if self.blockage.cleared(where):
            self.show_blocked()

    def show_blocked(self) -> None:
        stats = self._stats()
        stats.blocked_by = self.blockage.error
        stats.blocked_since = self.blockage.since
        set_blocked = getattr(self.heartbeat, "set_blocked", None)  # a HealthFile
        if set_blocked is not None:
            set_blocked(self.blockage.error, self.blockage.since)
