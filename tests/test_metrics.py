"""django_outbox.ops.metrics: the signal receivers, the timers, the backlog gauges, the view."""

from __future__ import annotations

import datetime
import os
import pathlib
import subprocess
import sys
import time

import pytest
from django.core.management import CommandError, call_command
from django.test import override_settings
from django.utils import timezone
from prometheus_client import REGISTRY

from django_outbox import checks, signals
from django_outbox.consumer import Consumer
from django_outbox.consumer.records import Delivery
from django_outbox.models import OutboxMessage, Status, lease_expiry
from django_outbox.models.claiming import Claim, ClaimedRow
from django_outbox.ops import metrics
from django_outbox.relay.send import Sender

from .relay_support import make_rows


@pytest.fixture
def metrics_on():
    metrics.enable()
    yield
    metrics.disable()


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def row(pk: int = 1, created_at: datetime.datetime | None = None) -> ClaimedRow:
    return ClaimedRow(pk, "t.created", "topic", "k", "{}", 0, 20, created_at)


def record(timestamp: int | None = None) -> Delivery:
    return Delivery("topic", 0, 7, b"k", b"{}", (), timestamp)


def test_published_rows_are_counted_with_their_latency(metrics_on):
    before = value("django_outbox_published_total")
    latencies = value("django_outbox_commit_to_published_seconds_count")
    slow = value("django_outbox_commit_to_published_seconds_bucket", le="2.5")
    a_while_ago = timezone.now() - datetime.timedelta(seconds=3)
    rows = [row(1, a_while_ago), row(2, a_while_ago), row(3, None)]  # a legacy row: no time
    signals.send(signals.event_published, Sender, alias="default", rows=rows)
    assert value("django_outbox_published_total") == before + 3
    assert value("django_outbox_commit_to_published_seconds_count") == latencies + 2
    # Both waited 3 s: neither is in the bucket "at most 2.5 s".
    assert value("django_outbox_commit_to_published_seconds_bucket", le="2.5") == slow


def test_relay_failures_are_counted_by_exception_type(metrics_on):
    timeouts = value("django_outbox_failed_total", side="relay", reason="KafkaTimeoutError")
    other = value("django_outbox_failed_total", side="relay", reason="other")
    errors = ["KafkaTimeoutError: no answer in 5 s", "KafkaTimeoutError", "not a type name at all"]
    signals.send(
        signals.event_failed, Sender, alias="default", rows=[row(1), row(2), row(3)], errors=errors
    )
    assert (
        value("django_outbox_failed_total", side="relay", reason="KafkaTimeoutError")
        == timeouts + 2
    )
    assert value("django_outbox_failed_total", side="relay", reason="other") == other + 1


def test_dead_rows_and_records_are_counted_per_side(metrics_on):
    relay = value("django_outbox_dead_total", side="relay")
    consumer = value("django_outbox_dead_total", side="consumer")
    signals.send(
        signals.event_dead, Sender, alias="default", rows=[row(1), row(2)], errors=["A", "B"]
    )
    signals.send(signals.event_dead, Consumer, group="g", record=record(), error="x", reason="")
    assert value("django_outbox_dead_total", side="relay") == relay + 2
    assert value("django_outbox_dead_total", side="consumer") == consumer + 1


def test_consumer_outcomes_are_counted(metrics_on):
    consumed = value("django_outbox_consumed_total")
    latencies = value("django_outbox_published_to_consumed_seconds_count")
    quick = value("django_outbox_published_to_consumed_seconds_bucket", le="10.0")
    failed = value("django_outbox_failed_total", side="consumer", reason="handler")
    malformed = value("django_outbox_rejected_total", reason="malformed")
    stamp = int((time.time() - 1) * 1000)
    signals.send(signals.event_consumed, Consumer, group="g", record=record(stamp), reason="")
    signals.send(signals.event_consumed, Consumer, group="g", record=record(None), reason="")
    signals.send(signals.event_failed, Consumer, group="g", record=record(), error="x", reason="")
    signals.send(
        signals.record_rejected, Consumer, group="g", record=record(), error="x", reason="malformed"
    )
    assert value("django_outbox_consumed_total") == consumed + 2
    assert value("django_outbox_published_to_consumed_seconds_count") == latencies + 1
    assert value("django_outbox_published_to_consumed_seconds_bucket", le="10.0") == quick + 1
    assert value("django_outbox_failed_total", side="consumer", reason="handler") == failed + 1
    assert value("django_outbox_rejected_total", reason="malformed") == malformed + 1


def test_nothing_listens_while_metrics_are_off():
    assert not metrics.enabled()
    connected = [signal for signal, _ in metrics.RECEIVERS]
    receivers = [len(signal.receivers) for signal in connected]
    before = value("django_outbox_handler_duration_seconds_count", event_type="t.off")
    with metrics.handler_timer("t.off"):
        pass
    assert value("django_outbox_handler_duration_seconds_count", event_type="t.off") == before
    metrics.enable()
    metrics.enable()  # idempotent: one receiver per signal
    try:
        assert [len(signal.receivers) for signal in connected] == [n + 1 for n in receivers]
    finally:
        metrics.disable()
    assert [len(signal.receivers) for signal in connected] == receivers


