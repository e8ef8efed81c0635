"""The consumer's loop: reads outbox events from Kafka and runs their handlers, once.

``Consumer(...).run()`` is the loop behind ``manage.py outbox_consume``. It joins
``OUTBOX_CONSUMER_GROUP``, subscribes to the topics of the registered event types
(or the topics given), and hands each poll's records to ``Handling.handle_batch``
in chunks of ``batch_size``: one transaction per database and chunk, a savepoint
per handler (see ``handling.py`` for the once-only rules). Offsets are committed
only for records whose outcome is recorded, in order, partition by partition,
once per ``commit_interval`` and after a poll that came back empty.

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

This module owns the loop, its start and its stop; its parts, each in a module of
its own: ``polling.py`` (the Kafka client and its polls), ``consuming.py`` (a poll's
records, chunk by chunk, and what follows an outcome), ``retrying.py`` (the database
away, an inbox event retried in place), ``commits.py`` (offsets), ``lifecycle.py``
(heartbeat, a broker that refuses), ``progress.py`` (the progress line),
``stats.py`` (``ConsumerStats``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from django_outbox import kafka
from django_outbox.backoff import backoff_delay
from django_outbox.conf import outbox_settings
from django_outbox.consumer.broker import Blockage
from django_outbox.consumer.commits import Offsets
from django_outbox.consumer.consuming import Consuming
from django_outbox.consumer.database import recycle_connections
from django_outbox.consumer.dead_letter import DeadLetters
from django_outbox.consumer.handling import Handling, Result
from django_outbox.consumer.lifecycle import Health
from django_outbox.consumer.ordering_detector import OrderingDetector
from django_outbox.consumer.polling import Polling
from django_outbox.consumer.progress import Progress
from django_outbox.consumer.records import Delivery
from django_outbox.consumer.retrying import Retrying
from django_outbox.consumer.stats import ConsumerStats
from django_outbox.exceptions import ImproperlyConfiguredOutbox
from django_outbox.registry import HandlerRegistry, registry
from django_outbox.shutdown import Shutdown

__all__ = ["DEFAULT_BATCH_SIZE", "Consumer", "ConsumerStats", "subscribed_topics"]

logger = logging.getLogger("django_outbox.consumer")

#: Records handled in one transaction, by default (``--batch-size``).
DEFAULT_BATCH_SIZE = 200

#: Seconds between offset commits while a backlog is read (full polls), by default.
DEFAULT_COMMIT_INTERVAL = 1.0


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


def _check(
    topics: list[str], max_messages: int | None, inbox_attempts: int, batch_size: int
) -> None:
    if not topics:
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
        _check(self.topics, max_messages, inbox_attempts, batch_size)
        self.group = group or outbox_settings.consumer_group
        self.burst = burst
        self.max_messages = max_messages
        self.batch_size = batch_size
        self.poll_timeout = poll_timeout
        self.progress_interval = progress_interval
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
        self.commit_interval = commit_interval
        self.ordering = OrderingDetector(outbox_settings.ordering_keys)
        self._idle = True
        self.inbox_attempts = inbox_attempts
        self.inbox_retry_max_delay = inbox_retry_max_delay
        self.database_retry_delay = database_retry_delay
        self.database_retry_max_delay = database_retry_max_delay
        self.broker_probe_interval = broker_probe_interval
        self._assemble()

    def _assemble(self) -> None:
        """The parts of the consumer, each handed the few others it works with."""
        self.retrying = Retrying(
            self.handling,
            self.shutdown,
            inbox_attempts=self.inbox_attempts,
            inbox_retry_max_delay=self.inbox_retry_max_delay,
            database_retry_delay=self.database_retry_delay,
            database_retry_max_delay=self.database_retry_max_delay,
        )
        self.polling = Polling(
            self.topics,
            self.group,
            self.consumer_options,
            poll_timeout=self.poll_timeout,
            batch_size=self.batch_size,
            broker_probe_interval=self.broker_probe_interval,
            client_stall_timeout=self.client_stall_timeout,
            # a second signal: out at once, nothing more committed
            give_up=lambda parts: {} if self.shutdown.forced else self.offsets.give_up(parts),
        )
        stats = self._current_stats
        blockage = Blockage(self.topics, self.group)
        self.health = Health(self.heartbeat, blockage, self.shutdown, stats)
        self.offsets = Offsets(self.commit_interval, stats, self.health.worked)
        self.consuming = Consuming(
            sender=Consumer,
            group=self.group,
            batch_size=self.batch_size,
            max_messages=self.max_messages,
            shutdown=self.shutdown,
            retrying=self.retrying,
            offsets=self.offsets,
            dead_letters=self.dead_letters,
            ordering=self.ordering,
            stats=stats,
        )
        self.progress = Progress(self.progress_interval, stats)

    def _current_stats(self) -> ConsumerStats:
        return self.stats

    def stop(self) -> None:
        """Ask ``run()`` to return after the record in hand, its chunk committed (thread-safe)."""
        self.shutdown.request()

    def handle_records(self, deliveries: Sequence[Delivery]) -> list[tuple[Delivery, Result]]:
        """Handle ``deliveries`` as one poll's records, with no broker; each outcome, in
        the order recorded (``django_outbox.testing.run_handlers``)."""
        recorded: list[tuple[Delivery, Result]] = []
        self.consuming.recorded = recorded
        try:
            self.consuming.consume(list(deliveries))
        finally:
            self.consuming.recorded = None
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
                self.progress.log(self.polling.client, final=True)
            self._close()
        return self.stats

    def _loop(self) -> None:
        """One turn after another; any exception is logged and waited out, never fatal."""
        failures = 0
        while not self.shutdown.requested:
            self.health.beat()
            try:
                done = self._turn()
            except Exception as exc:
                failures += 1
                delay = backoff_delay(failures, 0.5, self.broker_retry_max_delay)
                kind = kafka.classify_poll_error(exc)
                if kind == kafka.TRANSPORT and not isinstance(exc, OSError):
                    self.polling.broker.failed(exc, delay)
                elif isinstance(exc, kafka.KafkaError):
                    # Out of position(), end_offsets()... as out of poll(): waited out.
                    self.health.pause_blocked(exc, "poll")
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

    def _turn(self) -> bool:
        """Connect if need be, poll once, handle, commit; True when ``run()`` should return."""
        deliveries = self._poll()
        if deliveries is None:
            return False
        # A full poll: a backlog, more records wait.
        backlog = len(deliveries) >= self.polling.poll_size
        try:
            self.consuming.consume(deliveries)
        except BaseException:
            self.offsets.rewind(self.polling.client, deliveries)
            self.offsets.commit(self.polling.client)
            raise
        self.dead_letters.flush()  # outcomes committed, offsets not yet
        # Not after every poll (``Offsets.due``): a commit is a round trip to the
        # coordinator the next record would wait for; but after a burst's last poll.
        last = self.consuming.limit_reached() or (self.burst and not backlog)
        if self.offsets.due(idle=not deliveries or last):
            self.offsets.commit(self.polling.client)
        self.progress.maybe_log(self.polling.client)
        refused = self.offsets.take_refused()
        if refused is not None:
            self.health.pause_blocked(refused, "commit")
            return False
        if self.consuming.limit_reached():
            logger.info("outbox consumer: %d records handled; stopping", self.stats.records)
            return True
        if self.burst and not backlog and not self.shutdown.requested:
            return self.polling.burst_over(self.assignment_timeout)
        return False

    def _poll(self) -> list[Delivery] | None:
        """One poll's records; None when there is nothing to handle this turn (no client
        yet, the broker refused, the client replaced)."""
        polling = self.polling
        if polling.client is None:
            polling.connect()
            if polling.client is None:
                return None
        recycle_connections(self._idle)
        try:
            batch = polling.poll()
        except Exception as exc:
            kind = kafka.classify_poll_error(exc)
            if kind == kafka.TRANSPORT:
                raise
            if kind == kafka.BLOCKED:
                self.health.pause_blocked(exc, "poll")
                return None
            polling.skip_unreadable(exc, self._reject_unreadable)
            batch = {}
        self.health.worked("poll")
        deliveries = [Delivery.from_record(r) for records in batch.values() for r in records]
        self._idle = not deliveries
        if deliveries and self.stats.first_records_at is None:
            self.stats.first_records_at = time.monotonic()
        if polling.stalled(bool(deliveries)):
            self._replace_client(f"nothing received for {self.client_stall_timeout:.0f} s")
            return None
        return deliveries

    # ------------------------------------------------------------------ the broker

    def _reject_unreadable(self, tp: Any, offset: int, exc: BaseException) -> None:
        self.consuming.reject_unreadable(self.polling.client, tp, offset, exc)

    def _replace_client(self, why: str) -> None:
        logger.warning("outbox consumer: replacing the Kafka client (%s)", why)
        self._close()

    def _close(self) -> None:
        # (``forced`` read at each step: a second signal may come meanwhile)
        if not self.shutdown.forced:
            self.dead_letters.flush()
        self.dead_letters.close(0 if self.shutdown.forced else 5.0)
        client = self.polling.take_client()
        if client is None:
            return
        try:
            if not self.shutdown.forced:
                self.offsets.commit_quietly(client)
            client.close(autocommit=False, timeout_ms=0 if self.shutdown.forced else 5000)
        except Exception:  # closing is best effort; committed offsets are already safe
            logger.exception("outbox consumer: error while closing the Kafka consumer")
