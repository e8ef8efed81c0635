"""One pass over a chunk of records: which handler runs on what, in which order.

``Handling.handle_batch`` walks a chunk once, in one transaction per database
(``ChunkPass``). Each handler runs once, in a lazy savepoint (``savepoints.py``):
one issued before its first statement only, so a handler that makes no query costs
no round trip. A handler that raises is rolled back alone, with its ``on_commit``
callbacks; the others commit. So a handler runs twice only when the chunk's
transaction itself is lost (the process dies, the connection breaks, the commit
fails), never because another handler of its chunk failed.

A batch handler (``@handler(..., batch=True)``) gets the events of its type in the
chunk as one list, per database, in chunk order; a list whose handler raises is
rolled back and handed over again one event at a time (a list of one, each in its
own savepoint): those events reach the handler twice, once in the list. A
partition keeps its order: the list is handed over before the handler of any later
record of one of its partitions runs.

A rerun-safe handler (``@handler(..., rerun_safe=True)``) takes no savepoint of its
own: consecutive rerun-safe units of the chunk form a *group* that shares one lazy
savepoint, armed before the first of them. When one of the group fails, the group's
writes and ``on_commit`` callbacks are rolled back together, the units before it run
again one at a time, each in its own savepoint (they run twice), and the failing one
is settled as any failure. The handlers outside the group are not touched: a safe
handler still runs once. A group ends before any other unit and before any
bookkeeping write of the walk (a rejected record, an unknown type); its successes
count when it ends.

On PostgreSQL a chunk ends early once its transaction holds
``OUTBOX_CONSUMER_SUBTRANSACTIONS`` savepoints; the records after that wait for the
next chunk (a group's savepoint is one).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from django_outbox.consumer.database import DATABASE_ERRORS
from django_outbox.consumer.inbox import inbox_key
from django_outbox.consumer.local import LocalFailure, LockedRow
from django_outbox.consumer.outcomes import Outcome, Result
from django_outbox.consumer.records import Delivery, Rejected, replay_mark
from django_outbox.consumer.running import run_in_group, run_in_savepoint, undo
from django_outbox.consumer.savepoints import LazySavepoints
from django_outbox.envelope import Event
from django_outbox.exceptions import UnknownEventType
from django_outbox.registry import Registration

if TYPE_CHECKING:
    from django_outbox.consumer.handling import Handling

logger = logging.getLogger("django_outbox.consumer")

Partition = tuple[str, int]


@dataclass
class Item:
    """One record whose handler is to run: on its local ``row``, or through the inbox."""

    index: int
    delivery: Delivery
    event: Event
    row: LockedRow | None

    @property
    def partition(self) -> Partition:
        return (self.delivery.topic, self.delivery.partition)


@dataclass
class Unit:
    """One call of a handler: one event, or a batch handler's list, on one database."""

    registration: Registration
    alias: str
    items: list[Item] = field(default_factory=list)
    partitions: set[Partition] = field(default_factory=set)

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.partitions.add(item.partition)

    @property
    def events(self) -> list[Event]:
        return [item.event for item in self.items]


