"""Issue 16, defect 4: one event's failing ``on_commit`` callback cancels no other callback.

Handlers act after their effects commit with ``transaction.on_commit(send_mail)``. The
consumer commits a chunk of events at once, and Django stops at the first callback that
raises: the callbacks of every event after it were lost while their effects committed.
"""

from __future__ import annotations

import logging

import pytest
from django.db import connection, transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_outbox import compat, publish_event, signals
from django_outbox.consumer import Handling
from django_outbox.models import OutboxMessage

from .consumer_support import COUNTER, handling_settings, local, registered

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def outbox_config(settings):
    handling_settings(settings)
    settings.OUTBOX_TOPICS = {}


class Mailer:
    """A handler whose after-commit mail fails for the events marked ``smtp_down``."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def send(self, n: int, down: bool) -> None:
        if down:
            raise ConnectionRefusedError("SMTP server down")
        self.sent.append(n)

    def __call__(self, event) -> None:
        n, down = event.data["n"], event.data.get("smtp_down", False)
        transaction.on_commit(lambda: self.send(n, down))
        transaction.on_commit(lambda: self.sent.append(n + 100))  # a second one, same event

    def batch(self, events) -> None:
        for event in events:
            self(event)


@pytest.fixture
def failures():
    seen: list[dict] = []

    def receiver(sender, **kwargs):
        seen.append(kwargs)

    signals.on_commit_failed.connect(receiver)
    yield seen
    signals.on_commit_failed.disconnect(receiver)


def rows(count: int, down: set[int]) -> list[OutboxMessage]:
    return [publish_event(COUNTER, {"n": n, "smtp_down": n in down}) for n in range(count)]


def test_a_chunk_runs_every_other_callback_when_the_first_raises(caplog, failures):
    made = rows(3, down={0})
    mailer = Mailer()
    with registered(COUNTER, mailer), caplog.at_level(logging.ERROR, "django_outbox"):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(made)])
    assert [r.outcome.value for r in results] == ["handled"] * 3
    assert mailer.sent == [100, 1, 101, 2, 102]  # in order; only the failing one is missing
    assert OutboxMessage.objects.consumed().count() == 3
    first = str(made[0].event.event_id)
    assert first in caplog.text and "on_commit callback" in caplog.text
    assert [str(f["events"][0].event_id) for f in failures] == [first]
    assert isinstance(failures[0]["error"], ConnectionRefusedError)


def test_the_single_event_path_isolates_its_callbacks(failures):
    (row,) = rows(1, down={0})
    mailer = Mailer()
    with registered(COUNTER, mailer):
        result = Handling("g").handle(local(row, 0))
    assert result.outcome.value == "handled"
    assert mailer.sent == [100] and len(failures) == 1
    assert OutboxMessage.objects.consumed().count() == 1


def test_a_batch_handlers_callbacks_are_isolated_too(failures):
    made = rows(4, down={1})
    mailer = Mailer()
    with registered(COUNTER, mailer.batch, batch=True):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(made)])
    assert [r.outcome.value for r in results] == ["handled"] * 4
    assert mailer.sent == [0, 100, 101, 2, 102, 3, 103]
    assert len(failures) == 1 and len(failures[0]["events"]) == 4  # the batch's events


def test_a_failed_handlers_callbacks_are_dropped_with_its_savepoint(failures):
    made = [publish_event(COUNTER, {"n": n, "fail": n == 1}, max_retry=5) for n in range(3)]
    sent: list[int] = []

    def handler(event) -> None:
        transaction.on_commit(lambda: sent.append(event.data["n"]))
        if event.data["fail"]:
            raise ValueError("handler failed")

    with registered(COUNTER, handler):
        results = Handling("g").handle_batch([local(row, n) for n, row in enumerate(made)])
    assert [r.outcome.value for r in results] == ["handled", "retry", "handled"]
    assert sent == [0, 2] and not failures


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pattern=st.lists(st.lists(st.booleans(), max_size=4), min_size=1, max_size=6))
def test_every_callback_that_does_not_raise_runs_once_in_order(pattern):
    """Any events, each with any callbacks, any of them raising: the others run once, in order."""
    ran: list[tuple[int, int]] = []

    def callback(event: int, n: int, raises: bool):
        def call() -> None:
            if raises:
                raise RuntimeError(f"{event}.{n}")
            ran.append((event, n))

        return call

    def isolated(func):
        def call() -> None:
            try:
                func()
            except RuntimeError:
                pass

        return call

    with transaction.atomic():
        for event, callbacks in enumerate(pattern):
            start = compat.on_commit_count(connection)
            for n, raises in enumerate(callbacks):
                transaction.on_commit(callback(event, n, raises))
            compat.wrap_on_commit_callbacks(connection, start, isolated)
    expected = [
        (e, n) for e, callbacks in enumerate(pattern) for n, r in enumerate(callbacks) if not r
    ]
    assert ran == expected