def test_handler_and_batch_durations_are_timed(metrics_on):
    before = value("django_outbox_handler_duration_seconds_count", event_type="t.timed")
    with pytest.raises(ValueError):
        with metrics.handler_timer("t.timed"):
            raise ValueError("a failing handler is timed too")
    assert value("django_outbox_handler_duration_seconds_count", event_type="t.timed") == before + 1
    batches = value("django_outbox_relay_batch_duration_seconds_count")
    claim = Claim("default", timezone.now(), [], claimed_at=time.monotonic() - 0.2)
    metrics.batch_recorded(claim)
    assert value("django_outbox_relay_batch_duration_seconds_count") == batches + 1
    total = value("django_outbox_relay_batch_duration_seconds_sum")
    assert total >= 0.2


def test_reason_of_reads_the_type_describe_writes():
    assert metrics.reason_of("MessageSizeTooLargeError: 60000 bytes") == "MessageSizeTooLargeError"
    assert metrics.reason_of("NotSent") == "NotSent"
    assert metrics.reason_of("no type: here") == "other"
    assert metrics.reason_of("") == "other"


@pytest.mark.django_db
def test_the_backlog_gauges_count_each_state(metrics_on):
    now = timezone.now()
    ready = make_rows(4, "t")
    backing_off, in_flight, dead = make_rows(3, "t")
    OutboxMessage.objects.filter(pk=backing_off.pk).update(
        retry_count=1, next_retry_at=now + datetime.timedelta(seconds=30, milliseconds=500)
    )
    OutboxMessage.objects.filter(pk=in_flight.pk).update(next_retry_at=lease_expiry(now, 60))
    OutboxMessage.objects.filter(pk=dead.pk).update(status=Status.DEAD)
    # The oldest due row is the never-tried one with the lowest id (status.oldest_due).
    OutboxMessage.objects.filter(pk=ready[0].pk).update(
        created_at=now - datetime.timedelta(hours=1)
    )
    metrics.refresh_backlog(["default"], now=now)
    states = {
        state: value("django_outbox_backlog_rows", database="default", state=state)
        for state in metrics.BACKLOG_STATES
    }
    assert states == {"ready": 4, "scheduled": 0, "backing_off": 1, "in_flight": 1, "dead": 1}
    age = value("django_outbox_oldest_due_age_seconds", database="default")
    assert 3599 <= age <= 3601
    assert value("django_outbox_backlog_refreshed_timestamp_seconds", database="default") > 0

    OutboxMessage.objects.all().delete()
    metrics.refresh_backlog(["default"])
    assert value("django_outbox_oldest_due_age_seconds", database="default") == 0
    assert value("django_outbox_backlog_rows", database="default", state="ready") == 0


@pytest.mark.django_db(transaction=True)
def test_the_refresher_thread_refreshes_until_stopped(metrics_on):
    make_rows(2, "t")
    started = time.time()
    refresher = metrics.BacklogRefresher(["default"], interval=0.05).start()
    try:
        deadline = time.monotonic() + 30
        while value("django_outbox_backlog_refreshed_timestamp_seconds", database="default") < (
            started
        ):
            assert time.monotonic() < deadline, "the backlog was not refreshed"
            time.sleep(0.05)
    finally:
        refresher.stop()
    assert value("django_outbox_backlog_rows", database="default", state="ready") == 2
    assert not refresher._thread.is_alive()


def test_the_view_serves_the_registry(client, metrics_on):
    signals.send(signals.event_published, Sender, alias="default", rows=[row(1)])
    response = client.get("/outbox/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    assert "django_outbox_published_total " in text
    assert "django_outbox_backlog_rows" in text


def test_without_prometheus_client(monkeypatch, client, settings):
    monkeypatch.setattr(metrics, "prometheus_client", None)
    assert not metrics.available()
    with pytest.raises(metrics.MetricsUnavailable, match=r"pip install"):
        metrics.enable()
    response = client.get("/outbox/metrics")
    assert response.status_code == 503
    assert b"prometheus-client" in response.content
    with pytest.raises(CommandError, match=r"--metrics-port needs prometheus-client: pip install"):
        call_command("outbox_relay", "--burst", "--metrics-port", "9999")
    settings.OUTBOX_METRICS = True
    assert [m.id for m in checks.check_metrics()] == ["django_outbox.W020"]
    metrics.enable_from_settings()  # nothing to turn on: no error either
    assert not metrics.enabled()


def test_metrics_off_a_process_never_imports_prometheus_client(tmp_path):
    # Its import was about 20 ms of every worker's django.setup() on a 2-core machine.
    code = (
        "import os, sys, django; django.setup(); "
        "from django_outbox.ops import metrics; "
        "assert 'prometheus_client' not in sys.modules, 'imported at setup'; "
        "assert metrics.available(); "
        "assert 'prometheus_client' not in sys.modules, 'imported by available()'; "
        "metrics.enable(); assert metrics.enabled(); "
        "assert 'prometheus_client' in sys.modules; print('ok')"
    )
    root = pathlib.Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "testproject")]),
    }
    env.pop("OUTBOX_METRICS", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("name", "bad", "check_id"),
    [
        ("OUTBOX_METRICS_INTERVAL", 0, "django_outbox.E020"),
        ("OUTBOX_METRICS_INTERVAL", "15", "django_outbox.E020"),
        ("OUTBOX_ORDERING_KEYS", -1, "django_outbox.E021"),
        ("OUTBOX_ORDERING_KEYS", 2.5, "django_outbox.E021"),
    ],
)
def test_bad_metrics_settings_are_errors(name, bad, check_id):
    with override_settings(**{name: bad}):
        assert [m.id for m in checks.check_metrics()] == [check_id]


