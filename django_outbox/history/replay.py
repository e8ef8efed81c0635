"""``Replayer``: outbox rows (or archived ones) sent to Kafka again, resumable, recorded.

The loop, for one run (``models.ReplayRun``), batch after batch in id order (an
archive: line order):

- read a batch of rows past the run's ``last_id``, in autocommit: no transaction
  is open while Kafka is called;
- send each row's stored key and payload to its topic, with the relay's headers
  (``kafka.outbox_headers``) and the run's: ``outbox_replay_run`` (the run's token)
  and ``outbox_replay_group`` (the one consumer group that handles it, ``*`` for
  every group), on a producer with ``acks=all``;
- once Kafka acknowledged them, record the progress (``ReplayRun.advance``): up to
  the last row of the acknowledged prefix. A failure stops the run (``interrupt``):
  resumed, it sends again from there; records sent twice carry the same token, and
  the consumer group handles a run's event once (``consumer/inbox.py``).

``--rate`` paces the sends (records per second); a stop request (SIGTERM/SIGINT)
ends the run after the batch in hand, resumable.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connections

from django_outbox import kafka
from django_outbox.envelope import EVERY_GROUP, HEADER_REPLAY_GROUP, HEADER_REPLAY_RUN
from django_outbox.exceptions import describe
from django_outbox.history.archive import ArchivedRow
from django_outbox.history.selection import Selection
from django_outbox.models import ReplayRun
from django_outbox.shutdown import Shutdown

logger = logging.getLogger("django_outbox.replay")

#: Seconds a batch waits for Kafka's acknowledgements.
SEND_TIMEOUT = 30.0
#: Rows read and sent per batch (fewer with a low ``--rate``).
BATCH_SIZE = 500


class ReplayStopped(Exception):
    """The run stopped before its end (Kafka away, a stop request): resumable."""

    def __init__(self, run: ReplayRun, reason: str) -> None:
        super().__init__(
            f"replay run {run.pk} stopped after {run.sent} record(s): {reason}; "
            f"resume it with: manage.py outbox_replay --resume {run.pk}"
        )
        self.run = run


@dataclass(frozen=True)
class Replayable:
    """One row to send again; ``position`` orders a run (a row id, an archive line)."""

    position: int
    pk: int
    alias: str
    event_type: str
    topic: str
    key: str
    payload: str


#: Batches of rows past a position: ``(after, size) -> batches``.
Source = Callable[[int | None, int], Iterator[list[Replayable]]]


def table_source(selection: Selection, alias: str) -> Source:
    """The rows of ``alias`` that ``selection`` picks, by id."""

    def batches(after: int | None, size: int) -> Iterator[list[Replayable]]:
        rows = selection.queryset(alias).order_by("pk")
        while True:
            page = rows if after is None else rows.filter(pk__gt=after)
            values = page.values_list("pk", "event_type", "topic", "message_key", "payload")
            batch = [Replayable(pk, pk, alias, *rest) for pk, *rest in values[:size]]
            if not batch:
                return
            yield batch
            after = batch[-1].position

    return batches


def archive_source(rows: Sequence[ArchivedRow], selection: Selection) -> Source:
    """The archived rows that ``selection`` picks, by line."""
    chosen = [
        Replayable(row.line, row.id, row.alias, row.event_type, row.topic, row.message_key,
                   row.payload)
        for row in rows
        if selection.matches(row)
    ]  # fmt: skip

    def batches(after: int | None, size: int) -> Iterator[list[Replayable]]:
        left = [row for row in chosen if after is None or row.position > after]
        for start in range(0, len(left), size):
            yield left[start : start + size]

    return batches


def record_of(row: Replayable, run: ReplayRun) -> kafka.OutboxRecord:
    """The Kafka record that sends ``row`` again for ``run``."""
    headers = kafka.outbox_headers(row.pk, row.event_type, row.payload, row.alias)
    headers += [
        (HEADER_REPLAY_RUN, str(run.token).encode()),
        (HEADER_REPLAY_GROUP, (run.target_group or EVERY_GROUP).encode()),
    ]
    return kafka.OutboxRecord(row.topic, row.key.encode(), row.payload.encode(), headers)


class Replayer:
    """Sends one run's rows to Kafka again (``run()``); drive it from a test as is."""

    def __init__(
        self,
        run: ReplayRun,
        source: Source,
        *,
        rate: float | None = None,
        batch_size: int = BATCH_SIZE,
        shutdown: Shutdown | None = None,
        progress: Callable[[ReplayRun], None] | None = None,
    ) -> None:
        self.run_record = run
        self.source = source
        self.rate = rate
        self.batch_size = max(1, min(batch_size, int(rate))) if rate else batch_size
        self.shutdown = shutdown or Shutdown(signals=())
        self.progress = progress or (lambda run: None)

    def run(self) -> ReplayRun:
        """Send what is left of the run; ``ReplayStopped`` when it stops before the end."""
        run = self.run_record
        alias = run._state.db or "default"
        if connections[alias].in_atomic_block:
            raise RuntimeError("outbox_replay calls Kafka: run it outside transaction.atomic()")
        try:
            producer = kafka.build_producer(client_id="django-outbox-replay")
        except Exception as exc:
            self._stop(f"Kafka cannot be reached ({kafka.redact(describe(exc))})")
        try:
            self._send_all(producer)
        finally:
            kafka.close_producer(producer)
        run.finish()
        self.progress(run)
        return run

    def _send_all(self, producer: Any) -> None:
        run = self.run_record
        started, sent_here = time.monotonic(), 0
        for batch in self.source(run.last_id, self.batch_size):
            if self.shutdown.requested:
                self._stop("a stop was requested")
            outcomes = kafka.send_records(
                producer,
                [record_of(row, run) for row in batch],
                SEND_TIMEOUT,
            )
            acked = 0
            for outcome in outcomes:
                if outcome is not None:
                    break
                acked += 1
            if acked:
                run.advance(batch[acked - 1].position, acked)
                sent_here += acked
                self.progress(run)
            if acked < len(batch):
                failure = next(outcome for outcome in outcomes if outcome is not None)
                self._stop(
                    f"Kafka did not acknowledge a record ({kafka.redact(describe(failure))})"
                )
            if self.rate:
                # Paced on the whole run so far: a slow batch is not followed by a burst.
                self.shutdown.wait(started + sent_here / self.rate - time.monotonic())

    def _stop(self, reason: str) -> None:
        run = self.run_record
        run.interrupt(reason)
        logger.warning("replay run %s interrupted: %s", run.pk, reason)
        raise ReplayStopped(run, reason)


def known_groups(timeout: float = 10.0) -> set[str]:
    """The consumer groups the cluster knows (those that ever joined or committed).

    Raises the client's error when no broker answers within ``timeout`` seconds.
    """
    millis = int(timeout * 1000)
    admin = kafka.build_admin(
        client_id="django-outbox-replay", bootstrap_timeout_ms=millis, request_timeout_ms=millis
    )
    try:
        listed = admin.list_groups()  # kafka-python 3; 2.x called it list_consumer_groups
    finally:
        admin.close()
    return {group["group_id"] if isinstance(group, dict) else group[0] for group in listed}
