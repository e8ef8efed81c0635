"""Claim fences: which claim holds an outbox row, by a token unique to that claim.

A relay's claim leases rows by writing an expiry into ``next_retry_at`` (the
legacy table has no lock columns; the Go service and ``due()`` read that column).
That value is a time, and times repeat: two claims of one row within the same
second carry the same lease, so a write-back fenced on the lease alone can land
on a later claim's row (issue 16: a delayed ``published`` over a retry that was
never acknowledged). So every claim also draws a token (``new_token``, a UUID4)
and records ``(outbox_id, token)`` here, in the app's own table, in the claim's
own statement or transaction. A write-back changes a row only while the row is
still ``pending`` under its lease *and* this table says the claim's token holds it,
and it removes its own fence rows, so the table holds about the rows in flight.

Only a claim changes a row's fence, and only while it holds the row's lock, so a
write-back that holds the row's lock reads a fence that cannot change under it.
Fence rows left behind by a relay that died are overwritten by the row's next
claim, and ``outbox_prune`` deletes any older than its cutoff.

This module knows the fence table only: ``models`` and ``claiming`` give it the
outbox table's quoted names.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence
from typing import Any, NamedTuple

from django.db import models
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import MillisecondDateTimeField


class Fence(NamedTuple):
    """What a write-back of one claim is fenced on: its lease and its token."""

    lease: datetime.datetime
    token: uuid.UUID


def new_token() -> uuid.UUID:
    """A token for one claim: random, 122 bits, never derived from a clock."""
    return uuid.uuid4()


class ClaimFence(models.Model):
    """The claim that holds an outbox row (the app's own table; the legacy one is untouched)."""

    outbox_id = models.BigIntegerField(_("outbox id"), primary_key=True)
    token = models.UUIDField(_("claim token"))
    claimed_at = MillisecondDateTimeField(_("claimed at"))

    class Meta:
        app_label = "django_outbox"
        db_table = "django_outbox_claim_fence"
        verbose_name = _("claim fence")
        verbose_name_plural = _("claim fences")

    def __str__(self) -> str:
        return f"#{self.outbox_id} held by {self.token}"


def names(connection: Any) -> tuple[str, str, str, str]:
    quote = connection.ops.quote_name
    meta = ClaimFence._meta
    return (
        quote(meta.db_table),
        quote(meta.get_field("outbox_id").column),
        quote(meta.get_field("token").column),
        quote(meta.get_field("claimed_at").column),
    )


def token_param(connection: Any, token: uuid.UUID) -> Any:
    """``token`` as the backend stores it (a native uuid, or 32 hex characters)."""
    return ClaimFence._meta.get_field("token").get_db_prep_value(token, connection)


def _claimed_at_param(connection: Any, now: datetime.datetime) -> Any:
    field = ClaimFence._meta.get_field("claimed_at")
    return field.get_db_prep_value(now, connection)


def upsert_suffix(connection: Any) -> str:
    """What makes an ``INSERT`` of fence rows replace the fence of a row claimed before."""
    _, outbox_id, token, claimed_at = names(connection)
    if connection.vendor == "mysql":
        return (
            f"ON DUPLICATE KEY UPDATE {token} = VALUES({token}), "
            f"{claimed_at} = VALUES({claimed_at})"
        )
    return (
        f"ON CONFLICT ({outbox_id}) DO UPDATE SET {token} = EXCLUDED.{token}, "
        f"{claimed_at} = EXCLUDED.{claimed_at}"
    )


def hold_from(connection: Any, source: str, id_column: str) -> str:
    """``INSERT`` of the fence rows of the ids in ``source`` (PostgreSQL's claim CTE).

    Two parameters, in order: the token and the claim's time.
    """
    table, outbox_id, token, claimed_at = names(connection)
    return (
        f"INSERT INTO {table} ({outbox_id}, {token}, {claimed_at}) "
        f"SELECT {id_column}, %s, %s FROM {source} {upsert_suffix(connection)}"
    )


def hold_params(connection: Any, fence: Fence, now: datetime.datetime) -> list[Any]:
    return [token_param(connection, fence.token), _claimed_at_param(connection, now)]


def hold(connection: Any, ids: Sequence[int], fence: Fence, now: datetime.datetime) -> None:
    """Record that ``fence`` holds ``ids`` (in the claim's transaction, rows locked)."""
    if not ids:
        return
    table, outbox_id, token, claimed_at = names(connection)
    token_value = token_param(connection, fence.token)
    when = _claimed_at_param(connection, now)
    values = ", ".join(["(%s, %s, %s)"] * len(ids))
    params: list[Any] = []
    for pk in ids:
        params.extend((int(pk), token_value, when))
    sql = (
        f"INSERT INTO {table} ({outbox_id}, {token}, {claimed_at}) VALUES {values} "
        f"{upsert_suffix(connection)}"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


#: A fence row older than this is left by a relay that died: no lease lasts that long.
STALE_AFTER = datetime.timedelta(hours=1)


def stale(alias: str, cutoff: datetime.datetime) -> models.QuerySet[ClaimFence]:
    """Fence rows claimed before ``cutoff`` and more than ``STALE_AFTER`` ago."""
    from django.utils import timezone

    before = min(cutoff, timezone.now() - STALE_AFTER)
    return ClaimFence.objects.using(alias).filter(claimed_at__lt=before)
