"""Scheduled rows in the admin: their state, "Send now" and "Cancel" (docs/scheduling.rst)."""

from __future__ import annotations

import datetime

import pytest
from django.utils import timezone

from django_outbox import publish_event
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.ordering import ReleasedRow

from .test_admin import (
    LIST_URL,
    client_for,
    history,
    listed_ids,
    make,
    run_action,
    texts,
    user_with,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def quiet(settings):
    settings.OUTBOX_WAKE_RELAY = False


def scheduled(minutes: float = 30, **kwargs) -> OutboxMessage:
    return publish_event(
        "chat.message.created", {}, delay=datetime.timedelta(minutes=minutes), **kwargs
    )


def backing_off() -> OutboxMessage:
    return make(
        retry_count=1,
        last_error="boom",
        next_retry_at=timezone.now() + datetime.timedelta(minutes=5, milliseconds=7),
    )


def test_badge_filter_and_summary_show_scheduled(admin_client):
    row, other = scheduled(), backing_off()
    response = admin_client.get(LIST_URL)
    html = response.content.decode()
    assert 'class="outbox-badge outbox-scheduled"' in html
    assert 'class="outbox-badge outbox-backing-off"' in html
    counts = {box.state: box.count for box in response.context["outbox_summary"].counts}
    assert counts["scheduled"] == 1 and counts["backing_off"] == 1
    assert listed_ids(admin_client.get(LIST_URL, {"state": "scheduled"})) == {row.pk}
    assert listed_ids(admin_client.get(LIST_URL, {"state": "backing_off"})) == {other.pk}


def test_send_now_makes_it_due_without_touching_the_retry_budget(admin_client):
    row, other = scheduled(), backing_off()
    response = run_action(admin_client, "send_now", [row, other])
    assert texts(response) == [("success", "1 scheduled message will be sent now.")]
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert stored.status == Status.PENDING and stored.retry_count == 0
    assert stored.last_error is None and stored.max_retry == row.max_retry
    assert OutboxMessage.objects.due().filter(pk=row.pk).exists()
    assert stored.next_retry_at.microsecond != 0  # not taken for a lease
    assert history(row)[0].startswith("Sent now (was scheduled for ")
    assert history(other) == []
    assert OutboxMessage.objects.get(pk=other.pk).next_retry_at == other.next_retry_at


def test_cancel_marks_it_dead_with_who_and_logs_it(admin_client):
    row, other = scheduled(), make()
    response = run_action(admin_client, "cancel_scheduled", [row, other])
    assert texts(response) == [("success", "1 scheduled message was cancelled (now dead).")]
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert stored.status == Status.DEAD and stored.next_retry_at is None
    assert stored.last_error == "cancelled by admin (admin)"
    assert history(row)[0].startswith("Cancelled (was scheduled for ")
    assert OutboxMessage.objects.get(pk=other.pk).status == Status.PENDING
    assert not ReleasedRow.objects.exists()  # strict order is off: no key to release


def test_cancel_in_strict_order_releases_the_key(admin_client, settings):
    settings.OUTBOX_STRICT_ORDER = True
    row = scheduled(key="k")
    run_action(admin_client, "cancel_scheduled", [row])
    assert ReleasedRow.objects.get().outbox_id == row.pk


@pytest.mark.parametrize("action", ["send_now", "cancel_scheduled"])
def test_nothing_scheduled_is_a_warning(admin_client, action):
    due = make()
    dead = make(Status.DEAD, last_error="no")
    response = run_action(admin_client, action, [due, dead, backing_off()])
    ((level, text),) = texts(response)
    assert level == "warning" and "only scheduled messages" in text
    assert OutboxMessage.objects.get(pk=due.pk).status == Status.PENDING


def test_a_scheduled_row_is_not_retried_or_given_up(admin_client):
    row = scheduled()
    run_action(admin_client, "retry_now", [row])
    run_action(admin_client, "give_up", [row])
    stored = OutboxMessage.objects.get(pk=row.pk)
    assert stored.status == Status.PENDING and stored.next_retry_at == row.next_retry_at


@pytest.mark.parametrize(
    ("codename", "allowed"),
    [("send_now_outboxmessage", "send_now"), ("cancel_outboxmessage", "cancel_scheduled")],
)
def test_each_action_has_its_own_permission(codename, allowed):
    client = client_for(user_with("view_outboxmessage", codename))
    row = scheduled()
    choices = dict(client.get(LIST_URL).context["action_form"].fields["action"].choices)
    assert set(choices) - {""} == {allowed}
    other = {"send_now": "cancel_scheduled", "cancel_scheduled": "send_now"}[allowed]
    run_action(client, other, [row])
    assert OutboxMessage.objects.get(pk=row.pk).next_retry_at == row.next_retry_at
