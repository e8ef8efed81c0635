"""The app's tables: the legacy outbox table and the tables the app owns beside it.

Owns every state change of a row: the named transitions of ``OutboxMessageQuerySet``
(``outbox``), the claims and their fenced write-backs (``claiming``, ``fencing``), the
relays' buckets (``buckets``), strict key order (``ordering``), where Kafka put each
published row (``publications``), and the consumer's inbox and rejected records
(``inbox``). Imports only the core modules of the package
(``conf``, ``fields``, ``envelope``, ``backoff``, ``wakeup``...), never a worker, the
admin or Kafka. The legacy table's DDL and the migrations never change shape here.
"""

from __future__ import annotations

from django_outbox.models.attempts import FailedAttempt
from django_outbox.models.buckets import RelayBucket, RelayMember
from django_outbox.models.fencing import ClaimFence
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from django_outbox.models.ordering import ReleasedRow
from django_outbox.models.outbox import (
    FINAL_STATUSES,
    OutboxMessage,
    OutboxMessageQuerySet,
    Status,
    lease_expiry,
    retry_time,
    scheduled_time,
)
from django_outbox.models.publications import Publication
from django_outbox.models.replay_runs import ReplayRun, RunState
from django_outbox.models.task_results import TaskRecord

__all__ = [
    "FINAL_STATUSES",
    "ClaimFence",
    "FailedAttempt",
    "InboxEntry",
    "OutboxMessage",
    "OutboxMessageQuerySet",
    "Publication",
    "RejectedRecord",
    "RelayBucket",
    "RelayMember",
    "ReleasedRow",
    "ReplayRun",
    "RunState",
    "Status",
    "TaskRecord",
    "lease_expiry",
    "retry_time",
    "scheduled_time",
]
