"""The relay: delivers ``pending`` outbox rows to Kafka and records the outcome.

The relay is the only sender: the request only writes the row and wakes the relay
at commit (``wakeup``), so rows of one key reach Kafka in id order. One loop,
driven by ``Relay.run()`` (``manage.py outbox_relay`` is a thin wrapper):

1. *claim* a batch of due rows: one statement on PostgreSQL, a short transaction
   elsewhere (``claiming.claim``);
2. *send* it, outside any transaction (``delivery.Sender``): ``send()`` only queues
   the records, the producer's own thread talks to the broker;
3. *settle* the batch sent *before* this one: wait for its acks, confirm poison, one
   outcome per row; and *write it back*, fenced on the lease taken in step 1.

The database work runs on a thread of its own (``dbthread``), so that it overlaps
with the Kafka work of the main thread: while batch *n* is being sent, the
database records batch *n-1* and claims batch *n+1* ahead. At most two batches are
with Kafka at once, one more is claimed ahead; a batch claimed ahead that is not
sent (Kafka unreachable, a stop) is given back, due at once, no attempt counted.
Each database is served on its own: one that fails is retried with its own backoff
while the others go on. While Kafka is unreachable the relay says so at once,
pauses without claiming, and spends no retries. When idle it sleeps until a
commit wakes it (PostgreSQL ``NOTIFY``, or a commit in this process) or
``interval`` passes; where no notification can come (MySQL/MariaDB, SQLite) it
polls every ``OUTBOX_POLL_INTERVAL`` seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from django.db import close_old_connections, connections
from django.utils import timezone

from django_outbox import kafka
from django_outbox.backoff import backoff_delay
from django_outbox.conf import outbox_settings
from django_outbox.exceptions import describe
from django_outbox.models import OutboxMessage
from django_outbox.models.claiming import Claim, Owner, claim, release
from django_outbox.ops import metrics
from django_outbox.relay import buckets
from django_outbox.relay.dbthread import DatabaseThread
from django_outbox.relay.send import InFlight, Sender, Settled, prepare
from django_outbox.relay.write_back import write_back
from django_outbox.shutdown import Shutdown
from django_outbox.wakeup import Wakeup

logger = logging.getLogger(__name__)

#: Share of the lease the relay may spend waiting for Kafka; the rest is margin
#: for recording the outcome before another relay may take the rows.
LEASE_SHARE = 0.75
#: Upper bound of the pause after a database outage, seconds.
MAX_PAUSE = 30.0
#: Upper bound of the pause between two looks at an unreachable broker, seconds.
MAX_KAFKA_PAUSE = 5.0
#: A burst stops after this many looks at an unreachable broker.
BURST_GIVE_UP = 3
#: Seconds a stopping relay still waits for the acks of what it sent.
STOP_GRACE = 3.0


class Relay:
    """Delivers due rows of ``databases`` to Kafka until stopped.

    ``burst=True`` stops once nothing is due. ``shutdown`` is the stop flag; the
    command installs its signal handlers, a test calls ``relay.stop()``.
    ``heartbeat`` is called once per loop turn (``--health-file``).
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
        self.heartbeat = heartbeat or (lambda: None)
        self.sender = Sender(producer_options)
        self.sender.stopping = self._stop_cutoff
        self._in_flight: InFlight | None = None
        #: Per database, the next batch, claimed ahead on the database thread.
        self._ahead: dict[str, Future[Claim]] = {}
        #: Write-backs handed to the database thread, not known to be done yet: the
        #: claim, its outcome (None for a batch given back unsent), the job.
        self._writing: list[tuple[Claim, Settled | None, Future[Any]]] = []
        #: Settled batches whose write-back failed: recorded first thing next turn.
        self._unrecorded: list[Settled] = []
        self._database_thread: DatabaseThread | None = None
        #: Database errors met (in burst mode, each one drops its database from the run).
        self.errors = 0
        self.delivered = 0
        self.failed = 0
        self._db_failures: dict[str, int] = {}
        self._db_retry_at: dict[str, float] = {}
        self._broken: set[str] = set()
        self._kafka_failures = 0
        self._kafka_retry_at = 0.0
        # A burst takes what was due when it started: rows it fails back off until
        # after that moment, so it ends even while Kafka is down.
        self._due_by = timezone.now() if burst else None
        self._report_at = time.monotonic() + progress_interval
        self._reported = 0
        self._stop_seen: float | None = None
        #: Rows whose outcome the last ``run_once`` settled.
        self.settled_last_turn = 0
        self.wakeup: Wakeup | None = None
        #: This relay's name among the relays of its databases (``buckets``).
        self.name = buckets.new_name()
        #: Per database, this relay's share of the key space (``OUTBOX_RELAY_BUCKETS``).
        self.coordinators: dict[str, buckets.Coordinator] = {}
        self._tick_at = 0.0
        self._warned_alone: set[str] = set()

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
        self.wakeup = Wakeup(
            self.databases,
            listen=not self.burst and outbox_settings.wake_relay,
            interval=min(self.interval, outbox_settings.poll_interval),
        )
        self.shutdown.wakes(self.wakeup.event)
        try:
            checked_at = 0.0
            while not self.shutdown.requested:
                self.heartbeat()
                # Drop broken or expired connections. With CONN_MAX_AGE=0 this means a
                # new connection each time: at most once a second while busy.
                if time.monotonic() - checked_at >= 1.0:
                    close_old_connections()
                    checked_at = time.monotonic()
                try:
                    handled = self.run_once()
                except Exception:  # never a crash loop: log, pause, go on
                    logger.exception("outbox relay: unexpected error; going on")
                    handled = 0
                    self.shutdown.wait(1.0)
                self._report()
                if handled or self.settled_last_turn:
                    # Settling may have opened keys held in strict order: look again.
                    continue
                if self.burst and self._burst_done():
                    break
                checked_at = 0.0
                self.wakeup.wait(self._idle_wait())
        finally:
            forced = self.shutdown.forced
            if not forced:
                # what was sent gets recorded before the producer closes
                self._settle_in_flight()
                self._give_back_ahead()
                self._record_unrecorded()
                self._collect_writes(wait=True)
                self._leave()
            self.sender.close(timeout=0 if forced else 5)
            if self._database_thread is not None:
                self._database_thread.close(timeout=0 if forced else None)
                self._database_thread = None
            self.wakeup.close()
            if self.burst:
                self._report_leased()
            logger.info(
                "outbox relay stopped: %d row(s) delivered, %d failed attempt(s)",
                self.delivered,
                self.failed,
            )

    def run_once(self) -> int:
        """Claim and send one batch from each database, settling the batch sent before.

        Return the rows claimed. Ends with nothing in flight when nothing was claimed,
        Kafka looked unreachable, or a stop was requested; then also with every
        write-back done.
        """
        self._collect_writes()
        self._record_unrecorded()
        self.settled_last_turn = 0
        if time.monotonic() >= self._tick_at:
            self._coordinate()
        if not self._kafka_usable():
            self._settle_in_flight()
            self._give_back_ahead()
            self._collect_writes(wait=True)
            return 0
        handled = 0
        for alias in self.databases:
            if self.shutdown.requested or not self._database_usable(alias):
                continue
            in_flight = self._in_flight
            if in_flight is not None and in_flight.failed_early:
                self._settle_in_flight()  # known to be in trouble: record it before more
                if not self._kafka_usable():
                    break
            try:
                batch = self._claim(alias)
            except Exception:
                self._database_failed(alias)
                continue
            self._database_ok(alias)
            handled += len(batch)
            if batch.rows and not self.shutdown.requested and not self._kafka_failures:
                # The database claims the next batch while this one is being sent.
                self._ahead[alias] = self._submit_claim(alias)
            sent = self._send(batch) if batch.rows else None
            # The previous batch's acks arrived meanwhile, or arrive now.
            self._settle_in_flight(flush=sent is None)
            self._in_flight = sent
        if not handled or self.shutdown.requested or not self._kafka_usable():
            self._settle_in_flight()
            self._collect_writes(wait=True)
        return handled

    # ------------------------------------------------------------------ one batch

    @property
    def database_thread(self) -> DatabaseThread:
        """The thread of this relay's database work, started on first use."""
        if self._database_thread is None:
            self._database_thread = DatabaseThread()
        return self._database_thread

    def _claim(self, alias: str) -> Claim:
        """The next batch of ``alias``: the one claimed ahead, or one claimed now."""
        ahead = self._ahead.pop(alias, None)
        batch = (ahead or self._submit_claim(alias)).result()
        if ahead is not None and batch.rows and self._budget(batch) < self._full_budget() / 2:
            # Claimed ahead long ago (the previous batch waited for Kafka): the lease
            # left is too short to send it in. Give it back; take it afresh.
            self._give_back(batch)
            batch = self._submit_claim(alias).result()
        return batch

    def _submit_claim(self, alias: str) -> Future[Claim]:
        return self.database_thread.submit(alias, self._take, alias)

    def _take(self, alias: str) -> Claim:
        """On the database thread: lease the next batch of ``alias``, from its lowest due id.

        Never from where the last batch ended: a row that commits late below that
        floor would go out after a later row of its key (``claiming.claim``). With
        relay buckets, only the keyed rows of the buckets this relay owns.
        """
        coordinator = self.coordinators.get(alias)
        owner = None
        if coordinator is not None and coordinator.enabled:
            owner = Owner(self.name, coordinator.lease_cap(timezone.now()))
        return claim(alias, self.batch_size, self.lease_seconds, due_by=self._due_by, owner=owner)

    # ------------------------------------------------------------------ relay buckets

    def _coordinate(self) -> None:
        """Renew this relay's buckets, take its share, give back what is over it.

        A bucket is given back only once nothing of this relay's is with Kafka or
        claimed ahead: what was sent is settled and its write-back handed to the
        database thread first, and the thread runs jobs in order, so the successor's
        first claim sees every row of the bucket written back.
        """
        self._tick_at = time.monotonic() + buckets.TICK
        if not outbox_settings.relay_buckets:
            return
        surplus: dict[str, int] = {}
        for alias in self.databases:
            if not self._database_usable(alias):
                continue
            coordinator = self.coordinators.get(alias)
            if coordinator is None:
                coordinator = buckets.Coordinator(alias, self.name, self.lease_seconds)
                self.coordinators[alias] = coordinator
            try:
                tick = self.database_thread.submit(alias, coordinator.tick, greedy=self.burst)
                over = tick.result()
            except Exception:
                self._database_failed(alias)
                continue
            if over:
                surplus[alias] = over
            self._warn_if_not_alone(coordinator)
        if surplus:
            self._settle_in_flight()
            self._give_back_ahead()
            for alias, over in surplus.items():
                coordinator = self.coordinators[alias]
                try:
                    self.database_thread.submit(alias, coordinator.give_back, over).result()
                except Exception:
                    self._database_failed(alias)
        for alias, coordinator in self.coordinators.items():
            metrics.buckets_owned(alias, self.name, coordinator.holding.count)

    def _warn_if_not_alone(self, coordinator: buckets.Coordinator) -> None:
        if coordinator.enabled or coordinator.holding.members < 2:
            return
        if coordinator.alias in self._warned_alone:
            return
        self._warned_alone.add(coordinator.alias)
        logger.warning(
            "django_outbox.W090: %d relays run on the %s database %r: relays cannot share "
            "it by key there, so rows of one key may leave out of order; run one relay",
            coordinator.holding.members,
            connections[coordinator.alias].vendor,
            coordinator.alias,
        )

    def _leave(self) -> None:
        """Give every bucket back and end the memberships (a clean stop)."""
        for alias, coordinator in self.coordinators.items():
            try:
                self.database_thread.submit(alias, coordinator.leave).result(timeout=10)
            except Exception:
                logger.warning(
                    "outbox relay: could not give back the buckets of %r; they are free "
                    "when their lease runs out",
                    alias,
                    exc_info=True,
                )

    def _give_back(self, batch: Claim) -> None:
        """Release a batch that was claimed and never sent: due at once, no attempt spent."""
        ids = [row.id for row in batch.rows]
        self._writing.append(
            (batch, None, self.database_thread.submit(batch.alias, release, batch, ids))
        )

    def _give_back_ahead(self) -> None:
        ahead, self._ahead = self._ahead, {}
        for alias, future in ahead.items():
            try:
                batch = future.result()
            except Exception:
                self._database_failed(alias)
                continue
            if batch.rows:
                self._give_back(batch)

    def _full_budget(self) -> float:
        return max(self.lease_seconds * LEASE_SHARE, 0.5)

    def _budget(self, batch: Claim) -> float:
        """Seconds Kafka may take for ``batch``: the share of its lease that is left."""
        left = (batch.lease - timezone.now()).total_seconds()
        return min(left - self.lease_seconds * (1 - LEASE_SHARE), self._full_budget())

    def _send(self, batch: Claim) -> InFlight:
        return self.sender.send(prepare(batch), max(self._budget(batch), 0.5))

    def _settle_in_flight(self, *, flush: bool = True) -> None:
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        settled = self.sender.settle(in_flight, flush=flush)
        self.settled_last_turn += len(settled.outcomes)
        if settled.unreachable:
            self._kafka_unreachable(settled)
        else:
            self._kafka_ok()
        self.delivered += settled.acked
        self.failed += len(settled.outcomes) - settled.acked
        self._record(settled)

    def _record(self, settled: Settled) -> None:
        """Hand the write-back of ``settled`` to the database thread."""
        future = self.database_thread.submit(settled.claim.alias, write_back, settled)
        self._writing.append((settled.claim, settled, future))

    def _collect_writes(self, *, wait: bool = False) -> None:
        """Look at the write-backs handed over (``wait``: until all are done)."""
        writing, self._writing = self._writing, []
        for batch, settled, future in writing:
            if not wait and not future.done():
                self._writing.append((batch, settled, future))
                continue
            try:
                future.result()
            except Exception:
                self._database_failed(batch.alias)
                if settled is not None:
                    # Kafka has answered; the answer is kept and written on a fresh
                    # connection next turn, while the lease lasts (rows are not sent
                    # again meanwhile). A batch given back unsent just waits for its lease.
                    self._unrecorded.append(settled)

    def _record_unrecorded(self) -> None:
        pending, self._unrecorded = self._unrecorded, []
        for settled in pending:
            if settled.claim.lease <= timezone.now():
                logger.warning(
                    "outbox relay: the lease on %d row(s) of %r ran out before their outcome "
                    "could be written; they will be delivered again",
                    len(settled.claim.rows),
                    settled.claim.alias,
                )
                continue
            if self._database_usable(settled.claim.alias):
                self._record(settled)
            else:
                self._unrecorded.append(settled)

    def _stop_cutoff(self) -> float | None:
        """The moment a stopping relay stops waiting for acks (None while not stopping)."""
        if not self.shutdown.requested:
            return None
        if self._stop_seen is None:
            self._stop_seen = time.monotonic()
        return self._stop_seen + (0 if self.shutdown.forced else STOP_GRACE)

    # ------------------------------------------------------------------ health

    def _database_usable(self, alias: str) -> bool:
        if alias in self._broken:
            return False
        return time.monotonic() >= self._db_retry_at.get(alias, 0.0)

    def _database_failed(self, alias: str) -> None:
        # A database that went away: its rows stay leased or pending and are retried
        # when it is back; the other databases go on meanwhile.
        failures = self._db_failures.get(alias, 0) + 1
        self._db_failures[alias] = failures
        delay = backoff_delay(failures, max(self.interval, 0.5), MAX_PAUSE)
        self._db_retry_at[alias] = time.monotonic() + delay
        # (The database thread closed its connection: the next job opens a fresh one.)
        logger.exception("outbox relay: database %r failed; retrying in %.1fs", alias, delay)
        self.errors += 1
        if self.burst:
            self._broken.add(alias)

    def _database_ok(self, alias: str) -> None:
        if self._db_failures.pop(alias, None):
            logger.info("outbox relay: database %r answers again", alias)
        self._db_retry_at.pop(alias, None)

    def _kafka_usable(self) -> bool:
        if not self._kafka_failures or time.monotonic() >= self._kafka_retry_at:
            return True
        return False

    def _kafka_unreachable(self, settled: Settled) -> None:
        self._kafka_failures += 1
        delay = backoff_delay(self._kafka_failures, 0.5, MAX_KAFKA_PAUSE)
        self._kafka_retry_at = time.monotonic() + delay
        if self._kafka_failures == 1:
            servers = self.sender.bootstrap_servers()
            down = kafka.unreachable_brokers(servers)
            first = next(o for o in settled.outcomes if o is not None)
            where = (
                f"broker {', '.join(down)} unreachable"
                if down
                else f"no acknowledgement from {', '.join(servers)}"
            )
            logger.warning(
                "outbox relay: Kafka %s (%s); pausing, no retries spent, rows due again",
                where,
                describe(first),
            )

    def _kafka_ok(self) -> None:
        if self._kafka_failures:
            logger.info("outbox relay: Kafka answers again")
        self._kafka_failures = 0

    def _idle_wait(self) -> float:
        if self._kafka_failures:
            return max(self._kafka_retry_at - time.monotonic(), 0.05)
        waits = [self.interval, max(self._tick_at - time.monotonic(), 0.05)]
        if self.wakeup is None or set(self.databases) - self.wakeup.listening:
            waits.append(outbox_settings.poll_interval)
        retry_at = [t for a, t in self._db_retry_at.items() if a not in self._broken]
        if retry_at:
            waits.append(max(min(retry_at) - time.monotonic(), 0.05))
        return min(waits)

    def _burst_done(self) -> bool:
        """A burst ends when nothing is due; it gives up on what it cannot reach."""
        if self._in_flight is not None or self._unrecorded or self._writing:
            return False
        if any(alias not in self._broken for alias in self._ahead):
            return False  # (a broken database's claim ahead is given back on the way out)
        if self._kafka_failures and not self._kafka_usable():
            # Kafka is paused, not asked: nothing was claimed because of that.
            return self._kafka_failures >= BURST_GIVE_UP
        return not any(a not in self._broken and a in self._db_retry_at for a in self.databases)

    def _report_leased(self) -> None:
        now = timezone.now()
        for alias in self.databases:
            try:
                leased = OutboxMessage.objects.using(alias).in_flight(now)
                count = leased.count()
                until = (
                    leased.order_by("-next_retry_at")
                    .values_list("next_retry_at", flat=True)
                    .first()
                )
                if count:
                    logger.warning(
                        "outbox relay: %d row(s) on %r are leased by another relay (until %s); "
                        "they are due again when that lease runs out",
                        count,
                        alias,
                        until.isoformat() if until else "?",
                    )
            except Exception:
                pass

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
