"""One round of the relay: claim and send a batch from each database, settle the batch
sent before it, hand its write-back over.

At most two batches are with Kafka at once (the one sent this round, and the one
before, settled meanwhile), one more is claimed ahead while batches come full. A
round ends with nothing in flight when it took every row due (no batch was full),
nothing was claimed, Kafka looked unreachable, or a stop was requested.
Here too: how long an idle relay sleeps, and when a burst is done.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from django_outbox.conf import outbox_settings
from django_outbox.models.claiming import Claim
from django_outbox.relay.claims import Claims, budget
from django_outbox.relay.coordination import Coordination
from django_outbox.relay.outages import Outages
from django_outbox.relay.send import InFlight, Sender, prepare
from django_outbox.relay.write_back import WriteBacks
from django_outbox.shutdown import Shutdown
from django_outbox.wakeup import Wakeup

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
        self.in_flight: InFlight | None = None
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
            in_flight = self.in_flight
            if in_flight is not None and in_flight.failed_early:
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
            caught_up = caught_up and not full
            if full and not self.shutdown.requested and not self.outages.kafka_failures:
                self.claims.claim_ahead(alias)
            sent = self._send(batch) if batch.rows else None
            # The previous batch's acks arrived meanwhile, or arrive now.
            self.settle_in_flight(flush=sent is None)
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

    def settle_in_flight(self, *, flush: bool = True) -> None:
        in_flight, self.in_flight = self.in_flight, None
        if in_flight is None:
            return
        settled = self.sender.settle(in_flight, flush=flush)
        self.settled_last_turn += len(settled.outcomes)
        if settled.unreachable:
            self.outages.kafka_unreachable(settled)
        else:
            self.outages.kafka_ok()
        self.delivered += settled.acked
        self.failed += len(settled.outcomes) - settled.acked
        self.write_backs.record(settled)

    def quiesce(self) -> None:
        """Nothing with Kafka, nothing claimed ahead: what was sent is settled, the rest
        given back."""
        self.settle_in_flight()
        self.claims.give_back_ahead()

    def finish(self) -> None:
        """On a clean stop: what was sent gets recorded, the rest given back."""
        self.quiesce()
        self.write_backs.record_unrecorded()
        self.write_backs.collect(wait=True)

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
        retry_at = outages.database_retry_times()
        if retry_at:
            waits.append(max(min(retry_at) - time.monotonic(), 0.05))
        return min(waits)

    def burst_done(self) -> bool:
        """A burst ends when nothing is due; it gives up on what it cannot reach."""
        outages = self.outages
        if self.in_flight is not None or self.write_backs.pending:
            return False
        if any(alias not in outages.broken for alias in self.claims.ahead):
            return False  # (a broken database's claim ahead is given back on the way out)
        if outages.kafka_failures and not outages.kafka_usable():
            # Kafka is paused, not asked: nothing was claimed because of that.
            return outages.kafka_failures >= BURST_GIVE_UP
        return not any(outages.waiting_for(a) for a in self.databases)
