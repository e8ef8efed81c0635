"""The outbox admin, driven through the Django test client against the real database."""

from __future__ import annotations

import datetime
import json
import uuid
from typing import Any

import pytest
from django.contrib.admin import helpers
from django.contrib.auth.models import Permission, User
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_outbox.admin import counts as admin_counts
from django_outbox.admin.counts import OutboxPaginator, capped_count, summary
from django_outbox.admin.message_list import pending_state
from django_outbox.models import OutboxMessage, Status, lease_expiry, retry_time

pytestmark = pytest.mark.django_db

LIST_URL = reverse("admin:django_outbox_outboxmessage_changelist")


def detail_url(pk: int) -> str:
    return reverse("admin:django_outbox_outboxmessage_change", args=[pk])


def make(status: str = Status.PENDING, **fields: Any) -> OutboxMessage:
    event_id = fields.pop("event_id", uuid.uuid4())
    event_type = fields.pop("event_type", "chat.message.created")
    key = fields.pop("message_key", str(event_id))
    payload = fields.pop(
        "payload",
        json.dumps(
            {
                "event_id": str(event_id),
                "event_type": event_type,
                "version": 1,
                "occurred_at": "2026-11-27T19:00:00.000000Z",
                "key": key,
                "headers": {},
                "data": {"text": "hello"},
            },
            separators=(",", ":"),
        ),
    )
    return OutboxMessage.objects.create(
        event_type=event_type,
        topic=fields.pop("topic", "chat.messages"),
        message_key=key,
        payload=payload,
        status=status,
        **fields,
    )


@pytest.fixture
def rows() -> dict[str, OutboxMessage]:
    """One row in each state operators distinguish."""
    now = timezone.now()
    return {
        "ready": make(),
        "backing_off": make(retry_count=2, next_retry_at=retry_time(now, 3600), last_error="boom"),
        "in_flight": make(next_retry_at=lease_expiry(now, 3600)),
        "published": make(Status.PUBLISHED, published_at=now),
        "consumed": make(Status.CONSUMED, published_at=now, consumed_at=now),
        "dead": make(
            Status.DEAD,
            event_type="billing.invoice.paid",
            topic="billing",
            retry_count=20,
            last_error="broker said no",
        ),
    }


def user_with(*codenames: str, username: str = "operator") -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="django_outbox", codename__in=codenames)
    )
    return user


def client_for(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def listed_ids(response: Any) -> set[int]:
    return {row.pk for row in response.context["cl"].result_list}


def run_action(client: Client, action: str, rows: list[OutboxMessage], **extra: str) -> Any:
    data = {"action": action, "index": "0", helpers.ACTION_CHECKBOX_NAME: [r.pk for r in rows]}
    data.update(extra)
    return client.post(LIST_URL, data, follow=True)


def texts(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, str(m)) for m in get_messages(response.wsgi_request)]


# --------------------------------------------------------------------------- pure logic


def test_pending_state_follows_the_lease_and_backoff_rule():
    now = timezone.now()
    row = OutboxMessage(status=Status.PENDING)
    assert pending_state(row, now) == "ready"
    row.next_retry_at = now - datetime.timedelta(seconds=1)
    assert pending_state(row, now) == "ready"
    row.next_retry_at = lease_expiry(now, 30)
    assert pending_state(row, now) == "in_flight"
    row.next_retry_at = retry_time(now, 30)
    assert pending_state(row, now) == "scheduled"  # never tried, no error
    row.retry_count, row.last_error = 1, "boom"
    assert pending_state(row, now) == "backing_off"
    row.status = Status.DEAD
    assert pending_state(row, now) is None


# --------------------------------------------------------------------------- list


def test_list_shows_every_row_with_badges_and_summary(admin_client, rows):
    response = admin_client.get(LIST_URL)
    assert response.status_code == 200
    assert listed_ids(response) == {r.pk for r in rows.values()}
    html = response.content.decode()
    for css in ("ready", "backing-off", "in-flight", "published", "consumed", "dead"):
        assert f'class="outbox-badge outbox-{css}"' in html
    assert "2 / 20" in html  # retries / max of the backing-off row
    counts = {box.state: box.count for box in response.context["outbox_summary"].counts}
    assert counts == {
        "ready": 1,
        "scheduled": 0,
        "backing_off": 1,
        "in_flight": 1,
        "published": 1,
        "dead": 1,
        "consumed": 1,
    }
    assert response.context["outbox_summary"].oldest_due_id == rows["ready"].pk
    assert "6 outbox messages" in html


