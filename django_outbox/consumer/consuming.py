"""A poll's records, chunk by chunk, and what follows each outcome.

The records of a poll are handed to ``Retrying`` in chunks of ``batch_size``; a
partition whose record is not done (stopped, the database away) keeps its later
records for the next chunk, so it keeps its order, while the other partitions go on.
Each outcome recorded moves its partition's position (``commits.Offsets``), counts in
the stats, is checked for key order, copied to the dead-letter topic if need be, and
sends its signal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django_outbox import signals
from django_outbox.consumer.commits import Offsets
from django_outbox.consumer.dead_letter import DeadLetters
from django_outbox.consumer.ordering_detector import OrderingDetector
from django_outbox.consumer.outcomes import Outcome, Result
from django_outbox.consumer.records import Delivery
from django_outbox.consumer.retrying import Retrying
from django_outbox.consumer.stats import ConsumerStats
from django_outbox.models.inbox import RejectionReason
from django_outbox.shutdown import Shutdown

logger = logging.getLogger("django_outbox.consumer")

#: The signal each outcome sends, once its chunk committed (django_outbox/signals.py).
OUTCOME_SIGNALS = {
    Outcome.HANDLED: signals.event_consumed,
    Outcome.RETRY: signals.event_failed,
    Outcome.RETRY_IN_PLACE: signals.event_failed,
    Outcome.DEAD: signals.event_dead,
    Outcome.REJECTED: signals.record_rejected,
    Outcome.FAILED: signals.record_rejected,
}


class Consuming:
    """Handles a poll's records until done, stopped or at ``max_messages``."""

    def __init__(
        self,
        *,
        sender: type,
        group: str,
        batch_size: int,
        max_messages: int | None,
        shutdown: Shutdown,
        retrying: Retrying,
        offsets: Offsets,
        dead_letters: DeadLetters,
        ordering: OrderingDetector,
        stats: Callable[[], ConsumerStats],
    ) -> None:
        #: The ``sender`` of the outcome signals: the ``Consumer`` class.
        self.sender = sender
        self.group = group
        self.batch_size = batch_size
        self.max_messages = max_messages
        self.shutdown = shutdown
        self.retrying = retrying
        self.offsets = offsets
        self.dead_letters = dead_letters
        self.ordering = ordering
        self._stats = stats
        #: While ``Consumer.handle_records`` runs: each outcome, in the order recorded.
        self.recorded: list[tuple[Delivery, Result]] | None = None

    @property
    def stats(self) -> ConsumerStats:
        return self._stats()

    def limit_reached(self) -> bool:
        return self.max_messages is not None and self.stats.records >= self.max_messages

    def consume(self, deliveries: list[Delivery]) -> None:
        """Handle a poll's records, chunk by chunk, until done, stopped or at the limit."""
        waiting = deliveries
        handling = self.retrying.handling
        handling.capped_chunk = None  # learnt again each poll: the handlers may differ
        while waiting and not self.shutdown.requested and not self.limit_reached():
            size = min(self.batch_size, handling.capped_chunk or self.batch_size)
            if self.max_messages is not None:
                size = min(size, self.max_messages - self.stats.records)
            chunk, waiting = waiting[:size], waiting[size:]
            later: list[Delivery] = []
            stopped: set[tuple[str, int]] = set()  # partitions whose next record is not done
            for delivery, result in zip(chunk, self.retrying.handle_chunk(chunk), strict=True):
                partition = (delivery.topic, delivery.partition)
                if partition in stopped:
                    later.append(delivery)
                    continue
                if result is not None and result.outcome is Outcome.RETRY_IN_PLACE:
                    # The rest of its partition waits in ``later``, so it keeps its order.
                    result = self.retrying.handle(delivery, result)
                if result is None:
                    later.append(delivery)
                    stopped.add(partition)
                    continue
                self.record(delivery, result)
            waiting = later + waiting

    def record(self, delivery: Delivery, result: Result) -> None:
        """``result`` is ``delivery``'s outcome, recorded: count it, pass it, say it."""
        self.stats.add(result)
        if self.recorded is not None:
            self.recorded.append((delivery, result))
        self.offsets.advance(delivery)
        logger.debug("record %s: %s", delivery, result.outcome.value)
        self.dead_letters.add(delivery, result)
        self.stats.ordering_violations += self.ordering.check(delivery, result.outcome)
        # An unknown event type is skipped, and its record kept as rejected: reason set.
        signal = OUTCOME_SIGNALS.get(result.outcome, result.reason and signals.record_rejected)
        if signal:
            extra = {} if signal is signals.event_consumed else {"error": result.error}
            signals.send(
                signal,
                self.sender,
                group=self.group,
                record=delivery,
                reason=result.reason,
                **extra,
            )

    def reject_unreadable(self, client: Any, tp: Any, offset: int, exc: BaseException) -> None:
        """Keep the record at ``offset`` as rejected, and pass it."""
        delivery = Delivery(tp.topic, tp.partition, offset, None, None, ())
        error = f"kafka-python cannot read this record: {type(exc).__name__}: {exc}"
        result = self.retrying.retrying_database(
            delivery,
            lambda _fail: self.retrying.store_rejected(
                delivery, RejectionReason.MALFORMED, error, exc
            ),
        )
        if result is None:
            return  # stopped while the database was away; read again next time
        client.seek(tp, offset + 1)
        self.record(delivery, result)
