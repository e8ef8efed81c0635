"""The private APIs compat.py touches, pinned to the Django versions we support."""

from __future__ import annotations

import contextlib
import sqlite3
import sys

import django
import pytest
from django.db import DatabaseError, connection, transaction

from django_outbox import compat

pytestmark = pytest.mark.django_db(transaction=True)


def test_django_is_a_version_whose_on_commit_list_we_know():
    # (savepoint ids, callable, robust) entries in connection.run_on_commit: Django 4.2-5.2
    assert (4, 2) <= django.VERSION[:2] <= (6, 0), django.VERSION


def test_wrapping_keeps_order_savepoints_and_robust():
    ran: list[str] = []
    with transaction.atomic():
        transaction.on_commit(lambda: ran.append("before"))
        start = compat.on_commit_count(connection)
        transaction.on_commit(lambda: ran.append("a"), robust=True)
        try:
            with transaction.atomic():
                transaction.on_commit(lambda: ran.append("rolled back"))
                raise ValueError
        except ValueError:
            pass
        transaction.on_commit(lambda: ran.append("b"))
        hooks = compat.on_commit_callbacks(connection)
        assert [robust for _, _, robust in hooks[start:]] == [True, False]

        def wrap(func):
            return lambda: ran.append("wrapped") or func()

        assert compat.wrap_on_commit_callbacks(connection, start, wrap) == 2
    assert ran == ["before", "wrapped", "a", "wrapped", "b"]


def test_no_test_case_transaction_in_a_transactional_test():
    assert compat.test_case_savepoints(connection) is None
    with transaction.atomic():
        assert compat.test_case_savepoints(connection) is None
        with transaction.atomic():
            assert len(compat.open_savepoints(connection)) == 1


@pytest.mark.django_db(transaction=False)
def test_a_test_cases_transaction_and_its_savepoints_are_told_apart():
    # pytest-django's db: the atomic block(s) of Django's TestCase (a Django TestCase
    # holds two, its class's and the test's savepoint; pytest-django's db one)
    test = compat.test_case_savepoints(connection)
    assert test is not None and None not in test
    with transaction.atomic():
        assert compat.test_case_savepoints(connection) == test
        assert compat.open_savepoints(connection) - test and test <= compat.open_savepoints(
            connection
        )


def test_the_callbacks_after_a_mark_are_dropped_and_those_before_kept():
    ran = []
    with transaction.atomic():
        transaction.on_commit(lambda: ran.append("kept"))
        start = compat.on_commit_count(connection)
        transaction.on_commit(lambda: ran.append("dropped"))
        compat.drop_on_commit_callbacks(connection, start)
        assert compat.on_commit_count(connection) == start == 1
    assert ran == ["kept"]


def test_an_aborted_postgresql_transaction_is_seen_without_a_query():
    with transaction.atomic():
        assert not compat.transaction_failed(connection)
        with connection.cursor() as cursor:
            try:
                cursor.execute("SELECT * FROM no_such_table_for_compat")
            except DatabaseError:
                pass
        # Only PostgreSQL aborts the transaction on a failed statement.
        assert compat.transaction_failed(connection) == (connection.vendor == "postgresql")
        transaction.set_rollback(True)


def test_two_statements_in_one_query_where_the_driver_binds_client_side():
    server_side = connection.settings_dict.get("OPTIONS", {}).get("server_side_binding")
    with connection.cursor() as cursor:
        raw = cursor.cursor
        joins = compat.joins_statements(raw)
        assert joins == (connection.vendor == "postgresql" and not server_side)
        if joins:
            cursor.execute("SELECT %s; SELECT %s", [1, 2])
            compat.to_second_result(raw)
            assert raw.fetchone()[0] == 2


def test_joins_statements_does_not_import_psycopg_for_another_driver(monkeypatch):
    # A SQLite or MariaDB consumer asked this before each handler's first statement:
    # the import of psycopg cost its first chunk 0.1 s (83 modules it never used).
    monkeypatch.delitem(sys.modules, "psycopg", raising=False)
    with contextlib.closing(sqlite3.connect(":memory:")) as other:
        assert compat.joins_statements(other.cursor()) is False
    assert "psycopg" not in sys.modules
