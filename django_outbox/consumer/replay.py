"""Replaying rejected records, for an operator (the admin's actions).

Two ways, each marking the record (``replayed_at``, ``replay_outcome``, ``replay_note``):

- ``resend``: the stored key, value and headers go back to their topic, as they
  were, on a producer of their own (``kafka.send_records``); every consumer group of the
  topic gets the record again. Never inside a database transaction: the records
  are read first, sent, then marked.
- ``rehandle``: the record runs through this project's handler now, in this
  process, through the consumer's own handling (``Handling.handle``, the same
  once-only rules: a record handled before is a duplicate). A record rejected again
  updates its entry (its reason and error); a handler that fails again counts an
  attempt on the outbox row, as in the consumer.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

from django.db import connections, models
from django.utils import timezone

from django_outbox import kafka
from django_outbox.consumer.handling import Handling, Outcome
from django_outbox.consumer.records import Delivery
from django_outbox.exceptions import describe
from django_outbox.models.inbox import RejectedRecord, ReplayOutcome, decode_headers

logger = logging.getLogger("django_outbox.consumer")

#: Seconds a resend waits for Kafka's acknowledgements.
RESEND_TIMEOUT = 15.0


@dataclass(frozen=True)
class Replayed:
    """What a replay did: how many records reached each outcome."""

    done: int = 0
    failed: int = 0


def _mark(record: RejectedRecord, outcome: str, note: str) -> None:
    record.replayed_at = timezone.now()
    record.replay_outcome = outcome
    record.replay_note = note
    record.save(update_fields=["replayed_at", "replay_outcome", "replay_note"])


def delivery_of(record: RejectedRecord) -> Delivery:
    """The Kafka record ``record`` keeps, as the consumer got it."""
    return Delivery(
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.raw_key,
        value=record.raw_value,
        headers=tuple(decode_headers(record.headers or [])),
    )


def _not_in_transaction(alias: str) -> None:
    if connections[alias].in_atomic_block:
        raise RuntimeError(
            "replaying rejected records sends to Kafka: call it outside transaction.atomic() "
            "(and without ATOMIC_REQUESTS for the admin's database)"
        )


def resend(records: Iterable[RejectedRecord] | models.QuerySet[RejectedRecord]) -> Replayed:
    """Send the stored records back to their topics; mark each with what Kafka answered."""
    chosen = list(records)
    if not chosen:
        return Replayed()
    for alias in {record._state.db or "default" for record in chosen}:
        _not_in_transaction(alias)
    outgoing = [
        kafka.OutboxRecord(
            record.topic,
            # kafka-python sends a None key as "no key", as the record had.
            cast(bytes, record.raw_key),
            cast(bytes, record.raw_value),
            cast("list[tuple[str, bytes]]", decode_headers(record.headers or [])),
        )
        for record in chosen
    ]
    try:
        producer = kafka.build_producer()
    except Exception as exc:
        outcomes: list[BaseException | None] = [exc] * len(chosen)
    else:
        try:
            outcomes = kafka.send_records(producer, outgoing, RESEND_TIMEOUT)
        finally:
            kafka.close_producer(producer)
    done = failed = 0
    for record, outcome in zip(chosen, outcomes, strict=True):
        if outcome is None:
            _mark(record, ReplayOutcome.SENT, f"sent to {record.topic} again")
            done += 1
        else:
            _mark(record, ReplayOutcome.FAILED, f"not sent: {describe(outcome)}")
            failed += 1
            logger.warning("replay of rejected record %s not sent: %s", record, outcome)
    return Replayed(done, failed)


def rehandle(records: Iterable[RejectedRecord] | models.QuerySet[RejectedRecord]) -> Replayed:
    """Run the stored records through this project's handlers now; mark each with the outcome."""
    done = failed = 0
    handlings: dict[str, Handling] = {}
    for record in list(records):
        alias = record._state.db or "default"
        handling = handlings.get(f"{record.consumer_group}\0{alias}")
        if handling is None:
            handling = Handling(record.consumer_group, inbox_database=alias)
            handlings[f"{record.consumer_group}\0{alias}"] = handling
        try:
            result = handling.handle(delivery_of(record), database_errors_fail=True)
        except Exception as exc:  # our bookkeeping failed (database away): say so, go on
            _mark(record, ReplayOutcome.FAILED, f"not handled: {describe(exc)}")
            failed += 1
            continue
        if result.outcome is Outcome.HANDLED:
            _mark(record, ReplayOutcome.HANDLED, "handled")
            done += 1
        elif result.outcome is Outcome.DUPLICATE:
            _mark(record, ReplayOutcome.DUPLICATE, "handled before: nothing done")
            done += 1
        else:
            record.refresh_from_db(fields=["reason", "error"])  # rejected again: updated
            _mark(record, ReplayOutcome.FAILED, f"{result.outcome.value}: {result.error}"[:2000])
            failed += 1
    return Replayed(done, failed)
