"""The delivery core: claimed rows -> Kafka records -> one outcome per row -> write-back.

Everything that sends outbox rows to Kafka goes through this module (today the
relay is the only sender). Its rules:

- *Per row, never per batch.* Building a record (encoding the key, payload and
  headers) happens row by row; a row that cannot become a record is dead at once
  with the reason, and the rest of the batch goes on.
- *Give up only on a definite answer.* A row dies when the record itself is at
  fault (confirmed poison: too large for the topic, invalid topic), or when it is out
  of retries and Kafka gave a definite error. No answer in time, a passing error
  or an unreachable broker never kill a row: the record may be in Kafka already, and
  the consumer drops a duplicate.
- *Poison is confirmed on a producer known to be healthy.* A broker-side rejection
  leaves kafka-python's idempotent producer failing every batch in flight with the
  same error. Each suspect is sent again alone, on a fresh producer; a producer that
  failed a suspect is discarded before the next suspect is tried, so that one real
  poison row cannot make innocent rows look guilty.
- *A producer that failed is never trusted again.* After a fatal error, or a batch
  that got no acknowledgement at all, the producer is closed and a new one built.
- *The write-back is fenced* on the claim's lease (``models.OutboxMessageQuerySet``),
  and retried on a fresh connection when the database fails: an acknowledged batch
  is recorded, not sent again once the lease runs out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django_outbox import kafka
from django_outbox.exceptions import describe
from django_outbox.models.claiming import Claim
from django_outbox.ops import tracing

logger = logging.getLogger(__name__)

#: Seconds a burst lets a row of unknown fate wait before it is due again (no attempt
#: counted), so the burst ends while Kafka is away; the steady relay makes it due at
#: once, so that no later row of its key is due before it (``keyorder``).
UNREACHABLE_DELAY = 1.0


class RecordError(Exception):
    """An outbox row that cannot be turned into a Kafka record (its fault, for good)."""


def is_final(outcome: BaseException) -> bool:
    """The row itself is at fault, for good: it cannot become a record, or is poison."""
    return isinstance(outcome, RecordError) or kafka.is_poison(outcome)


def build_record(row: Any, alias: str) -> kafka.OutboxRecord:
    """The Kafka record of one claimed row; raises ``RecordError`` if there can be none."""
    try:
        return kafka.OutboxRecord(
            row.topic,
            row.message_key.encode(),
            row.payload.encode(),
            kafka.outbox_headers(row.id, row.event_type, row.payload, alias),
        )
    except Exception as exc:  # e.g. a lone surrogate: not encodable as UTF-8
        raise RecordError(f"cannot build the Kafka record: {describe(exc)}") from exc


@dataclass
class Prepared:
    """A claim and its records; rows that could not become records are in ``errors``."""

    claim: Claim
    #: Indexes into ``claim.rows`` of the records in ``records``, in the same order.
    indexes: list[int]
    records: list[kafka.OutboxRecord]
    errors: dict[int, BaseException] = field(default_factory=dict)


def prepare(claim: Claim) -> Prepared:
    """Build the records of ``claim`` row by row (a bad row never fails the batch)."""
    prepared = Prepared(claim, [], [])
    alias = claim.alias
    for index, row in enumerate(claim.rows):
        try:
            record = build_record(row, alias)
        except RecordError as exc:
            prepared.errors[index] = exc
            continue
        prepared.indexes.append(index)
        prepared.records.append(record)
    return prepared


@dataclass
class InFlight:
    """A prepared batch handed to the producer; its outcome is not recorded yet."""

    prepared: Prepared
    sending: kafka.Sending
    producer: Any

    @property
    def claim(self) -> Claim:
        return self.prepared.claim

    @property
    def failed_early(self) -> bool:
        return bool(self.prepared.errors) or self.sending.failed_early


@dataclass
class Settled:
    """What became of one batch, as recorded (or to be recorded) in the database."""

    claim: Claim
    outcomes: list[BaseException | None]
    #: No record was acknowledged and every failure was of unknown fate: Kafka looks
    #: unreachable. The rows are released without counting an attempt.
    unreachable: bool = False
    #: Per row, the (partition, offset) of Kafka's ack, when the client said.
    positions: list[tuple[int, int] | None] = field(default_factory=list)

    def position(self, index: int) -> tuple[int, int] | None:
        return self.positions[index] if index < len(self.positions) else None

    @property
    def acked(self) -> int:
        return self.outcomes.count(None)


class Sender:
    """The relay's producer (``kafka.build_relay_producer``), replaced when it cannot be
    trusted any more."""

    def __init__(self, producer_options: dict[str, Any] | None = None) -> None:
        self.producer_options = dict(producer_options or {})
        self._producer: Any = None
        #: Asked while waiting for acks: a moment to stop waiting at (worker stopping).
        self.stopping: Callable[[], float | None] | None = None

    # -------------------------------------------------------------------- producer

    def bootstrap_servers(self) -> list[str]:
        servers = kafka.producer_config(**self.producer_options)["bootstrap_servers"]
        return [servers] if isinstance(servers, str) else list(servers)

    def producer(self) -> Any:
        """The producer, built on first use; raises at once when no broker listens.

        A socket probe first: kafka-python would block ``bootstrap_timeout_ms``
        (unresponsive to a stop request) before it says the same.
        """
        if self._producer is None:
            servers = self.bootstrap_servers()
            if len(kafka.unreachable_brokers(servers)) == len(servers):
                raise kafka.KafkaConnectionError(f"broker {', '.join(servers)} unreachable")
            self._producer = kafka.build_relay_producer(**self.producer_options)
        return self._producer

    def discard(self, producer: Any = None) -> None:
        """Close the producer (``producer``: only if it is still the current one)."""
        if producer is not None and producer is not self._producer:
            return
        current, self._producer = self._producer, None
        if current is not None:
            kafka.close_producer(current, timeout=0)

    def close(self, timeout: float = 10.0) -> None:
        current, self._producer = self._producer, None
        if current is not None:
            kafka.close_producer(current, timeout=timeout)

    # -------------------------------------------------------------------- a batch

    def send(self, prepared: Prepared, budget: float) -> InFlight:
        """Hand ``prepared`` to the producer; acks are awaited within ``budget`` seconds."""
        try:
            producer = self.producer()
        except Exception as exc:  # broker unreachable at start-up, bad options
            logger.warning("outbox: cannot build the Kafka producer: %s", describe(exc))
            sending = kafka.Sending(len(prepared.records), time.monotonic() + budget, budget)
            sending.outcomes[:] = [exc] * len(prepared.records)
            return InFlight(prepared, sending, None)
        return InFlight(prepared, kafka.send_batch(producer, prepared.records, budget), producer)

    def settle(self, in_flight: InFlight, *, flush: bool = True) -> Settled:
        """Wait for the acks of ``in_flight``, confirm poison, and say what became of each row.

        Never raises: whatever the client throws becomes the outcome of the records
        it concerns.
        """
        prepared, sending = in_flight.prepared, in_flight.sending
        if sending.futures and in_flight.producer is not None:
            try:
                record_outcomes = kafka.await_acks(
                    in_flight.producer, sending, flush=flush, cutoff=self.stopping
                )
            except Exception as exc:  # the client broke while waiting: nothing is known
                logger.warning("outbox: waiting for Kafka's acks failed: %s", describe(exc))
                record_outcomes = [
                    exc if outcome is None else outcome for outcome in sending.outcomes
                ]
                self.discard(in_flight.producer)
        else:
            record_outcomes = list(sending.outcomes)
        positions: list[tuple[int, int] | None] = [None] * len(prepared.claim.rows)
        if sending.futures and in_flight.producer is not None:
            acked = kafka.acked_positions(in_flight.producer, sending)
            for index, position in zip(prepared.indexes, acked, strict=True):
                positions[index] = position
        record_outcomes = self._confirm_poison(in_flight, record_outcomes)
        outcomes: list[BaseException | None] = [None] * len(prepared.claim.rows)
        for index, error in prepared.errors.items():
            outcomes[index] = error
        for index, outcome in zip(prepared.indexes, record_outcomes, strict=True):
            outcomes[index] = outcome
        sent = [outcomes[i] for i in prepared.indexes]
        unreachable = bool(sent) and all(
            outcome is not None and kafka.is_transport_error(outcome) for outcome in sent
        )
        if unreachable or any(
            outcome is not None and not kafka.is_transport_error(outcome) for outcome in sent
        ):
            # No ack at all (a producer that lived through an outage can stay wedged),
            # or a definite error (idempotence state lost, authorization): start afresh.
            self.discard(in_flight.producer)
        tracing.record_sends(prepared.records, record_outcomes, sending.deadline - sending.timeout)
        return Settled(prepared.claim, outcomes, unreachable, positions)

    def _confirm_poison(
        self, in_flight: InFlight, outcomes: list[BaseException | None]
    ) -> list[BaseException | None]:
        suspects = [i for i, o in enumerate(outcomes) if o is not None and kafka.is_poison(o)]
        if not suspects:
            return outcomes
        self.discard(in_flight.producer)  # it may fail everything from now on
        outcomes = list(outcomes)
        deadline = in_flight.sending.deadline
        probe: Any = None
        confirmed = 0
        try:
            for index in suspects:
                left = deadline - time.monotonic()
                if left <= 0:
                    outcomes[index] = kafka.NotSent(
                        f"not confirmed as poison in time ({outcomes[index]!r})"
                    )
                    continue
                if probe is None:
                    try:
                        probe = kafka.build_relay_producer(
                            **{**self.producer_options, "linger_ms": 0}
                        )
                    except Exception as exc:
                        outcomes[index] = kafka.NotSent(
                            f"not confirmed as poison ({describe(exc)}); will retry"
                        )
                        continue
                record = in_flight.prepared.records[index]
                try:
                    (outcomes[index],) = kafka.send_records(probe, [record], max(left, 0.5))
                except Exception as exc:  # the probe broke: unknown, not poison
                    outcomes[index] = kafka.NotSent(f"not confirmed as poison: {describe(exc)}")
                error = outcomes[index]
                if error is not None:
                    if kafka.is_poison(error):
                        confirmed += 1
                    # A probe that failed a record is not trusted for the next one.
                    kafka.close_producer(probe, timeout=0)
                    probe = None
        finally:
            if probe is not None:
                kafka.close_producer(probe, timeout=0)
        logger.info(
            "outbox: %d suspected poison row(s) on %r sent again alone: %d confirmed",
            len(suspects),
            in_flight.claim.alias,
            confirmed,
        )
        return outcomes
