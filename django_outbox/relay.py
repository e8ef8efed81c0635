"""The relay: delivers ``pending`` outbox rows to Kafka and records the outcome.

One loop, driven by ``Relay.run()`` (``manage.py outbox_relay`` is a thin wrapper):

1. *claim* a batch of due rows in a short transaction (``claiming.claim``);
2. *send* it with kafka-python, outside any transaction, and wait for the acks;
3. *record* acked rows ``published`` in one statement, failed ones with a backoff
   (or ``dead``), every write fenced on the lease taken in step 1.

Several relays may run at once, on one or several databases.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
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
        self._producer: Any = None
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
        """Stop after the batch in hand (what the first SIGTERM does)."""
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
            self._close()
            logger.info(
                "outbox relay stopped: %d row(s) delivered, %d failed attempt(s)",
                self.delivered,
                self.failed,
            )

    def run_once(self) -> tuple[int, bool]:
        """One batch from each database; return (rows handled, whether something broke)."""
        handled, trouble = 0, False
        for alias in self.databases:
            if alias in self._broken or self.shutdown.requested:
                continue
            try:
                claimed, kafka_down = self.deliver_batch(alias)
            except Exception:
                # A database that went away: its rows stay leased or pending and are
                # retried when it is back (the lease runs out); never crash the loop.
                logger.exception("outbox relay: database %r failed; will retry", alias)
                self.errors += 1
                trouble = True
                if self.burst:
                    self._broken.add(alias)
                continue
            handled += claimed
            trouble = trouble or (kafka_down and not self.burst)
        return handled, trouble

    # ------------------------------------------------------------------ one batch

    def deliver_batch(self, alias: str) -> tuple[int, bool]:
        """Claim, send and record one batch of ``alias``.

        Return (rows claimed, whether Kafka looked unreachable: nothing acked and
        only retriable errors).
        """
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
        if not batch.rows:
            if after is not None:  # caught up from the floor: look behind it at once
                return self.deliver_batch(alias)
            return 0, False
        claimed_at = time.monotonic()
        outcomes = self._send(batch, claimed_at)
        self._record(batch, outcomes)
        acked = outcomes.count(None)
        down = acked == 0 and all(kafka.is_retriable(o) for o in outcomes if o is not None)
        return len(batch.rows), down

    def _send(self, batch: Claim, claimed_at: float) -> list[BaseException | None]:
        alias = batch.alias
        records = [
            kafka.OutboxRecord(
                row.topic,
                row.message_key.encode(),
                row.payload.encode(),
                kafka.outbox_headers(row.id, row.event_type, row.payload, alias),
            )
            for row in batch.rows
        ]
        try:
            producer = self._get_producer()
        except Exception as exc:  # broker unreachable at start-up, bad options
            logger.warning("outbox relay: cannot build the Kafka producer: %s", describe(exc))
            return [exc] * len(records)
        budget = self.lease_seconds * LEASE_SHARE - (time.monotonic() - claimed_at)
        return kafka.send_records(producer, records, max(budget, 0.5))

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
                # every later record: start afresh.
                self._discard_producer()

    # ------------------------------------------------------------------ producer

    def _get_producer(self) -> Any:
        if self._producer is None:
            self._producer = kafka.build_producer(**self.producer_options)
        return self._producer

    def _discard_producer(self) -> None:
        producer, self._producer = self._producer, None
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
