"""The demo project's chat app: posting a message writes business data and its event together."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from django_outbox.models import OutboxMessage
from django_outbox.testing import HandlerFailed, run_handlers
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


def test_posting_a_message_publishes_chat_message_created(client, conversation, outbox_events):
    response = post(client, conversation.pk, {"author": "ana", "text": "hello <b>"})
    assert response.status_code == 202
    published = outbox_events.assert_published(
        "chat.message.created",
        key=f"conversation-{conversation.pk}",
        topic="chat.messages",
        data={"text": "hello <b>"},
        count=1,
    )
    assert published.id == response.json()["outbox_id"]
    conversation.refresh_from_db()
    assert conversation.message_count == 1


def test_bad_request_writes_nothing(client, conversation, outbox_events):
    assert post(client, conversation.pk, "not json").status_code == 400
    assert post(client, conversation.pk, {"author": "ana"}).status_code == 400
    assert post(client, 999_999, {"author": "a", "text": "b"}).status_code == 404
    outbox_events.assert_nothing_published()
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


def test_a_marked_message_fails_in_the_handler_and_writes_nothing(
    client, conversation, outbox_events
):
    from testproject.chat.events import FAIL_MARKER

    post(client, conversation.pk, {"author": "ana", "text": f"boom {FAIL_MARKER}"})
    with pytest.raises(HandlerFailed, match=r"DeliberateFailure: the message contains \[fail\]"):
        run_handlers(outbox_events)  # through the consumer's code: the row counts an attempt
    assert not ChatHistory.objects.exists()
    assert OutboxMessage.objects.get(pk=outbox_events[0].id).retry_count == 1
