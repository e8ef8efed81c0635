"""Signals sent once an outcome is written (``django.dispatch``; cheap when nobody listens).

Publishing side, sent by ``publish_event()`` (``sender`` is ``OutboxMessage``):

``event_written(alias, message, event)``
    The row ``message`` (the ``Event`` ``event``) was inserted through database
    ``alias``, in the caller's transaction: it is *not committed yet* (register
    ``transaction.on_commit(..., using=alias)`` to act on the commit).
    ``django_outbox.testing.capture_events()`` listens to it.

Relay side, one send per batch and outcome (``sender`` is ``delivery.Sender``), after the
write-back; ``alias`` is the database, ``rows`` the claimed rows
(``claiming.ClaimedRow``: ``id``, ``event_type``, ``topic``, ``message_key``,
``payload``, ``retry_count``, ``max_retry``, ``created_at``):

``event_published(alias, rows)``
    Kafka acknowledged these rows; they are ``published``.
``event_failed(alias, rows, errors)``
    Not delivered, to be tried again (``errors``: one text per row, starting with the
    exception's type: ``"KafkaTimeoutError: ..."``). Also sent while Kafka is
    unreachable, when no attempt is counted.
``event_dead(alias, rows, errors)``
    These rows are ``dead``: poison, or out of retries on a definite answer.

A write-back is fenced on the relay's lease: a row whose lease ran out meanwhile is
still listed (another relay sends it again), so a receiver may see a row twice:
treat these as at-least-once notifications, keyed by the outbox id.

Consumer side, one send per record (``sender`` is the ``Consumer`` class), after its
chunk's transaction committed; ``group`` is the consumer group, ``record`` the
``consumer.records.Delivery`` (topic, partition, offset, key, value, headers,
timestamp), ``reason`` the ``RejectionReason`` of a rejected record (empty otherwise):

``event_consumed(group, record)``
    The handler ran and its effects committed.
``event_failed(group, record, error)``
    The handler raised; the event will be delivered again.
``event_dead(group, record, error)``
    The handler raised and the row ran out of retries.
``on_commit_failed(events, alias, error)``
    A callback a handler registered with ``transaction.on_commit()`` raised after its
    chunk committed (``events``: the ``Event`` list of that handler call; ``error``: the
    exception). The event stays consumed; the other callbacks still ran. Sent with
    ``sender`` ``"consumer"``, from the committing thread.
``record_rejected(group, record, error, reason)``
    A record nobody can handle (malformed, without headers, of an unknown event type,
    or an inbox event that kept failing): it is stored as a ``RejectedRecord``.

Receivers run in the worker's thread (the relay's: its database thread, right after
the write-back): keep them short, and never raise (an exception is logged and
ignored: the outcome is written already).
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import Signal

logger = logging.getLogger(__name__)

event_written = Signal()
event_published = Signal()
event_failed = Signal()
event_dead = Signal()
event_consumed = Signal()
record_rejected = Signal()
on_commit_failed = Signal()


def send(signal: Signal, sender: Any, **arguments: Any) -> None:
    """Send ``signal`` if anyone listens; a receiver's exception is logged, never raised."""
    if not signal.has_listeners(sender):
        return
    for receiver, outcome in signal.send_robust(sender, **arguments):
        if isinstance(outcome, Exception):
            logger.error(
                "outbox: a receiver of a django_outbox signal failed: %r",
                receiver,
                exc_info=outcome,
            )
