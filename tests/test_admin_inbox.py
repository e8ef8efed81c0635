"""The consumer's tables in the admin: visible to operators, escaped, read-only."""

from __future__ import annotations

import uuid

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from django_outbox.models.inbox import InboxEntry, RejectedRecord, RejectionReason

pytestmark = pytest.mark.django_db


@pytest.fixture
def rejected():
    return RejectedRecord.objects.create(
        consumer_group="billing",
        reason=RejectionReason.MALFORMED,
        error="not valid JSON",
        topic="chat.messages",
        partition=2,
        offset=41,
        key="k",
        value="<script>alert(1)</script>",
        headers=[["trace", "<b>x</b>"]],
    )


def test_rejected_records_are_listed_and_shown_escaped(admin_client, rejected):
    listing = admin_client.get(reverse("admin:django_outbox_rejectedrecord_changelist"))
    assert listing.status_code == 200
    assert b"chat.messages" in listing.content
    detail = admin_client.get(
        reverse("admin:django_outbox_rejectedrecord_change", args=[rejected.pk])
    )
    assert detail.status_code == 200
    assert b"&lt;script&gt;alert(1)&lt;/script&gt;" in detail.content
    assert b"<script>alert(1)" not in detail.content
    assert b"&lt;b&gt;x&lt;/b&gt;" in detail.content


def test_filter_by_reason(admin_client, rejected):
    url = reverse("admin:django_outbox_rejectedrecord_changelist")
    assert admin_client.get(url, {"reason__exact": "malformed"}).context["cl"].result_count == 1
    assert (
        admin_client.get(url, {"reason__exact": "handler_failed"}).context["cl"].result_count == 0
    )


def test_inbox_entries_are_listed(admin_client):
    event_id = uuid.uuid4()
    InboxEntry.objects.create(
        consumer_group="billing",
        event_id=event_id,
        event_type="a.b",
        topic="t",
        partition=0,
        offset=1,
    )
    response = admin_client.get(
        reverse("admin:django_outbox_inboxentry_changelist"), {"q": str(event_id)}
    )
    assert response.status_code == 200
    assert response.context["cl"].result_count == 1


def test_nobody_adds_or_edits(admin_client, rejected):
    assert admin_client.get(reverse("admin:django_outbox_rejectedrecord_add")).status_code == 403
    detail = admin_client.post(
        reverse("admin:django_outbox_rejectedrecord_change", args=[rejected.pk]), {"error": "x"}
    )
    assert detail.status_code == 403
    rejected.refresh_from_db()
    assert rejected.error == "not valid JSON"
    delete = reverse("admin:django_outbox_rejectedrecord_delete", args=[rejected.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert RejectedRecord.objects.filter(pk=rejected.pk).exists()


def test_staff_without_view_permission_is_refused(client, rejected):
    user = User.objects.create_user("ops", password="pw", is_staff=True)
    client.force_login(user)
    url = reverse("admin:django_outbox_rejectedrecord_changelist")
    assert client.get(url).status_code == 403
    user.user_permissions.add(Permission.objects.get(codename="view_rejectedrecord"))
    client.force_login(User.objects.get(pk=user.pk))
    assert client.get(url).status_code == 200
