"""A claim never takes a row of a key ahead of an earlier row someone else holds a lock on.

``SKIP LOCKED`` passes over a locked row; if that row was the earlier row of a key, a
claim that took the next row of the key sent the key out of order. On MariaDB, a
claim whose plan read the status index locked 900-5,000 due rows of other relays'
buckets; three relays broke key order in one run in eight (200-600 of 1,800 rows).
"""

from __future__ import annotations

import threading

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from django_outbox.models import OutboxMessage
from django_outbox.models.claiming import Owner, claim
from django_outbox.models.row_locks import force_primary, keep_key_order
from django_outbox.relay.buckets import Coordinator

from .relay_support import make_rows

# ------------------------------------------------------------------ the rule, pure

candidate_rows = st.lists(
    st.tuples(st.sampled_from(["t", "u"]), st.sampled_from(["", "a", "b", "c"]), st.booleans()),
    max_size=30,
)


@given(first=candidate_rows, second=candidate_rows)
def test_a_key_is_taken_only_up_to_its_first_row_left_behind(first, second):
    """Over two windows of candidates: every row taken is locked, and every earlier
    row of its key (in either window) was taken too; a locked row is left only for
    that reason, and a row without a key is never held back."""
    windows = []
    pk = 0
    for window in (first, second):
        rows = []
        for topic, key, got in window:
            pk += 1
            rows.append((pk, topic, key, got))
        windows.append(rows)
    held_back: set[tuple[str, str]] = set()
    taken: list[int] = []
    for rows in windows:
        taken += keep_key_order(
            [(pk, topic, key) for pk, topic, key, _ in rows],
            [pk for pk, _, _, got in rows if got],
            held_back,
        )
    everything = [row for rows in windows for row in rows]
    assert taken == sorted(taken)
    for pk, topic, key, got in everything:
        earlier_all_taken = all(
            other in taken
            for other, t, k, _ in everything
            if other < pk and (t, k) == (topic, key) and key != ""
        )
        should = got and (key == "" or earlier_all_taken)
        assert (pk in taken) == should, (pk, topic, key, got)


def test_force_primary_names_the_primary_key_after_the_table():
    select = "SELECT `t`.`id` FROM `t` WHERE (`t`.`id` IN (SELECT 1 FROM `b`)) FOR UPDATE"
    assert force_primary(select, "`t`") == (
        "SELECT `t`.`id` FROM `t` FORCE INDEX (PRIMARY) WHERE (`t`.`id` IN (SELECT 1 FROM `b`))"
        " FOR UPDATE"
    )
    update = "UPDATE `t` SET `x` = %s WHERE `t`.`id` IN (1,2)"
    assert force_primary(update, "`t`") == (
        "UPDATE `t` FORCE INDEX (PRIMARY) SET `x` = %s WHERE `t`.`id` IN (1,2)"
    )
    with pytest.raises(ValueError, match="no FROM or UPDATE"):
        force_primary("SELECT 1 FROM `other` ", "`t`")


# ------------------------------------------------------------------ on the database

on_the_database = pytest.mark.django_db(transaction=True)


class Holder:
    """Another transaction that holds row locks on some outbox rows until told to stop."""

    def __init__(self, ids: list[int]):
        self.ids = ids
        self.locked = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._hold)

    def _hold(self) -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                # through the primary key: on a small table MariaDB would scan, and lock
                # every row it examined
                hint = " FORCE INDEX (PRIMARY)" if connection.vendor == "mysql" else ""
                table = connection.ops.quote_name(OutboxMessage._meta.db_table)
                ids = ",".join(str(pk) for pk in self.ids)
                cursor.execute(f"SELECT id FROM {table}{hint} WHERE id IN ({ids}) FOR UPDATE")
                assert len(cursor.fetchall()) == len(self.ids)
                self.locked.set()
                self.done.wait(30)
        finally:
            connection.close()

    def __enter__(self) -> Holder:
        self.thread.start()
        assert self.locked.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self.thread.join(30)


def _claim(batch_size: int) -> list[int]:
    """A claim by a relay that owns every bucket (alone on its database)."""
    relay = Coordinator("default", "relay-a", 30)
    relay.tick()
    owner = Owner("relay-a", relay.lease_cap(timezone.now()), whole=True)
    return [row.id for row in claim("default", batch_size, 30, owner=owner).rows]


def _rows(keys: list[str]) -> list[int]:
    made = []
    for key in keys:
        made += make_rows(1, "t", keys=[key])
    return [row.pk for row in made]


@on_the_database
def test_a_claim_leaves_the_rest_of_a_key_whose_earlier_row_another_transaction_holds(vendor):
    if vendor == "sqlite":
        pytest.skip("SQLite has no row locks (one writer at a time)")
    k1, k2, other, keyless = _rows(["k", "k", "m", ""])
    with Holder([k1]):
        # k2 would leave before k1; the rest of the batch goes
        assert _claim(10) == [other, keyless]
    assert _claim(10) == [k1, k2]


@on_the_database
def test_a_claim_looking_past_a_window_of_rows_others_hold_keeps_their_keys_back(vendor):
    if vendor != "mysql":
        pytest.skip("the windows of candidates are MySQL/MariaDB's (a locking read per window)")
    # a claim of 1 looks at 4 candidates a window: others hold the whole first window
    held = _rows(["k", "k", "k", "m"])
    k4, m2, fresh = _rows(["k", "m", "n"])
    with Holder(held):
        assert _claim(1) == [fresh]
    assert _claim(10) == [*held, k4, m2]


@on_the_database
def test_relays_without_buckets_take_every_row_they_lock(vendor, settings):
    """Without relay buckets several relays send each key anyway: holding a key back
    would only leave the work to one of them (tests/test_relay_concurrency.py)."""
    if vendor == "sqlite":
        pytest.skip("SQLite has no row locks (one writer at a time)")
    k1, k2, other = _rows(["k", "k", "m"])
    with Holder([k1]):
        assert [row.id for row in claim("default", 10, 30).rows] == [k2, other]


@on_the_database
def test_a_mariadb_claim_locks_through_the_primary_key(vendor):
    if vendor != "mysql":
        pytest.skip("the index hint is MySQL/MariaDB's")
    make_rows(3, "t", keys=["a", "b", ""])
    relay = Coordinator("default", "relay-a", 30)
    relay.tick()
    owner = Owner("relay-a", relay.lease_cap(timezone.now()), whole=True)
    table = connection.ops.quote_name(OutboxMessage._meta.db_table)
    with CaptureQueriesContext(connection) as queries:
        assert len(claim("default", 10, 30, owner=owner)) == 3
    locking = [
        q["sql"]
        for q in queries
        if table in q["sql"] and ("FOR UPDATE" in q["sql"] or q["sql"].startswith("UPDATE"))
    ]
    assert len(locking) == 2  # the locking read and the lease
    assert all("FORCE INDEX (PRIMARY)" in sql for sql in locking)
