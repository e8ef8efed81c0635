"""The consumer's loop: reads outbox events from Kafka and runs their handlers, once.

``Consumer(...).run()`` is the loop behind ``manage.py outbox_consume``. It joins
``OUTBOX_CONSUMER_GROUP``, subscribes to the topics of the registered event types
(or the topics given), and hands each poll's records to ``Handling.handle_batch``
in chunks of ``batch_size``: one transaction per database and chunk, a savepoint
per handler (see ``handling.py`` for the once-only rules). Offsets are committed
only for records whose outcome is recorded, in order, partition by partition,
after each poll (while a backlog is read, once per ``commit_interval``).

- Handler failures never block a partition: an outbox row goes back to the relay
  with a backoff (``dead`` after ``max_retry``); an inbox event is retried here a
  few times, then recorded as rejected. The records of its partition after it wait
  for that, the other partitions go on.
- A database that does not answer blocks the chunk in hand: it is retried, with a
  backoff, until the database is back; no offset of it is committed before. If the
  database answers but the chunk keeps failing, its records are handled one by one
  (``Handling.handle``), so one handler's database errors cannot block the others.
- The broker may be away at start or at any time: the loop waits for it (logging
  "broker HOST:PORT unreachable" at once), retries with a backoff, survives any
  error out of ``poll()`` and replaces a client that stops making progress. A
  record kafka-python cannot decode (a codec it lacks, a bad CRC) is kept as a
  rejected record and passed: only then (``kafka.classify_poll_error``).
- The broker may refuse the consumer: an ACL missing, bad credentials, a topic
  that does not exist, a group that keeps rebalancing. That says nothing about any
  record: the loop skips and commits nothing, pauses (1 s doubling to 30 s), says
  so at ERROR with the fix, in ``ConsumerStats.blocked_by``, the progress line, the
  health file and ``django_outbox_consumer_blocked_total``, and resumes by itself.
  Any other exception is logged and backed off from: the loop never exits on its
  own but for ``burst``/``max_messages``.
- With ``OUTBOX_DEAD_LETTER_TOPIC``, what is given up or rejected is also copied to a
  dead-letter topic, once its outcome is committed (``dead_letter.py``).
- ``burst`` stops once every assigned partition is read to its end offset,
  ``max_messages`` after that many records; SIGTERM/SIGINT stop after the record in
  hand, once the chunk's transaction has committed the records handled so far.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.db import close_old_connections, connections

from django_outbox import kafka, signals
from django_outbox.backoff import backoff_delay, retry_delay
from django_outbox.conf import outbox_settings
from django_outbox.consumer.broker import Blockage, BrokerWatch
from django_outbox.consumer.database import DATABASE_ERRORS, databases_answer, drop_connections
from django_outbox.consumer.dead_letter import DeadLetters
from django_outbox.consumer.handling import Handling, Outcome, Result
from django_outbox.consumer.ordering_detector import OrderingDetector
from django_outbox.consumer.records import Delivery
from django_outbox.exceptions import ImproperlyConfiguredOutbox
from django_outbox.models.inbox import RejectionReason
from django_outbox.ops import metrics
from django_outbox.registry import HandlerRegistry, registry
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

#: Database errors in a row, with the database answering, after which a handler's
#: OperationalError counts as a handler failure (a deadlock retried in vain, a bug).
DATABASE_ERRORS_BEFORE_FAILURE = 3

#: Records handled in one transaction, by default (``--batch-size``).
DEFAULT_BATCH_SIZE = 200

#: Records asked of one poll, at least (rounded up to whole chunks).
POLL_RECORDS = 1000

#: Seconds between offset commits while a backlog is read (full polls), by default.
DEFAULT_COMMIT_INTERVAL = 1.0


@dataclass
class ConsumerStats:
    """What one ``run()`` did: records seen, per outcome."""

    records: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    #: Records of a key handled after a later record of that key (``OrderingDetector``).
    ordering_violations: int = 0
    started: float = field(default_factory=time.monotonic)
    #: ``time.monotonic()`` when the first records came from a poll, and when the
    #: offsets of the last ones were committed: ``busy_seconds()`` is between them.
    first_records_at: float | None = None
    last_commit_at: float | None = None
    #: While the broker refuses the consumer (``kafka.BLOCKED``): the error's class
    #: name and since when (``time.time()``); None otherwise.
    blocked_by: str | None = None
    blocked_since: float | None = None
    #: Polls and commits the broker refused, in all.
    blocked_turns: int = 0

    def add(self, result: Result) -> None:
        self.records += 1
        self.outcomes[result.outcome.value] = self.outcomes.get(result.outcome.value, 0) + 1

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome.value, 0)

    def busy_seconds(self) -> float:
        """Seconds from the first records received to the last offsets committed."""
        if self.first_records_at is None or self.last_commit_at is None:
            return 0.0
        return self.last_commit_at - self.first_records_at


def subscribed_topics(handlers: HandlerRegistry = registry) -> list[str]:
    """The topics the registered event types go to (``OUTBOX_TOPICS``, default topic)."""
    topics = set()
    for event_type in handlers:
        topic = outbox_settings.topic_for(event_type)
        if topic is None:
            logger.warning("event type %r has no topic; its handler gets nothing", event_type)
        else:
            topics.add(topic)
    return sorted(topics)


class Consumer:
    """Consumes outbox events and runs their handlers; see the module docstring."""

    def __init__(
        self,
        topics: Sequence[str] | None = None,
        *,
        group: str | None = None,
        burst: bool = False,
        max_messages: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        poll_timeout: float = 1.0,
        progress_interval: float = 30.0,
        inbox_attempts: int = 3,
        inbox_retry_max_delay: float = 10.0,
        database_retry_delay: float = 0.5,
        database_retry_max_delay: float = 30.0,
        assignment_timeout: float = 60.0,
        consumer_options: dict[str, Any] | None = None,
        handlers: HandlerRegistry = registry,
        shutdown: Shutdown | None = None,
        install_signal_handlers: bool = False,
        heartbeat: Callable[[], None] | None = None,
        broker_retry_max_delay: float = 5.0,
        client_stall_timeout: float = 30.0,
        broker_probe_interval: float = 5.0,
        commit_interval: float = DEFAULT_COMMIT_INTERVAL,
    ) -> None:
        self.topics = list(topics) if topics else subscribed_topics(handlers)
        if not self.topics:
            raise ImproperlyConfiguredOutbox(
                "the consumer has no topic to read: register handlers (events.py) for event "
                "types that OUTBOX_TOPICS or OUTBOX_DEFAULT_TOPIC map to a topic, or pass --topic"
            )
        if max_messages is not None and max_messages < 1:
            raise ValueError("max_messages must be at least 1")
        if inbox_attempts < 1:
            raise ValueError("inbox_attempts must be at least 1")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.group = group or outbox_settings.consumer_group
        self.burst = burst
        self.max_messages = max_messages
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.progress_interval = progress_interval
        self.inbox_attempts = inbox_attempts
        self.inbox_retry_max_delay = inbox_retry_max_delay
        self.database_retry_delay = database_retry_delay
        self.database_retry_max_delay = database_retry_max_delay
        self.assignment_timeout = assignment_timeout
        self.consumer_options = dict(consumer_options or {})
        self.handling = Handling(self.group, handlers=handlers)
        #: Copies of what is given up or rejected (``OUTBOX_DEAD_LETTER_TOPIC``).
        self.dead_letters = DeadLetters(self.group, self.topics)
        self.shutdown = shutdown or Shutdown()
        self.install_signal_handlers = install_signal_handlers
        self.stats = ConsumerStats()
        #: Called once per loop turn (idle, busy or waiting for the broker): a liveness hook.
        self.heartbeat = heartbeat
        self.broker_retry_max_delay = broker_retry_max_delay
        self.client_stall_timeout = client_stall_timeout
        self.broker_probe_interval = broker_probe_interval
        self.commit_interval = commit_interval
        self._last_commit = time.monotonic()
        self._client: Any = None
        self._uncommitted: dict[Any, int] = {}
        self._last_progress = (time.monotonic(), 0)
        self._idle = True
        self._positions: dict[Any, int] = {}  # next offset after the last recorded outcome
        self._broker = BrokerWatch(broker_probe_interval, client_stall_timeout)
        self._blockage = Blockage(self.topics, self.group)
        self._commit_refused: BaseException | None = None
        self.ordering = OrderingDetector(outbox_settings.ordering_keys)
        self._last_refresh = self._unassigned_since = time.monotonic()
        self._recorded: list[tuple[Delivery, Result]] | None = None

    def stop(self) -> None:
        """Ask ``run()`` to return after the record in hand, its chunk committed (thread-safe)."""
        self.shutdown.request()

    def handle_records(self, deliveries: Sequence[Delivery]) -> list[tuple[Delivery, Result]]:
        """Handle ``deliveries`` as one poll's records, with no broker; each outcome, in
        the order recorded (``django_outbox.testing.run_handlers``)."""
        recorded: list[tuple[Delivery, Result]] = []
        self._recorded = recorded
        try:
            self._consume(list(deliveries))
        finally:
            self._recorded = None
        return recorded

    # ------------------------------------------------------------------ the loop

    def run(self) -> ConsumerStats:
        """Consume until stopped, caught up (``burst``) or ``max_messages``; return the stats."""
        self.stats = ConsumerStats()
        if self.install_signal_handlers:
            self.shutdown.install()
        logger.info(
            "outbox consumer starting: group %r, topics %s%s",
            self.group,
            ", ".join(self.topics),
            " (burst)" if self.burst else "",
        )
        try:
            self._loop()
        finally:
            if self.install_signal_handlers:
                self.shutdown.restore()
            if not self.shutdown.forced:
                self._log_progress(final=True)
            self._close()
        return self.stats

    def _loop(self) -> None:
        """One turn after another; any exception is logged and waited out, never fatal."""
        failures = 0
        while not self.shutdown.requested:
            self._beat()
            try:
                done = self._turn()
            except Exception as exc:
                failures += 1
                delay = backoff_delay(failures, 0.5, self.broker_retry_max_delay)
                kind = kafka.classify_poll_error(exc)
                if kind == kafka.TRANSPORT and not isinstance(exc, OSError):
                    self._broker.failed(exc, delay)
                elif isinstance(exc, kafka.KafkaError):
                    # Out of position(), end_offsets()... as out of poll(): waited out.
                    self._pause_blocked(exc, "poll")
                    continue
                else:
                    logger.exception(
                        "outbox consumer: unexpected error (%s); going on in %.1f s", exc, delay
                    )
                self.shutdown.wait(delay)
                continue
            failures = 0
            if done:
                return

    def _beat(self) -> None:
        if self.heartbeat is not None:
            try:
                self.heartbeat()
            except Exception:  # a health probe must never stop the consumer
                logger.exception("outbox consumer: the heartbeat callback failed")

    def _turn(self) -> bool:
        """Connect if need be, poll once, handle, commit; True when ``run()`` should return."""
        if self._client is None:
            self._connect()
            if self._client is None:
                return False
        self._recycle_connections(self._idle)
        client = self._client
        now = time.monotonic()
        if not client.assignment() and now - self._last_refresh > 5:
            # Nothing assigned yet: new metadata (a topic created since) makes the
            # group rebalance, sooner than metadata_max_age_ms would.
            kafka.missing_topics(client, self.topics)
            self._last_refresh = now
        max_records = self._poll_size()
        try:
            batch = client.poll(timeout_ms=int(self.poll_timeout * 1000), max_records=max_records)
        except Exception as exc:
            kind = kafka.classify_poll_error(exc)
            if kind == kafka.TRANSPORT:
                raise
            if kind == kafka.BLOCKED:
                self._pause_blocked(exc, "poll")
                return False
            self._skip_unreadable(exc)
            batch = {}
        if self._blockage.cleared("poll"):
            self._show_blocked()
        deliveries = [Delivery.from_record(r) for records in batch.values() for r in records]
        self._idle = not deliveries
        if deliveries and self.stats.first_records_at is None:
            self.stats.first_records_at = time.monotonic()
        if self._broker.polled(time.monotonic(), bool(deliveries)):
            self._replace_client(f"nothing received for {self.client_stall_timeout:.0f} s")
            return False
        # A full poll: a backlog, more records wait. Its offsets are committed once a
        # commit_interval (a commit is a round trip to the coordinator, more than a
        # chunk of no-op handlers); a crash in between only makes more records come
        # again, which once-only handling drops.
        backlog = len(deliveries) >= max_records
        try:
            self._consume(deliveries)
        except BaseException:
            self._rewind(deliveries)
            self._commit()
            raise
        self.dead_letters.flush()  # outcomes committed, offsets not yet
        if not backlog or time.monotonic() - self._last_commit >= self.commit_interval:
            self._commit()
        self._maybe_log_progress()
        if self._commit_refused is not None:
            refused, self._commit_refused = self._commit_refused, None
            self._pause_blocked(refused, "commit")
            return False
        if self._limit_reached():
            logger.info("outbox consumer: %d records handled; stopping", self.stats.records)
            return True
        if self.burst and not backlog and not self.shutdown.requested:
            if client.assignment():
                self._unassigned_since = time.monotonic()
                if kafka.caught_up(client):
                    logger.info("outbox consumer: caught up; stopping (burst)")
                    return True
            elif time.monotonic() - self._unassigned_since > self.assignment_timeout:
                logger.warning(
                    "outbox consumer: no partition assigned after %.0f s; stopping (burst)",
                    self.assignment_timeout,
                )
                return True
        return False

    # ------------------------------------------------------------------ the broker

    def _connect(self) -> None:
        """Build the Kafka client; when the broker is away, say so and leave it None."""
        unreachable = kafka.unreachable_brokers()
        if unreachable and len(unreachable) == len(kafka.bootstrap_servers()):
            raise kafka.KafkaConnectionError(f"cannot connect to {', '.join(unreachable)}")
        listener = kafka.CommitOnRevoke(self._take_uncommitted, self._assigned)
        self._client = kafka.build_group_consumer(
            self.topics, self.group, listener, **self.consumer_options
        )
        self._last_refresh = self._unassigned_since = time.monotonic()
        missing = kafka.missing_topics(self._client, self.topics)
        if missing:
            logger.warning("outbox consumer: topics %s do not exist (yet)", missing)

    def _take_uncommitted(self, partitions: set[Any]) -> dict[Any, int]:
        """The offsets to commit before ``partitions`` are given up, forgotten here.

        Called by kafka-python while ``poll()`` waits (a rebalance, a close): the
        records of a poll are all handled or rewound by then.
        """
        for tp in partitions:
            self._positions.pop(tp, None)
        taken = {tp: self._uncommitted.pop(tp) for tp in partitions if tp in self._uncommitted}
        return {} if self.shutdown.forced else taken  # a second signal: out at once

    def _assigned(self, partitions: set[Any]) -> None:
        logger.info(
            "outbox consumer: partitions assigned: %s",
            ", ".join(f"{tp.topic}-{tp.partition}" for tp in sorted(partitions)) or "none",
            extra={"partitions": len(partitions)},
        )

    def _pause_blocked(self, exc: BaseException, where: str) -> None:
        """The broker refused a poll or a commit: say so everywhere, wait, skip nothing."""
        delay = self._blockage.blocked(exc, where)
        self.stats.blocked_turns += 1
        metrics.consumer_blocked(type(exc).__name__)
        self._show_blocked()
        self._beat()  # the health file says it at once
        self.shutdown.wait(delay)

    def _show_blocked(self) -> None:
        self.stats.blocked_by = self._blockage.error
        self.stats.blocked_since = self._blockage.since
        set_blocked = getattr(self.heartbeat, "set_blocked", None)  # a HealthFile
        if set_blocked is not None:
            set_blocked(self._blockage.error, self._blockage.since)

    def _replace_client(self, why: str) -> None:
        logger.warning("outbox consumer: replacing the Kafka client (%s)", why)
        self._close()

    def _skip_unreadable(self, exc: BaseException) -> None:
        """A record kafka-python cannot decode: find it, keep it as rejected, pass it.

        The fetcher does not say which partition failed: the record at the position
        of each assigned partition is read again by a throwaway client
        (``kafka.read_error_at``) until one fails with an error about that record
        (``kafka.RECORD``); any other error it meets is raised, so waited out.
        """
        client = self._client
        logger.warning(
            "outbox consumer: a fetched record cannot be read (%s: %s)", type(exc).__name__, exc
        )
        for tp in sorted(client.assignment()):
            position = client.position(tp, timeout_ms=5000)
            if position is None:
                continue
            error = kafka.read_error_at(tp, position)
            if error is None:
                continue
            if kafka.classify_poll_error(error) != kafka.RECORD:
                raise error
            self._reject_unreadable(tp, position, error)
            return
        raise exc

    def _reject_unreadable(self, tp: Any, offset: int, exc: BaseException) -> None:
        client = self._client
        delivery = Delivery(tp.topic, tp.partition, offset, None, None, ())
        error = f"kafka-python cannot read this record: {type(exc).__name__}: {exc}"
        result = self._retrying_database(
            delivery,
            lambda _fail: self._store_rejected(delivery, RejectionReason.MALFORMED, error, exc),
        )
        if result is None:
            return  # stopped while the database was away; read again next time
        client.seek(tp, offset + 1)
        self._record(delivery, result)

    def _store_rejected(
        self, delivery: Delivery, reason: str, error: str, failure: BaseException | None = None
    ) -> Result:
        self.handling.reject(delivery, reason, error)
        return Result(Outcome.REJECTED, error, reason, failure)

    def _recycle_connections(self, idle: bool) -> None:
        """``close_old_connections()``, but keep ``CONN_MAX_AGE = 0`` connections while busy.

        A poll is this worker's request; closing after each one would open a connection
        per poll, some 40 ms on PostgreSQL (a backend process each), and that was most
        of the fast path's latency there. They are closed once a poll comes back empty.
        """
        if idle:
            close_old_connections()
            return
        for connection in connections.all(initialized_only=True):
            if connection.settings_dict["CONN_MAX_AGE"] != 0:
                connection.close_if_unusable_or_obsolete()

    def _limit_reached(self) -> bool:
        return self.max_messages is not None and self.stats.records >= self.max_messages

    def _consume(self, deliveries: list[Delivery]) -> None:
        """Handle a poll's records, chunk by chunk, until done, stopped or at the limit."""
        waiting = deliveries
        while waiting and not self.shutdown.requested and not self._limit_reached():
            size = self.batch_size
            if self.max_messages is not None:
                size = min(size, self.max_messages - self.stats.records)
            chunk, waiting = waiting[:size], waiting[size:]
            later: list[Delivery] = []
            stopped: set[tuple[str, int]] = set()  # partitions whose next record is not done
            for delivery, result in zip(chunk, self._handle_chunk(chunk), strict=True):
                partition = (delivery.topic, delivery.partition)
                if partition in stopped:
                    later.append(delivery)
                    continue
                if result is not None and result.outcome is Outcome.RETRY_IN_PLACE:
                    # The rest of its partition waits in ``later``, so it keeps its order.
                    result = self._handle(delivery, result)
                if result is None:
                    later.append(delivery)
                    stopped.add(partition)
                    continue
                self._record(delivery, result)
            waiting = later + waiting

    def _record(self, delivery: Delivery, result: Result) -> None:
        self.stats.add(result)
        if self._recorded is not None:
            self._recorded.append((delivery, result))
        tp = kafka.TopicPartition(delivery.topic, delivery.partition)
        self._uncommitted[tp] = self._positions[tp] = delivery.offset + 1
        logger.debug("record %s: %s", delivery, result.outcome.value)
        self.dead_letters.add(delivery, result)
        self.stats.ordering_violations += self.ordering.check(delivery, result.outcome)
        # An unknown event type is skipped, and its record kept as rejected: reason set.
        signal = OUTCOME_SIGNALS.get(result.outcome, result.reason and signals.record_rejected)
        if signal:
            extra = {} if signal is signals.event_consumed else {"error": result.error}
            signals.send(
                signal, Consumer, group=self.group, record=delivery, reason=result.reason, **extra
            )

    def _handle_chunk(self, chunk: list[Delivery]) -> list[Result | None]:
        """``handle_batch``, again while the database fails; all None if stopped meanwhile."""
        errors, delay = 0, self.database_retry_delay
        while True:
            try:
                return self.handling.handle_batch(chunk, stop=lambda: self.shutdown.requested)
            except DATABASE_ERRORS as exc:
                self._drop_connections()
                answers = self._database_answers(chunk)
                errors = errors + 1 if answers else 0
                logger.warning(
                    "database error on the chunk %s..%s (%d records) (%s); %s",
                    chunk[0],
                    chunk[-1],
                    len(chunk),
                    exc,
                    "retrying" if answers else f"database unavailable, retrying in {delay:.1f} s",
                )
                if errors >= DATABASE_ERRORS_BEFORE_FAILURE:
                    # The database answers, the chunk still fails: perhaps one handler's
                    # own error. One by one, it fails alone and the others go through.
                    return self._one_by_one(chunk)
                if errors == 1 and answers:
                    continue  # a dropped connection or a deadlock: once more at once
                if self.shutdown.wait(delay):
                    return [None] * len(chunk)
                delay = min(delay * 2, self.database_retry_max_delay)
            except Exception:
                # A handler broke the chunk's transaction beyond a savepoint's reach, or
                # a commit failed (a deferred constraint): nothing of the chunk is kept.
                logger.warning(
                    "the chunk %s..%s failed as a whole; handling its records one by one",
                    chunk[0],
                    chunk[-1],
                    exc_info=True,
                )
                self._drop_connections()
                return self._one_by_one(chunk)

    def _one_by_one(self, chunk: list[Delivery]) -> list[Result | None]:
        results: list[Result | None] = []
        for delivery in chunk:
            results.append(None if self.shutdown.requested else self._handle(delivery))
        return results

    def _handle(self, delivery: Delivery, result: Result | None = None) -> Result | None:
        """One record on its own, with retries; ``result``: a first attempt made elsewhere."""
        attempt = 1
        while True:
            if result is None:
                result = self._retrying_database(
                    delivery, functools.partial(self._try_handle, delivery)
                )
                if result is None:
                    return None
            if result.outcome is not Outcome.RETRY_IN_PLACE:
                return result
            if attempt >= self.inbox_attempts:
                give_up = functools.partial(
                    self._give_up, delivery, result.error, attempt, result.failure
                )
                return self._retrying_database(delivery, give_up)
            # Bounded, so an inbox event blocks its partition for seconds at most.
            if self.shutdown.wait(min(retry_delay(attempt), self.inbox_retry_max_delay)):
                return None
            attempt, result = attempt + 1, None

    def _try_handle(self, delivery: Delivery, database_errors_fail: bool) -> Result:
        try:
            return self.handling.handle(delivery, database_errors_fail=database_errors_fail)
        except DATABASE_ERRORS:
            raise
        except Exception as exc:
            # Not the handler's doing (that is recorded as its failure): the consumer's
            # own bookkeeping broke on this record. Keep it as rejected, never loop on it.
            logger.exception("outbox consumer: record %s could not be handled", delivery)
            return self._store_rejected(
                delivery,
                RejectionReason.MALFORMED,
                f"the consumer could not handle it: {type(exc).__name__}: {exc}",
                exc,
            )

    def _give_up(
        self,
        delivery: Delivery,
        error: str,
        attempts: int,
        failure: BaseException | None,
        database_errors_fail: bool,
    ) -> Result:
        return self.handling.give_up(delivery, error, attempts, failure)

    def _retrying_database(
        self, delivery: Delivery, action: Callable[[bool], Result]
    ) -> Result | None:
        """``action()``, again and again while the database fails; None if stopped meanwhile."""
        # Errors in a row while the database answers: only those can be the handler's fault.
        errors, delay = 0, self.database_retry_delay
        while True:
            try:
                return action(errors >= DATABASE_ERRORS_BEFORE_FAILURE)
            except DATABASE_ERRORS as exc:
                self._drop_connections()
                answers = self._database_answers([delivery])
                errors = errors + 1 if answers else 0
                logger.warning(
                    "database error on record %s (%s); %s",
                    delivery,
                    exc,
                    "retrying" if answers else f"database unavailable, retrying in {delay:.1f} s",
                    extra={"topic": delivery.topic, "offset": delivery.offset},
                )
                if errors == 1 and answers:
                    continue  # a dropped connection or a deadlock: once more at once
                if self.shutdown.wait(delay):
                    return None
                delay = min(delay * 2, self.database_retry_max_delay)

    def _drop_connections(self) -> None:
        drop_connections()

    def _database_answers(self, deliveries: Sequence[Delivery]) -> bool:
        return databases_answer(sorted(self.handling.databases(deliveries)))

    # ------------------------------------------------------------------ offsets, progress

    def _rewind(self, deliveries: Sequence[Delivery]) -> None:
        """After an error mid-poll: read again, next turn, what has no recorded outcome."""
        client = self._client
        first: dict[Any, int] = {}
        for delivery in deliveries:
            tp = kafka.TopicPartition(delivery.topic, delivery.partition)
            if delivery.offset >= self._positions.get(tp, -1):
                first[tp] = min(first.get(tp, delivery.offset), delivery.offset)
        for tp, offset in first.items():
            try:
                client.seek(tp, offset)
            except Exception:  # no longer assigned: its next owner reads it
                pass

    def _poll_size(self) -> int:
        """Records per poll: whole chunks, at least ``POLL_RECORDS`` (fewer polls, commits)."""
        return self.batch_size * max(1, -(-POLL_RECORDS // self.batch_size))

    def _commit(self) -> None:
        self._last_commit = time.monotonic()
        if not self._uncommitted or self._client is None:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        try:
            kafka.commit_offsets(self._client, offsets)
            self.stats.commits += 1
            self.stats.last_commit_at = time.monotonic()
            if self._blockage.cleared("commit"):
                self._show_blocked()
        except kafka.CommitFailedError as exc:
            # The group moved these partitions elsewhere; their new owner reads the records
            # again and finds them handled (once-only), so nothing is lost or doubled.
            logger.warning("outbox consumer: offset commit failed (%s); records will repeat", exc)
        except Exception as exc:
            # The coordinator did not answer (KafkaTimeoutError), the broker went away:
            # the offsets are kept and committed with the next ones.
            # Refused (an ACL, the group's state): kept likewise, and the loop pauses.
            for tp, offset in offsets.items():
                self._uncommitted[tp] = max(offset, self._uncommitted.get(tp, offset))
            if kafka.classify_poll_error(exc) == kafka.BLOCKED:
                self._commit_refused = exc
                return
            logger.warning(
                "outbox consumer: offset commit failed (%s: %s); will retry",
                type(exc).__name__,
                kafka.redact(str(exc)),
            )

    def _close(self) -> None:
        if not self.shutdown.forced:
            self.dead_letters.flush()
        self.dead_letters.close(0 if self.shutdown.forced else 5.0)
        if self._client is None:
            return
        client, self._client = self._client, None
        try:
            if not self.shutdown.forced:
                self._commit_quietly(client)
            client.close(autocommit=False, timeout_ms=0 if self.shutdown.forced else 5000)
        except Exception:  # closing is best effort; committed offsets are already safe
            logger.exception("outbox consumer: error while closing the Kafka consumer")

    def _commit_quietly(self, client: Any) -> None:
        if not self._uncommitted:
            return
        offsets, self._uncommitted = self._uncommitted, {}
        try:
            kafka.commit_offsets(client, offsets)
            self.stats.commits += 1
            self.stats.last_commit_at = time.monotonic()
        except Exception as exc:
            logger.warning("outbox consumer: final offset commit failed (%s)", exc)

    def _maybe_log_progress(self) -> None:
        if time.monotonic() - self._last_progress[0] >= self.progress_interval:
            self._log_progress()

    def _log_progress(self, final: bool = False) -> None:
        now = time.monotonic()
        since, records_then = self._last_progress
        if final:
            since, records_then = self.stats.started, 0
        rate = (self.stats.records - records_then) / max(now - since, 1e-9)
        lag = None
        if self._client is not None:
            try:
                lag = kafka.consumer_lag(self._client)
            except Exception:  # lag is informative only; a rebalance may be under way
                lag = None
        blocked = ""
        if self.stats.blocked_by is not None:
            since = time.time() - (self.stats.blocked_since or time.time())
            blocked = f", BLOCKED by {self.stats.blocked_by} for {since:.0f} s"
        logger.info(
            "outbox consumer%s: %d records (%s), %.1f/s, lag %s, %d ordering violation(s)%s",
            " stopped" if final else "",
            self.stats.records,
            ", ".join(f"{n} {k}" for k, n in sorted(self.stats.outcomes.items())) or "none",
            rate,
            "unknown" if lag is None else lag,
            self.stats.ordering_violations,
            blocked,
            extra={
                "records": self.stats.records,
                "rate": rate,
                "lag": lag,
                "ordering_violations": self.stats.ordering_violations,
                "blocked_by": self.stats.blocked_by,
            },
        )
        self._last_progress = (now, self.stats.records)
