"""One round of the relay: claim and send a batch from each database, settle the batch
sent before it, hand its write-back over.

At most two batches are with Kafka at once (the one sent this round, and the one
before, settled meanwhile), one more is claimed ahead while batches come full; no key
is in both batches with Kafka, and a key that failed gives its later rows back
(``keyorder``). A round ends with nothing in flight when it took every row due (no
batch was full), nothing was claimed, Kafka looked unreachable, or a stop was
requested. Here too: how long an idle relay sleeps, and when a burst is done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from django_outbox.conf import outbox_settings
from django_outbox.models.claiming import Claim
from django_outbox.ops import metrics
from django_outbox.relay import keyorder
from django_outbox.relay.claims import Claims, budget
from django_outbox.relay.coordination import Coordination
from django_outbox.relay.outages import Outages
from django_outbox.relay.send import InFlight, Sender, Settled, prepare
from django_outbox.relay.write_back import WriteBacks
from django_outbox.shutdown import Shutdown
from django_outbox.wakeup import Wakeup

logger = logging.getLogger(__name__)

#: A burst stops after this many looks at an unreachable broker.
BURST_GIVE_UP = 3


class Rounds:
    """The relay's pipeline, one round at a time: claims, sends, settles."""

    def __init__(
        self,
        *,
        databases: Sequence[str],
        interval: float,
        lease_seconds: float,
        shutdown: Shutdown,
        sender: Sender,
        claims: Claims,
        write_backs: WriteBacks,
        outages: Outages,
        coordination: Coordination,
    ) -> None:
        self.databases = databases
        self.interval = interval
        self.lease_seconds = lease_seconds
        self.shutdown = shutdown
        self.sender = sender
        self.claims = claims
        self.write_backs = write_backs
        self.outages = outages
        self.coordination = coordination
        #: Sent, not settled yet, in the order sent.
        self.in_flight: list[InFlight] = []
        #: Keys with a row not acknowledged, settled after the batch claimed ahead was
        #: taken (that batch may hold later rows of them: ``keyorder``).
        self.failed_keys: set[keyorder.Key] = set()
        self.delivered = 0
        self.failed = 0
        #: Rows whose outcome the last ``run_once`` settled.
        self.settled_last_turn = 0
        #: The last ``run_once`` took every row due of each database (no batch was full)
        #: and settled what it sent.
        self.caught_up = False

    def run_once(self) -> int:
        """Claim and send one batch from each database, settling the batch sent before.

        Return the rows claimed. Ends with nothing in flight when nothing was claimed,
        Kafka looked unreachable, or a stop was requested; then also with every
        write-back done.
        """
        self.write_backs.collect()
        self.write_backs.record_unrecorded()
        self.settled_last_turn = 0
        if self.coordination.due():
            self.coordination.tick()
        self.caught_up = False
        if not self.outages.kafka_usable():
            self.quiesce()
            self.write_backs.collect(wait=True)
            return 0
        handled = 0
        caught_up = True
        for alias in self.databases:
            if self.shutdown.requested or not self.outages.database_usable(alias):
                continue
            if any(in_flight.failed_early for in_flight in self.in_flight):
                self.settle_in_flight()  # known to be in trouble: record it before more
                if not self.outages.kafka_usable():
                    break
            try:
                batch = self.claims.next(alias)
            except Exception:
                self.outages.database_failed(alias)
                continue
            self.outages.database_ok(alias)
            handled += len(batch)
            # A batch smaller than batch_size took every row due: one claimed ahead now
            # would most likely be empty (a statement for nothing, on the database
            # thread that the next commit's claim waits behind).
            full = len(batch.rows) >= self.claims.batch_size
            # Claimed (ahead) before the latest failures were written back.
            batch = self._give_back_failed_keys(batch)
            self.failed_keys = {key for key in self.failed_keys if key[0] != alias}
            caught_up = caught_up and not full
            if full and not self.shutdown.requested and not self.outages.kafka_failures:
                self.claims.claim_ahead(alias)
            batch, held = keyorder.split(batch, keyorder.keys_in(self.in_flight))
            sent = [self._send(batch)] if batch.rows else []
            # The previous batch's acks arrived meanwhile, or arrive now.
            self.settle_in_flight(flush=not sent)
            held = self._give_back_failed_keys(held)
            if held.rows and (self.shutdown.requested or not self.outages.kafka_usable()):
                self.write_backs.give_back(held)
            elif held.rows:  # their keys' earlier rows are acknowledged now
                sent.append(self._send(held))
            self.in_flight = sent
        self.caught_up = caught_up
        if not handled or caught_up or self.shutdown.requested or not self.outages.kafka_usable():
            # Nothing more was due: what was sent goes out now (flush, no linger_ms) and
            # is recorded before the relay waits for the next commit.
            self.settle_in_flight()
            self.write_backs.collect(wait=True)
        return handled

    def _send(self, batch: Claim) -> InFlight:
        return self.sender.send(prepare(batch), max(budget(batch, self.lease_seconds), 0.5))

    def _give_back_failed_keys(self, batch: Claim) -> Claim:
        """``batch`` without the rows of ``failed_keys``; those are given back unsent."""
        batch, failed = keyorder.split(batch, self.failed_keys)
        if failed.rows:
            self.write_backs.give_back(failed)
        return batch

    def settle_in_flight(self, *, flush: bool = True) -> None:
        in_flight, self.in_flight = self.in_flight, []
        for sent in in_flight:
            settled = self.sender.settle(sent, flush=flush)
            self.settled_last_turn += len(settled.outcomes)
            if settled.unreachable:
                self.outages.kafka_unreachable(settled)
            else:
                self.outages.kafka_ok()
            self.delivered += settled.acked
            self.failed += len(settled.outcomes) - settled.acked
            self.failed_keys |= keyorder.failed_keys(settled)
            self._say_overtaken(settled)
            self.write_backs.record(settled)

    def _say_overtaken(self, settled: Settled) -> None:
        broken = keyorder.overtaken(settled)
        if not broken:
            return
        topics = {row.id: row.topic for row in settled.claim.rows}
        for earlier, _later in broken:
            metrics.ordering_violation(topics[earlier])
        logger.warning(
            "outbox relay: %d key(s) on %r out of order in Kafka: a later row was "
            "acknowledged while an earlier one of its key was not (first: #%d before #%d); "
            "the earlier row is sent again after it (OUTBOX_STRICT_ORDER rules this out)",
            len(broken),
            settled.claim.alias,
            broken[0][1],
            broken[0][0],
        )

    def quiesce(self) -> None:
        """Nothing with Kafka, nothing claimed ahead: what was sent is settled, the rest
        given back."""
        self.settle_in_flight()
        self.claims.give_back_ahead()
        self.failed_keys.clear()  # the next claims are taken after these write-backs

    def finish(self) -> None:
        """On a clean stop: what was sent gets recorded, the rest given back.

        An outcome kept for a failing database is tried once more, pause or not; one
        that still fails is named and dropped (its rows go out again after the lease).
        """
        self.quiesce()
        self.write_backs.record_unrecorded(stopping=True)
        self.write_backs.collect(wait=True)
        self.write_backs.abandon()

    def look_again(self, wakeup: Wakeup) -> bool:
        """After a round that claimed or settled rows: claim again at once, or wait.

        Once a round took every row due and settled it, a commit since then wakes the
        relay (its notification sets ``wakeup``), so looking again would be one more
        claim, empty most of the time, per commit. The relay looks again when a batch
        was full (more rows wait), where no notification comes (MySQL/MariaDB, SQLite,
        a listener down, a burst), and in strict order (an outcome settled may have
        opened a key held behind it).
        """
        if not self.caught_up or outbox_settings.strict_order:
            return True
        return bool(set(self.databases) - wakeup.listening)

    def idle_wait(self, wakeup: Wakeup | None) -> float:
        """Seconds an idle relay sleeps, unless a commit wakes it first."""
        outages = self.outages
        if outages.kafka_failures:
            return max(outages.kafka_retry_at - time.monotonic(), 0.05)
        waits = [self.interval, max(self.coordination.tick_at - time.monotonic(), 0.05)]
        if wakeup is None or set(self.databases) - wakeup.listening:
            waits.append(outbox_settings.poll_interval)
        retry_at = outages.database_retry_times(kept=self.write_backs.kept)
        if retry_at:
            waits.append(max(min(retry_at) - time.monotonic(), 0.05))
        return min(waits)

    def burst_done(self) -> bool:
        """A burst ends when nothing is due; it gives up on what it cannot reach."""
        outages = self.outages
        if self.in_flight or self.write_backs.pending:
            return False
        if any(alias not in outages.broken for alias in self.claims.ahead):
            return False  # (a broken database's claim ahead is given back on the way out)
        if outages.kafka_failures and not outages.kafka_usable():
            # Kafka is paused, not asked: nothing was claimed because of that.
            return outages.kafka_failures >= BURST_GIVE_UP
        return not any(outages.waiting_for(a) for a in self.databases)