def test_good_metrics_settings_pass(settings):
    settings.OUTBOX_METRICS = True
    settings.OUTBOX_METRICS_INTERVAL = 5
    settings.OUTBOX_ORDERING_KEYS = 0
    assert checks.check_metrics() == []


def test_the_setting_turns_metrics_on(settings):
    settings.OUTBOX_METRICS = True
    try:
        metrics.enable_from_settings()
        assert metrics.enabled()
    finally:
        metrics.disable()


def test_a_port_in_use_is_a_clear_error():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(CommandError, match=rf"cannot serve metrics on port {port}"):
            call_command(
                "outbox_relay", "--burst", "--metrics-port", str(port),
                "--metrics-address", "127.0.0.1",
            )  # fmt: skip
    assert not metrics.enabled()


def test_the_port_must_be_a_port():
    with pytest.raises(CommandError, match=r"a port number, 1 to 65535"):
        call_command("outbox_relay", "--burst", "--metrics-port", "70000")


MULTIPROCESS_WORKER = """
import django, os, sys
sys.path[:0] = [os.getcwd(), os.path.join(os.getcwd(), "testproject")]
os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
django.setup()
from django_outbox import signals
from django_outbox.ops import metrics
from django_outbox.models.claiming import ClaimedRow
from django_outbox.relay.send import Sender
metrics.enable()
rows = [ClaimedRow(i, "t", "t", "k", "{}", 0, 20, None) for i in range(3)]
signals.send(signals.event_published, Sender, alias="default", rows=rows)
metrics._on.backlog.labels("default", "ready").set(int(sys.argv[1]))
"""


def test_the_view_adds_up_every_process_in_multiprocess_mode(client, tmp_path, monkeypatch):
    """What gunicorn's workers (and workers sharing PROMETHEUS_MULTIPROC_DIR) do."""
    import subprocess
    import sys

    from prometheus_client.parser import text_string_to_metric_families

    from .relay_support import REPO_ROOT

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for ready in ("5", "9"):  # two processes, one after the other
        subprocess.run(
            [sys.executable, "-c", MULTIPROCESS_WORKER, ready], env=env, cwd=REPO_ROOT, check=True
        )
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    response = client.get("/outbox/metrics")
    assert response.status_code == 200
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.content.decode())
        for sample in family.samples
    }
    assert samples[("django_outbox_published_total", ())] == 6
    ready = ("django_outbox_backlog_rows", (("database", "default"), ("state", "ready")))
    assert samples[ready] == 9  # the most recent value


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_a_command_turns_metrics_off_again_at_exit(relay_settings):
    from .relay_support import closed_port

    call_command(
        "outbox_relay", "--burst", "--metrics-port", str(closed_port()),
        "--metrics-address", "127.0.0.1",
    )  # fmt: skip
    assert not metrics.enabled()
    metrics.enable()  # on already (OUTBOX_METRICS): it stays on
    try:
        call_command(
            "outbox_relay", "--burst", "--metrics-port", str(closed_port()),
            "--metrics-address", "127.0.0.1",
        )  # fmt: skip
        assert metrics.enabled()
    finally:
        metrics.disable()


@pytest.mark.django_db(transaction=True)  # the relay's database thread commits its own
def test_buckets_owned_per_relay(metrics_on, vendor):
    from django_outbox.models import buckets
    from django_outbox.relay.loop import Relay

    if not buckets.supported(vendor):
        pytest.skip("relay buckets need PostgreSQL or MariaDB")
    relay = Relay()
    try:
        relay.coordination.tick()
    finally:
        # (the database thread's writes are outside the test's transaction)
        relay.coordination.leave()
        relay.database_thread.close()
    name = "django_outbox_relay_buckets_owned"
    assert value(name, database="default", relay=relay.name) == buckets.BUCKETS
