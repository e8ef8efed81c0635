"""Once-only for foreign events: the inbox (``InboxEntry``, unique per group and event).

Any event that has no outbox row in this process's databases (another service
published it, or the row was pruned) is handled through the inbox: its entry is
inserted on ``OUTBOX_DATABASE`` in the transaction of the handler's writes (for a
chunk, all of them in one ``INSERT``); a repeat delivery finds it, or hits the
unique constraint, and does nothing.

A record sent again by ``manage.py outbox_replay`` for this group is once-only per
event *and run*: its entry's id is ``inbox_key``, a UUID derived from both, so the
replay runs the handler once more, and a redelivery of the replayed record is still
a duplicate. Its entry's topic, partition and offset are the replayed record's.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence

from django.db import IntegrityError

from django_outbox.consumer.records import Delivery, replay_mark
from django_outbox.envelope import Event
from django_outbox.models import inbox_sql

#: The namespace of the inbox keys of replayed records (``uuid5``).
REPLAY_NAMESPACE = uuid.UUID("0d9e6a52-7f7c-4d8e-9a43-5b2f3f1c8a10")


def inbox_key(delivery: Delivery, event: Event) -> uuid.UUID:
    """The id the inbox keeps an event under: its own, or for a replay, one per run."""
    mark = replay_mark(delivery)
    if mark is None:
        return event.event_id
    return replay_inbox_key(event.event_id, mark.run)


def replay_inbox_key(event_id: uuid.UUID | str, run_token: uuid.UUID | str) -> uuid.UUID:
    """The inbox id of event ``event_id`` handled again for the replay run ``run_token``."""
    return uuid.uuid5(REPLAY_NAMESPACE, f"{event_id}/{run_token}")


class Duplicate(Exception):
    """The inbox entry of the event is there already (inserted by another consumer)."""


class Inbox:
    """One consumer group's inbox on ``alias``."""

    def __init__(self, group: str, alias: str) -> None:
        self.group = group
        self.alias = alias

    def handled(self, event_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Those of ``event_ids`` that this group has handled already (one query)."""
        return inbox_sql.handled_ids(self.alias, self.group, event_ids)

    def insert_many(self, handled: Iterable[tuple[Delivery, Event]]) -> None:
        """The events' entries, in one ``INSERT`` in the handlers' transaction.

        ``Duplicate`` if one exists already (another consumer handled it meanwhile):
        then none is inserted, and the caller rolls back the savepoint or transaction
        it runs in (on PostgreSQL the error leaves it unusable).
        """
        entries = [
            inbox_sql.Entry(
                inbox_key(delivery, event),
                event.event_type,
                delivery.topic,
                delivery.partition,
                delivery.offset,
            )
            for delivery, event in handled
        ]
        try:
            inbox_sql.insert_entries(self.alias, self.group, entries)
        except IntegrityError:
            raise Duplicate from None