@pytest.mark.parametrize(
    "state", ["ready", "backing_off", "in_flight", "published", "consumed", "dead"]
)
def test_state_filter(admin_client, rows, state):
    response = admin_client.get(LIST_URL, {"state": state})
    assert listed_ids(response) == {rows[state].pk}


def test_status_event_type_and_topic_filters(admin_client, rows):
    pending = {rows[s].pk for s in ("ready", "backing_off", "in_flight")}
    assert listed_ids(admin_client.get(LIST_URL, {"status__exact": "pending"})) == pending
    assert listed_ids(admin_client.get(LIST_URL, {"status__exact": "dead"})) == {rows["dead"].pk}
    by_type = admin_client.get(LIST_URL, {"event_type": "billing.invoice.paid"})
    assert listed_ids(by_type) == {rows["dead"].pk}
    assert listed_ids(admin_client.get(LIST_URL, {"topic": "billing"})) == {rows["dead"].pk}
    # The choices come from settings, the registry and the newest rows.
    html = admin_client.get(LIST_URL).content.decode()
    assert "?event_type=billing.invoice.paid" in html and "?topic=billing" in html


def test_search_by_key_event_type_and_id(admin_client, rows):
    keyed = make(message_key="conversation-42")
    assert listed_ids(admin_client.get(LIST_URL, {"q": "conversation-42"})) == {keyed.pk}
    by_type = admin_client.get(LIST_URL, {"q": "billing.invoice.paid"})
    assert listed_ids(by_type) == {rows["dead"].pk}
    by_id = admin_client.get(LIST_URL, {"q": f"#{rows['consumed'].pk}"})
    assert listed_ids(by_id) == {rows["consumed"].pk}
    assert listed_ids(admin_client.get(LIST_URL, {"q": "no-such-key"})) == set()


def test_search_by_event_id_uses_the_key_then_the_payload(admin_client, rows):
    # The default key is the event id: found without reading payloads.
    event_id = rows["published"].message_key
    assert listed_ids(admin_client.get(LIST_URL, {"q": event_id.upper()})) == {rows["published"].pk}
    # A row with a custom key is found by the event id in its payload.
    hidden = uuid.uuid4()
    other = make(event_id=hidden, message_key="conversation-7")
    assert listed_ids(admin_client.get(LIST_URL, {"q": str(hidden)})) == {other.pk}
    assert listed_ids(admin_client.get(LIST_URL, {"q": str(uuid.uuid4())})) == set()


def test_search_with_many_matches_keeps_the_plain_filter(admin_client, monkeypatch):
    monkeypatch.setattr("django_outbox.admin.message_list.SEARCH_IDS", 2)
    made = {make(event_type="bulk.type").pk for _ in range(3)}
    assert listed_ids(admin_client.get(LIST_URL, {"q": "bulk.type"})) == made


# --------------------------------------------------------------------------- detail


def test_detail_is_read_only_and_pretty(admin_client, rows):
    row = rows["dead"]
    response = admin_client.get(detail_url(row.pk))
    assert response.status_code == 200
    html = response.content.decode()
    assert '<pre class="outbox-pre">{\n  &quot;event_id&quot;' in html
    assert "broker said no" in html
    assert 'name="_save"' not in html and "<textarea" not in html
    assert response.context["adminform"].form.fields == {}  # every field is read-only
    # No free editing, no adding, no deleting.
    assert admin_client.post(detail_url(row.pk), {"status": "pending"}).status_code == 403
    add = reverse("admin:django_outbox_outboxmessage_add")
    assert admin_client.get(add).status_code == 403
    delete = reverse("admin:django_outbox_outboxmessage_delete", args=[row.pk])
    assert admin_client.get(delete).status_code == 403
    row.refresh_from_db()
    assert row.status == Status.DEAD


def test_detail_shows_a_payload_that_is_not_json_as_text(admin_client):
    row = make(payload="not json <b>")
    html = admin_client.get(detail_url(row.pk)).content.decode()
    assert "not valid JSON" in html and "not json &lt;b&gt;" in html


