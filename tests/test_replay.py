"""``manage.py outbox_replay`` against the real broker and database: one group handles
the history again, once per run; runs are recorded and resumable; archives round-trip."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import sys

import pytest
from django.core.management import CommandError, call_command
from django.urls import reverse

from django_outbox import publish_event
from django_outbox.consumer.inbox import replay_inbox_key
from django_outbox.envelope import HEADER_REPLAY_RUN
from django_outbox.history import replay
from django_outbox.history.selection import Selection
from django_outbox.models import InboxEntry, OutboxMessage, ReplayRun, RunState, Status
from django_outbox.shutdown import Shutdown
from testproject.chat.models import Conversation

from .consumer_support import COUNTER, consume, count_handler, registered, send_raw, unique_group
from .kafka_fixtures import read_topic, topic_record_count
from .relay_support import REPO_ROOT, database_url
from .test_admin import detail_url
from .test_admin_journey import titles

pytestmark = [pytest.mark.kafka, pytest.mark.django_db(transaction=True)]

ROWS = 4


@pytest.fixture(autouse=True)
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_WAKE_RELAY = False
    return settings


@pytest.fixture
def counted():
    with registered(COUNTER, count_handler):
        yield


class History:
    """``ROWS`` events published by the relay, handled by group ``a`` (which owns the
    rows) and group ``b`` (through its inbox): each effect counted on ``conversation``."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.conversation = Conversation.objects.create(title="replay tests")
        self.a, self.b = unique_group(), unique_group()
        self.rows = [
            publish_event(COUNTER, {"conversation_id": self.conversation.pk, "n": i}, key=f"k{i}")
            for i in range(ROWS)
        ]
        call_command("outbox_relay", "--burst", verbosity=0)
        assert self.effect_of(self.a) == ROWS
        assert self.effect_of(self.b) == ROWS
        assert OutboxMessage.objects.consumed().count() == ROWS

    def count(self) -> int:
        self.conversation.refresh_from_db()
        return self.conversation.message_count

    def consume(self, group: str):
        return consume(self.topic, group, owning_group=self.a)

    def effect_of(self, group: str) -> int:
        """How many effects one burst of ``group`` adds."""
        before = self.count()
        self.last = self.consume(group)
        return self.count() - before


@pytest.fixture
def history(kafka_topic, counted):
    return History(kafka_topic)


def replay_command(*args: str) -> str:
    out = io.StringIO()
    call_command("outbox_replay", *args, "--operator", "tests", stdout=out, verbosity=0)
    return out.getvalue()


def replayed_records(bootstrap: str, topic: str, expected: int):
    records = read_topic(bootstrap, topic, ROWS + expected)
    return [r for r in records if any(name == HEADER_REPLAY_RUN for name, _ in r.headers)]


def test_dry_run_counts_and_sends_nothing(kafka_bootstrap, kafka_topic, history):
    before = topic_record_count(kafka_bootstrap, kafka_topic)
    out = replay_command("--dry-run", "--all-groups", "--key", "k1", "--key", "k2")
    assert "2 row(s) of table:default match" in out
    assert f"#{history.rows[1].pk} " in out and "nothing sent" in out
    assert topic_record_count(kafka_bootstrap, kafka_topic) == before
    assert ReplayRun.objects.count() == 0
    out = replay_command("--dry-run", "--all-groups", "--status", "dead")
    assert "no row of table:default matches" in out


def test_replay_for_one_group_runs_once_there_and_nowhere_else(
    kafka_bootstrap, kafka_topic, history
):
    out = replay_command("--group", history.b)
    run = ReplayRun.objects.get()
    assert f"replay run {run.pk} done: {ROWS} record(s) sent again" in out
    assert (run.state, run.sent, run.matched, run.target_group) == (
        RunState.DONE,
        ROWS,
        ROWS,
        history.b,
    )
    assert run.operator == "tests" and run.last_id == history.rows[-1].pk

    assert history.effect_of(history.a) == 0  # another group's replay: acknowledged, unrun
    assert history.last.stats.outcomes == {"skipped": ROWS}
    assert history.effect_of(history.b) == ROWS  # G handles it again, once
    assert history.last.stats.outcomes == {"handled": ROWS}
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.CONSUMED}

    # The replayed records delivered again (a redelivery): still once.
    records = replayed_records(kafka_bootstrap, kafka_topic, ROWS)
    assert len(records) == ROWS
    send_raw(kafka_bootstrap, kafka_topic, [(r.key, r.value, r.headers) for r in records])
    assert history.effect_of(history.b) == 0
    assert history.last.stats.outcomes == {"duplicate": ROWS}
    assert history.effect_of(history.a) == 0


