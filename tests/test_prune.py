"""``manage.py outbox_prune``: old final rows go, nothing in flight is touched."""

from __future__ import annotations

import datetime
import io

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from django_outbox.models import OutboxMessage, Status

from .relay_support import make_rows

pytestmark = pytest.mark.django_db(databases=["default", "other"])


def age(rows, status, days, using="default"):
    when = timezone.now() - datetime.timedelta(days=days)
    OutboxMessage.objects.using(using).filter(pk__in=[r.pk for r in rows]).update(
        status=status, updated_at=when
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
    from django_outbox.pruning import delete_chunk

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
