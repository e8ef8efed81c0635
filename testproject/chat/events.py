"""Handlers of the chat app, discovered by django_outbox at start-up."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime

from django_outbox import Event, handler

from .models import ChatHistory
from .services import MESSAGE_CREATED


@handler(MESSAGE_CREATED)
def persist_chat_history(event: Event) -> None:
    data = event.data
    ChatHistory.objects.get_or_create(
        event_id=event.event_id,
        defaults={
            "conversation_id": data["conversation_id"],
            "author": data["author"],
            "text": data["text"],
            "sent_at": parse_datetime(data["sent_at"]),
        },
    )
