"""Relays that share one database by key: the key space in buckets, each with one owner.

Every row with a key falls in one of ``BUCKETS`` buckets, a hash of its topic and key
(``bucket_of``, and the same in SQL: ``bucket_sql``). A relay sends only the rows of
the buckets it owns, so each key has exactly one sender at a time and its rows
leave in id order, however many relays run. Rows without a key belong to no bucket:
every relay takes them (``SKIP LOCKED`` keeps the claims disjoint).

Ownership lives in the app's own tables (the legacy table is untouched):

- ``RelayMember``: one row per running relay (its name, a token unique to the
  process: ``host:pid:random``), heartbeat every ``TICK`` seconds. A member whose
  heartbeat is older than its own lease is gone (``alive_until``).
- ``RelayBucket``: one row per bucket: owner (a member's name), ``generation`` (one
  more at every change of hands) and ``lease_until``.

Each ``TICK`` a relay renews the leases of its buckets, counts the live members and
moves towards its fair share (``ceil(BUCKETS / members)``): it takes free buckets
(no owner, or a lease that ran out) or gives back the ones over its share. A
relay gives a bucket back only once nothing of it is with Kafka or claimed ahead
(``Relay`` settles first); on SIGTERM it gives back all of them, so a successor
takes them at its next tick, within about a second. After a SIGKILL they are free
when their lease runs out.

The fences: a claim takes only rows whose bucket the claiming relay still owns with a
live lease, checked in the claim's own statement (a relay that lost a bucket while it
stalled claims nothing of it), and the lease of a claimed row never outlasts the
lease of the buckets (``Coordinator.lease_cap``), so when a bucket is free, every row
its last owner claimed is due again, oldest first. Renewals and releases are fenced on
``(owner, generation)``. Write-backs are fenced per claim by its token (``fencing``).
Decision record: docs/decisions/0003-relay-buckets.rst.
"""

from __future__ import annotations

import datetime
import hashlib
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
from django.utils.translation import gettext_lazy as _

from .fields import MillisecondDateTimeField

logger = logging.getLogger(__name__)

#: Buckets of the key space. Fixed: every relay of a database must agree on it.
BUCKETS = 64
#: Seconds between two looks at the buckets (renew, count members, take or give back).
TICK = 1.0


class RelayMember(models.Model):
    """A running relay, as its heartbeats tell."""

    name = models.CharField(_("relay"), max_length=100, primary_key=True)
    started_at = MillisecondDateTimeField(_("started at"))
    heartbeat_at = MillisecondDateTimeField(_("last heartbeat"))
    #: Its heartbeat plus its own lease: gone after that (relays may differ in lease).
    alive_until = MillisecondDateTimeField(_("alive until"))

    class Meta:
        app_label = "django_outbox"
        db_table = "django_outbox_relay_member"
        verbose_name = _("relay")
        verbose_name_plural = _("relays")

    def __str__(self) -> str:
        return self.name


class RelayBucket(models.Model):
    """One bucket of the key space and the relay that sends it."""

    bucket = models.IntegerField(_("bucket"), primary_key=True)
    owner = models.CharField(_("owner"), max_length=100, null=True, blank=True)
    generation = models.BigIntegerField(_("generation"), default=0)
    lease_until = MillisecondDateTimeField(_("lease until"), null=True, blank=True)

    class Meta:
        app_label = "django_outbox"
        db_table = "django_outbox_relay_bucket"
        verbose_name = _("relay bucket")
        verbose_name_plural = _("relay buckets")

    def __str__(self) -> str:
        return f"bucket {self.bucket} ({self.owner or 'free'})"


