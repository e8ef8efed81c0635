"""The generic graceful-shutdown helper (django_outbox.shutdown)."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from django_outbox.shutdown import Shutdown


def test_first_signal_sets_the_flag_second_exits_and_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    # default_int_handler in a terminal; SIG_IGN in a background job (``cmd &``)
    before_int = signal.getsignal(signal.SIGINT)
    shutdown = Shutdown()
    with shutdown:
        assert signal.getsignal(signal.SIGTERM) is not before
        os.kill(os.getpid(), signal.SIGTERM)
        assert shutdown.requested and not shutdown.forced
        with pytest.raises(SystemExit) as exit_info:
            os.kill(os.getpid(), signal.SIGTERM)
        assert exit_info.value.code == 128 + signal.SIGTERM
        assert shutdown.forced
        assert signal.getsignal(signal.SIGTERM) is before  # restored at once
    assert signal.getsignal(signal.SIGTERM) is before
    assert signal.getsignal(signal.SIGINT) == before_int


def test_sigint_too():
    shutdown = Shutdown()
    with shutdown:
        os.kill(os.getpid(), signal.SIGINT)
    assert shutdown.requested


def test_wait_returns_early_when_requested():
    shutdown = Shutdown()
    assert shutdown.wait(0.01) is False
    threading.Timer(0.05, shutdown.request).start()
    assert shutdown.wait(30) is True


def test_outside_the_main_thread_only_request_works():
    shutdown = Shutdown()
    errors = []

    def worker():
        try:
            with shutdown:
                shutdown.request("test")
        except Exception as exc:  # signal.signal would raise ValueError here
            errors.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert not errors and shutdown.requested
