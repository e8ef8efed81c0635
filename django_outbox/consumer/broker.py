"""Whether the broker answers, as the consumer's loop sees it.

kafka-python reconnects by itself, and while the broker is away a poll often just
comes back empty: an idle consumer asks the broker's port itself every few seconds,
says at once that it is unreachable, and, once it answers again, lets the loop
replace a client that still brings nothing (a client wedged by the outage).
"""

from __future__ import annotations

import logging
import time

from .. import kafka

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
