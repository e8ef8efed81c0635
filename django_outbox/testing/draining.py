"""``drain()``: the relay and the consumer, in-process, until the outbox is settled.

For integration tests with a real broker. A ``Relay`` and a ``Consumer`` (the classes
behind ``outbox_relay`` and ``outbox_consume``) run on threads of their own while the
calling thread watches the table: drained means no row is ``pending`` (but those
scheduled after the deadline) and no row is ``published`` with a handler registered
for its type (the consumer has yet to handle it). Events that handlers publish are
drained too. Past the deadline it stops both and raises ``OutboxStuck``, which lists
each row still in the way with its status, retries and last error; a row that went
``dead`` on the way fails the same way unless ``allow_dead``.

The rows must be committed for the relay's threads to see them: a pytest-django test
with ``transaction=True``, or a ``TransactionTestCase``.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections
from django.utils import timezone

from django_outbox.conf import outbox_settings
from django_outbox.consumer import Consumer, ConsumerStats, subscribed_topics
from django_outbox.models import OutboxMessage, Status
from django_outbox.registry import HandlerRegistry, registry
from django_outbox.relay import Relay
from django_outbox.testing.capture import CapturedEvent

#: Seconds between two looks at the table.
LOOK_EVERY = 0.1

#: Consumer options that make a test's records arrive in a tenth of a second.
QUICK_CONSUMER = {"fetch_max_wait_ms": 100}


@dataclass(frozen=True)
class RowState:
    """One outbox row as ``drain()`` last saw it."""

    alias: str
    id: int
    event_type: str
    message_key: str
    status: str
    retry_count: int
    max_retry: int
    next_retry_at: datetime.datetime | None
    last_error: str | None
    #: Published for later (``deliver_at``/``delay``), after ``drain()``'s deadline.
    scheduled: bool = False

    def describe(self) -> str:
        text = f"{self.alias}/{self.id} {self.event_type} key={self.message_key!r}: {self.status}"
        if self.retry_count:
            text += f", attempt {self.retry_count} of {self.max_retry}"
        if self.status == Status.PENDING and self.next_retry_at:
            text += f", not before {self.next_retry_at.isoformat()}"
        if self.last_error:
            first = self.last_error.strip().splitlines()
            text += f"\n      last error: {first[-1] if first else ''}"
        return text


@dataclass
class Drained:
    """What ``drain()`` saw: rows by final status, and the workers' counters."""

    #: Rows seen unsettled that were consumed by the end.
    consumed: int = 0
    dead: list[RowState] = field(default_factory=list)
    #: Published rows of types no handler here is registered for.
    unhandled: list[RowState] = field(default_factory=list)
    #: Pending rows scheduled after the deadline.
    scheduled: list[RowState] = field(default_factory=list)
    delivered: int = 0
    consumer: ConsumerStats | None = None
    seconds: float = 0.0


class OutboxStuck(AssertionError):
    """``drain()`` ran out of time, or a row went ``dead``; the message lists the rows."""

    def __init__(self, message: str, rows: list[RowState], drained: Drained) -> None:
        super().__init__(message)
        self.rows = rows
        self.drained = drained


class _Worker(threading.Thread):
    """Runs ``target`` (a relay's or a consumer's ``run``), keeping what it raised."""

    def __init__(self, name: str, target: Callable[[], Any]) -> None:
        super().__init__(name=f"outbox-drain-{name}", daemon=True)
        self._run = target
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by drain(), in the test's thread
            self.error = exc
        finally:
            connections.close_all()


def _scope(rows: Iterable[Any] | None) -> dict[str, set[int]] | None:
    if rows is None:
        return None
    scope: dict[str, set[int]] = {}
    for row in rows:
        if isinstance(row, CapturedEvent):
            scope.setdefault(row.alias, set()).add(row.id)
        elif isinstance(row, OutboxMessage):
            alias = row._state.db or outbox_settings.database
            scope.setdefault(alias, set()).add(int(row.pk))
        else:
            raise TypeError(f"drain(rows=...) takes captured events or outbox rows, not {row!r}")
    return scope


#: The columns of a ``RowState``, named as its fields.
COLUMNS = (
    "id",
    "event_type",
    "message_key",
    "status",
    "retry_count",
    "max_retry",
    "next_retry_at",
    "last_error",
)


def _look(
    databases: list[str], scope: dict[str, set[int]] | None, due_by: datetime.datetime
) -> list[RowState]:
    """The rows in scope that are not consumed (dead ones too)."""
    found = []
    for alias in databases:
        rows = OutboxMessage.objects.using(alias).all()
        if scope is not None:
            if not scope.get(alias):
                continue
            rows = rows.filter(pk__in=sorted(scope[alias]))
        later = set(rows.scheduled().filter(next_retry_at__gt=due_by).values_list("pk", flat=True))
        unsettled = rows.exclude(status=Status.CONSUMED).order_by("pk")
        for values in unsettled.values(*COLUMNS):
            found.append(RowState(alias=alias, scheduled=values["id"] in later, **values))
    return found


def _sort(rows: list[RowState], handlers: HandlerRegistry, drained: Drained) -> list[RowState]:
    """Fill ``drained`` with the settled rows; return those still in the way."""
    drained.dead, drained.unhandled, drained.scheduled = [], [], []
    waiting = []
    for row in rows:
        if row.status == Status.DEAD:
            drained.dead.append(row)
        elif row.status == Status.PUBLISHED and row.event_type not in handlers:
            drained.unhandled.append(row)
        elif row.scheduled:
            drained.scheduled.append(row)
        else:
            waiting.append(row)
    return waiting


