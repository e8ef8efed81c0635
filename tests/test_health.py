"""Worker liveness: ``--health-file`` is touched every loop turn, and not while wedged."""

from __future__ import annotations

import logging
import signal
import threading
import time

import pytest
from django.db import connections

from django_outbox.consumer import Consumer
from django_outbox.ops.health import HealthFile, age
from django_outbox.relay.loop import Relay

from .consumer_support import FAST_GROUP, registered, send_rows, unique_group
from .relay_support import (
    FAST_FAIL_PRODUCER,
    IGNORE_LEAKED_SOCKETS,
    closed_port,
    leaked_sockets_collected,
    make_rows,
    relay_process,
    run_in_thread,
    wait_for,
)


class Beats:
    """A heartbeat that counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


def test_health_file_touches_at_most_once_per_interval(tmp_path):
    path = tmp_path / "alive"
    assert age(path) is None
    beat = HealthFile(path, min_interval=3600)
    beat()
    first = path.stat().st_mtime_ns
    assert age(path) is not None
    path.unlink()
    beat()  # within the interval: not touched again
    assert not path.exists()
    HealthFile(path, min_interval=0)()
    assert path.stat().st_mtime_ns >= first
    beat.remove()
    beat.remove()  # already gone: fine
    assert not path.exists()


def test_an_unwritable_health_file_is_logged_once_and_never_raises(tmp_path, caplog):
    beat = HealthFile(tmp_path / "missing-dir" / "alive", min_interval=0)
    with caplog.at_level(logging.ERROR, logger="django_outbox.ops.health"):
        beat()
        beat()
    assert caplog.text.count("cannot touch the health file") == 1


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_relay_process_keeps_the_file_fresh_while_idle_and_stale_while_stopped(
    kafka_bootstrap, tmp_path
):
    path = tmp_path / "relay.alive"
    process = relay_process(
        "--health-file", str(path), "--interval", "0.2", bootstrap=kafka_bootstrap
    )
    try:
        wait_for(path.exists, 60, "the health file")
        touched = path.stat().st_mtime_ns
        wait_for(lambda: path.stat().st_mtime_ns > touched, 10, "a touch while idle")
        process.send_signal(signal.SIGSTOP)  # wedged: the loop turns no more
        try:
            frozen = path.stat().st_mtime_ns
            time.sleep(3)
            assert path.stat().st_mtime_ns == frozen
            assert (age(path) or 0) > 2.5
        finally:
            process.send_signal(signal.SIGCONT)
        wait_for(lambda: path.stat().st_mtime_ns > frozen, 10, "a touch after SIGCONT")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
        assert not path.exists()  # a stopped worker is not alive
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
@pytest.mark.django_db(transaction=True)
def test_relay_beats_while_the_broker_is_down(settings):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = f"127.0.0.1:{closed_port()}"
    make_rows(3, "health.down")
    beats = Beats()
    relay = Relay(interval=0.1, producer_options=FAST_FAIL_PRODUCER, heartbeat=beats)
    with leaked_sockets_collected():
        thread = run_in_thread(relay)
        try:
            wait_for(lambda: beats.calls >= 3 and relay.failed >= 3, 60, "turns while down")
        finally:
            relay.stop()
            thread.join(60)
    assert not thread.is_alive()
    assert relay.delivered == 0


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_consumer_beats_while_idle_and_not_while_a_handler_blocks(
    settings, kafka_bootstrap, kafka_topic
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    started, release = threading.Event(), threading.Event()

    def blocking_handler(event):
        started.set()
        release.wait(60)

    beats = Beats()
    consumer = Consumer(
        [kafka_topic],
        group=unique_group(),
        poll_timeout=0.1,
        consumer_options=dict(FAST_GROUP, auto_offset_reset="earliest"),
        heartbeat=beats,
    )

    def run() -> None:
        try:
            consumer.run()
        finally:
            connections.close_all()

    with registered("test.happened", blocking_handler):
        thread = threading.Thread(target=run, name="consumer")
        thread.start()
        try:
            wait_for(lambda: beats.calls >= 5, 60, "turns while idle")
            send_rows(kafka_bootstrap, kafka_topic, make_rows(1, kafka_topic))
            assert started.wait(60), "the handler never ran"
            wedged = beats.calls
            time.sleep(2)  # twenty poll timeouts
            assert beats.calls == wedged
            release.set()
            wait_for(lambda: beats.calls > wedged, 30, "turns after the handler returned")
        finally:
            release.set()
            consumer.stop()
            thread.join(60)
    assert not thread.is_alive()
    assert consumer.stats.records == 1
