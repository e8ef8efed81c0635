"""What the outbox consumer asks of its kafka-python consumer, beyond ``poll()``.

Owns the commit of offsets (and ``CommitOnRevoke``, the commit before the group takes
partitions away), the lag and "caught up" readings, the topics the
cluster lacks, and ``read_error_at``: the error a record meets when read alone.
The consumer itself is built in ``kafka/kafka_python.py``.

Imports kafka-python's structs and listener, ``kafka/config.py``, ``kafka/errors.py`` and
``kafka/kafka_python.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kafka import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

from django_outbox.kafka.config import redact
from django_outbox.kafka.errors import is_transport_error
from django_outbox.kafka.kafka_python import build_probe_consumer

if TYPE_CHECKING:
    from kafka import KafkaConsumer

logger = logging.getLogger("django_outbox.consumer")


class CommitOnRevoke(AsyncConsumerRebalanceListener):
    """Commits the handled offsets of partitions before the group takes them away.

    ``take(partitions)`` returns, and forgets, the offsets to commit for those
    partitions; ``assigned(partitions)`` hears of each new assignment. kafka-python
    runs these hooks on its IO thread, while ``poll()`` waits in the caller's: a
    blocking ``commit()`` there would raise, so the commit is awaited instead.
    """

    def __init__(
        self,
        take: Callable[[set[TopicPartition]], dict[TopicPartition, int]],
        assigned: Callable[[set[TopicPartition]], None],
    ) -> None:
        self.take = take
        self.assigned = assigned
        self.consumer: Any = None  # set by kafka_python.build_group_consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        offsets = self.take(set(revoked))
        if not offsets or self.consumer is None:
            return
        try:
            await self.consumer.commit_async(
                {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
            )
        except Exception as exc:  # their next owner reads them again, finds them handled
            logger.warning(
                "outbox consumer: commit before giving up %s failed (%s: %s); records will repeat",
                partition_names(offsets),
                type(exc).__name__,
                redact(str(exc)),
            )
            return
        logger.info("outbox consumer: committed %s before giving them up", _offset_names(offsets))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.assigned(set(assigned))

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Evicted: the group gave them away already, a commit would be refused.
        offsets = self.take(set(lost))
        logger.warning(
            "outbox consumer: partitions %s lost (session timed out?); %s",
            partition_names(lost) or "none",
            "their next owner reads the records since the last commit again"
            if offsets
            else "nothing was left to commit",
        )


def partition_names(partitions: Any) -> str:
    """``topic-0, topic-1``: partitions for a log line."""
    return ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(partitions))


def _offset_names(offsets: dict[TopicPartition, int]) -> str:
    return ", ".join(f"{tp.topic}-{tp.partition}@{offsets[tp]}" for tp in sorted(offsets))


def commit_offsets(
    consumer: KafkaConsumer, offsets: dict[TopicPartition, int], timeout_ms: int = 10_000
) -> None:
    """Commit synchronously, for each partition, the offset of the next record to read.

    Raises ``CommitFailedError`` when the group rebalanced meanwhile, and
    ``KafkaTimeoutError`` when the coordinator does not answer within ``timeout_ms``.
    """
    consumer.commit(
        {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()},
        timeout_ms=timeout_ms,
    )


def consumer_lag(consumer: KafkaConsumer) -> int | None:
    """Records between the position and the last known end of the assigned partitions.

    From the consumer's last fetch responses, without a request; None before any fetch.
    """
    lag, known = 0, False
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        position = consumer.position(tp, timeout_ms=1000)
        if end is not None and position is not None:
            lag, known = lag + max(end - position, 0), True
    return lag if known else None


def caught_up(consumer: KafkaConsumer, timeout_ms: int = 5000) -> bool:
    """True when every assigned partition was read up to its end offset (asks the broker)."""
    assigned = list(consumer.assignment())
    if not assigned:
        return False
    for tp in assigned:  # cheap first: the last fetch already says so
        end = consumer.highwater(tp)
        position = consumer.position(tp, timeout_ms=timeout_ms)
        if position is None or (end is not None and position < end):
            return False
    ends = consumer.end_offsets(assigned, timeout_ms=timeout_ms)
    return all(
        (position := consumer.position(tp, timeout_ms=timeout_ms)) is not None and position >= end
        for tp, end in ends.items()
    )


def missing_topics(consumer: KafkaConsumer, topics: list[str]) -> list[str]:
    """The ``topics`` the cluster has no partitions for; refreshes the consumer's metadata.

    Called before the first poll, so that the group's assignment sees every topic
    (a join made before the metadata arrived assigns nothing until its next refresh).
    """
    return [topic for topic in topics if not consumer.partitions_for_topic(topic)]


def read_error_at(tp: TopicPartition, offset: int, timeout: float = 5.0) -> BaseException | None:
    """The error kafka-python meets reading the record at ``offset`` of ``tp``, if any.

    A throwaway consumer outside any group reads that one position, so that the
    consumer's own client (its assignment, positions, fetch buffers) is left alone.
    None when the record reads fine, or when there is no record there (yet).
    """
    probe = build_probe_consumer()
    try:
        probe.assign([tp])
        probe.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if probe.poll(timeout_ms=500, max_records=1):
                    return None
            except Exception as exc:
                if is_transport_error(exc):
                    raise
                return exc
        return None
    finally:
        probe.close(autocommit=False, timeout_ms=1000)
