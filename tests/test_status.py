"""``manage.py outbox_status``: the figures per database, the thresholds, the plans."""

from __future__ import annotations

import datetime
import io
import json

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_outbox.models import OutboxMessage, Status, lease_expiry, retry_time
from django_outbox.ops.status import database_status, duration

from .test_admin import make

pytestmark = pytest.mark.django_db(databases=["default", "other"])


def status(*args: str) -> str:
    out = io.StringIO()
    call_command("outbox_status", *args, stdout=out)
    return out.getvalue()


def age(row: OutboxMessage, **fields: datetime.datetime) -> None:
    OutboxMessage.objects.filter(pk=row.pk).update(**fields)


@pytest.fixture
def rows() -> dict[str, OutboxMessage]:
    now = timezone.now()
    hour_ago = now - datetime.timedelta(hours=2)
    made = {
        "ready_old": make(),
        "ready_new": make(),
        "ready_retried": make(retry_count=1, next_retry_at=retry_time(now, -30)),
        "backing_off": make(retry_count=2, next_retry_at=retry_time(now, 3600)),
        "in_flight": make(next_retry_at=lease_expiry(now, 3600)),
        "published_old": make(Status.PUBLISHED, published_at=hour_ago),
        "published_new": make(Status.PUBLISHED, published_at=now),
        "consumed": make(Status.CONSUMED, event_type="billing.invoice.paid"),
        "dead_new": make(Status.DEAD, event_type="billing.invoice.paid"),
        "dead_old": make(Status.DEAD),
    }
    age(made["ready_old"], created_at=now - datetime.timedelta(seconds=600))
    age(made["dead_old"], updated_at=hour_ago)
    return made


def test_counts_per_status_and_pending_state(rows):
    db = database_status("default")
    assert db.statuses == {"pending": 5, "published": 2, "consumed": 1, "dead": 2}
    assert db.pending == {"ready": 3, "scheduled": 0, "backing_off": 1, "in_flight": 1}
    assert db.total == 10
    assert db.dead_recently == 1
    assert db.published_older == 1
    assert db.oldest_due_id == rows["ready_old"].pk
    assert db.oldest_due_age is not None and 590 < db.oldest_due_age < 700
    assert db.by_type is None


def test_by_type(rows):
    db = database_status("default", by_type=True)
    assert db.by_type == {
        "billing.invoice.paid": {"consumed": 1, "dead": 1},
        "chat.message.created": {"pending": 5, "published": 2, "dead": 1},
    }
    text = status("--by-type")
    assert "billing.invoice.paid  consumed 1, dead 1" in text


def test_published_threshold_is_an_option(rows):
    assert database_status("default", published_older_than=4 * 3600).published_older == 0
    assert database_status("default", published_older_than=0).published_older == 2
    assert "2 published more than 0 s ago" in status("--published-older-than", "0")


def test_human_output(rows):
    text = status()
    assert text.startswith(f"default ({connections['default'].vendor}): 10 row(s)")
    assert "ready 3, scheduled 0, backing off 1, in flight 1" in text
    assert "1 in the last hour" in text
    assert f"oldest due: #{rows['ready_old'].pk}, waiting 10 min" in text


def test_json_output_per_alias(rows):
    document = json.loads(status("--json", "--database", "default", "--database", "other"))
    default, other = document["databases"]
    assert default["alias"] == "default" and default["total"] == 10
    assert default["pending"]["in_flight"] == 1
    assert other["alias"] == "other" and other["total"] == 0 and other["oldest_due_id"] is None
    assert document["problems"] == []


def test_outbox_databases_setting_is_the_default(rows, settings):
    settings.OUTBOX_DATABASES = ["default", "other"]
    assert [db["alias"] for db in json.loads(status("--json"))["databases"]] == [
        "default",
        "other",
    ]


def test_fail_if_oldest_exits_2(rows):
    status("--fail-if-oldest", "3600")  # 10 minutes is fine
    with pytest.raises(CommandError) as caught:
        status("--fail-if-oldest", "60")
    assert caught.value.returncode == 2
    assert f"oldest due row (#{rows['ready_old'].pk})" in str(caught.value)


def test_fail_if_dead_exits_2_and_still_prints(rows):
    status("--fail-if-dead", "1")  # one died in the last hour: not more than 1
    out = io.StringIO()
    with pytest.raises(CommandError) as caught:
        call_command("outbox_status", "--json", "--fail-if-dead", "0", stdout=out)
    assert caught.value.returncode == 2
    assert json.loads(out.getvalue())["problems"] == [str(caught.value)]


def test_nothing_due_passes_any_threshold():
    make(Status.CONSUMED)
    assert "oldest due: none" in status("--fail-if-oldest", "0", "--fail-if-dead", "0")


def test_unknown_alias_and_bad_numbers():
    with pytest.raises(CommandError, match="unknown database alias"):
        status("--database", "nope")
    with pytest.raises(CommandError, match="must be non-negative"):
        status("--fail-if-dead", "-1")
    with pytest.raises(CommandError, match="is not a number"):
        status("--fail-if-oldest", "soon")


def test_duration():
    assert [duration(s) for s in (5, 65, 3725, 200000)] == [
        "5 s",
        "1 min 5 s",
        "1 h 2 min",
        "2 d 7 h",
    ]


def test_every_query_can_use_the_index(rows, vendor):
    """On PostgreSQL with sequential scans priced out, no query plans one on the outbox."""
    if vendor != "postgresql":
        pytest.skip("the plan check uses PostgreSQL's enable_seqscan")
    connection = connections["default"]
    with CaptureQueriesContext(connection) as captured:
        database_status("default")
        database_status("default", by_type=True)
    assert len(captured) >= 16
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        for query in captured.captured_queries:
            if "django_outbox_relay_" in query["sql"]:
                continue  # the relay buckets: at most 64 rows, read whole
            cursor.execute(f"EXPLAIN {query['sql']}")
            plan = "\n".join(line for (line,) in cursor.fetchall())
            assert "Seq Scan" not in plan, f"{query['sql']}\n{plan}"


def test_consumed_rows_past_the_cap_come_from_the_table_estimate(rows, monkeypatch):
    """Flat cost: past COUNT_CAP consumed rows, the database's own estimate, minus the rest."""
    from django_outbox.models import counting

    for _ in range(3):
        make(Status.CONSUMED)
    monkeypatch.setattr(counting, "COUNT_CAP", 2)
    monkeypatch.setattr(counting, "table_estimate", lambda using: 1_000)
    db = database_status("default")
    assert db.statuses == {"pending": 5, "published": 2, "consumed": 991, "dead": 2}
    assert db.consumed_exact is False and db.total == 1_000
    text = status()
    assert "about 1,000 row(s)" in text and "consumed           ~991" in text
    assert json.loads(status("--json"))["databases"][0]["consumed_exact"] is False
    # Without an estimate (SQLite keeps none): "more than the cap".
    monkeypatch.setattr(counting, "table_estimate", lambda using: None)
    assert "consumed            > 2" in status()
    # --exact (and --by-type) count them all.
    exact = database_status("default", exact=True)
    assert exact.statuses["consumed"] == 4 and exact.consumed_exact is True
    assert "consumed              4" in status("--exact")
    assert database_status("default", by_type=True).statuses["consumed"] == 4


def test_few_consumed_rows_are_counted_exactly(rows, monkeypatch):
    from django_outbox.models import counting

    monkeypatch.setattr(counting, "table_estimate", lambda using: pytest.fail("not needed"))
    db = database_status("default")
    assert db.statuses["consumed"] == 1 and db.consumed_exact is True