def test_script_in_payload_key_and_error_is_shown_as_text(admin_client):
    script = "<script>alert(1)</script>"
    row = make(
        message_key=script,
        event_type=script,
        status=Status.DEAD,
        last_error=script,
        payload=json.dumps({"event_id": script, "data": script}),
    )
    for url in (LIST_URL, detail_url(row.pk)):
        html = admin_client.get(url).content.decode()
        assert script not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


# --------------------------------------------------------------------------- actions


def history(row: OutboxMessage) -> list[str]:
    """The change messages Django's LogEntry holds for ``row``, oldest first."""
    from django.contrib.admin.models import LogEntry
    from django.contrib.contenttypes.models import ContentType

    entries = LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(OutboxMessage), object_id=str(row.pk)
    ).order_by("pk")
    return [entry.get_change_message() for entry in entries]


def test_retry_now(admin_client, admin_user, rows):
    before = timezone.now()
    response = run_action(admin_client, "retry_now", list(rows.values()))
    assert texts(response) == [("success", "3 outbox messages will be retried now.")]
    for name in ("ready", "backing_off", "dead"):
        row = OutboxMessage.objects.get(pk=rows[name].pk)
        assert row.status == Status.PENDING and row.retry_count == 0
        assert pending_state(row, timezone.now()) == "ready"
        assert row.updated_at >= before.replace(microsecond=before.microsecond // 1000 * 1000)
        assert row.last_error == rows[name].last_error  # no note in the data any more
        [message] = history(row)
        assert message.startswith(f"Retry requested (was {rows[name].status},")
    dead = OutboxMessage.objects.get(pk=rows["dead"].pk)
    assert history(dead) == ["Retry requested (was dead, 20/20 retries)."]
    from django.contrib.admin.models import LogEntry

    assert set(LogEntry.objects.values_list("user_id", flat=True)) == {admin_user.pk}
    for name in ("in_flight", "published", "consumed"):
        row = OutboxMessage.objects.get(pk=rows[name].pk)
        assert (row.status, row.next_retry_at, row.last_error) == (
            rows[name].status,
            rows[name].next_retry_at,
            rows[name].last_error,
        )
        assert history(row) == []


def test_retry_now_warns_when_nothing_changed(admin_client, rows):
    response = run_action(admin_client, "retry_now", [rows["in_flight"], rows["consumed"]])
    [(level, text)] = texts(response)
    assert level == "warning" and text.startswith("No message was retried")


def test_give_up(admin_client, admin_user, rows):
    response = run_action(admin_client, "give_up", list(rows.values()))
    assert texts(response) == [("success", "2 outbox messages are now dead.")]
    row = OutboxMessage.objects.get(pk=rows["backing_off"].pk)
    assert row.status == Status.DEAD
    assert row.last_error == "boom"
    assert history(row) == ["Given up (was pending, 2/20 retries)."]
    assert OutboxMessage.objects.get(pk=rows["in_flight"].pk).status == Status.PENDING
    assert OutboxMessage.objects.dead().count() == 3
    response = run_action(admin_client, "give_up", [rows["consumed"]])
    assert texts(response)[0][0] == "warning"


def test_redeliver_asks_first(admin_client, rows):
    response = run_action(admin_client, "redeliver", list(rows.values()))
    assert response.status_code == 200
    assert "Their handlers will run again." in response.content.decode()
    assert response.context["count"] == 2
    assert OutboxMessage.objects.consumed().count() == 1  # nothing changed yet

    response = run_action(admin_client, "redeliver", list(rows.values()), post="yes")
    [(level, text)] = texts(response)
    assert level == "success" and text.startswith("2 outbox messages will be delivered again")
    for name in ("published", "consumed"):
        row = OutboxMessage.objects.get(pk=rows[name].pk)
        assert row.status == Status.PENDING and row.retry_count == 0
        assert history(row) == [f"Delivery requested again (was {rows[name].status})."]
    assert OutboxMessage.objects.get(pk=rows["dead"].pk).status == Status.DEAD


def test_redeliver_with_nothing_to_deliver(admin_client, rows):
    response = run_action(admin_client, "redeliver", [rows["dead"]])
    assert "nothing to deliver again" in response.content.decode()
    response = run_action(admin_client, "redeliver", [rows["dead"]], post="yes")
    assert texts(response)[0][0] == "warning"


def test_actions_across_all_pages(admin_client, rows):
    response = run_action(
        admin_client, "retry_now", [rows["dead"]], select_across="1", state="dead"
    )
    assert texts(response)[0][0] == "success"
    assert not OutboxMessage.objects.dead().exists()


# --------------------------------------------------------------------------- permissions


def test_staff_without_view_permission_is_refused(rows):
    client = client_for(user_with())
    assert client.get(LIST_URL).status_code == 403
    assert client.get(detail_url(rows["dead"].pk)).status_code == 403


def test_view_permission_shows_but_cannot_act(rows):
    client = client_for(user_with("view_outboxmessage"))
    response = client.get(LIST_URL)
    assert response.status_code == 200
    assert response.context["action_form"] is None  # no action offered
    assert client.get(detail_url(rows["dead"].pk)).status_code == 200
    for action in ("retry_now", "give_up", "redeliver"):
        run_action(client, action, list(rows.values()), post="yes")
    assert OutboxMessage.objects.dead().count() == 1
    assert OutboxMessage.objects.consumed().count() == 1
    assert OutboxMessage.objects.get(pk=rows["dead"].pk).last_error == "broker said no"


@pytest.mark.parametrize(
    ("codename", "allowed"),
    [
        ("retry_outboxmessage", "retry_now"),
        ("give_up_outboxmessage", "give_up"),
        ("redeliver_outboxmessage", "redeliver"),
        ("release_key_outboxmessage", "release_key"),
    ],
)
def test_each_action_has_its_own_permission(rows, codename, allowed):
    client = client_for(user_with("view_outboxmessage", codename))
    choices = dict(client.get(LIST_URL).context["action_form"].fields["action"].choices)
    assert set(choices) - {""} == {allowed}


def test_retry_permission_alone_cannot_redeliver_or_give_up(rows):
    client = client_for(user_with("view_outboxmessage", "retry_outboxmessage"))
    run_action(client, "redeliver", [rows["consumed"]], post="yes")
    assert OutboxMessage.objects.get(pk=rows["consumed"].pk).status == Status.CONSUMED
    run_action(client, "give_up", [rows["ready"]])
    assert OutboxMessage.objects.get(pk=rows["ready"].pk).status == Status.PENDING
    run_action(client, "retry_now", [rows["dead"]])
    assert OutboxMessage.objects.get(pk=rows["dead"].pk).status == Status.PENDING


def test_change_permission_alone_runs_no_action(rows):
    client = client_for(user_with("view_outboxmessage", "change_outboxmessage"))
    assert client.get(LIST_URL).context["action_form"] is None
    run_action(client, "retry_now", [rows["dead"]])
    assert OutboxMessage.objects.get(pk=rows["dead"].pk).status == Status.DEAD


def test_non_staff_is_sent_to_the_login_page(rows):
    user = User.objects.create_user("outsider", password="pw")
    response = client_for(user).get(LIST_URL)
    assert response.status_code == 302 and "/login/" in response["Location"]


# --------------------------------------------------------------------------- counting


def test_counts_stop_at_the_cap(admin_client, rows, monkeypatch):
    monkeypatch.setattr(admin_counts, "COUNT_CAP", 2)
    assert capped_count(OutboxMessage.objects.all(), cap=2) == 3
    paginator = OutboxPaginator(OutboxMessage.objects.pending().order_by("-pk"), 100)
    assert paginator.count == 3 and not paginator.count_is_exact
    assert paginator.count_text == "more than 2"
    dead = OutboxPaginator(OutboxMessage.objects.dead().order_by("-pk"), 100)
    assert (dead.count, dead.count_is_exact, dead.count_text) == (1, True, "1")
    boxes = {
        box.state: (box.count, box.exact) for box in summary(OutboxMessage.objects.all()).counts
    }
    assert boxes["dead"] == (1, True)
    html = admin_client.get(LIST_URL, {"status__exact": "pending"}).content.decode()
    assert "more than 2 outbox messages" in html


def test_unfiltered_count_uses_the_estimate(rows, monkeypatch):
    monkeypatch.setattr(admin_counts, "COUNT_CAP", 2)
    monkeypatch.setattr(admin_counts, "table_estimate", lambda using: 1_000_000)
    paginator = OutboxPaginator(OutboxMessage.objects.order_by("-pk"), 100)
    assert (paginator.count, paginator.count_text) == (1_000_000, "about 1,000,000")


def test_table_estimate_reads_the_catalogue(vendor):
    estimate = admin_counts.table_estimate("default")
    if vendor == "sqlite":
        assert estimate is None
    else:
        assert estimate is None or estimate >= 0
