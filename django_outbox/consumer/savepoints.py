"""A savepoint per handler, issued only if the handler touches the database.

A chunk's handlers run one after another in the chunk's transaction (``chunk.py``).
Before each one, ``LazySavepoints.arm()``; a ``connection.execute_wrapper`` on each
of the chunk's connections then issues ``SAVEPOINT`` right before the handler's
first statement there. A handler that makes no query (a call to an HTTP API, an
e-mail through ``on_commit``) costs no round trip. On PostgreSQL the ``SAVEPOINT``
travels in the same query as that first statement (``"SAVEPOINT s; INSERT ..."``,
client-side binding: psycopg2, and psycopg 3 unless ``server_side_binding``), so it
costs no round trip either; on MariaDB it costs one. If the handler fails,
``rollback()`` goes back to the savepoints issued (its writes go, the other
handlers' stay) and drops the ``on_commit`` callbacks it registered: Django only
drops the callbacks of savepoints it made itself (``transaction.atomic``).

One savepoint name serves the whole chunk and is not released: MySQL/MariaDB
replace a savepoint of the same name (the older one is released), PostgreSQL
shadows it (``ROLLBACK TO`` goes to the newest). Either way the release round trip
is saved. SQLite shadows it too, but there each open savepoint makes later writes
dearer (20-50k inserts/s nested 200 deep against 90k/s without, measured here): a
handler's savepoint is released once it succeeded, an in-process call.

On PostgreSQL each savepoint whose handler writes is a subtransaction with an id of
its own; past 64 in one transaction the backend's cache of them overflows (other
sessions' snapshots then look them up in ``pg_subtrans``). ``full()`` tells the
chunk to stop there (``OUTBOX_CONSUMER_SUBTRANSACTIONS``): the records after it wait
for the next chunk.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

from django.db import connections, transaction

from django_outbox import compat
from django_outbox.conf import outbox_settings


class RollbackFailed(Exception):
    """The savepoint could not be rolled back: the chunk's transaction is lost."""


class LazySavepoints:
    """The savepoints of one chunk's handlers, on each of its databases."""

    def __init__(self, aliases: Sequence[str]) -> None:
        self.aliases = list(aliases)
        self.name = f"outbox_{uuid.uuid4().hex[:12]}"
        self.armed: set[str] = set()
        self.issued: set[str] = set()
        #: Savepoints issued so far on each database, in this transaction.
        self.count: dict[str, int] = dict.fromkeys(self.aliases, 0)
        self.callbacks: dict[str, int] = {}

    @contextmanager
    def installed(self) -> Iterator[LazySavepoints]:
        """Watch the chunk's connections while the chunk runs."""
        with ExitStack() as stack:
            for alias in self.aliases:
                stack.enter_context(connections[alias].execute_wrapper(self._wrapper(alias)))
            yield self

    def arm(self) -> None:
        """A handler is about to run: a savepoint before its first statement."""
        self.armed = set(self.aliases)
        self.issued = set()
        self.callbacks = {
            alias: compat.on_commit_count(connections[alias]) for alias in self.aliases
        }

    def disarm(self) -> None:
        self.armed = set()

    def keep(self) -> None:
        """The handler succeeded. SQLite nests same-named savepoints, and each open one
        makes the next writes dearer: released there (in-process, no round trip)."""
        for alias in self.issued:
            connection = connections[alias]
            if connection.vendor == "sqlite":
                with connection.wrap_database_errors:
                    connection.connection.execute(connection.ops.savepoint_commit_sql(self.name))

    def broken(self) -> str | None:
        """Whether the handler left a transaction unusable though it returned: which."""
        for alias in self.aliases:
            connection = connections[alias]
            if transaction.get_rollback(using=alias):
                return alias
            if alias in self.issued and compat.transaction_failed(connection):
                return alias  # PostgreSQL: a raw query's error caught, the transaction aborted
        return None

    def rollback(self) -> None:
        """Undo the handler that ran since ``arm()``: its writes and its callbacks."""
        self.disarm()
        for alias in self.aliases:
            connection = connections[alias]
            if connection.connection is None or getattr(connection, "closed_in_transaction", False):
                raise RollbackFailed(f"the connection to {alias!r} was closed in the transaction")
            if alias in self.issued:
                # Django refuses queries while the flag is up; the savepoint clears it.
                transaction.set_rollback(False, using=alias)
                try:
                    with connection.cursor() as cursor:
                        cursor.execute(connection.ops.savepoint_rollback_sql(self.name))
                except Exception as exc:
                    transaction.set_rollback(True, using=alias)
                    raise RollbackFailed(str(exc)) from exc
            elif compat.transaction_failed(connection):
                raise RollbackFailed(f"the transaction on {alias!r} failed without a savepoint")
            else:
                transaction.set_rollback(False, using=alias)  # it wrote nothing there
            compat.drop_on_commit_callbacks(connection, self.callbacks.get(alias, 0))

    def full(self) -> bool:
        """Whether a PostgreSQL transaction holds ``OUTBOX_CONSUMER_SUBTRANSACTIONS``
        savepoints: 64 by default, the size of a backend's cache of subtransaction
        ids (``PGPROC_MAX_CACHED_SUBXIDS``)."""
        cap = outbox_settings.consumer_subtransactions
        return cap > 0 and any(
            count >= cap and connections[alias].vendor == "postgresql"
            for alias, count in self.count.items()
        )

    def _wrapper(self, alias: str) -> Callable[..., Any]:
        connection = connections[alias]

        def issue_first(
            execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any
        ) -> Any:
            if alias not in self.armed:
                return execute(sql, params, many, context)
            self.armed.discard(alias)
            self.issued.add(alias)
            self.count[alias] += 1
            savepoint = connection.ops.savepoint_create_sql(self.name)
            raw = context["cursor"].cursor
            if not many and compat.joins_statements(raw):
                # PostgreSQL: in the same query as the handler's statement, no round trip.
                result = execute(f"{savepoint}; {sql}", params, many, context)
                compat.to_second_result(raw)
                return result
            with connection.wrap_database_errors:
                raw.execute(savepoint)  # the driver's cursor: no Django cursor to build
            return execute(sql, params, many, context)

        return issue_first
