"""The write-back: what Kafka answered for a claimed batch, recorded on its rows.

Acknowledged rows become ``published``, with the partition and offset Kafka gave
(``Publication``, in a statement of its own after the fenced update); the others are
retried with backoff, released with no attempt spent (fate unknown: no answer, the
cluster's own trouble; due again at once, ``keyorder``) or ``dead`` (a definite,
final answer), each through the fenced transitions of ``django_outbox.models``. A
database that fails is retried on a fresh connection; the caller keeps the outcome
and writes it once the database answers again, while the claim's lease lasts.

``WriteBacks`` is the relay's side of it: the write-backs handed to the database
thread until they are known done, and the outcomes kept while their database fails.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import Future
from typing import Any

from django.db import connections
from django.utils import timezone

from django_outbox import kafka, signals
from django_outbox.exceptions import describe
from django_outbox.models.claiming import (
    Claim,
    Failure,
    record_failed,
    record_published,
    release,
)
from django_outbox.ops import metrics
from django_outbox.relay import deadlocks
from django_outbox.relay.dbthread import Submit
from django_outbox.relay.outages import KEPT_PAUSE, Outages
from django_outbox.relay.send import UNREACHABLE_DELAY, Sender, Settled, is_final

logger = logging.getLogger(__name__)


def failure_of(row: Any, outcome: BaseException) -> Failure:
    """The ``Failure`` a row's outcome means: final, definite, or of unknown fate."""
    return Failure(
        row,
        describe(outcome),
        final=is_final(outcome),
        definite=not kafka.is_transport_error(outcome),
    )


def write_back(
    settled: Settled, *, attempts: int = 3, pause: float = 0.5, unknown_delay: float = 0.0
) -> None:
    """Record ``settled`` (fenced on its lease), on a fresh connection after a failure.

    Raises the database's error when every attempt failed; the caller keeps the
    outcome and tries again later, as long as the lease lasts.
    """
    attempt = 0
    while True:
        try:
            # a deadlock's victim (relays' claims and write-backs lock rows and fences)
            # rolled back whole: retried at once, no attempt spent
            deadlocks.retry_deadlocks(lambda: _write(settled, unknown_delay))
            metrics.batch_recorded(settled.claim)
            return
        except Exception:
            attempt += 1
            if attempt >= attempts:
                raise
            logger.warning(
                "outbox: recording the outcome of %d row(s) on %r failed (attempt %d); "
                "retrying on a fresh connection",
                len(settled.claim.rows),
                settled.claim.alias,
                attempt,
                exc_info=True,
            )
            _reconnect(settled.claim.alias)
            time.sleep(pause * attempt)


def _write(settled: Settled, unknown_delay: float = 0.0) -> None:
    claim, now = settled.claim, timezone.now()
    acked = [row for row, o in zip(claim.rows, settled.outcomes, strict=True) if o is None]
    failed = [(row, o) for row, o in zip(claim.rows, settled.outcomes, strict=True) if o]
    if acked:
        # Where Kafka put each row, kept with the write-back (models/publications.py).
        sent = [
            (row.topic, settled.position(i))
            for i, (row, o) in enumerate(zip(claim.rows, settled.outcomes, strict=True))
            if o is None
        ]
        written = record_published(claim, [row.id for row in acked], now, sent=sent)
        if written != len(acked):
            logger.info(
                "outbox: %d of %d acknowledged row(s) on %r were no longer ours "
                "(lease ran out, or already consumed); left as they are",
                len(acked) - written,
                len(acked),
                claim.alias,
            )
        signals.send(signals.event_published, Sender, alias=claim.alias, rows=acked)
    if not failed:
        return
    failures = [failure_of(row, outcome) for row, outcome in failed]
    unknown = [f for f in failures if not f.final and not f.definite]
    if unknown:
        # No answer, or the cluster's own trouble: nothing is known about the records,
        # so no attempt is spent, and they are due again at once (keyorder: no later
        # row of their keys may be due before them). A burst waits ``unknown_delay``
        # (``UNREACHABLE_DELAY``) so that it ends even while Kafka is away.
        error = f"not delivered, will retry: {unknown[0].error}"
        release(claim, [f.row.id for f in unknown], now, error=error, delay=unknown_delay)
        _signal_failures(claim.alias, unknown)
        failures = [f for f in failures if f.final or f.definite]
        if not failures:
            return
    record_failed(claim, failures, now)
    _signal_failures(claim.alias, failures)
    dead = sum(1 for f in failures if f.kills)
    logger.warning(
        "outbox: %d of %d row(s) on %r not delivered (first: #%d %s); %d dead, "
        "the others retried with backoff",
        len(failures),
        len(claim.rows),
        claim.alias,
        failures[0].row.id,
        failures[0].error,
        dead,
    )


