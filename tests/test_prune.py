"""``manage.py outbox_prune``: old final rows go, nothing in flight is touched."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_outbox.models import OutboxMessage, Status

from .relay_support import make_rows

pytestmark = pytest.mark.django_db(databases=["default", "other"])


def age(rows, status, days, using="default"):
    """Rows created and last changed ``days`` ago."""
    when = timezone.now() - datetime.timedelta(days=days)
    OutboxMessage.objects.using(using).filter(pk__in=[r.pk for r in rows]).update(
        status=status, created_at=when, updated_at=when
    )


@pytest.fixture
def rows():
    made = {
        name: make_rows(3, "t")
        for name in ("old_consumed", "new_consumed", "old_dead", "old_pending", "old_published")
    }
    age(made["old_consumed"], Status.CONSUMED, 40)
    age(made["new_consumed"], Status.CONSUMED, 1)
    age(made["old_dead"], Status.DEAD, 40)
    age(made["old_pending"], Status.PENDING, 40)
    age(made["old_published"], Status.PUBLISHED, 40)
    return made


def remaining(rows):
    left = set(OutboxMessage.objects.values_list("pk", flat=True))
    return {name for name, group in rows.items() if {r.pk for r in group} <= left}


def prune(*args):
    out = io.StringIO()
    call_command("outbox_prune", *args, stdout=out)
    return out.getvalue()


def test_old_consumed_rows_go_and_nothing_else(rows):
    assert "deleted 3 consumed row(s) older than 30 days" in prune("--days", "30")
    assert remaining(rows) == {"new_consumed", "old_dead", "old_pending", "old_published"}


def test_dead_rows_only_when_asked(rows):
    assert "deleted 6 consumed/dead row(s)" in prune("--days", "30", "--dead")
    assert remaining(rows) == {"new_consumed", "old_pending", "old_published"}


def test_dry_run_deletes_nothing(rows):
    assert "would delete 6 consumed/dead row(s)" in prune("--days", "30", "--dead", "--dry-run")
    assert remaining(rows) == set(rows)


def test_chunks_cover_everything():
    group = make_rows(7, "t")
    age(group, Status.CONSUMED, 10)
    cutoff = timezone.now() - datetime.timedelta(days=5)
    assert OutboxMessage.objects.prune(cutoff, chunk=3) == 7
    assert not OutboxMessage.objects.exists()


def test_pending_never_goes_even_if_asked():
    group = make_rows(2, "t")
    age(group, Status.PENDING, 10)
    cutoff = timezone.now()
    assert OutboxMessage.objects.prune(cutoff, statuses=(Status.PENDING,)) == 0
    assert OutboxMessage.objects.count() == 2


def test_old_published_rows_only_when_asked(rows):
    assert "deleted 6 consumed/published row(s)" in prune("--days", "30", "--published")
    assert remaining(rows) == {"new_consumed", "old_dead", "old_pending"}


def test_a_row_that_changed_after_it_was_listed_stays():
    from django_outbox.models.pruning import delete_chunk

    group = make_rows(3, "t")
    age(group, Status.CONSUMED, 10)
    rows = OutboxMessage.objects.finished_before(timezone.now() - datetime.timedelta(days=5))
    ids = list(rows.values_list("pk", flat=True))
    # An operator delivers one again between the listing and the delete.
    OutboxMessage.objects.filter(pk=ids[0]).update(status=Status.PENDING)
    assert delete_chunk(rows, ids) == 2
    assert list(OutboxMessage.objects.values_list("pk", flat=True)) == [ids[0]]


def test_other_database(settings):
    group = make_rows(2, "t", using="other")
    age(group, Status.CONSUMED, 10, using="other")
    assert "other: deleted 2" in prune("--days", "5", "--database", "other")
    assert not OutboxMessage.objects.using("other").exists()


def test_bad_arguments_are_refused():
    with pytest.raises(CommandError, match="must not be negative"):
        prune("--days", "-1")
    with pytest.raises(CommandError, match="unknown database alias"):
        prune("--days", "1", "--database", "nowhere")


def test_the_walk_stops_at_the_first_window_of_young_rows():
    """Rows are created in id order: prune reads nothing past a window of young rows.

    The rows after that window claim an old last change although they are young
    (which real rows cannot: updated_at follows created_at), so only the stop keeps
    them.
    """
    old = make_rows(4, "t")
    age(old, Status.CONSUMED, 10)
    young = make_rows(2, "t")
    OutboxMessage.objects.filter(pk__in=[r.pk for r in young]).update(status=Status.CONSUMED)
    beyond = make_rows(4, "t")
    when = timezone.now() - datetime.timedelta(days=10)
    OutboxMessage.objects.filter(pk__in=[r.pk for r in beyond]).update(
        status=Status.CONSUMED, updated_at=when
    )
    cutoff = timezone.now() - datetime.timedelta(days=5)
    assert OutboxMessage.objects.count_prunable(cutoff, chunk=2) == 4
    with CaptureQueriesContext(connections["default"]) as captured:
        assert OutboxMessage.objects.prune(cutoff, chunk=2) == 4
    assert set(OutboxMessage.objects.values_list("pk", flat=True)) == {r.pk for r in young + beyond}
    # The first id, two windows of old rows (listed, deleted), then the young window
    # (listed: none; any row there? any old one?): the walk ends there.
    assert len(captured) == 8, [q["sql"] for q in captured.captured_queries]


def test_a_young_row_among_old_ones_does_not_stop_the_walk():
    """Creation times out of id order (clocks apart) only stop it by a whole window."""
    rows = make_rows(6, "t")
    age(rows, Status.CONSUMED, 10)
    OutboxMessage.objects.filter(pk=rows[1].pk).update(
        created_at=timezone.now() + datetime.timedelta(days=365)
    )
    cutoff = timezone.now() - datetime.timedelta(days=5)
    assert OutboxMessage.objects.prune(cutoff, chunk=2) == 6


def test_gaps_in_the_ids_are_jumped():
    rows = make_rows(12, "t")
    age(rows, Status.CONSUMED, 10)
    OutboxMessage.objects.filter(pk__in=[r.pk for r in rows[2:9]]).delete()
    cutoff = timezone.now() - datetime.timedelta(days=5)
    assert (
        OutboxMessage.objects.count_prunable(
            cutoff,
        )
        == 5
    )
    assert OutboxMessage.objects.prune(cutoff, chunk=2) == 5
    assert not OutboxMessage.objects.exists()


def test_stale_claim_fences_go_a_live_claim_keeps_its_own():
    from django_outbox.models.claiming import claim, record_published
    from django_outbox.models.fencing import ClaimFence

    dead_relay, live = make_rows(2, "t")
    claim("default", 1, 30)  # a relay that took the first row and died
    ClaimFence.objects.filter(outbox_id=dead_relay.pk).update(
        claimed_at=timezone.now() - datetime.timedelta(days=2)
    )
    batch = claim("default", 1, 30)
    assert "would delete 1 stale claim fence(s)" in prune("--days", "0", "--dry-run")
    assert "deleted 1 stale claim fence(s)" in prune("--days", "0")
    # --days 0 does not take a fence younger than any lease: the live claim still writes back
    assert list(ClaimFence.objects.values_list("outbox_id", flat=True)) == [live.pk]
    assert record_published(batch, [live.pk]) == 1
