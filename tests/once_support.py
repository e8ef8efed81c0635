"""Helpers of the once-only consumer tests: events with a side effect outside the
database (a Python list, the kind a rollback cannot undo) and one inside."""

from __future__ import annotations

import uuid
from typing import Any

from django.db import transaction
from django.utils.dateparse import parse_datetime
from hypothesis import strategies as st

from django_outbox import Event, publish_event
from django_outbox.consumer import Delivery
from django_outbox.consumer import savepoints as lazy
from testproject.chat.models import ChatHistory

from .consumer_support import foreign_record, local


def foreign(event_type: str, data: dict, offset: int, partition: int = 0) -> Delivery:
    key, value, headers = foreign_record(event_type, data)
    return Delivery("t", partition, offset, key, value, tuple(headers))


def outcomes(results) -> list[str | None]:
    return [None if r is None else r.outcome.value for r in results]


def data(conversation, n: int, *, fail: bool = False) -> dict:
    return {"conversation_id": conversation.pk, "n": n, "fail": fail}


def history(event: Event) -> ChatHistory:
    return ChatHistory(
        event_id=event.event_id,
        conversation_id=event.data["conversation_id"],
        author="once",
        text=f"message {event.data['n']}",
        sent_at=parse_datetime("2026-12-01T00:00:00Z"),
    )


def histories() -> set[uuid.UUID]:
    return set(ChatHistory.objects.values_list("event_id", flat=True))


class Outside:
    """Handlers with an effect outside the database (``sent``) and one inside."""

    def __init__(self) -> None:
        self.sent: list[uuid.UUID] = []
        self.committed: list[uuid.UUID] = []

    def plain(self, event: Event) -> None:
        self.sent.append(event.event_id)  # the e-mail: gone once sent
        history(event).save()
        transaction.on_commit(lambda: self.committed.append(event.event_id))
        if event.data["fail"]:
            raise RuntimeError(f"refused {event.data['n']}")

    def batch(self, events: list[Event]) -> None:
        self.sent.extend(event.event_id for event in events)
        ChatHistory.objects.bulk_create(history(event) for event in events)
        transaction.on_commit(lambda: self.committed.extend(event.event_id for event in events))
        if any(event.data["fail"] for event in events):
            raise RuntimeError("refused the list")


def record_savepoints(monkeypatch: Any) -> list[lazy.LazySavepoints]:
    """The ``LazySavepoints`` of each chunk handled from now on (a fixture's body)."""
    made: list[lazy.LazySavepoints] = []
    real = lazy.LazySavepoints.__init__

    def init(self: lazy.LazySavepoints, aliases: Any) -> None:
        real(self, aliases)
        made.append(self)

    monkeypatch.setattr(lazy.LazySavepoints, "__init__", init)
    return made


#: A random chunk: (fails, "local" or "inbox", event type, partition) per record.
def plans(event_types: list[str]) -> st.SearchStrategy:
    return st.lists(
        st.tuples(
            st.booleans(),  # fails
            st.sampled_from(["local", "inbox"]),
            st.sampled_from(event_types),
            st.integers(0, 2),  # partition
        ),
        min_size=1,
        max_size=14,
    )


def planned(conversation: Any, plan: list) -> tuple[list[Delivery], dict]:
    """The deliveries of a ``plans`` chunk, and each event's (event type, fails)."""
    deliveries, offsets, types = [], [0, 0, 0], {}
    for fails, kind, event_type, partition in plan:
        payload = data(conversation, len(deliveries), fail=fails)
        if kind == "local":
            row = publish_event(event_type, payload, max_retry=5)
            delivery, event_id = local(row, offsets[partition], partition), row.event.event_id
        else:
            delivery = foreign(event_type, payload, offsets[partition], partition)
            event_id = uuid.UUID(delivery.header("event_id"))
        types[event_id] = (event_type, fails)
        offsets[partition] += 1
        deliveries.append(delivery)
    return deliveries, types
