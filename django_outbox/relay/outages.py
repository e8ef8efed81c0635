"""The relay's view of what is away: each database and Kafka, and the pause after a failure.

A database that fails is paused with its own backoff while the others go on (in a
burst it is dropped from the run: nothing more is claimed there); an unreachable Kafka
pauses every claim, says so once, and spends no retries. The relay's round asks here
before it claims, sends, or writes an outcome it kept.

One outage is told once: its first failure is logged with the error, the failed looks
after it at DEBUG, and the first answer after it at INFO. Jobs handed to the database
thread before the pause (a claim queued behind the write-back that failed) fail in the
same look: they neither lengthen the pause nor count as another look.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Collection

from django_outbox import kafka
from django_outbox.backoff import backoff_delay
from django_outbox.exceptions import describe
from django_outbox.relay.send import Sender, Settled

logger = logging.getLogger(__name__)

#: Upper bound of the pause after a database outage, seconds.
MAX_PAUSE = 30.0
#: Upper bound of the pause between two looks at an unreachable broker, seconds.
MAX_KAFKA_PAUSE = 5.0
#: Upper bound of the pause while an outcome Kafka gave waits for its database: the
#: claim's lease runs meanwhile, and the rows go out again once it has run out.
KEPT_PAUSE = 2.0


class Outages:
    """Which of the relay's databases, and whether Kafka, may be asked now."""

    def __init__(self, sender: Sender, *, interval: float, burst: bool) -> None:
        self.sender = sender
        self.interval = interval
        self.burst = burst
        #: Failed looks at a database (in burst mode, the first drops it from the run).
        self.errors = 0
        #: Databases a burst gave up on (claims; the outcomes kept there are still written).
        self.broken: set[str] = set()
        self._db_failures: dict[str, int] = {}
        self._db_retry_at: dict[str, float] = {}
        self._db_down_since: dict[str, float] = {}
        self.kafka_failures = 0
        self.kafka_retry_at = 0.0

    # ------------------------------------------------------------------ databases

    def database_usable(self, alias: str) -> bool:
        """``alias`` may be asked for a claim now."""
        return alias not in self.broken and not self.database_paused(alias)

    def database_paused(self, alias: str) -> bool:
        """``alias`` failed and its pause is not over (to claim, or to write an outcome)."""
        return time.monotonic() < self._db_retry_at.get(alias, 0.0)

    def database_failed(self, alias: str) -> None:
        # A database that went away: its rows stay leased or pending and are retried
        # when it is back; the other databases go on meanwhile.
        # (The database thread closed its connection: the next job opens a fresh one.)
        if self.burst:
            self.broken.add(alias)
        if self.database_paused(alias):
            logger.debug("outbox relay: database %r failed again, within its pause", alias)
            return
        self.errors += 1
        failures = self._db_failures.get(alias, 0) + 1
        self._db_failures[alias] = failures
        delay = backoff_delay(failures, max(self.interval, 0.5), MAX_PAUSE)
        self._db_retry_at[alias] = time.monotonic() + delay
        if failures == 1:
            self._db_down_since[alias] = time.monotonic()
            logger.exception("outbox relay: database %r failed; retrying in %.1fs", alias, delay)
        else:
            logger.debug(
                "outbox relay: database %r still fails (look %d); next look in %.1fs",
                alias,
                failures,
                delay,
                exc_info=True,
            )

    def look_again_within(self, alias: str, seconds: float) -> None:
        """Shorten the pause of ``alias`` to end within ``seconds`` from now."""
        if alias in self._db_retry_at:
            limit = time.monotonic() + seconds
            self._db_retry_at[alias] = min(self._db_retry_at[alias], limit)

    def database_ok(self, alias: str) -> None:
        failures = self._db_failures.pop(alias, None)
        if failures:
            down = time.monotonic() - self._db_down_since.pop(alias, time.monotonic())
            logger.info(
                "outbox relay: database %r answers again (after %.1fs, %d failed look(s))",
                alias,
                down,
                failures,
            )
        self._db_retry_at.pop(alias, None)

    def waiting_for(self, alias: str) -> bool:
        """``alias`` failed and is to be asked again (not given up on)."""
        return alias not in self.broken and alias in self._db_retry_at

    def database_retry_times(self, kept: Collection[str] = ()) -> list[float]:
        """When the databases that failed are asked again (``time.monotonic()``): to
        claim (those not given up on), or to write the outcomes ``kept`` for them."""
        return [t for a, t in self._db_retry_at.items() if a not in self.broken or a in kept]

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
