"""The outbox in the Django admin, one module per screen.

- ``messages``: the outbox rows (``OutboxMessageAdmin``), declared over ``message_list``
  (columns, search, summary), ``message_page`` (a row's page), ``failures_page`` (failures
  by error), ``actions`` (the operators' actions, their permissions) and ``rows`` (read-only
  rows of ``OUTBOX_DATABASE``);
- ``inbox``: the consumer's tables (rejected records and their replay, the inbox);
- ``replay_runs``: the runs of ``manage.py outbox_replay`` (who, what, when, how far);
- ``tasks``: the results of Django tasks run through the outbox;
- ``counts``, ``filters``, ``failures``, ``display``: what the screens share (capped
  counts of a table of millions, list filters, failures by error, how times show).

Imports the models, the registry and the consumer's replay (for the rejected records'
actions); no worker imports the admin.
"""

from __future__ import annotations

from django_outbox.admin.inbox import InboxEntryAdmin, RejectedRecordAdmin
from django_outbox.admin.messages import OutboxMessageAdmin
from django_outbox.admin.replay_runs import ReplayRunAdmin
from django_outbox.admin.tasks import TaskRecordAdmin

__all__ = [
    "InboxEntryAdmin",
    "OutboxMessageAdmin",
    "RejectedRecordAdmin",
    "ReplayRunAdmin",
    "TaskRecordAdmin",
]
