"""Copies, in a dead-letter topic, of the records the consumer gives up on or rejects.

Off unless ``OUTBOX_DEAD_LETTER_TOPIC`` is set (a name, or a pattern such as
``"{topic}.DLT"``; see ``topics.dead_letter_topic``). The database stays the
source of truth: the dead row, or the ``RejectedRecord``, is committed before its
copy is sent, and a copy that fails loses nothing. Which records are copied: an
outbox row's event whose handler ran out of retries (``dead``), an inbox event
given up (``failed``), a rejected record (malformed, missing headers, unreadable)
and an unknown event type (skipped, with its reason).

A copy holds the original key, value and headers, and the header names of Spring
Kafka's ``DeadLetterPublishingRecoverer`` (``kafka_dlt-*``; numbers as big-endian
binary integers, as Spring writes them), so that Spring consumers and Kafka UIs read
them; plus ``outbox_dlt_reason``. The copies of a poll are sent together, after its
outcomes are committed and before its offsets are (``DeadLetters.flush``).

A copy that fails is logged (once per topic per ``suspend_seconds``), counted
(``django_outbox_dead_letter_copies_total{outcome="failed"}``) and not sent again:
it is in the database. A topic that failed (not created, refused, no broker) is
not tried again for ``suspend_seconds``, so that a broken dead-letter topic cannot
slow the consumer down record after record: copies meanwhile are ``skipped``.
"""

from __future__ import annotations

import logging
import struct
import time
import traceback
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from django_outbox import kafka
from django_outbox.consumer.outcomes import Outcome, Result
from django_outbox.consumer.records import Delivery
from django_outbox.exceptions import MalformedEvent, UnknownEventType
from django_outbox.models.inbox import RejectionReason
from django_outbox.ops import metrics
from django_outbox.topics import dead_letter_topic

logger = logging.getLogger("django_outbox.consumer")

# Spring Kafka's header names (KafkaHeaders.DLT_*, RetryTopicHeaders).
ORIGINAL_TOPIC = "kafka_dlt-original-topic"
ORIGINAL_PARTITION = "kafka_dlt-original-partition"  # 4 bytes
ORIGINAL_OFFSET = "kafka_dlt-original-offset"  # 8 bytes
ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"  # 8 bytes, ms since the epoch
ORIGINAL_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"  # CreateTime, LogAppendTime
ORIGINAL_CONSUMER_GROUP = "kafka_dlt-original-consumer-group"
EXCEPTION_FQCN = "kafka_dlt-exception-fqcn"
EXCEPTION_CAUSE_FQCN = "kafka_dlt-exception-cause-fqcn"
EXCEPTION_MESSAGE = "kafka_dlt-exception-message"
EXCEPTION_STACKTRACE = "kafka_dlt-exception-stacktrace"
ATTEMPTS = "retry_topic-attempts"  # 4 bytes
#: This app's own: a ``RejectionReason``, or ``dead`` for an outbox row out of retries.
REASON = "outbox_dlt_reason"

#: Headers of an earlier dead-letter copy are replaced, not repeated.
HEADERS = frozenset(
    {
        ORIGINAL_TOPIC,
        ORIGINAL_PARTITION,
        ORIGINAL_OFFSET,
        ORIGINAL_TIMESTAMP,
        ORIGINAL_TIMESTAMP_TYPE,
        ORIGINAL_CONSUMER_GROUP,
        EXCEPTION_FQCN,
        EXCEPTION_CAUSE_FQCN,
        EXCEPTION_MESSAGE,
        EXCEPTION_STACKTRACE,
        ATTEMPTS,
        REASON,
    }
)

TIMESTAMP_TYPES = {0: "CreateTime", 1: "LogAppendTime"}

#: Bytes of a text header at most (a traceback's end is kept): Kafka's default record
#: limit is 1 MB, and the copy must fit beside the original value.
MAX_TEXT_BYTES = 8 * 1024

