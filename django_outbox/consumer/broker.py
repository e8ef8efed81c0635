"""Whether the broker answers, as the consumer's loop sees it.

kafka-python reconnects by itself, and while the broker is away a poll often just
comes back empty: an idle consumer asks the broker's port itself every few seconds,
says at once that it is unreachable, and, once it answers again, lets the loop
replace a client that still brings nothing (a client wedged by the outage).
"""

from __future__ import annotations

import logging
import time

from django_outbox import kafka

logger = logging.getLogger("django_outbox.consumer")


class BrokerWatch:
    """Outage bookkeeping of one consumer: when trouble began, when the broker came back."""

    def __init__(self, probe_interval: float = 5.0, stall_timeout: float = 30.0) -> None:
        self.probe_interval = probe_interval
        self.stall_timeout = stall_timeout
        self.trouble_since: float | None = None
        self.reachable_since: float | None = None
        self.last_probe = 0.0

    def failed(self, exc: BaseException, delay: float) -> None:
        """Kafka could not be reached (an error out of the client): log it at once."""
        self.reachable_since = None
        if self.trouble_since is None:
            self.trouble_since = time.monotonic()
        unreachable = kafka.unreachable_brokers() or kafka.bootstrap_servers()
        logger.warning(
            "outbox consumer: broker %s unreachable (%s: %s); retrying in %.1f s",
            ", ".join(unreachable),
            type(exc).__name__,
            exc,
            delay,
        )

    def polled(self, now: float, got_records: bool) -> bool:
        """After a poll that did not fail; True when the client should be replaced (once)."""
        if got_records:
            if self.trouble_since is not None:
                logger.info("outbox consumer: receiving records again")
            self.trouble_since = self.reachable_since = None
            return False
        if now - self.last_probe < self.probe_interval:
            return False
        self.last_probe = now
        unreachable = kafka.unreachable_brokers()
        if len(unreachable) == len(kafka.bootstrap_servers()):
            if self.trouble_since is None:
                self.trouble_since = now
                logger.warning(
                    "outbox consumer: broker %s unreachable; waiting for it", ", ".join(unreachable)
                )
            self.reachable_since = None
            return False
        if self.trouble_since is None:
            return False
        if self.reachable_since is None:
            self.reachable_since = now
            logger.info("outbox consumer: broker reachable again")
            return False
        if now - self.reachable_since < self.stall_timeout:
            return False
        self.trouble_since = self.reachable_since = None
        return True


#: Pauses while blocked: from the first, doubling, up to the last (seconds).
BLOCKED_FIRST_DELAY = 1.0
BLOCKED_MAX_DELAY = 30.0
#: While blocked, the ERROR line again this often (seconds), to whoever reads the log now.
BLOCKED_REMINDER = 30.0


class Blockage:
    """The broker refuses the consumer (``kafka.BLOCKED``): rights, settings, group state.

    Not a fact about any record: nothing is skipped and nothing committed while it
    lasts. Says so at ERROR once per change (another error), and again every
    ``BLOCKED_REMINDER`` seconds, naming the fix; says "resumed" once it is over.
    """

    def __init__(self, topics: list[str], group: str) -> None:
        self.topics = topics
        self.group = group
        #: The error's class name while blocked, else None; since when (``time.time()``).
        self.error: str | None = None
        self.since: float | None = None
        self.where = ""
        self.turns = 0
        self._last_log = 0.0

    @property
    def active(self) -> bool:
        return self.error is not None

    def blocked(self, exc: BaseException, where: str) -> float:
        """Note one refusal (``where``: "poll" or "commit"); return the pause before the next."""
        name = type(exc).__name__
        now = time.monotonic()
        changed = name != self.error or where != self.where
        if self.error is None:
            self.since = time.time()
        self.error, self.where = name, where
        self.turns += 1
        delay = min(BLOCKED_FIRST_DELAY * 2 ** min(self.turns - 1, 10), BLOCKED_MAX_DELAY)
        if changed or now - self._last_log >= BLOCKED_REMINDER:
            self._last_log = now
            logger.error(
                "outbox consumer: blocked: %s refused by the broker (%s: %s) for %.0f s; "
                "nothing is skipped or committed meanwhile; to fix: %s; retrying in %.0f s",
                where,
                name,
                kafka.redact(str(exc)),
                time.time() - (self.since or time.time()),
                kafka.blocked_fix(exc, self.topics, self.group),
                delay,
                extra={"blocked_by": name, "blocked_where": where},
            )
        return delay

    def cleared(self, where: str) -> bool:
        """A ``where`` that worked; True when that ended the blockage (logged "resumed")."""
        if self.error is None or where != self.where:
            return False
        logger.warning(
            "outbox consumer: resumed: %s works again after %.0f s blocked by %s",
            where,
            time.time() - (self.since or time.time()),
            self.error,
        )
        self.error = self.since = None
        self.where, self.turns, self._last_log = "", 0, 0.0
        return True
