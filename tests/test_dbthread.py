"""The relay's database thread: jobs in order, on its own connection, failures isolated."""

from __future__ import annotations

import pytest
from django.db import OperationalError, connections

from django_outbox.models import OutboxMessage
from django_outbox.relay.dbthread import DatabaseThread

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def database_thread():
    thread = DatabaseThread()
    yield thread
    thread.close(timeout=10)


def test_jobs_run_in_the_order_handed_over(database_thread):
    done: list[int] = []
    futures = [database_thread.submit("default", done.append, n) for n in range(20)]
    for future in futures:
        future.result(timeout=10)
    assert done == list(range(20))


def test_jobs_use_a_connection_of_their_own(database_thread):
    mine = connections["default"]
    theirs = database_thread.submit("default", lambda: connections["default"]).result(10)
    assert theirs is not mine  # Django's connections belong to the thread that opened them


def test_a_failed_job_closes_its_connection_and_the_next_one_gets_a_fresh_one(
    database_thread,
):
    def broken() -> None:
        with connections["default"].cursor() as cursor:
            cursor.execute("SELECT 1")
        raise OperationalError("server closed the connection unexpectedly")

    with pytest.raises(OperationalError, match="server closed"):
        database_thread.submit("default", broken).result(timeout=10)
    closed = database_thread.submit("default", lambda: connections["default"].connection is None)
    assert closed.result(timeout=10)
    count = database_thread.submit("default", OutboxMessage.objects.count).result(timeout=10)
    assert count == 0


def test_close_finishes_the_jobs_handed_over():
    thread = DatabaseThread()
    done: list[int] = []
    futures = [thread.submit("default", done.append, n) for n in range(5)]
    thread.close(timeout=10)
    assert all(future.done() for future in futures) and done == list(range(5))
