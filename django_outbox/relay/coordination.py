"""The relay's buckets across its databases (``OUTBOX_RELAY_BUCKETS``): one
``buckets.Coordinator`` per database, ticked from the relay's round.

Each tick renews this relay's buckets, takes its fair share and gives back what is
over it; a clean stop gives every bucket back. A claim asks here which buckets it may
take rows of (``owner``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from django.db import connections

from django_outbox.conf import outbox_settings
from django_outbox.models.claiming import Owner
from django_outbox.ops import metrics
from django_outbox.relay import buckets
from django_outbox.relay.dbthread import Submit
from django_outbox.relay.outages import Outages

logger = logging.getLogger(__name__)


class Coordination:
    """This relay's share of the key space on each of its databases."""

    def __init__(
        self,
        *,
        databases: Sequence[str],
        lease_seconds: float,
        burst: bool,
        submit: Submit,
        outages: Outages,
        quiesce: Callable[[], None],
    ) -> None:
        self.databases = databases
        self.lease_seconds = lease_seconds
        self.burst = burst
        self._submit = submit
        self._outages = outages
        #: Called before buckets are given back: nothing of this relay's may be with
        #: Kafka or claimed ahead then.
        self._quiesce = quiesce
        #: This relay's name among the relays of its databases (``buckets``).
        self.name = buckets.new_name()
        #: Per database, this relay's share of the key space.
        self.coordinators: dict[str, buckets.Coordinator] = {}
        #: ``time.monotonic()`` of the next tick.
        self.tick_at = 0.0
        self._warned_alone: set[str] = set()

    def due(self) -> bool:
        return time.monotonic() >= self.tick_at

    def owner(self, alias: str) -> Owner | None:
        """On the database thread: the buckets a claim of ``alias`` keeps to (None: all)."""
        coordinator = self.coordinators.get(alias)
        return None if coordinator is None else coordinator.owner()

    def tick(self) -> None:
        """Renew this relay's buckets, take its share, give back what is over it.

        A bucket is given back only once nothing of this relay's is with Kafka or
        claimed ahead: what was sent is settled and its write-back handed to the
        database thread first (``quiesce``), and the thread runs jobs in order, so the
        successor's first claim sees every row of the bucket written back.
        """
        self.tick_at = time.monotonic() + buckets.TICK
        if not outbox_settings.relay_buckets:
            return
        surplus: dict[str, int] = {}
        for alias in self.databases:
            if not self._outages.database_usable(alias):
                continue
            coordinator = self.coordinators.get(alias)
            if coordinator is None:
                coordinator = buckets.Coordinator(alias, self.name, self.lease_seconds)
                self.coordinators[alias] = coordinator
            try:
                over = self._submit(alias, coordinator.tick, greedy=self.burst).result()
            except Exception:
                self._outages.database_failed(alias)
                continue
            if over:
                surplus[alias] = over
            self.warn_if_not_alone(coordinator)
        if surplus:
            self._quiesce()
            for alias, over in surplus.items():
                coordinator = self.coordinators[alias]
                try:
                    self._submit(alias, coordinator.give_back, over).result()
                except Exception:
                    self._outages.database_failed(alias)
        for alias, coordinator in self.coordinators.items():
            metrics.buckets_owned(alias, self.name, coordinator.holding.count)

    def warn_if_not_alone(self, coordinator: buckets.Coordinator) -> None:
        if coordinator.enabled or coordinator.holding.members < 2:
            return
        if coordinator.alias in self._warned_alone:
            return
        self._warned_alone.add(coordinator.alias)
        logger.warning(
            "django_outbox.W090: %d relays run on the %s database %r: relays cannot share "
            "it by key there, so rows of one key may leave out of order; run one relay",
            coordinator.holding.members,
            connections[coordinator.alias].vendor,
            coordinator.alias,
        )

    def leave(self) -> None:
        """Give every bucket back and end the memberships (a clean stop)."""
        for alias, coordinator in self.coordinators.items():
            try:
                self._submit(alias, coordinator.leave).result(timeout=10)
            except Exception:
                logger.warning(
                    "outbox relay: could not give back the buckets of %r; they are free "
                    "when their lease runs out",
                    alias,
                    exc_info=True,
                )
