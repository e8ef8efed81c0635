"""``capture_events()``: the events a block of code published, once they committed.

``publish_event()`` sends ``signals.event_written`` with each row it inserts, inside
the caller's transaction. While a capture is open a receiver is connected (none
otherwise: the request's hot path only asks ``has_listeners``); it registers an
on-commit callback per event, so an event is recorded when its transaction commits
and never when it rolls back (Django drops the callbacks of a rolled-back savepoint).

A Django ``TestCase`` (and pytest-django's ``db``) holds every test in a transaction
that never commits, so its callbacks never run. There, an event counts as committed
once every atomic block it was written in, but the test's own, has been left without
a rollback: the capture looks at the connection's on-commit list whenever it is read
(``compat.test_case_savepoints``). ``captureOnCommitCallbacks(execute=True)`` records
the events as well, once.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction

from django_outbox import compat, signals
from django_outbox.envelope import Event
from django_outbox.models import OutboxMessage
from django_outbox.testing.matching import UNSET, describe_miss, differences

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_order = itertools.count()
#: The open captures, innermost last.
_active: list[Capture] = []


@dataclass(frozen=True)
class CapturedEvent:
    """One event ``publish_event()`` wrote, with the row it wrote and its database."""

    event: Event
    row: OutboxMessage
    alias: str

    @property
    def event_type(self) -> str:
        return self.event.event_type

    @property
    def key(self) -> str:
        return self.event.key

    @property
    def data(self) -> Any:
        return self.event.data

    @property
    def headers(self) -> dict[str, str]:
        return dict(self.event.headers)

    @property
    def version(self) -> int:
        return self.event.version

    @property
    def topic(self) -> str:
        return self.row.topic

    @property
    def id(self) -> int:
        """The outbox row's id."""
        return int(self.row.pk)


@dataclass(eq=False)
class _Written:
    """An event written under one or more captures; recorded in them at its commit."""

    captured: CapturedEvent
    captures: list[Capture]
    done: bool = False
    order: int = field(default_factory=lambda: next(_order))

    def __call__(self) -> None:
        with _lock:
            if self.done:
                return
            self.done = True
            for capture in self.captures:
                if not capture.closed:
                    capture._committed.append(self)


def _written(sender: Any, alias: str, message: OutboxMessage, event: Event, **kwargs: Any) -> None:
    with _lock:
        captures = list(_active)
        if not captures:
            return
        written = _Written(CapturedEvent(event, message, alias), captures)
        for capture in captures:
            capture._written.append(written)
    if connections[alias].in_atomic_block:
        transaction.on_commit(written, using=alias, robust=True)
    else:
        written()  # autocommit: the row is committed already


def _settle_test_transactions() -> None:
    """Record the events a ``TestCase``'s transaction holds as if it had committed."""
    for connection in connections.all(initialized_only=True):
        test = compat.test_case_savepoints(connection)
        if test is None:
            continue
        still_open = compat.open_savepoints(connection)
        for savepoints, func, _robust in compat.on_commit_callbacks(connection):
            written = inspect.unwrap(func)  # the consumer wraps a handler's callbacks
            if isinstance(written, _Written) and not written.done:
                if set(savepoints) & still_open <= test:
                    written()


