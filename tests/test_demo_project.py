"""The demo project's chat app: posting a message writes business data and its event together."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from django_outbox.models import OutboxMessage, Status
from testproject.chat.events import persist_chat_history
from testproject.chat.models import ChatHistory, Conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def conversation():
    return Conversation.objects.create(title="support")


def post(client, conversation_id, body):
    return client.post(
        reverse("chat-post-message", args=[conversation_id]),
        data=json.dumps(body) if not isinstance(body, str) else body,
        content_type="application/json",
    )


def test_posting_a_message_publishes_chat_message_created(client, conversation):
    response = post(client, conversation.pk, {"author": "ana", "text": "hello <b>"})
    assert response.status_code == 202
    row = OutboxMessage.objects.get(pk=response.json()["outbox_id"])
    assert (row.event_type, row.topic, row.status) == (
        "chat.message.created",
        "chat.messages",
        Status.PENDING,
    )
    assert row.message_key == f"conversation-{conversation.pk}"
    assert row.event.data["text"] == "hello <b>"
    conversation.refresh_from_db()
    assert conversation.message_count == 1


def test_bad_request_writes_nothing(client, conversation):
    assert post(client, conversation.pk, "not json").status_code == 400
    assert post(client, conversation.pk, {"author": "ana"}).status_code == 400
    assert post(client, 999_999, {"author": "a", "text": "b"}).status_code == 404
    assert not OutboxMessage.objects.exists()
    conversation.refresh_from_db()
    assert conversation.message_count == 0


def test_the_handler_persists_history_once_per_event(client, conversation):
    response = post(client, conversation.pk, {"author": "ana", "text": "hi"})
    event = OutboxMessage.objects.get(pk=response.json()["outbox_id"]).event
    persist_chat_history(event)
    persist_chat_history(event)  # a repeated delivery
    (history,) = ChatHistory.objects.all()
    assert (history.author, history.text, history.event_id) == ("ana", "hi", event.event_id)


def test_a_marked_message_fails_in_the_handler_and_writes_nothing(client, conversation):
    from testproject.chat.events import FAIL_MARKER, DeliberateFailure

    response = post(client, conversation.pk, {"author": "ana", "text": f"boom {FAIL_MARKER}"})
    event = OutboxMessage.objects.get(pk=response.json()["outbox_id"]).event
    with pytest.raises(DeliberateFailure, match="deliberate failure"):
        persist_chat_history(event)
    assert not ChatHistory.objects.exists()
