"""Records handed to a producer, and their acks awaited against a deadline.

Owns ``send_batch`` (hand records over, return at once), ``await_acks`` (one outcome
per record, never an ack assumed), ``send_records`` (both in one call) and the
exceptions of a record not sent or not acknowledged in time. A librdkafka producer
(``confluent.Producer``) is handed the same work through its ``send_into`` and
``await_into``.

Imports kafka-python's ``KafkaTimeoutError`` only (the base of its two exceptions):
it is given a producer, it never builds one. A producer's first records to a topic
wait for that topic's metadata (``metadata.learn_topics``), not kafka-python's backoff.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from kafka.errors import KafkaTimeoutError

from django_outbox.kafka import metadata

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from django_outbox.kafka.records import OutboxRecord


class NotAcknowledged(KafkaTimeoutError):
    """Kafka gave no answer for a record within the time the caller could wait."""


class NotSent(KafkaTimeoutError):
    """A record was not handed to the producer: the time budget was spent first."""


class Sending:
    """Records handed to a producer (``send_batch``), whose acks are still to come."""

    __slots__ = ("outcomes", "futures", "deadline", "timeout")

    def __init__(self, size: int, deadline: float, timeout: float) -> None:
        #: One per record: None (acked, or not known yet) or the exception it met.
        self.outcomes: list[BaseException | None] = [None] * size
        self.futures: list[tuple[int, Any]] = []
        self.deadline = deadline
        self.timeout = timeout

    @property
    def failed_early(self) -> bool:
        """Some record failed before reaching the producer (no metadata, too large...)."""
        return any(outcome is not None for outcome in self.outcomes)


def send_batch(producer: KafkaProducer, records: Sequence[OutboxRecord], timeout: float) -> Sending:
    """Hand ``records`` to ``producer`` and return at once; ``await_acks`` collects the outcomes.

    ``timeout`` (seconds, from now) bounds both this call and the wait for acks. A
    record that fails (too large, invalid topic) fails alone. When a topic's
    metadata cannot be fetched (broker down, topic missing), the first ``send``
    blocks up to ``max_block_ms``; the other records of that topic then share its
    error instead of blocking again. Once ``timeout`` is spent, the remaining
    records are not sent (``NotSent``).
    """
    deadline = time.monotonic() + timeout
    sending = Sending(len(records), deadline, timeout)
    outcomes, futures = sending.outcomes, sending.futures
    if getattr(producer, "is_librdkafka", False):
        producer.send_into(records, outcomes, futures, deadline)
        return sending
    metadata.learn_topics(producer, {record.topic for record in records}, min(timeout, 1.0))
    unavailable: dict[str, BaseException] = {}
    send = producer.send
    for index, record in enumerate(records):
        blocked = unavailable.get(record.topic)
        if blocked is not None:
            outcomes[index] = blocked
            continue
        if time.monotonic() >= deadline:
            outcomes[index] = NotSent("not sent: the time allowed for this batch ran out")
            continue
        try:
            future = send(record.topic, value=record.value, key=record.key, headers=record.headers)
        except KafkaTimeoutError as exc:  # no metadata for this topic within max_block_ms
            unavailable[record.topic] = exc
            outcomes[index] = exc
        except Exception as exc:  # too large, invalid topic name, closed producer: this one only
            outcomes[index] = exc
        else:
            futures.append((index, future))
    return sending


def await_acks(
    producer: KafkaProducer,
    sending: Sending,
    *,
    flush: bool = True,
    cutoff: Callable[[], float | None] | None = None,
) -> list[BaseException | None]:
    """Wait for the acks of ``sending`` until its deadline; one outcome per record.

    ``None`` means Kafka acknowledged the record (acks=all); otherwise the exception
    that record met. Records not acknowledged in time get ``NotAcknowledged`` (the
    producer may still deliver them: at least once). ``flush=True`` makes the
    producer send what it holds at once (without ``linger_ms``) and waits for all
    of it: right when nothing was sent after ``sending``. With ``flush=False`` only
    these records are waited for, so a later batch may keep filling the producer.
    ``cutoff``, asked between short waits, may bring the deadline forward (a
    worker asked to stop waits a few seconds, not the whole budget). Never raises
    for the client's own errors: they become the outcomes of the records.
    """
    outcomes, futures = sending.outcomes, sending.futures

    def left() -> float:
        deadline = sending.deadline
        if cutoff is not None and (sooner := cutoff()) is not None:
            deadline = min(deadline, sooner)
        return deadline - time.monotonic()

    if getattr(producer, "is_librdkafka", False):
        producer.await_into(
            futures,
            outcomes,
            left,
            flush,
            SLICE,
            lambda: NotAcknowledged(f"no acknowledgement from Kafka within {sending.timeout:.1f}s"),
        )
        return outcomes
    if futures and flush:
        while left() > 0 and not all(future.is_done for _, future in futures):
            try:
                producer.flush(timeout=min(max(left(), 0), SLICE))
            except Exception:  # timeout, or kafka-python's UnknownError('Future not done')
                pass  # the futures still pending are read one by one below
    for index, future in futures:
        while not future.is_done and left() > 0:
            try:
                future.get(timeout=min(max(left(), 0), SLICE))
            except Exception:
                pass  # read from the future below
        if not future.is_done:
            outcomes[index] = NotAcknowledged(
                f"no acknowledgement from Kafka within {sending.timeout:.1f}s"
            )
        elif future.exception is not None:
            outcomes[index] = future.exception
    return outcomes


#: Seconds of one wait for acks, between two looks at the caller's cutoff.
def acked_positions(producer: Any, sending: Sending) -> list[tuple[int, int] | None]:
    """After ``await_acks``: one (partition, offset) per record Kafka acknowledged, else None."""
    positions: list[tuple[int, int] | None] = [None] * len(sending.outcomes)
    if getattr(producer, "is_librdkafka", False):
        for index, position in producer.positions_of(sending.futures).items():
            positions[index] = position
        return positions
    for index, future in sending.futures:
        if future.is_done and future.exception is None and future.value is not None:
            positions[index] = (future.value.partition, future.value.offset)
    return positions


SLICE = 0.25


def send_records(
    producer: KafkaProducer, records: Sequence[OutboxRecord], timeout: float
) -> list[BaseException | None]:
    """Send ``records``, wait up to ``timeout`` seconds for acks; one outcome per record.

    ``send_batch`` then ``await_acks`` (see both).
    """
    return await_acks(producer, send_batch(producer, records, timeout))
