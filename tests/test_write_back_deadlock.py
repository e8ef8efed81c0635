"""A write-back chosen as a deadlock's victim is retried at once, not counted as a failure
(four relays on MariaDB met InnoDB deadlocks between claims and write-backs; three failed
attempts in a row left a batch unrecorded until its lease ran out)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from django.db import OperationalError

from django_outbox.relay import deadlocks
from django_outbox.relay import write_back as module


def deadlock() -> OperationalError:
    error = OperationalError(1213, "Deadlock found when trying to get lock")
    error.__cause__ = Exception(1213, "Deadlock found when trying to get lock")
    return error


def test_deadlocks_are_told_from_other_database_errors():
    assert deadlocks.is_deadlock(deadlock())
    postgres = OperationalError("deadlock detected")
    cause = Exception("deadlock detected")
    cause.sqlstate = "40P01"  # psycopg's attribute
    postgres.__cause__ = cause
    assert deadlocks.is_deadlock(postgres)
    assert not deadlocks.is_deadlock(OperationalError(2006, "MySQL server has gone away"))
    assert not deadlocks.is_deadlock(OperationalError("connection refused"))


def test_deadlocks_are_retried_without_spending_the_attempts(monkeypatch):
    calls = []

    def write(settled, unknown_delay=0.0):
        calls.append(settled)
        if len(calls) <= 5:
            raise deadlock()

    monkeypatch.setattr(module, "_write", write)
    monkeypatch.setattr(module.metrics, "batch_recorded", lambda claim: None)
    monkeypatch.setattr(module, "_reconnect", lambda alias: pytest.fail("no reconnect"))
    monkeypatch.setattr(deadlocks.time, "sleep", lambda seconds: None)
    settled = SimpleNamespace(claim=SimpleNamespace(rows=[1], alias="default"))
    module.write_back(settled, attempts=1)  # one attempt, five deadlocks: still recorded
    assert len(calls) == 6


def test_endless_deadlocks_end_in_the_error(monkeypatch):
    calls = []

    def write(settled, unknown_delay=0.0):
        calls.append(settled)
        raise deadlock()

    monkeypatch.setattr(module, "_write", write)
    monkeypatch.setattr(deadlocks.time, "sleep", lambda seconds: None)
    settled = SimpleNamespace(claim=SimpleNamespace(rows=[1], alias="default"))
    with pytest.raises(OperationalError):
        module.write_back(settled, attempts=1)
    assert len(calls) == deadlocks.DEADLOCK_RETRIES + 1
