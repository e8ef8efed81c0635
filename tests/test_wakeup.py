"""The commit wakes the relay: NOTIFY on PostgreSQL, on_commit in the same process."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections, transaction

from django_outbox import publish_event
from django_outbox.wakeup import Wakeup, wake_local

pytestmark = pytest.mark.django_db(transaction=True)


def publish_from_another_thread(rollback: bool = False) -> None:
    """Publish on a connection of its own, as another process would."""

    def target() -> None:
        try:
            with transaction.atomic():
                publish_event("a.b", {})
                if rollback:
                    transaction.set_rollback(True)
        finally:
            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)


def test_a_commit_in_this_process_wakes_a_relay():
    wakeup = Wakeup(["default"], listen=False)
    try:
        assert not wakeup.wait(0)
        wake_local()
        assert wakeup.wait(5)
        assert not wakeup.wait(0)  # cleared by the wait that saw it
    finally:
        wakeup.close()


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_postgresql_notifies_relays_elsewhere_at_commit_only(settings):
    settings.OUTBOX_WAKE_RELAY = True
    wakeup = Wakeup(["default"])
    try:
        # The listener's first connection wakes it once (commits made while nobody listened).
        assert wakeup.wait(10)
        assert wakeup.listening == {"default"}
        wakeup.event.clear()
        # A commit in another connection reaches it through NOTIFY, not on_commit: the
        # local hook is switched off by closing the wake-up's local registration.
        from django_outbox import wakeup as module

        with module._local_lock:
            module._local_events.discard(wakeup.event)
        publish_from_another_thread(rollback=True)
        assert not wakeup.wait(1.5)  # a rollback notifies nobody
        publish_from_another_thread()
        assert wakeup.wait(10)
    finally:
        wakeup.close()


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_the_notification_rides_on_the_insert(settings, django_assert_num_queries):
    settings.OUTBOX_WAKE_RELAY = True
    with transaction.atomic():
        with django_assert_num_queries(1):
            publish_event("a.b", {})
    assert connection.vendor == "postgresql"
