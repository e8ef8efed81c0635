"""The relay: delivers ``pending`` outbox rows to Kafka and records the outcome.

One loop, driven by ``Relay.run()`` (``manage.py outbox_relay`` is a thin wrapper):

1. *claim* a batch of due rows: one statement on PostgreSQL, a short transaction
   elsewhere (``claiming.claim``);
2. *send* it with kafka-python, outside any transaction: ``send()`` only queues the
   records, the producer's own thread talks to the broker;
3. *wait* for the acks of the batch sent *before* this one, and *record* them:
   acked rows ``published`` in one statement, failed ones with a backoff (or
   ``dead``), every write fenced on the lease taken in step 1.

So the database work for one batch overlaps with Kafka's work for the other: at
most two batches are in flight. Several relays may run at once, on one or several
databases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections, connections
from django.utils import timezone

from . import kafka
from .backoff import backoff_delay
from .claiming import Claim, Failure, claim, record_failed, record_published
from .conf import outbox_settings
from .models import OutboxMessage
from .shutdown import Shutdown

logger = logging.getLogger(__name__)

#: Share of the lease the relay may spend waiting for Kafka; the rest is margin
#: for recording the outcome before another relay may take the rows.
LEASE_SHARE = 0.75
#: Upper bound of the pause after a database or broker outage, seconds.
MAX_PAUSE = 30.0
#: While busy, a relay claims after the last id it took; at least this often (and
#: whenever it catches up) it scans from the start again, for rows that became due
#: behind it (retries, leases of a relay that died).
FULL_SCAN_INTERVAL = 10.0


@dataclass
class InFlight:
    """A claimed batch handed to the producer, its outcome not recorded yet."""

    batch: Claim
    sending: kafka.Sending


def describe(exc: BaseException) -> str:
    """An error as stored in ``last_error``: its type and message."""
    text = str(exc)
    name = type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name


class Relay:
    """Delivers due rows of ``databases`` to Kafka until stopped.

    ``burst=True`` stops once nothing is due. ``shutdown`` is the stop flag; the
    command installs its signal handlers, a test calls ``relay.stop()``.
    """

    def __init__(
        self,
        *,
        databases: Sequence[str] | None = None,
        batch_size: int | None = None,
        interval: float = 1.0,
        lease_seconds: float | None = None,
        burst: bool = False,
        shutdown: Shutdown | None = None,
        progress_interval: float = 10.0,
        producer_options: dict[str, Any] | None = None,
        heartbeat: Callable[[], None] | None = None,
    ) -> None:
        self.databases = list(databases or outbox_settings.databases)
        unknown = [alias for alias in self.databases if alias not in connections]
        if unknown:
            raise ValueError(f"unknown database alias(es) {unknown}; see settings.DATABASES")
        self.batch_size = batch_size or outbox_settings.batch_size
        self.interval = interval
        self.lease_seconds = lease_seconds or outbox_settings.lease_seconds
        if self.batch_size < 1 or self.interval < 0 or self.lease_seconds <= 0:
            raise ValueError("batch_size and lease_seconds must be positive, interval >= 0")
        self.burst = burst
        self.shutdown = shutdown or Shutdown()
        self.progress_interval = progress_interval
        self.producer_options = producer_options or {}
        #: Called once per loop turn (``--health-file``; see health.py).
        self.heartbeat = heartbeat
        self._producer: Any = None
        #: After a fatal producer error: rebuild once nothing is in flight.
        self._producer_stale = False
        self._in_flight: InFlight | None = None
        #: Database errors met (in burst mode, each one drops its database from the run).
        self.errors = 0
        self.delivered = 0
        self.failed = 0
        self._outages = 0
        self._broken: set[str] = set()
        self._after: dict[str, int | None] = {}
        self._full_scan_at = time.monotonic() + FULL_SCAN_INTERVAL
        # A burst takes what was due when it started: rows it fails back off until
        # after that moment, so it ends even while Kafka is down.
        self._due_by = timezone.now() if burst else None
        self._report_at = time.monotonic() + progress_interval
        self._reported = 0

    # ------------------------------------------------------------------ the loop

    def stop(self) -> None:
        """Stop after the batches in hand (what the first SIGTERM does)."""
        self.shutdown.request()

    def run(self) -> None:
        """Deliver until stopped; only a second signal's ``SystemExit`` escapes."""
        logger.info(
            "outbox relay started: databases %s, batch size %d, lease %ss%s",
            ", ".join(self.databases),
            self.batch_size,
            self.lease_seconds,
            ", burst" if self.burst else "",
        )
        try:
            checked_at = 0.0
            while not self.shutdown.requested:
                if self.heartbeat is not None:
                    self.heartbeat()
                # Drop broken or expired connections. With CONN_MAX_AGE=0 this means a
                # new connection each time: at most once a second while busy.
                if time.monotonic() - checked_at >= 1.0:
                    close_old_connections()
                    checked_at = time.monotonic()
                handled, trouble = self.run_once()
                self._report()
                if trouble:
                    checked_at = 0.0
                    self._outages += 1
                    if self.burst and len(self._broken) == len(self.databases):
                        break
                    self.shutdown.wait(
                        backoff_delay(self._outages, max(self.interval, 0.5), MAX_PAUSE)
                    )
                    continue
                self._outages = 0
                if handled:
                    continue
                if self.burst:
                    break
                checked_at = 0.0
                self.shutdown.wait(self.interval)
        finally:
            if not self.shutdown.forced:
                self._drain()  # what was sent gets recorded before the producer closes
            self._close()
            logger.info(
                "outbox relay stopped: %d row(s) delivered, %d failed attempt(s)",
                self.delivered,
                self.failed,
            )

    def run_once(self) -> tuple[int, bool]:
        """Claim and send one batch from each database, recording the batch sent before.

        Return (rows claimed, whether something broke: a database failed, or Kafka
        looked unreachable). Ends with nothing in flight when nothing was claimed,
        something broke, or a stop was requested.
        """
        handled, trouble = 0, False
        for alias in self.databases:
            if alias in self._broken or self.shutdown.requested:
                continue
            in_flight = self._in_flight
            if in_flight is not None and (self._producer_stale or in_flight.sending.failed_early):
                # Known to be in trouble already: record it before claiming more.
                trouble = self._drain() or trouble
            if self._producer_stale and self._in_flight is None:
                self._discard_producer()
            try:
                batch = self._claim(alias)
            except Exception:
                trouble = self._database_failed(alias) or trouble
                continue
            handled += len(batch)
            sent = self._send(batch) if batch.rows else None
            # The previous batch's acks arrived meanwhile, or arrive now.
            trouble = self._drain(flush=sent is None) or trouble
            self._in_flight = sent
        if not handled or trouble or self.shutdown.requested:
            trouble = self._drain() or trouble
        return handled, trouble

    # ------------------------------------------------------------------ one batch

    def _claim(self, alias: str) -> Claim:
        if time.monotonic() >= self._full_scan_at:
            self._after.clear()
            self._full_scan_at = time.monotonic() + FULL_SCAN_INTERVAL
        after = self._after.get(alias)
        batch = claim(
            alias, self.batch_size, self.lease_seconds, due_by=self._due_by, after_id=after
        )
        # A full batch: more is probably waiting right after it. Otherwise scan from
        # the start next time.
        self._after[alias] = batch.rows[-1].id if len(batch) == self.batch_size else None
        if not batch.rows and after is not None:
            return self._claim(alias)  # caught up from the floor: look behind it at once
        return batch

    @staticmethod
    def _records(batch: Claim) -> list[kafka.OutboxRecord]:
        alias = batch.alias
        outbox_headers, record = kafka.outbox_headers, kafka.OutboxRecord
        return [
            record(
                row.topic,
                row.message_key.encode(),
                row.payload.encode(),
                outbox_headers(row.id, row.event_type, row.payload, alias),
            )
            for row in batch.rows
        ]

    def _send(self, batch: Claim) -> InFlight:
        """Hand ``batch`` to the producer; its acks are awaited within the lease budget."""
        claimed_at = time.monotonic()
        records = self._records(batch)
        budget = max(self.lease_seconds * LEASE_SHARE - (time.monotonic() - claimed_at), 0.5)
        try:
            producer = self._get_producer()
        except Exception as exc:  # broker unreachable at start-up, bad options
            logger.warning("outbox relay: cannot build the Kafka producer: %s", describe(exc))
            sending = kafka.Sending(len(records), time.monotonic(), budget)
            sending.outcomes[:] = [exc] * len(records)
            return InFlight(batch, sending)
        return InFlight(batch, kafka.send_batch(producer, records, budget))

    def _drain(self, *, flush: bool = True) -> bool:
        """Wait for the batch in flight and record it; return whether something broke.

        ``flush=False`` while a newer batch is in the producer: wait for this
        batch's records only, and let the newer one fill its Kafka batches.
        """
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return False
        batch, sending = in_flight.batch, in_flight.sending
        if sending.futures:
            outcomes = kafka.await_acks(self._producer, sending, flush=flush)
        else:
            outcomes = sending.outcomes
        outcomes = self._confirm_poison(batch, outcomes, sending.deadline)
        try:
            self._record(batch, outcomes)
        except Exception:
            return self._database_failed(batch.alias)
        acked = outcomes.count(None)
        down = acked == 0 and all(kafka.is_retriable(o) for o in outcomes if o is not None)
        return down and not self.burst

    def _confirm_poison(
        self, batch: Claim, outcomes: list[BaseException | None], deadline: float
    ) -> list[BaseException | None]:
        """Make sure a record Kafka can never take fails only itself.

        When the broker rejects a record for good (too large for the topic, say),
        kafka-python's idempotent producer aborts *every* batch in flight with that
        same error, innocent records of other partitions and of the next batch
        included. So each record that failed that way is sent again alone, on a
        producer of its own, and only one that fails again is poison (``dead``).
        The main producer is replaced once nothing is in flight on it. Records not
        confirmed before ``deadline`` keep their error as an ordinary, retriable
        failure.
        """
        suspects = [i for i, o in enumerate(outcomes) if o is not None and kafka.is_poison(o)]
        if not suspects:
            return outcomes
        self._producer_stale = True
        outcomes = list(outcomes)
        records = self._records(Claim(batch.alias, batch.lease, [batch.rows[i] for i in suspects]))
        try:
            probe = kafka.build_producer(**{**self.producer_options, "linger_ms": 0})
        except Exception as exc:
            logger.warning("outbox relay: cannot check suspected poison rows: %s", describe(exc))
            probe = None
        try:
            for index, record in zip(suspects, records, strict=True):
                left = deadline - time.monotonic()
                if probe is None or left <= 0:
                    outcomes[index] = kafka.NotSent(
                        f"not confirmed as poison ({outcomes[index]!r}); will retry"
                    )
                    continue
                (outcomes[index],) = kafka.send_records(probe, [record], max(left, 0.5))
        finally:
            if probe is not None:
                kafka.close_producer(probe, timeout=0)
        confirmed = [i for i in suspects if (error := outcomes[i]) and kafka.is_poison(error)]
        logger.info(
            "outbox relay: %d suspected poison row(s) on %r checked alone: %d confirmed",
            len(suspects),
            batch.alias,
            len(confirmed),
        )
        return outcomes

    def _database_failed(self, alias: str) -> bool:
        # A database that went away: its rows stay leased or pending and are retried
        # when it is back (the lease runs out); never crash the loop.
        logger.exception("outbox relay: database %r failed; will retry", alias)
        self.errors += 1
        if self.burst:
            self._broken.add(alias)
        return True

    def _record(self, batch: Claim, outcomes: list[BaseException | None]) -> None:
        now = timezone.now()
        acked = [
            row.id for row, outcome in zip(batch.rows, outcomes, strict=True) if outcome is None
        ]
        failures = [
            Failure(row, describe(outcome), final=kafka.is_poison(outcome))
            for row, outcome in zip(batch.rows, outcomes, strict=True)
            if outcome is not None
        ]
        if acked:
            written = record_published(batch, acked, now)
            self.delivered += len(acked)
            if written != len(acked):
                logger.info(
                    "outbox relay: %d of %d acknowledged row(s) on %r were no longer ours "
                    "(lease ran out, or already consumed); left as they are",
                    len(acked) - written,
                    len(acked),
                    batch.alias,
                )
        if failures:
            record_failed(batch, failures, now)
            self.failed += len(failures)
            logger.warning(
                "outbox relay: %d of %d row(s) on %r not delivered (first: #%d %s); "
                "they will be retried with backoff",
                len(failures),
                len(batch.rows),
                batch.alias,
                failures[0].row.id,
                failures[0].error,
            )
            errors = [o for o in outcomes if o is not None]
            if any(not kafka.is_retriable(e) and not kafka.is_poison(e) for e in errors):
                # A producer in a fatal state (e.g. idempotence sequence lost) fails
                # every later record: start afresh, once the batch in flight is in.
                self._producer_stale = True

    # ------------------------------------------------------------------ producer

    def _get_producer(self) -> Any:
        if self._producer is None:
            self._producer = kafka.build_producer(**self.producer_options)
        return self._producer

    def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
        self._producer_stale = False
        if producer is not None:
            kafka.close_producer(producer, timeout=0)

    def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            kafka.close_producer(producer, timeout=0 if self.shutdown.forced else 10)

    # ------------------------------------------------------------------ progress

    def _report(self) -> None:
        now = time.monotonic()
        if now < self._report_at:
            return
        elapsed = self.progress_interval + (now - self._report_at)
        self._report_at = now + self.progress_interval
        rate = (self.delivered - self._reported) / elapsed if elapsed > 0 else 0.0
        self._reported = self.delivered
        try:
            pending, oldest = self.backlog()
        except Exception as exc:  # the report must not stop deliveries
            logger.info("outbox relay: %.1f rows/s delivered (backlog unknown: %s)", rate, exc)
            return
        logger.info(
            "outbox relay: %.1f rows/s delivered; %d pending; oldest due row waits %.1fs",
            rate,
            pending,
            oldest,
            extra={"delivered_per_second": rate, "pending": pending, "oldest_due_age": oldest},
        )

    def backlog(self) -> tuple[int, float]:
        """(pending rows, age in seconds of the oldest due row) over all databases."""
        now = timezone.now()
        pending, oldest = 0, 0.0
        for alias in self.databases:
            rows = OutboxMessage.objects.using(alias)
            pending += rows.pending().count()
            created = rows.due(now).order_by("id").values_list("created_at", flat=True).first()
            if created is not None:
                oldest = max(oldest, (now - created).total_seconds())
        return pending, oldest
