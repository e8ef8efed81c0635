"""The relay: delivers ``pending`` outbox rows to Kafka and records the outcome.

The relay is the only sender: the request only writes the row and wakes the relay
at commit (``wakeup``), so rows of one key reach Kafka in id order. One loop,
driven by ``Relay.run()`` (``manage.py outbox_relay`` is a thin wrapper):

1. *claim* a batch of due rows: one statement on PostgreSQL, a short transaction
   elsewhere (``claims.py`` over ``models.claiming.claim``);
2. *send* it, outside any transaction (``send.Sender``): ``send()`` only queues
   the records, the producer's own thread talks to the broker;
3. *settle* the batch sent *before* this one: wait for its acks, confirm poison, one
   outcome per row; and *write it back*, fenced on the lease taken in step 1
   (``write_back.py``).

This module owns the loop, its start and its stop; one round is ``rounds.py``, what
is away and for how long ``outages.py``, the relay's buckets ``coordination.py``, the
progress line ``progress.py``.

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

from django_outbox.conf import outbox_settings
from django_outbox.models import OutboxMessage
from django_outbox.relay import buckets, progress
from django_outbox.relay.claims import Claims
from django_outbox.relay.coordination import Coordination
from django_outbox.relay.dbthread import DatabaseThread
from django_outbox.relay.outages import Outages
from django_outbox.relay.progress import Progress
from django_outbox.relay.rounds import Rounds
from django_outbox.relay.send import Sender
from django_outbox.relay.write_back import WriteBacks
from django_outbox.shutdown import Shutdown
from django_outbox.wakeup import Wakeup

logger = logging.getLogger(__name__)

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
        self.heartbeat = heartbeat or (lambda: None)
        self.sender = Sender(producer_options)
        self.sender.stopping = self._stop_cutoff
        self._stop_seen: float | None = None
        self._database_thread: DatabaseThread | None = None
        self.wakeup: Wakeup | None = None
        self.progress_interval = progress_interval
        self.progress = Progress(self.databases, progress_interval)
        self._assemble()

    def _assemble(self) -> None:
        """The parts of the pipeline, each handed the few others it works with."""
        self.outages = Outages(self.sender, interval=self.interval, burst=self.burst)
        self.write_backs = WriteBacks(self._submit, self.outages)
        self.coordination = Coordination(
            databases=self.databases,
            lease_seconds=self.lease_seconds,
            burst=self.burst,
            submit=self._submit,
            outages=self.outages,
            quiesce=self._quiesce,
        )
        self.claims = Claims(
            batch_size=self.batch_size,
            lease_seconds=self.lease_seconds,
            due_by=timezone.now() if self.burst else None,
            submit=self._submit,
            owner=self.coordination.owner,
            outages=self.outages,
            write_backs=self.write_backs,
        )
        self.rounds = Rounds(
            databases=self.databases,
            interval=self.interval,
            lease_seconds=self.lease_seconds,
            shutdown=self.shutdown,
            sender=self.sender,
            claims=self.claims,
            write_backs=self.write_backs,
            outages=self.outages,
            coordination=self.coordination,
        )

    # ------------------------------------------------------------------ what tests read

    @property
    def name(self) -> str:
        """This relay's name among the relays of its databases (``buckets``)."""
        return self.coordination.name

    @property
    def coordinators(self) -> dict[str, buckets.Coordinator]:
        """Per database, this relay's share of the key space (``OUTBOX_RELAY_BUCKETS``)."""
        return self.coordination.coordinators

    @property
    def errors(self) -> int:
        """Database errors met (in burst mode, each one drops its database from the run)."""
        return self.outages.errors

    @property
    def delivered(self) -> int:
        return self.rounds.delivered

    @property
    def failed(self) -> int:
        return self.rounds.failed

    @property
    def settled_last_turn(self) -> int:
        """Rows whose outcome the last ``run_once`` settled."""
        return self.rounds.settled_last_turn

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
            table=OutboxMessage._meta.db_table,
        )
        self.shutdown.wakes(self.wakeup.event)
        try:
            self._loop(self.wakeup)
        finally:
            self._close(self.wakeup)

    def _loop(self, wakeup: Wakeup) -> None:
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
            self.progress.report(self.delivered)
            if (handled or self.settled_last_turn) and self.rounds.look_again(wakeup):
                continue
            if self.burst and self.rounds.burst_done():
                break
            checked_at = 0.0
            wakeup.wait(self.rounds.idle_wait(wakeup))

    def _close(self, wakeup: Wakeup) -> None:
        forced = self.shutdown.forced
        if not forced:
            # what was sent gets recorded before the producer closes
            self.rounds.finish()
            self.coordination.leave()
        self.sender.close(timeout=0 if forced else 5)
        if self._database_thread is not None:
            self._database_thread.close(timeout=0 if forced else None)
            self._database_thread = None
        wakeup.close()
        if self.burst:
            progress.report_leased(self.databases)
        logger.info(
            "outbox relay stopped: %d row(s) delivered, %d failed attempt(s)",
            self.delivered,
            self.failed,
        )

    def run_once(self) -> int:
        """Claim and send one batch from each database, settling the batch sent before.

        Return the rows claimed (``rounds.Rounds.run_once``).
        """
        return self.rounds.run_once()

    def backlog(self) -> tuple[int, float]:
        """(pending rows, age in seconds of the oldest due row) over all databases."""
        return progress.backlog(self.databases)

    # ------------------------------------------------------------------ its parts' needs

    @property
    def database_thread(self) -> DatabaseThread:
        """The thread of this relay's database work, started on first use."""
        if self._database_thread is None:
            self._database_thread = DatabaseThread()
        return self._database_thread

    def _submit(
        self, alias: str, function: Callable[..., Any], *args: Any, **kw: Any
    ) -> Future[Any]:
        return self.database_thread.submit(alias, function, *args, **kw)

    def _quiesce(self) -> None:
        self.rounds.quiesce()

    def _stop_cutoff(self) -> float | None:
        """The moment a stopping relay stops waiting for acks (None while not stopping)."""
        if not self.shutdown.requested:
            return None
        if self._stop_seen is None:
            self._stop_seen = time.monotonic()
        return self._stop_seen + (0 if self.shutdown.forced else STOP_GRACE)
