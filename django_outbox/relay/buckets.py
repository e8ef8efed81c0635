"""The relay's share of the key space: each tick, take free buckets up to a fair share,
renew their leases, give back the rest (``Coordinator``).

The buckets themselves, the hash and the SQL that keeps a claim to owned buckets are
in ``django_outbox.models.buckets``; the decision record is
docs/decisions/0003-relay-buckets.rst.
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import secrets
import socket
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, models, transaction
from django.db.models import Q
from django.utils import timezone

from django_outbox.models.buckets import BUCKETS, RelayBucket, RelayMember, supported
from django_outbox.models.claiming import Owner
from django_outbox.relay import deadlocks

logger = logging.getLogger(__name__)

#: Seconds between two looks at the buckets (renew, count members, take or give back).
TICK = 1.0

#: Seconds between two sweeps of members gone for an hour (a sweep is a read, and a
#: delete when it finds some): once a minute is enough for a table of a few rows.
SWEEP = 60.0


def new_name() -> str:
    """A relay's name: readable, and unique to this process (never reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"[:100]


def fair_share(members: int) -> int:
    return math.ceil(BUCKETS / max(members, 1))


@dataclass
class Holding:
    """What one relay owns on one database after its last tick."""

    #: bucket -> generation
    buckets: dict[int, int] = field(default_factory=dict)
    #: The earliest lease among them (None: nothing owned).
    until: datetime.datetime | None = None
    members: int = 1

    @property
    def count(self) -> int:
        return len(self.buckets)


