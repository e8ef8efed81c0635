"""Offset commits: only for records whose outcome is recorded, partition by partition.

The position of each partition moves past a record once its outcome is recorded
(``advance``); the offsets to commit gather until the loop commits them, once per
``commit_interval`` and after a poll that came back empty. A commit that fails
keeps its offsets for the next one; one the broker refuses is handed to the loop,
which pauses (``refused``). After an error mid-poll, what has no recorded outcome is
read again (``rewind``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from django_outbox import kafka
from django_outbox.consumer.records import Delivery
from django_outbox.consumer.stats import ConsumerStats

logger = logging.getLogger("django_outbox.consumer")


class Offsets:
    """The consumer's positions and the offsets it has still to commit."""

    def __init__(
        self,
        commit_interval: float,
        stats: Callable[[], ConsumerStats],
        unblocked: Callable[[str], None],
    ) -> None:
        self.commit_interval = commit_interval
        self._stats = stats
        #: Called after a commit went through: the broker may have refused the last one.
        self._unblocked = unblocked
        self.last_commit = time.monotonic()
        #: Per partition, the offset to commit (the next after the last recorded outcome).
        self.uncommitted: dict[Any, int] = {}
        #: Per partition, the next offset after the last recorded outcome.
        self.positions: dict[Any, int] = {}
        #: The error of a commit the broker refused, until the loop takes it.
        self.refused: BaseException | None = None

    def advance(self, delivery: Delivery) -> None:
        """``delivery``'s outcome is recorded: its partition may commit past it."""
        tp = kafka.TopicPartition(delivery.topic, delivery.partition)
        self.uncommitted[tp] = self.positions[tp] = delivery.offset + 1

    def give_up(self, partitions: set[Any]) -> dict[Any, int]:
        """The offsets to commit before ``partitions`` go to another member, forgotten here.

        Called by kafka-python while ``poll()`` waits (a rebalance, a close): the
        records of a poll are all handled or rewound by then.
        """
        for tp in partitions:
            self.positions.pop(tp, None)
        return {tp: self.uncommitted.pop(tp) for tp in partitions if tp in self.uncommitted}

    def due(self, *, idle: bool) -> bool:
        """After a poll: commit now if it came back empty or ``commit_interval`` has passed.

        Not after every poll that brought records: a commit is a round trip to the
        group coordinator (several ms), and at a trickle of records (one per poll)
        the records that arrive meanwhile wait for it. Uncommitted offsets are also
        committed before partitions are revoked and when the consumer stops; a crash
        in between only makes Kafka deliver the records again, which once-only
        handling drops.
        """
        return idle or time.monotonic() - self.last_commit >= self.commit_interval

    def take_refused(self) -> BaseException | None:
        refused, self.refused = self.refused, None
        return refused

    def rewind(self, client: Any, deliveries: Sequence[Delivery]) -> None:
        """After an error mid-poll: read again, next turn, what has no recorded outcome."""
        first: dict[Any, int] = {}
        for delivery in deliveries:
            tp = kafka.TopicPartition(delivery.topic, delivery.partition)
            if delivery.offset >= self.positions.get(tp, -1):
                first[tp] = min(first.get(tp, delivery.offset), delivery.offset)
        for tp, offset in first.items():
            try:
                client.seek(tp, offset)
            except Exception:  # no longer assigned: its next owner reads it
                pass

    def commit(self, client: Any) -> None:
        self.last_commit = time.monotonic()
        if not self.uncommitted or client is None:
            return
        offsets, self.uncommitted = self.uncommitted, {}
        try:
            kafka.commit_offsets(client, offsets)
            self._committed()
            self._unblocked("commit")
        except kafka.CommitFailedError as exc:
            # The group moved these partitions elsewhere; their new owner reads the records
            # again and finds them handled (once-only), so nothing is lost or doubled.
            logger.warning("outbox consumer: offset commit failed (%s); records will repeat", exc)
        except Exception as exc:
            # The coordinator did not answer (KafkaTimeoutError), the broker went away:
            # the offsets are kept and committed with the next ones.
            # Refused (an ACL, the group's state): kept likewise, and the loop pauses.
            for tp, offset in offsets.items():
                self.uncommitted[tp] = max(offset, self.uncommitted.get(tp, offset))
            if kafka.classify_poll_error(exc) == kafka.BLOCKED:
                self.refused = exc
                return
            logger.warning(
                "outbox consumer: offset commit failed (%s: %s); will retry",
                type(exc).__name__,
                kafka.redact(str(exc)),
            )

    def commit_quietly(self, client: Any) -> None:
        """The last commit, before the client closes: a failure is only logged."""
        if not self.uncommitted:
            return
        offsets, self.uncommitted = self.uncommitted, {}
        try:
            kafka.commit_offsets(client, offsets)
            self._committed()
        except Exception as exc:
            logger.warning("outbox consumer: final offset commit failed (%s)", exc)

    def _committed(self) -> None:
        stats = self._stats()
        stats.commits += 1
        stats.last_commit_at = time.monotonic()
