"""Posting a chat message: business data and its event, in one transaction."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F
from django.utils import timezone

from django_outbox import publish_event
from django_outbox.models import OutboxMessage

from .models import Conversation

MESSAGE_CREATED = "chat.message.created"


def post_message(conversation: Conversation, author: str, text: str) -> OutboxMessage:
    with transaction.atomic():
        Conversation.objects.filter(pk=conversation.pk).update(message_count=F("message_count") + 1)
        return publish_event(
            MESSAGE_CREATED,
            {
                "conversation_id": conversation.pk,
                "author": author,
                "text": text,
                "sent_at": timezone.now(),
            },
            key=f"conversation-{conversation.pk}",
        )
