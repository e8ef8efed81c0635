"""The statuses of an outbox row, and what ``next_retry_at`` says about a pending one.

The legacy table has no lock columns: a relay's lease, a backoff and a scheduled
delivery all live in ``next_retry_at``, told apart by its value (a lease is a whole
second, the others never are).
"""

from __future__ import annotations

import datetime

from django.db import models
from django.db.models import Q
from django.db.models.functions import TruncSecond
from django.utils.translation import gettext_lazy as _

from django_outbox.fields import truncate_to_millis


class Status(models.TextChoices):
    """The four statuses, a contract shared with the Go service."""

    PENDING = "pending", _("pending")
    PUBLISHED = "published", _("published")
    CONSUMED = "consumed", _("consumed")
    DEAD = "dead", _("dead")


#: Statuses after which nothing happens to a row by itself.
FINAL_STATUSES = (Status.CONSUMED, Status.DEAD)


def lease_expiry(now: datetime.datetime, seconds: float) -> datetime.datetime:
    """When a relay's claim made at ``now`` for ``seconds`` runs out.

    The legacy table has no lock columns, so a claim lives in ``next_retry_at``.
    A lease expiry is always a whole second and a backoff time never is (see
    ``retry_time``): that is how the admin tells "in flight" from "backing off".
    Two claims within one second get the same value: write-backs are fenced on the
    claim's token too (``fencing``), never on this time alone.
    """
    expiry = now + datetime.timedelta(seconds=seconds)
    if expiry.microsecond:
        expiry = expiry.replace(microsecond=0) + datetime.timedelta(seconds=1)
    return expiry


def retry_time(now: datetime.datetime, delay: float) -> datetime.datetime:
    """``now + delay`` at millisecond precision, never on a whole second (see ``lease_expiry``)."""
    moment = truncate_to_millis(now + datetime.timedelta(seconds=delay))
    if moment.microsecond == 0:
        moment += datetime.timedelta(milliseconds=1)
    return moment


#: A pending row's "scheduled" marks (with a future ``next_retry_at`` not on a whole second).
SCHEDULED = Q(retry_count=0, last_error__isnull=True)


def scheduled_time(now: datetime.datetime, at: datetime.datetime) -> datetime.datetime | None:
    """When a row published at ``now`` for ``at`` is due: ``None`` (now) if ``at`` is not
    later than ``now``, else ``at`` at millisecond precision and never on a whole second
    (a whole second is a relay's lease, see ``lease_expiry``)."""
    moment = truncate_to_millis(at)
    if moment.microsecond == 0:
        moment += datetime.timedelta(milliseconds=1)
    return moment if moment > now else None


def whole_second() -> TruncSecond:
    """``next_retry_at`` truncated to its second: equal to it on a relay's lease only."""
    # Truncated in UTC, whatever TIME_ZONE says: in another zone PostgreSQL truncates
    # the local time and the result never equals the stored lease.
    return TruncSecond("next_retry_at", tzinfo=datetime.timezone.utc)