def _signal_failures(alias: str, failures: list[Failure]) -> None:
    for signal, kills in ((signals.event_dead, True), (signals.event_failed, False)):
        chosen = [f for f in failures if f.kills == kills]
        if chosen:
            rows, errors = [f.row for f in chosen], [f.error for f in chosen]
            signals.send(signal, Sender, alias=alias, rows=rows, errors=errors)


def _reconnect(alias: str) -> None:
    connection = connections[alias]
    try:
        connection.close()
    except Exception:  # a connection that is already gone may fail to close
        pass


class WriteBacks:
    """The relay's write-backs, handed to the database thread in order, until known done.

    An outcome whose write-back failed is kept (its rows are not sent again meanwhile)
    and written first thing in the first round after its database's pause, in steady
    and burst mode alike: the write is the look at the database, one attempt on a
    fresh connection, fenced on the claim's token. While it is kept, the pause is at
    most ``outages.KEPT_PAUSE``. Once the claim's lease has run out it is dropped: the
    rows are due again and go out again.
    """

    def __init__(self, submit: Submit, outages: Outages) -> None:
        self._submit = submit
        self._outages = outages
        #: Write-backs handed to the database thread, not known to be done yet: the
        #: claim, its outcome (None for a batch given back unsent), the job.
        self.writing: list[tuple[Claim, Settled | None, Future[Any]]] = []
        #: Settled batches whose write-back failed, written again once the database answers.
        self.unrecorded: list[Settled] = []

    @property
    def pending(self) -> bool:
        """Some write-back is not known to be done, or waits to be written again."""
        return bool(self.writing or self.unrecorded)

    @property
    def kept(self) -> set[str]:
        """The databases that outcomes wait for."""
        return {settled.claim.alias for settled in self.unrecorded}

    def record(self, settled: Settled, *, attempts: int = 3) -> None:
        """Hand the write-back of ``settled`` to the database thread."""
        delay = UNREACHABLE_DELAY if self._outages.burst else 0.0
        future = self._submit(
            settled.claim.alias, write_back, settled, attempts=attempts, unknown_delay=delay
        )
        self.writing.append((settled.claim, settled, future))

    def give_back(self, batch: Claim) -> None:
        """Release a batch that was claimed and never sent: due at once, no attempt spent."""
        ids = [row.id for row in batch.rows]
        self.writing.append((batch, None, self._submit(batch.alias, release, batch, ids)))

    def collect(self, *, wait: bool = False) -> None:
        """Look at the write-backs handed over (``wait``: until all are done)."""
        writing, self.writing = self.writing, []
        for batch, settled, future in writing:
            if not wait and not future.done():
                self.writing.append((batch, settled, future))
                continue
            try:
                future.result()
            except Exception:
                self._outages.database_failed(batch.alias)
                if settled is not None:
                    # Kafka has answered; the answer is kept and written on a fresh
                    # connection once the database's pause is over, while the lease
                    # lasts (rows are not sent again meanwhile). A batch given back
                    # unsent just waits for its lease.
                    self._keep(settled)
            else:
                # (a success from before a later job's failure leaves that pause alone)
                if not self._outages.database_paused(batch.alias):
                    self._outages.database_ok(batch.alias)

    def record_unrecorded(self, *, stopping: bool = False) -> None:
        """Hand over the outcomes kept whose database's pause is over (``stopping``: all
        of them, one last time before the relay exits)."""
        pending, self.unrecorded = self.unrecorded, []
        for settled in pending:
            if settled.claim.lease <= timezone.now():
                logger.warning(
                    "outbox relay: the lease on %d row(s) of %r ran out before their outcome "
                    "could be written; they will be delivered again",
                    len(settled.claim.rows),
                    settled.claim.alias,
                )
            elif stopping or not self._outages.database_paused(settled.claim.alias):
                self.record(settled, attempts=1)
            else:
                self._keep(settled)

    def _keep(self, settled: Settled) -> None:
        # The lease runs while the outcome waits: the database is looked at again soon.
        self._outages.look_again_within(settled.claim.alias, KEPT_PAUSE)
        self.unrecorded.append(settled)

    def abandon(self) -> None:
        """On the way out: name the outcomes that could not be written, and drop them."""
        abandoned, self.unrecorded = self.unrecorded, []
        for settled in abandoned:
            logger.warning(
                "outbox relay: stopping with the outcome of %d row(s) of %r unwritten (the "
                "database fails); they stay leased until %s, then go out again (consumers "
                "take a repeated event_id as a duplicate)",
                len(settled.claim.rows),
                settled.claim.alias,
                settled.claim.lease.isoformat(),
            )