class Coordinator:
    """One relay's buckets on one database. Runs on the relay's database thread."""

    def __init__(self, alias: str, name: str, lease_seconds: float) -> None:
        self.alias = alias
        self.name = name
        self.lease = datetime.timedelta(seconds=lease_seconds)
        self.holding = Holding()
        self.enabled = supported(connections[alias].vendor)
        #: The bucket rows exist (made once, by the first tick that finds them missing).
        self._ensured = False
        #: ``now`` of the last sweep of gone members (None: not yet).
        self._swept_at: datetime.datetime | None = None

    # ---------------------------------------------------------------- one tick

    def tick(self, now: datetime.datetime | None = None, *, greedy: bool = False) -> int:
        """Heartbeat, renew, count members, take free buckets up to the fair share.

        Returns how many buckets are over the share (to give back once the relay has
        nothing of them in flight: ``give_back``). ``greedy`` (a burst: deliver what
        is due, then stop): take every free bucket and give none back.
        """
        now = now or timezone.now()
        return deadlocks.retry_deadlocks(lambda: self._tick_once(now, greedy))

    def _tick_once(self, now: datetime.datetime, greedy: bool) -> int:
        # the tick is one transaction: if it rolls back, so does what it told the holding
        before = Holding(dict(self.holding.buckets), self.holding.until, self.holding.members)
        ensured, swept_at = self._ensured, self._swept_at
        try:
            return self._tick_in_transaction(now, greedy)
        except Exception:
            self.holding = before
            self._ensured, self._swept_at = ensured, swept_at
            raise

    def _tick_in_transaction(self, now: datetime.datetime, greedy: bool) -> int:
        with transaction.atomic(using=self.alias):
            self._heartbeat(now)
            members = self._live_members(now)
            self.holding.members = members
            if not self.enabled:
                return 0
            self._ensure_buckets()
            self._renew(now)
            share = BUCKETS if greedy else fair_share(members)
            if self.holding.count < share:
                self._take(now, share - self.holding.count)
            return max(self.holding.count - share, 0)

    def give_back(self, count: int | None = None, now: datetime.datetime | None = None) -> int:
        """Release ``count`` of the buckets held (all by default); return how many went."""
        now = now or timezone.now()
        held = sorted(self.holding.buckets)
        chosen = held if count is None else held[len(held) - count :]
        if not chosen:
            return 0
        pairs = {bucket: self.holding.buckets[bucket] for bucket in chosen}
        released = self._update_held(
            pairs, "{owner} = NULL, {lease} = NULL, {generation} = {generation} + 1", []
        )
        for bucket in chosen:
            self.holding.buckets.pop(bucket, None)
        # the earliest lease of what is left is no earlier than the one kept: still a safe cap
        if not self.holding.buckets:
            self.holding.until = None
        if released:
            logger.info(
                "outbox relay %s: gave back %d bucket(s) on %r", self.name, released, self.alias
            )
        return released

    def leave(self) -> None:
        """Give every bucket back and remove the membership (a clean stop)."""
        if self.enabled:
            self.give_back()
        self._members().filter(name=self.name).delete()

    def lease_cap(self, now: datetime.datetime) -> datetime.datetime | None:
        """The latest lease a claim may take now: no row outlives its bucket's lease.

        None when nothing is held (nothing keyed may be claimed) or coordination is off.
        """
        if not self.enabled:
            return None
        return self.holding.until

    def owner(self) -> Owner | None:
        """What a claim of this database keeps to now (None: coordination is off)."""
        if not self.enabled:
            return None
        whole = self.holding.count == BUCKETS
        return Owner(self.name, self.lease_cap(timezone.now()), whole=whole)

    # ---------------------------------------------------------------- statements

    def _members(self) -> models.QuerySet[RelayMember]:
        return RelayMember.objects.using(self.alias)

    def _buckets(self) -> models.QuerySet[RelayBucket]:
        return RelayBucket.objects.using(self.alias)

    def _heartbeat(self, now: datetime.datetime) -> None:
        alive_until = now + self.lease
        updated = (
            self._members().filter(name=self.name).update(heartbeat_at=now, alive_until=alive_until)
        )
        if not updated:
            self._members().create(
                name=self.name, started_at=now, heartbeat_at=now, alive_until=alive_until
            )

    def _live_members(self, now: datetime.datetime) -> int:
        if self._swept_at is None or (now - self._swept_at).total_seconds() >= SWEEP:
            self._sweep(now)
        return self._members().filter(alive_until__gt=now).count()

    def _sweep(self, now: datetime.datetime) -> None:
        # Members gone for an hour are forgotten: found by a plain read, deleted by name,
        # so no tick locks a range of the table (a ranged DELETE beside other relays'
        # heartbeats deadlocked on MariaDB).
        self._swept_at = now
        gone = list(
            self._members()
            .filter(alive_until__lt=now - datetime.timedelta(hours=1))
            .values_list("name", flat=True)
        )
        if gone:
            self._members().filter(name__in=gone).delete()

    def _ensure_buckets(self) -> None:
        if self._ensured:
            return
        if self._buckets().count() < BUCKETS:
            self._buckets().bulk_create(
                [RelayBucket(bucket=n) for n in range(BUCKETS)], ignore_conflicts=True
            )
        self._ensured = True

    def _renew(self, now: datetime.datetime) -> None:
        """Extend the leases of the buckets held: two statements whatever the count.

        Fenced on (owner, generation) and the lease not yet run out: a bucket that
        changed hands, even back to this name, is neither extended nor counted.
        """
        held = self.holding.buckets
        if not held:
            self.holding.until = None
            return
        self._update_held(held, "{lease} = %s", [self._at(now + self.lease)], lease_after=now)
        # what the table still says is ours (a bucket lost while this relay stalled is gone)
        rows = self._buckets().filter(owner=self.name, lease_until__gt=now, bucket__in=list(held))
        leases = {}
        for bucket, generation, lease_until in rows.values_list(
            "bucket", "generation", "lease_until"
        ):
            if held.get(bucket) == generation:
                leases[bucket] = (generation, lease_until)
        self.holding.buckets = {bucket: generation for bucket, (generation, _) in leases.items()}
        self.holding.until = min(
            (lease for _, lease in leases.values() if lease is not None), default=None
        )
        lost = set(held) - set(self.holding.buckets)
        if lost:
            logger.warning(
                "outbox relay %s: lost %d bucket(s) on %r (their leases ran out or they "
                "changed hands): %s",
                self.name,
                len(lost),
                self.alias,
                sorted(lost),
            )

    def _at(self, moment: datetime.datetime) -> Any:
        return connections[self.alias].ops.adapt_datetimefield_value(moment)

    def _update_held(
        self,
        held: dict[int, int],
        assignments: str,
        params: list[Any],
        *,
        lease_after: datetime.datetime | None = None,
    ) -> int:
        """One ``UPDATE`` of the buckets among ``held`` (bucket -> generation) that this
        relay still owns under that generation (and, given ``lease_after``, with a lease
        running past it); returns how many rows it changed.

        The condition is on ``(bucket, generation)`` row values (PostgreSQL and MariaDB,
        the databases with buckets), not an OR of one condition per bucket.
        """
        if not held:
            return 0
        connection = connections[self.alias]
        ops = connection.ops
        meta = RelayBucket._meta
        column = {field.name: ops.quote_name(str(field.column)) for field in meta.concrete_fields}
        where = [f"{column['owner']} = %s"]
        condition_params: list[Any] = [self.name]
        if lease_after is not None:
            where.append(f"{column['lease_until']} > %s")
            condition_params.append(self._at(lease_after))
        pairs = ", ".join(["(%s, %s)"] * len(held))
        where.append(f"({column['bucket']}, {column['generation']}) IN ({pairs})")
        for pair in held.items():
            condition_params.extend(pair)
        sql = (
            f"UPDATE {ops.quote_name(meta.db_table)} SET "
            + assignments.format(
                owner=column["owner"], lease=column["lease_until"], generation=column["generation"]
            )
            + " WHERE "
            + " AND ".join(where)
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, params + condition_params)
            return int(cursor.rowcount)

    def _take(self, now: datetime.datetime, wanted: int) -> None:
        free = Q(owner__isnull=True) | Q(lease_until__isnull=True) | Q(lease_until__lte=now)
        candidates = list(
            self._buckets().filter(free).order_by("bucket").values_list("bucket", flat=True)
        )
        chosen = candidates[:wanted]
        if not chosen:
            return
        # one conditional UPDATE: a bucket another relay took meanwhile is not free any more
        self._buckets().filter(free, bucket__in=chosen).update(
            owner=self.name, lease_until=now + self.lease, generation=models.F("generation") + 1
        )
        taken = dict(
            self._buckets()
            .filter(bucket__in=chosen, owner=self.name)
            .values_list("bucket", "generation")
        )
        if taken:
            self.holding.buckets.update(taken)
            # what was taken leases until now + lease, no earlier than what was renewed
            self.holding.until = min(self.holding.until or now + self.lease, now + self.lease)
            logger.info(
                "outbox relay %s: took %d bucket(s) on %r (%d held, %d relay(s))",
                self.name,
                len(taken),
                self.alias,
                self.holding.count,
                self.holding.members,
            )