def _check_committed(databases: list[str]) -> None:
    for alias in databases:
        if connections[alias].in_atomic_block:
            raise RuntimeError(
                f"drain() runs the relay on threads of its own, which cannot see rows of "
                f"this thread's open transaction on {alias!r}: commit first (a pytest-django "
                "test needs @pytest.mark.django_db(transaction=True); a Django test, "
                "TransactionTestCase)"
            )


def drain(
    timeout: float = 30.0,
    *,
    rows: Iterable[CapturedEvent | OutboxMessage] | None = None,
    databases: list[str] | None = None,
    allow_dead: bool = False,
    handlers: HandlerRegistry = registry,
    consumer_options: dict[str, Any] | None = None,
    producer_options: dict[str, Any] | None = None,
) -> Drained:
    """Relay and consume until nothing is left to do, within ``timeout`` seconds.

    ``rows`` (a capture, captured events or outbox rows) narrows the wait to those;
    by default every row of ``databases`` (``OUTBOX_DATABASES``) counts. The consumer
    joins ``OUTBOX_CONSUMER_GROUP`` (the group that marks rows ``consumed``) on the
    topics of the registered handlers, from the group's committed offsets. Raises
    ``OutboxStuck`` at the deadline, or when a row went ``dead`` (unless
    ``allow_dead``); returns what it saw.
    """
    databases = list(databases or outbox_settings.databases)
    _check_committed(databases)
    run = _Run(databases, _scope(rows), timeout, handlers)
    relay = Relay(databases=databases, interval=LOOK_EVERY, producer_options=producer_options)
    workers = [_Worker("relay", relay.run)]
    consumer = None
    if run.topics:
        consumer = Consumer(
            run.topics,
            handlers=handlers,
            poll_timeout=LOOK_EVERY,
            progress_interval=3600,
            inbox_retry_max_delay=1.0,
            consumer_options={**QUICK_CONSUMER, **(consumer_options or {})},
        )
        workers.append(_Worker("consumer", consumer.run))
    for worker in workers:
        worker.start()
    try:
        problem, waiting = run.watch(workers, allow_dead)
    finally:
        relay.stop()
        if consumer is not None:
            consumer.stop()
        for worker in workers:
            worker.join(timeout=60)
    drained = run.finish(relay.delivered, consumer.stats if consumer is not None else None)
    if problem:
        raise OutboxStuck(_explain(problem, waiting, drained, run.topics), waiting, drained)
    return drained


class _Run:
    """One ``drain()``: what is in scope, what was seen, when the deadline is."""

    def __init__(
        self,
        databases: list[str],
        scope: dict[str, set[int]] | None,
        timeout: float,
        handlers: HandlerRegistry,
    ) -> None:
        self.databases = databases
        self.scope = scope
        self.timeout = timeout
        self.handlers = handlers
        self.started = time.monotonic()
        self.due_by = timezone.now() + datetime.timedelta(seconds=timeout)
        self.topics = subscribed_topics(handlers)
        self.drained = Drained()
        self.seen: set[tuple[str, int]] = set()
        self.dead_before = {(row.alias, row.id) for row in self.look() if row.status == Status.DEAD}

    def look(self) -> list[RowState]:
        return _look(self.databases, self.scope, self.due_by)

    def watch(self, workers: list[_Worker], allow_dead: bool) -> tuple[str, list[RowState]]:
        """Look at the table until settled; what went wrong (or "") and the rows at fault."""
        while True:
            broken = [worker for worker in workers if worker.error is not None]
            if broken:
                raise RuntimeError(
                    f"drain(): the {broken[0].name} thread failed: {broken[0].error!r}"
                ) from broken[0].error
            rows = self.look()
            self.seen.update((row.alias, row.id) for row in rows)
            waiting = _sort(rows, self.handlers, self.drained)
            died = [row for row in self.drained.dead if (row.alias, row.id) not in self.dead_before]
            if died and not allow_dead:
                return f"drain(): {len(died)} outbox row(s) went dead", died
            if not waiting:
                return "", []
            if time.monotonic() - self.started >= self.timeout:
                return (
                    f"drain(): {len(waiting)} outbox row(s) not settled after {self.timeout:g} s",
                    waiting,
                )
            time.sleep(LOOK_EVERY)

    def finish(self, delivered: int, stats: ConsumerStats | None) -> Drained:
        left = {(row.alias, row.id) for row in self.look()}
        self.drained.consumed = len(self.seen - left)
        self.drained.delivered = delivered
        self.drained.consumer = stats
        self.drained.seconds = time.monotonic() - self.started
        return self.drained


def _explain(headline: str, rows: list[RowState], drained: Drained, topics: list[str]) -> str:
    lines = [headline + ":"]
    lines += [f"  - {row.describe()}" for row in rows[:20]]
    if len(rows) > 20:
        lines.append(f"  and {len(rows) - 20} more")
    published = [row for row in rows if row.status == Status.PUBLISHED]
    if published:
        lines.append(
            f"  {len(published)} published row(s) wait for the consumer (group "
            f"{outbox_settings.consumer_group!r}, topics {', '.join(topics)})"
        )
    stats = drained.consumer
    if stats is None:
        consumer = "none (no handler registered)"
    else:
        consumer = f"{stats.records} record(s) read"
        consumer += "".join(f", {n} {outcome}" for outcome, n in sorted(stats.outcomes.items()))
        if stats.blocked_by:
            consumer += f", blocked by {stats.blocked_by}"
    lines.append(f"relay: {drained.delivered} row(s) delivered; consumer: {consumer}")
    return "\n".join(lines)
