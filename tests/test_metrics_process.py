"""The real ``outbox_relay`` / ``outbox_consume`` with ``--metrics-port``, scraped over HTTP."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from django_outbox import publish_event
from django_outbox.models import OutboxMessage
from testproject.chat.models import Conversation

from .consumer_support import COUNTER, consumer_process, send_raw, send_rows, unique_group
from .relay_support import closed_port, make_rows, relay_process, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.django_db(transaction=True)]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape_when(port: int, ready: Callable[[Samples], bool], timeout: float, what: str) -> Samples:
    """Scrape until ``ready`` says yes (the server may not listen yet)."""
    found: list[Samples] = []

    def look() -> bool:
        try:
            samples = scrape(port)
        except OSError:
            return False
        found[:] = [samples]
        return ready(samples)

    wait_for(look, timeout, what)
    return found[0]


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def stop(process: subprocess.Popen[str]) -> tuple[int, str]:
    process.send_signal(signal.SIGTERM)
    try:
        output, _ = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
        raise AssertionError(f"the worker did not stop:\n{output}") from None
    return process.returncode, output


def test_a_relay_serves_its_counts_over_http(relay_settings, kafka_bootstrap):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    make_rows(25, topic)
    (poison,) = make_rows(1, topic, size=60_000)  # larger than max_request_size: dead at once
    port = closed_port()
    process = relay_process(
        "--interval", "0.1", "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
        bootstrap=kafka_bootstrap,
        env={
            "OUTBOX_TEST_PRODUCER": json.dumps({"max_request_size": 50_000}),
            "OUTBOX_TEST_METRICS_INTERVAL": "0.2",
        },
    )  # fmt: skip
    try:
        wait_for(
            lambda: (
                OutboxMessage.objects.published().count() == 25
                and OutboxMessage.objects.dead().count() == 1
            ),
            90,
            "the relay to deliver the rows",
        )
        delivered_by = time.time()
        refreshed = "django_outbox_backlog_refreshed_timestamp_seconds"
        samples = scrape_when(
            port,
            lambda s: get(s, refreshed, database="default") > delivered_by,
            60,
            "the backlog gauges refreshed after the deliveries",
        )
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert "serving http://127.0.0.1:" in output
    assert get(samples, "django_outbox_published_total") == 25
    assert get(samples, "django_outbox_dead_total", side="relay") == 1
    assert get(samples, "django_outbox_commit_to_published_seconds_count") == 25
    assert get(samples, "django_outbox_relay_batch_duration_seconds_count") >= 1
    for state, count in {"ready": 0, "backing_off": 0, "in_flight": 0, "dead": 1}.items():
        assert get(samples, "django_outbox_backlog_rows", database="default", state=state) == count
    assert get(samples, "django_outbox_oldest_due_age_seconds", database="default") == 0
    assert OutboxMessage.objects.get(pk=poison.pk).status == "dead"


def test_a_consumer_serves_its_counts_over_http(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_WAKE_RELAY = False
    conversation = Conversation.objects.create(title="metrics")
    rows = [publish_event(COUNTER, {"conversation_id": conversation.pk}) for _ in range(7)]
    send_rows(kafka_bootstrap, kafka_topic, rows)
    send_raw(kafka_bootstrap, kafka_topic, [(b"k", b"not an envelope", [])])
    port = closed_port()
    process = consumer_process(
        kafka_bootstrap,
        "--topic", kafka_topic, "--group", unique_group(), "--poll-timeout", "0.2",
        "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
    )  # fmt: skip
    try:
        samples = scrape_when(
            port,
            lambda s: (
                get(s, "django_outbox_consumed_total") >= 7
                and get(s, "django_outbox_rejected_total", reason="missing_headers") >= 1
            ),
            90,
            "the consumer to handle the records",
        )
    finally:
        code, output = stop(process)
    assert code == 0, output
    assert get(samples, "django_outbox_consumed_total") == 7
    assert get(samples, "django_outbox_rejected_total", reason="missing_headers") == 1
    assert get(samples, "django_outbox_handler_duration_seconds_count", event_type=COUNTER) == 7
    assert get(samples, "django_outbox_published_to_consumed_seconds_count") == 7
    assert get(samples, "django_outbox_ordering_violations_total", topic=kafka_topic) == 0
    conversation.refresh_from_db()
    assert conversation.message_count == 7