def test_replay_for_the_group_that_owns_the_rows_leaves_them_alone(history):
    replay_command("--group", history.a, "--id", str(history.rows[0].pk))
    assert history.effect_of(history.b) == 0
    assert history.effect_of(history.a) == 1  # through the inbox, not the consumed row
    assert InboxEntry.objects.filter(consumer_group=history.a).count() == 1
    assert OutboxMessage.objects.consumed().count() == ROWS


def test_all_groups_replay_runs_once_in_every_group_and_again_on_a_second_run(history):
    replay_command("--all-groups", "--event-type", COUNTER)
    assert history.effect_of(history.a) == ROWS
    assert history.effect_of(history.b) == ROWS
    replay_command("--all-groups", "--id", str(history.rows[0].pk))  # a new run: once more
    assert history.effect_of(history.b) == 1
    assert ReplayRun.objects.count() == 2


def test_an_interrupted_run_resumes_after_its_last_acknowledged_row(
    kafka_bootstrap, kafka_topic, history
):
    run = ReplayRun.objects.create(
        operator="tests", target_group=history.b, source="table:default", matched=ROWS
    )
    shutdown = Shutdown(signals=())
    replayer = replay.Replayer(
        run,
        replay.table_source(Selection(), "default"),
        batch_size=3,
        shutdown=shutdown,
        progress=lambda run: shutdown.request(),  # a SIGTERM after the first batch
    )
    with pytest.raises(replay.ReplayStopped, match=f"--resume {run.pk}"):
        replayer.run()
    run.refresh_from_db()
    assert (run.state, run.sent, run.last_id) == (RunState.INTERRUPTED, 3, history.rows[2].pk)

    out = replay_command("--resume", str(run.pk))
    assert "resumed" in out and f"replay run {run.pk} done" in out
    run.refresh_from_db()
    assert (run.state, run.sent) == (RunState.DONE, ROWS)
    assert len(replayed_records(kafka_bootstrap, kafka_topic, ROWS)) == ROWS  # none twice
    assert history.effect_of(history.b) == ROWS
    with pytest.raises(CommandError, match="done already"):
        replay_command("--resume", str(run.pk))


def test_archive_round_trip(tmp_path, history):
    archive = tmp_path / "outbox.jsonl.gz"
    out = io.StringIO()
    call_command("outbox_prune", "--days", "0", "--archive", str(archive), stdout=out)
    assert f"archived to {archive} and deleted {ROWS}" in out.getvalue()
    assert OutboxMessage.objects.count() == 0
    with gzip.open(archive, "rt") as lines:
        kept = [json.loads(line) for line in lines]
    assert [row["id"] for row in kept] == [row.pk for row in history.rows]

    out = replay_command("--from-archive", str(archive), "--dry-run", "--all-groups")
    assert f"{ROWS} row(s) of archive:{archive} match" in out
    replay_command("--from-archive", str(archive), "--group", history.b, "--key", "k0")
    run = ReplayRun.objects.get()
    assert run.source == f"archive:{archive}" and run.sent == 1 and run.last_id == 1
    assert history.effect_of(history.a) == 0
    assert history.effect_of(history.b) == 1


def test_a_corrupt_archive_line_stops_before_anything_is_sent(
    tmp_path, kafka_bootstrap, kafka_topic, history
):
    archive = tmp_path / "outbox.jsonl"
    call_command("outbox_prune", "--days", "0", "--archive", str(archive), stdout=io.StringIO())
    lines = archive.read_text().splitlines()
    lines[2] = lines[2][:-5]  # cut short
    archive.write_text("\n".join(lines) + "\n")
    before = topic_record_count(kafka_bootstrap, kafka_topic)
    with pytest.raises(CommandError, match=r"line 3: not JSON.*nothing was sent"):
        replay_command("--from-archive", str(archive), "--all-groups")
    assert topic_record_count(kafka_bootstrap, kafka_topic) == before
    assert ReplayRun.objects.count() == 0


def test_an_unknown_group_needs_force(history):
    out = replay_command("--group", "no-such-group", "--dry-run")
    assert "consumer group 'no-such-group' not checked (--dry-run" in out
    with pytest.raises(CommandError, match="no consumer group 'no-such-group' is known"):
        replay_command("--group", "no-such-group")
    assert ReplayRun.objects.count() == 0
    replay_command("--group", "no-such-group", "--force")
    assert ReplayRun.objects.get().sent == ROWS
    assert history.effect_of(history.b) == 0  # not b's replay


def test_an_empty_window_says_so_and_records_nothing(history):
    out = replay_command("--all-groups", "--since", "2099-01-01")
    assert "no row of table:default matches" in out and "nothing sent" in out
    assert ReplayRun.objects.count() == 0


