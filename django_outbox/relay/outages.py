"""The relay's view of what is away: each database and Kafka, and the pause after a failure.

A database that fails is paused with its own backoff while the others go on (in a
burst it is dropped from the run); an unreachable Kafka pauses every claim, says so
once, and spends no retries. The relay's round asks here before it claims or sends.
"""

from __future__ import annotations

import logging
import time

from django_outbox import kafka
from django_outbox.backoff import backoff_delay
from django_outbox.exceptions import describe
from django_outbox.relay.send import Sender, Settled

logger = logging.getLogger(__name__)

#: Upper bound of the pause after a database outage, seconds.
MAX_PAUSE = 30.0
#: Upper bound of the pause between two looks at an unreachable broker, seconds.
MAX_KAFKA_PAUSE = 5.0


class Outages:
    """Which of the relay's databases, and whether Kafka, may be asked now."""

    def __init__(self, sender: Sender, *, interval: float, burst: bool) -> None:
        self.sender = sender
        self.interval = interval
        self.burst = burst
        #: Database errors met (in burst mode, each one drops its database from the run).
        self.errors = 0
        #: Databases a burst gave up on.
        self.broken: set[str] = set()
        self._db_failures: dict[str, int] = {}
        self._db_retry_at: dict[str, float] = {}
        self.kafka_failures = 0
        self.kafka_retry_at = 0.0

    # ------------------------------------------------------------------ databases

    def database_usable(self, alias: str) -> bool:
        if alias in self.broken:
            return False
        return time.monotonic() >= self._db_retry_at.get(alias, 0.0)

    def database_failed(self, alias: str) -> None:
        # A database that went away: its rows stay leased or pending and are retried
        # when it is back; the other databases go on meanwhile.
        failures = self._db_failures.get(alias, 0) + 1
        self._db_failures[alias] = failures
        delay = backoff_delay(failures, max(self.interval, 0.5), MAX_PAUSE)
        self._db_retry_at[alias] = time.monotonic() + delay
        # (The database thread closed its connection: the next job opens a fresh one.)
        logger.exception("outbox relay: database %r failed; retrying in %.1fs", alias, delay)
        self.errors += 1
        if self.burst:
            self.broken.add(alias)

    def database_ok(self, alias: str) -> None:
        if self._db_failures.pop(alias, None):
            logger.info("outbox relay: database %r answers again", alias)
        self._db_retry_at.pop(alias, None)

    def waiting_for(self, alias: str) -> bool:
        """``alias`` failed and is to be asked again (not given up on)."""
        return alias not in self.broken and alias in self._db_retry_at

    def database_retry_times(self) -> list[float]:
        """When the databases that failed are asked again (``time.monotonic()``)."""
        return [t for a, t in self._db_retry_at.items() if a not in self.broken]

    # ------------------------------------------------------------------ Kafka

    def kafka_usable(self) -> bool:
        if not self.kafka_failures or time.monotonic() >= self.kafka_retry_at:
            return True
        return False

    def kafka_unreachable(self, settled: Settled) -> None:
        self.kafka_failures += 1
        delay = backoff_delay(self.kafka_failures, 0.5, MAX_KAFKA_PAUSE)
        self.kafka_retry_at = time.monotonic() + delay
        if self.kafka_failures == 1:
            servers = self.sender.bootstrap_servers()
            down = kafka.unreachable_brokers(servers)
            first = next(o for o in settled.outcomes if o is not None)
            where = (
                f"broker {', '.join(down)} unreachable"
                if down
                else f"no acknowledgement from {', '.join(servers)}"
            )
            logger.warning(
                "outbox relay: Kafka %s (%s); pausing, no retries spent, rows due again",
                where,
                describe(first),
            )

    def kafka_ok(self) -> None:
        if self.kafka_failures:
            logger.info("outbox relay: Kafka answers again")
        self.kafka_failures = 0
