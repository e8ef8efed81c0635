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


def _look(databases: list[str], scope: dict[str, set[int]] | None) -> list[RowState]:
    """The rows in scope that are not consumed (dead ones too)."""
    found = []
    for alias in databases:
        rows = OutboxMessage.objects.using(alias).exclude(status=Status.CONSUMED)
        if scope is not None:
            if not scope.get(alias):
                continue
            rows = rows.filter(pk__in=sorted(scope[alias]))
        columns = ("pk", "event_type", "message_key", "status", "retry_count", "max_retry")
        for values in rows.order_by("pk").values_list(*columns, "next_retry_at", "last_error"):
            found.append(RowState(alias, *values))
    return found


def _sort(
    rows: list[RowState], handlers: HandlerRegistry, deadline: datetime.datetime, drained: Drained
) -> list[RowState]:
    """Fill ``drained`` with the settled rows; return those still in the way."""
    drained.dead, drained.unhandled, drained.scheduled = [], [], []
    waiting = []
    for row in rows:
        if row.status == Status.DEAD:
            drained.dead.append(row)
        elif row.status == Status.PUBLISHED and row.event_type not in handlers:
            drained.unhandled.append(row)
        elif (
            row.status == Status.PENDING
            and not row.retry_count
            and not row.last_error
            and row.next_retry_at is not None
            and row.next_retry_at > deadline
        ):
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
    scope = _scope(rows)
    started = time.monotonic()
    deadline = started + timeout
    due_by = timezone.now() + datetime.timedelta(seconds=timeout)
    drained = Drained()
    dead_before = {(row.alias, row.id) for row in _look(databases, scope) if row.status == Status.DEAD}
    relay = Relay(databases=databases, interval=LOOK_EVERY, producer_options=producer_options)
    workers = [_Worker("relay", relay.run)]
    consumer = None
    topics = subscribed_topics(handlers)
    if topics:
        options = {**QUICK_CONSUMER, **(consumer_options or {})}
        consumer = Consumer(
            topics,
            handlers=handlers,
            poll_timeout=LOOK_EVERY,
            progress_interval=3600,
            inbox_retry_max_delay=1.0,
            consumer_options=options,
        )
        workers.append(_Worker("consumer", consumer.run))
    for worker in workers:
        worker.start()
    seen: set[tuple[str, int]] = set()
    problem = ""
    try:
        while True:
            broken = [worker for worker in workers if worker.error is not None]
            if broken:
                raise RuntimeError(
                    f"drain(): the {broken[0].name} thread failed: {broken[0].error!r}"
                ) from broken[0].error
            now_rows = _look(databases, scope)
            seen.update((row.alias, row.id) for row in now_rows)
            waiting = _sort(now_rows, handlers, due_by, drained)
            died = [row for row in drained.dead if (row.alias, row.id) not in dead_before]
            if died and not allow_dead:
                problem = f"drain(): {len(died)} outbox row(s) went dead"
                waiting = died
                break
            if not waiting:
                break
            if time.monotonic() >= deadline:
                problem = f"drain(): {len(waiting)} outbox row(s) not settled after {timeout:g} s"
                break
            time.sleep(LOOK_EVERY)
    finally:
        relay.stop()
        if consumer is not None:
            consumer.stop()
        for worker in workers:
            worker.join(timeout=60)
    left = {(row.alias, row.id) for row in _look(databases, scope)}
    drained.consumed = len(seen - left)
    drained.delivered = relay.delivered
    drained.consumer = consumer.stats if consumer is not None else None
    drained.seconds = time.monotonic() - started
    if problem:
        raise OutboxStuck(_explain(problem, waiting, drained, topics), waiting, drained)
    return drained


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
    lines.append(
        f"relay: {drained.delivered} row(s) delivered; consumer: "
        + (
            "none (no handler registered)"
            if stats is None
            else f"{stats.records} record(s) read {stats.outcomes or ''}"
            + (f", blocked by {stats.blocked_by}" if stats.blocked_by else "")
        )
    )
    return "\n".join(lines)