#: Seconds a flush waits for Kafka's acknowledgements at most.
SEND_TIMEOUT = 10.0
#: Seconds a dead-letter topic that failed is left alone (and its failures not logged).
SUSPEND_SECONDS = 60.0


#: What an operator does when copies fail: Kafka refuses the records, or the topic.
POISON_FIX = (
    "fix OUTBOX_DEAD_LETTER_TOPIC if Kafka refuses the name, or raise the topic's "
    "max.message.bytes if the records are too large"
)
TOPIC_FIX = (
    "create the topic (manage.py outbox_topics --create) if the broker does not create "
    "topics, grant the consumer's principal WRITE and DESCRIBE on it, check the broker"
)


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


#: For a rejection with no exception object: the class that stands for its reason.
REASON_CLASSES: dict[str, str] = {
    RejectionReason.MALFORMED: _name(MalformedEvent),
    RejectionReason.MISSING_HEADERS: _name(MalformedEvent),
    RejectionReason.UNKNOWN_EVENT_TYPE: _name(UnknownEventType),
}


def copied(result: Result) -> bool:
    """Whether a record with this outcome gets a dead-letter copy."""
    if result.outcome in (Outcome.DEAD, Outcome.FAILED, Outcome.REJECTED):
        return True
    return result.outcome is Outcome.SKIPPED and bool(result.reason)


def _text(value: str, keep_end: bool = False) -> bytes:
    data = value.encode("utf-8", "backslashreplace")
    if len(data) <= MAX_TEXT_BYTES:
        return data
    mark = b"...[clipped]"
    room = MAX_TEXT_BYTES - len(mark)
    clipped = mark + data[-room:] if keep_end else data[:room] + mark
    return clipped.decode("utf-8", "ignore").encode("utf-8")


def headers(delivery: Delivery, result: Result, group: str) -> list[tuple[str, bytes]]:
    """The copy's headers: the original ones (but earlier dead-letter ones), then these."""
    kept = [(name, value or b"") for name, value in delivery.headers if name not in HEADERS]
    added = [
        (ORIGINAL_TOPIC, delivery.topic.encode()),
        (ORIGINAL_PARTITION, struct.pack(">i", delivery.partition)),
        (ORIGINAL_OFFSET, struct.pack(">q", delivery.offset)),
    ]
    if delivery.timestamp is not None and delivery.timestamp >= 0:
        added.append((ORIGINAL_TIMESTAMP, struct.pack(">q", delivery.timestamp)))
        kind = TIMESTAMP_TYPES.get(delivery.timestamp_type or 0, "CreateTime")
        added.append((ORIGINAL_TIMESTAMP_TYPE, kind.encode()))
    added.append((ORIGINAL_CONSUMER_GROUP, _text(group)))
    failure = result.failure
    if failure is not None:
        added.append((EXCEPTION_FQCN, _name(type(failure)).encode()))
        cause = failure.__cause__ or (None if failure.__suppress_context__ else failure.__context__)
        if cause is not None:
            added.append((EXCEPTION_CAUSE_FQCN, _name(type(cause)).encode()))
        trace = "".join(traceback.format_exception(failure))
        added.append((EXCEPTION_STACKTRACE, _text(trace, keep_end=True)))
    else:
        fqcn = REASON_CLASSES.get(result.reason)
        if fqcn:
            added.append((EXCEPTION_FQCN, fqcn.encode()))
    # A rejection's error says what is wrong with the record; a handler's, what it raised.
    handler = failure is not None and result.outcome is not Outcome.REJECTED
    message = str(failure) if handler else result.error
    if message:
        added.append((EXCEPTION_MESSAGE, _text(message)))
    added.append((ATTEMPTS, struct.pack(">i", max(result.attempts, 1))))
    added.append((REASON, (result.reason or result.outcome.value).encode()))
    return kept + added