def bucket_of(topic: str, key: str) -> int | None:
    """The bucket of a row with ``topic`` and ``key`` (None without a key): what
    ``bucket_sql`` computes in the database."""
    if key == "":
        return None
    digest = hashlib.md5(f"{topic}|{key}".encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % BUCKETS


def supported(vendor: str) -> bool:
    """Whether relays can share a database of ``vendor`` by bucket (SQLite: one relay)."""
    return vendor in ("postgresql", "mysql")


def bucket_sql(connection: Any, topic: str, key: str) -> str:
    """SQL for ``bucket_of`` over the quoted columns ``topic`` and ``key`` (MD5, first 32 bits).

    Kafka topic names cannot hold ``|``, so ``topic|key`` names one pair.
    """
    if connection.vendor == "postgresql":
        digest = f"md5({topic} || '|' || {key})"
        return f"mod(('x' || substr({digest}, 1, 8))::bit(32)::bigint, {BUCKETS})"
    if connection.vendor == "mysql":
        digest = f"MD5(CONCAT({topic}, '|', {key}))"
        return f"MOD(CAST(CONV(SUBSTRING({digest}, 1, 8), 16, 10) AS UNSIGNED), {BUCKETS})"
    raise NotImplementedError(f"no relay buckets on {connection.vendor}")


def owned_rows_sql(connection: Any, table: str, topic: str, key: str) -> str:
    """A condition on outbox rows: no key, or a bucket that the relay named by the
    first parameter owns with a lease that runs past the second (a time)."""
    quote = connection.ops.quote_name
    columns = f"{table}.{quote(topic)}", f"{table}.{quote(key)}"
    buckets = quote(RelayBucket._meta.db_table)
    return (
        f"({columns[1]} = '' OR {bucket_sql(connection, *columns)} IN "
        f"(SELECT {quote('bucket')} FROM {buckets} WHERE {quote('owner')} = %s "
        f"AND {quote('lease_until')} > %s))"
    )


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

    # ---------------------------------------------------------------- one tick

    def tick(self, now: datetime.datetime | None = None, *, greedy: bool = False) -> int:
        """Heartbeat, renew, count members, take free buckets up to the fair share.

        Returns how many buckets are over the share (to give back once the relay has
        nothing of them in flight: ``give_back``). ``greedy`` (a burst: deliver what
        is due, then stop): take every free bucket and give none back.
        """
        now = now or timezone.now()
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
        released = 0
        with transaction.atomic(using=self.alias):
            for bucket in chosen:
                released += (
                    self._buckets()
                    .filter(bucket=bucket, owner=self.name, generation=self.holding.buckets[bucket])
                    .update(owner=None, lease_until=None, generation=models.F("generation") + 1)
                )
                self.holding.buckets.pop(bucket, None)
        self._reset_until()
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
        # members gone for an hour are forgotten
        self._members().filter(alive_until__lt=now - datetime.timedelta(hours=1)).delete()
        return self._members().filter(alive_until__gt=now).count()

    def _ensure_buckets(self) -> None:
        if self._buckets().count() < BUCKETS:
            self._buckets().bulk_create(
                [RelayBucket(bucket=n) for n in range(BUCKETS)], ignore_conflicts=True
            )

    def _renew(self, now: datetime.datetime) -> None:
        """Extend the leases of the buckets held, fenced on (owner, generation)."""
        held = self.holding.buckets
        if not held:
            self._reset_until()
            return
        mine = Q()
        for bucket, generation in held.items():
            mine |= Q(bucket=bucket, generation=generation)
        ours = self._buckets().filter(mine, owner=self.name, lease_until__gt=now)
        ours.update(lease_until=now + self.lease)
        # what the table still says is ours (a bucket lost while this relay stalled is gone)
        self.holding.buckets = dict(
            self._buckets()
            .filter(mine, owner=self.name, lease_until__gt=now)
            .values_list("bucket", "generation")
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
        self._reset_until()

    def _take(self, now: datetime.datetime, wanted: int) -> None:
        free = Q(owner__isnull=True) | Q(lease_until__isnull=True) | Q(lease_until__lte=now)
        candidates = list(
            self._buckets().filter(free).order_by("bucket").values_list("bucket", flat=True)
        )
        taken: list[int] = []
        for bucket in candidates[:wanted]:
            if (
                self._buckets()
                .filter(free, bucket=bucket)
                .update(
                    owner=self.name,
                    lease_until=now + self.lease,
                    generation=models.F("generation") + 1,
                )
            ):
                taken.append(bucket)
        if taken:
            self.holding.buckets.update(
                self._buckets()
                .filter(bucket__in=taken, owner=self.name)
                .values_list("bucket", "generation")
            )
            self._reset_until()
            logger.info(
                "outbox relay %s: took %d bucket(s) on %r (%d held, %d relay(s))",
                self.name,
                len(taken),
                self.alias,
                self.holding.count,
                self.holding.members,
            )

    def _reset_until(self) -> None:
        if not self.holding.buckets:
            self.holding.until = None
            return
        leases = (
            self._buckets()
            .filter(bucket__in=list(self.holding.buckets), owner=self.name)
            .values_list("lease_until", flat=True)
        )
        self.holding.until = min((lease for lease in leases if lease is not None), default=None)


def assignment(alias: str, now: datetime.datetime | None = None) -> list[dict[str, Any]]:
    """The relays of ``alias`` and the buckets each owns (``outbox_status``, the admin)."""
    now = now or timezone.now()
    owned: dict[str, list[int]] = {}
    for bucket, owner in (
        RelayBucket.objects.using(alias)
        .filter(owner__isnull=False, lease_until__gt=now)
        .values_list("bucket", "owner")
    ):
        owned.setdefault(str(owner), []).append(bucket)
    relays = []
    for member in RelayMember.objects.using(alias).order_by("started_at"):
        age = (now - member.heartbeat_at).total_seconds()
        relays.append(
            {
                "relay": member.name,
                "heartbeat_age": round(max(age, 0.0), 3),
                "alive": member.alive_until > now,
                "buckets": len(owned.pop(member.name, [])),
            }
        )
    for owner, buckets in owned.items():  # a bucket whose owner's membership is gone
        relays.append(
            {"relay": owner, "heartbeat_age": None, "alive": False, "buckets": len(buckets)}
        )
    return relays
