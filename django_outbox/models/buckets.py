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
from typing import Any

from django.db import models
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import MillisecondDateTimeField

logger = logging.getLogger(__name__)

#: Buckets of the key space. Fixed: every relay of a database must agree on it.
BUCKETS = 64


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


def owns_every_bucket_sql(connection: Any, table: str, key: str) -> str:
    """``owned_rows_sql`` for a relay that held every bucket at its last tick: the same
    parameters, the same answer while it still holds them all, and no keyed row at all
    once it does not (its next tick finds out which it lost). The count is one subquery
    that does not depend on the row, so the database runs it once per statement instead
    of hashing each candidate row."""
    quote = connection.ops.quote_name
    buckets = quote(RelayBucket._meta.db_table)
    return (
        f"({table}.{quote(key)} = '' OR (SELECT COUNT(*) FROM {buckets} "
        f"WHERE {quote('owner')} = %s AND {quote('lease_until')} > %s) = {BUCKETS})"
    )


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