def test_bad_arguments_are_refused_before_anything_is_sent(history):
    with pytest.raises(CommandError, match="--group G .* or --all-groups"):
        replay_command()
    with pytest.raises(CommandError, match="must be before"):
        replay_command("--all-groups", "--since", "2026-02-01", "--until", "2026-01-01")
    with pytest.raises(CommandError, match="invalid choice"):
        replay_command("--all-groups", "--status", "pending")
    with pytest.raises(CommandError, match="no replay run 999"):
        replay_command("--resume", "999")
    assert ReplayRun.objects.count() == 0


def test_a_dead_broker_is_a_clear_error_and_the_run_stays_resumable(settings, history):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = "127.0.0.1:1"  # nothing listens there
    settings.OUTBOX_KAFKA_PRODUCER = {"bootstrap_timeout_ms": 1000, "max_block_ms": 1000}
    with pytest.raises(CommandError, match="cannot be reached.*no run recorded"):
        replay_command("--group", history.b)
    with pytest.raises(CommandError, match=r"Kafka cannot be reached.*--resume \d+"):
        replay_command("--group", history.b, "--force")
    run = ReplayRun.objects.get()
    assert (run.state, run.sent, run.last_id) == (RunState.INTERRUPTED, 0, None)
    assert "cannot be reached" in run.error


def test_the_admin_lists_the_runs(admin_client, history):
    replay_command("--group", history.b)
    page = admin_client.get(reverse("admin:django_outbox_replayrun_changelist"))
    assert page.status_code == 200
    assert history.b in page.content.decode()
    run = ReplayRun.objects.get()
    page = admin_client.get(reverse("admin:django_outbox_replayrun_change", args=[run.pk]))
    assert page.status_code == 200 and str(run.token) in page.content.decode()
    assert admin_client.get(reverse("admin:django_outbox_replayrun_add")).status_code == 403


def test_the_journey_of_a_replayed_row_shows_its_runs_and_the_groups_that_handled_them(
    admin_client, history
):
    replayed, outside = history.rows[1], history.rows[2]
    replay_command("--group", history.b, "--key", "k1")
    run = ReplayRun.objects.get()
    assert history.effect_of(history.b) == 1
    event = json.loads(replayed.payload)["event_id"]
    (entry,) = InboxEntry.objects.filter(event_id=replay_inbox_key(event, run.token))
    assert entry.consumer_group == history.b
    html = admin_client.get(detail_url(replayed.pk)).content.decode()
    assert f"sent again by replay run #{run.pk} to {history.b} (done)" in titles(html)
    assert (
        f"handled again by consumer group {history.b} for replay run #{run.pk}, "
        f"from partition {entry.partition}, offset {entry.offset}"
    ) in titles(html)
    assert f"handled again by: {history.b}" in html
    page = admin_client.get(detail_url(outside.pk)).content.decode()
    assert not [title for title in titles(page) if "replay run" in title]  # outside the filter

    replay_command("--all-groups", "--id", str(replayed.pk))
    second = ReplayRun.objects.exclude(pk=run.pk).get()
    assert history.effect_of(history.a) == 1 and history.effect_of(history.b) == 1
    html = admin_client.get(detail_url(replayed.pk)).content.decode()
    assert f"sent again by replay run #{second.pk} to every group (done)" in titles(html)
    assert f"handled again by: {', '.join(sorted([history.a, history.b]))}" in html
    page = admin_client.get(detail_url(outside.pk)).content.decode()
    assert not [title for title in titles(page) if "replay run" in title]


def test_sigterm_stops_the_command_after_the_batch_in_hand(kafka_bootstrap, history):
    environment = {
        **os.environ,
        "DATABASE_URL": database_url("default"),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "PYTHONUNBUFFERED": "1",
    }
    environment.pop("DJANGO_SETTINGS_MODULE", None)
    process = subprocess.Popen(
        [sys.executable, str(REPO_ROOT / "tests" / "replay_subprocess.py"), "--group",
         history.b, "--rate", "1", "--operator", "ops"],
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        seen = []
        for line in process.stdout:
            seen.append(line)
            if f"1/{ROWS} sent" in line:
                process.send_signal(signal.SIGTERM)
                break
        output = "".join(seen) + process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    run = ReplayRun.objects.get()
    assert f"--resume {run.pk}" in output
    assert run.state == RunState.INTERRUPTED and 1 <= run.sent < ROWS
    replay_command("--resume", str(run.pk))
    assert history.effect_of(history.b) == ROWS


def test_a_run_marked_running_resumes_only_with_force(history):
    run = ReplayRun.objects.create(operator="tests", target_group=history.b, source="table:default")
    with pytest.raises(CommandError, match="is running.*--force"):
        replay_command("--resume", str(run.pk))
    replay_command("--resume", str(run.pk), "--force")  # its process was SIGKILLed
    run.refresh_from_db()
    assert (run.state, run.sent) == (RunState.DONE, ROWS)
