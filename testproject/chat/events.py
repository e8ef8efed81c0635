"""Handlers of the chat app, discovered by django_outbox at start-up."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime

from django_outbox import Event, handler

from .models import ChatHistory
from .services import MESSAGE_CREATED

#: A message whose text contains this fails in the handler, every time: the demo
#: (scripts/demo) posts a few to show retries with backoff and, at OUTBOX_MAX_RETRY,
#: a dead row.
FAIL_MARKER = "[fail]"


class DeliberateFailure(RuntimeError):
    """Raised by the handler for a message marked with ``FAIL_MARKER``."""


@handler(MESSAGE_CREATED)
def persist_chat_history(event: Event) -> None:
    data = event.data
    if FAIL_MARKER in data["text"]:
        raise DeliberateFailure(f"the message contains {FAIL_MARKER} (a deliberate failure)")
    ChatHistory.objects.get_or_create(
        event_id=event.event_id,
        defaults={
            "conversation_id": data["conversation_id"],
            "author": data["author"],
            "text": data["text"],
            "sent_at": parse_datetime(data["sent_at"]),
        },
    )