@dataclass(eq=False)
class Capture:
    """The events published and committed while a ``capture_events()`` block ran.

    A sequence of ``CapturedEvent`` in the order written, with assertions that say what
    was captured instead when they fail.
    """

    _committed: list[_Written] = field(default_factory=list)
    _written: list[_Written] = field(default_factory=list)
    closed: bool = False

    # ------------------------------------------------------------------ reading

    @property
    def events(self) -> list[CapturedEvent]:
        """The committed events, in the order they were written."""
        if not self.closed:
            _settle_test_transactions()
        with _lock:
            return [w.captured for w in sorted(self._committed, key=lambda w: w.order)]

    @property
    def uncommitted(self) -> list[CapturedEvent]:
        """Events written in the block whose transaction did not (yet) commit."""
        self.events  # noqa: B018  (settles what a TestCase's transaction holds)
        with _lock:
            return [w.captured for w in self._written if not w.done]

    def __iter__(self) -> Iterator[CapturedEvent]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __getitem__(self, index: int) -> CapturedEvent:
        return self.events[index]

    def __bool__(self) -> bool:
        return bool(self.events)

    def __repr__(self) -> str:
        return f"<Capture of {len(self)} event(s): {self.event_types}>"

    @property
    def event_types(self) -> list[str]:
        return [one.event_type for one in self.events]

    def filter(self, event_type: str | None = None, **criteria: Any) -> list[CapturedEvent]:
        """The committed events that match (partial ``data``/``headers``, see ``matching``)."""
        exact = bool(criteria.pop("exact", False))
        criteria = _criteria(event_type, criteria)
        return [one for one in self.events if not differences(one, criteria, exact)]

    def clear(self) -> None:
        """Forget what was captured so far (the capture goes on)."""
        self.events  # noqa: B018  (what the test transaction holds counts as before)
        with _lock:
            self._committed.clear()
            self._written.clear()

    # ------------------------------------------------------------------ assertions

    def assert_published(
        self, event_type: str, *, count: int | None = None, exact: bool = False, **criteria: Any
    ) -> CapturedEvent:
        """Assert that an event of ``event_type`` that matches was published; return it.

        ``key``, ``data``, ``headers``, ``topic``, ``alias``, ``version`` narrow the
        match; ``data`` and ``headers`` match partially unless ``exact=True``.
        ``count`` asks for exactly that many matches.
        """
        wanted = _criteria(event_type, criteria)
        found = [one for one in self.events if not differences(one, wanted, exact)]
        if not found or (count is not None and len(found) != count):
            headline = (
                f"expected {count} published event(s), found {len(found)}"
                if found or count
                else "no published event matches"
            )
            raise AssertionError(
                describe_miss(headline, wanted, self.events, self.uncommitted, exact)
            )
        return found[0]

    def assert_not_published(self, event_type: str | None = None, **criteria: Any) -> None:
        """Assert that no committed event matches (any event, with no arguments)."""
        exact = bool(criteria.pop("exact", False))
        wanted = _criteria(event_type, criteria)
        found = [one for one in self.events if not differences(one, wanted, exact)]
        if found:
            raise AssertionError(
                describe_miss(
                    f"expected no such event, {len(found)} published", wanted, found, [], exact
                )
            )

    def assert_nothing_published(self) -> None:
        self.assert_not_published()


def _criteria(event_type: str | None, given: Mapping[str, Any]) -> dict[str, Any]:
    allowed = {"key", "data", "headers", "topic", "alias", "version"}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise TypeError(f"unknown criteria {unknown}; use {sorted(allowed)}")
    return {"event_type": UNSET if event_type is None else event_type, **given}


@contextmanager
def capture_events() -> Iterator[Capture]:
    """Capture the events published (and committed) inside the block, on every database.

    ::

        with capture_events() as events:
            pay(order)
        events.assert_published("order.paid", key=str(order.pk), data={"total": "9.90"})
    """
    capture = Capture()
    with _lock:
        if not _active:
            signals.event_written.connect(_written, dispatch_uid=__name__)
        _active.append(capture)
    try:
        yield capture
    finally:
        _settle_test_transactions()
        with _lock:
            capture.closed = True
            _active.remove(capture)
            if not _active:
                signals.event_written.disconnect(dispatch_uid=__name__)


def current() -> Capture:
    """The innermost open capture; a clear error when none is open."""
    with _lock:
        if _active:
            return _active[-1]
    raise RuntimeError(
        "no capture is open: wrap the code in `with capture_events():` or use the "
        "outbox_events pytest fixture"
    )


def assert_published(event_type: str, **criteria: Any) -> CapturedEvent:
    """``Capture.assert_published`` on the innermost open capture."""
    return current().assert_published(event_type, **criteria)


def assert_not_published(event_type: str | None = None, **criteria: Any) -> None:
    """``Capture.assert_not_published`` on the innermost open capture."""
    current().assert_not_published(event_type, **criteria)