@dataclass
class ChunkPass:
    """The state of one pass over a chunk: results, rows to mark, failures to count."""

    handling: Handling
    deliveries: Sequence[Delivery]
    savepoints: LazySavepoints
    database_errors_fail: bool = False
    ran: list[Event] | None = None
    results: list[Result | None] = field(init=False)
    consumed: dict[str, list[int]] = field(default_factory=dict)
    inboxed: list[Item] = field(default_factory=list)  # entries to insert, in one INSERT
    failures: dict[str, list[LocalFailure]] = field(default_factory=dict)
    #: A later copy of an event in the chunk, and the index of the first copy.
    copies: list[tuple[int, int]] = field(default_factory=list)
    blocked: set[Partition] = field(default_factory=set)  # an inbox retry in hand
    pending: dict[tuple[str, str], Unit] = field(default_factory=dict)  # batches to hand over
    #: Records walked when the chunk ended at its savepoint cap (PostgreSQL), or None.
    capped_at: int | None = None
    #: Rerun-safe units run under the savepoint they share, successes not counted yet.
    group: list[Unit] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.results = [None] * len(self.deliveries)

    def walk(
        self,
        parsed: Sequence[Event | Rejected],
        named: Sequence[LockedRow | None],
        owned: Sequence[LockedRow | None],
        handled: set[uuid.UUID],
        stop: Callable[[], bool],
    ) -> None:
        """Decide each record in order; run handlers (per event now, batches when due)."""
        handling = self.handling
        first_copy: dict[object, int] = {}
        for index, delivery in enumerate(self.deliveries):
            event, row = parsed[index], owned[index]
            if stop():
                return  # the batches not handed over yet are left for later too
            if self.savepoints.full():
                self.capped_at = index
                return
            if (delivery.topic, delivery.partition) in self.blocked:
                continue
            mark = replay_mark(delivery)
            if mark is not None and not mark.is_for(handling.group):
                # Another group's replay (outbox_replay --group): acknowledged, not run.
                self.results[index] = Result(
                    Outcome.SKIPPED, f"a replay for consumer group {mark.group!r} only"
                )
                continue
            if isinstance(event, Rejected):
                self.close_group()  # the rejection's writes are not the group's
                self.results[index] = handling.rejected(delivery, event, named[index])
                continue
            try:
                registration = handling.handlers.registration(event.event_type)
            except UnknownEventType as exc:
                self.close_group()
                self.results[index] = handling.unknown_type(delivery, event, row, str(exc))
                continue
            if row is not None:
                alias = row.alias
                copy_key: object = (alias, row.pk)
                if copy_key not in first_copy:
                    status = handling.rows.not_handleable(delivery, event, alias, row)
                    if status is not None:
                        error = "" if status == "duplicate" else f"row is {row.status}"
                        self.results[index] = Result(Outcome(status), error)
                        continue
            else:
                key = inbox_key(delivery, event)
                if key in handled:
                    self.results[index] = Result(Outcome.DUPLICATE)
                    continue
                alias, copy_key = handling.inbox_database, key
            if copy_key in first_copy:
                # The same event twice in one chunk: the first copy decides.
                self.copies.append((index, first_copy[copy_key]))
                continue
            first_copy[copy_key] = index
            self._add(Item(index, delivery, event, row), registration, alias)
        self.flush()

    def _add(self, item: Item, registration: Registration, alias: str) -> None:
        joins = (item.event.event_type, alias) if registration.batch else None
        for key in [k for k, unit in self.pending.items() if item.partition in unit.partitions]:
            if key != joins:
                self._hand_over(key)  # its events come first in this partition
        if item.partition in self.blocked:
            return
        if joins is None:
            self._execute(Unit(registration, alias, [item], {item.partition}))
        else:
            self.pending.setdefault(joins, Unit(registration, alias)).add(item)

    def flush(self) -> None:
        """Hand the batches still pending over to their handlers."""
        for key in list(self.pending):
            self._hand_over(key)

    def _hand_over(self, key: tuple[str, str]) -> None:
        self._execute(self.pending.pop(key))

    def _execute(self, unit: Unit) -> None:
        if unit.registration.rerun_safe:
            self._run_grouped(unit)
            return
        self.close_group()
        self._settle(unit, self._run_alone(unit))

    def _run_alone(self, unit: Unit) -> Exception | None:
        """Run the unit in its own savepoint; what it raised, or None."""
        failure = run_in_savepoint(self.savepoints, unit, self.database_errors_fail, self.ran)
        if isinstance(failure, DATABASE_ERRORS) and not self.database_errors_fail:
            # Rolled back to its savepoint, the transaction intact: a deadlock victim, a
            # lock timeout. Once more at once, before it counts as the handler's failure.
            failure = run_in_savepoint(self.savepoints, unit, False, self.ran)
        return failure

    def _run_grouped(self, unit: Unit) -> None:
        """Run a rerun-safe unit under its group's savepoint (armed if it is the first)."""
        if not self.group:
            self.savepoints.arm()
        failure = run_in_group(self.savepoints, unit, self.ran)
        if failure is None:
            self.group.append(unit)
            return
        earlier, self.group = self.group, []
        undo(self.savepoints, failure, self.database_errors_fail)
        logger.debug(
            "a rerun-safe handler of %s failed (%s); %d units before it run again, "
            "a savepoint each",
            unit.items[0].event.event_type,
            failure,
            len(earlier),
        )
        for done in earlier:
            self._rerun(done, None)
        self._rerun(unit, failure)

    def _rerun(self, unit: Unit, failure: Exception | None) -> None:
        """A unit of a group rolled back: run alone again (its ``failure`` if known)."""
        items = [item for item in unit.items if item.partition not in self.blocked]
        if not items:
            return  # left for later, behind a failed inbox event of its partition
        unit = Unit(unit.registration, unit.alias, items, {item.partition for item in items})
        if failure is None or isinstance(failure, DATABASE_ERRORS):
            failure = self._run_alone(unit)
        self._settle(unit, failure)

    def close_group(self) -> None:
        """End the group of rerun-safe units: their successes count."""
        if self.group:
            self.savepoints.keep()
            for unit in self.group:
                self._succeeded(unit)
            self.group = []
        self.savepoints.disarm()

    def _settle(self, unit: Unit, failure: Exception | None) -> None:
        if failure is None:
            self._succeeded(unit)
            return
        if len(unit.items) == 1:
            self._failed(unit.items[0], failure)
            return
        logger.info(
            "batch handler of %s failed on %d events (%s); handling them one at a time",
            unit.items[0].event.event_type,
            len(unit.items),
            failure,
        )
        for item in unit.items:
            if item.partition not in self.blocked:
                one = Unit(unit.registration, unit.alias, [item], {item.partition})
                self._settle(one, self._run_alone(one))

    def _succeeded(self, unit: Unit) -> None:
        for item in unit.items:
            self.results[item.index] = Result(Outcome.HANDLED)
            if item.row is not None:
                self.consumed.setdefault(unit.alias, []).append(item.row.pk)
            else:
                self.inboxed.append(item)

    def _failed(self, item: Item, failure: Exception) -> None:
        if item.row is not None:
            alias = item.row.alias
            self.failures.setdefault(alias, []).append(
                LocalFailure(item.index, item.delivery, item.event, item.row.pk, failure)
            )
            return
        self.results[item.index] = self.handling.inbox_failed(item.delivery, item.event, failure)
        self.blocked.add(item.partition)

    def resolve_copies(self) -> None:
        """Later copies of an event: a duplicate of a handled first copy, else its fate."""
        for index, first in self.copies:
            decided = self.results[first]
            if decided is None or decided.outcome is Outcome.RETRY_IN_PLACE:
                continue  # it comes again, after the first copy's retry
            if decided.outcome in (Outcome.HANDLED, Outcome.DUPLICATE):
                self.results[index] = Result(Outcome.DUPLICATE)
            else:
                self.results[index] = Result(
                    Outcome.SKIPPED, "its handler failed earlier in the chunk"
                )