class DeadLetters:
    """One consumer's dead-letter copies: ``add`` each outcome, ``flush`` once committed."""

    def __init__(
        self,
        group: str,
        consumed: Iterable[str] = (),
        *,
        timeout: float = SEND_TIMEOUT,
        suspend_seconds: float = SUSPEND_SECONDS,
    ) -> None:
        self.group = group
        #: Topics the consumer reads: never a dead-letter topic (the copies would loop).
        self.consumed = frozenset(consumed)
        self.timeout = timeout
        self.suspend_seconds = suspend_seconds
        #: Copies by outcome (``sent``, ``failed``, ``skipped``) since the start.
        self.counts: Counter[str] = Counter()
        self._pending: list[kafka.OutboxRecord] = []
        self._producer: Any = None
        self._suspended: dict[str, float] = {}  # topic -> time.monotonic() it is tried again
        self._logged: dict[str, float] = {}  # topic -> when its last failure was logged

    def add(self, delivery: Delivery, result: Result) -> None:
        """Hold the copy of ``delivery`` when ``result`` calls for one (``copied``)."""
        if not copied(result):
            return
        topic = dead_letter_topic(delivery.topic, self.group)
        if topic is None:
            return
        if topic == delivery.topic or topic in self.consumed:
            error = ValueError(f"{topic!r} is a topic this consumer reads (see check E071)")
            self._failed(topic, 1, error, suspend=False)
            return
        if self._suspended.get(topic, 0.0) > time.monotonic():
            self._count("skipped", 1)
            return
        key, value = delivery.key, delivery.value
        if key is None and value is None:
            value = b""  # Kafka clients send no record without both (an unreadable one)
        self._pending.append(
            kafka.OutboxRecord(topic, key, value, headers(delivery, result, self.group))
        )

    def flush(self) -> None:
        """Send the copies held, wait for Kafka's acks; never raises, never retries."""
        if not self._pending:
            return
        records, self._pending = self._pending, []
        try:
            if self._producer is None:
                self._producer = kafka.build_dead_letter_producer()
            outcomes = kafka.send_records(self._producer, records, self.timeout)
        except Exception as exc:  # no broker for the producer, a closed client
            outcomes = [exc] * len(records)
        self._tally(records, outcomes)

    def close(self, timeout: float = 5.0) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            kafka.close_producer(producer, timeout)

    def _tally(
        self, records: Sequence[kafka.OutboxRecord], outcomes: Sequence[BaseException | None]
    ) -> None:
        sent: Counter[str] = Counter()
        failed: dict[str, list[BaseException]] = {}
        for record, outcome in zip(records, outcomes, strict=True):
            if outcome is None:
                sent[record.topic] += 1
            else:
                failed.setdefault(record.topic, []).append(outcome)
        for topic, count in sent.items():
            self._count("sent", count)
            if self._logged.pop(topic, None) is not None:
                logger.info("outbox consumer: dead-letter topic %r takes copies again", topic)
        for topic, errors in failed.items():
            # A record Kafka refuses (too large) says nothing about the topic: no pause.
            self._failed(topic, len(errors), errors[0], suspend=not kafka.is_poison(errors[0]))

    def _failed(self, topic: str, count: int, error: BaseException, *, suspend: bool) -> None:
        self._count("failed", count)
        now = time.monotonic()
        if suspend:
            self._suspended[topic] = now + self.suspend_seconds
        last = self._logged.get(topic)
        if last is not None and now - last < self.suspend_seconds:
            return
        self._logged[topic] = now
        logger.error(
            "outbox consumer: %d dead-letter cop%s to topic %r failed (%s: %s); nothing is "
            "lost: the records are kept in the database (dead rows, rejected records). "
            "Failed copies are not sent again%s. Fix: %s",
            count,
            "y" if count == 1 else "ies",
            topic,
            type(error).__name__,
            kafka.redact(str(error)),
            f"; copies to it are skipped for {self.suspend_seconds:.0f} s" if suspend else "",
            POISON_FIX if kafka.is_poison(error) else TOPIC_FIX,
            extra={"topic": topic, "copies": count, "error": type(error).__name__},
        )

    def _count(self, outcome: str, count: int) -> None:
        self.counts[outcome] += count
        metrics.dead_letter_copies(outcome, count)
