"""Graceful shutdown of the long-running commands (relay, consumer).

The first SIGTERM or SIGINT only sets a stop flag: the worker finishes what it
holds (a batch sent, its outcome recorded), closes its clients and returns. A
second signal exits at once. The previous handlers are restored on exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)
T = TypeVar("T")


class Shutdown:
    """A stop flag, set by ``request()`` or, inside ``with``, by SIGTERM/SIGINT.

    Usage::

        shutdown = Shutdown()
        with shutdown:
            while not shutdown.requested:
                work()
                shutdown.wait(interval)   # an interruptible sleep
    """

    def __init__(self, signals: tuple[signal.Signals, ...] = DEFAULT_SIGNALS) -> None:
        self.signals = signals
        self._event = threading.Event()
        self._previous: dict[signal.Signals, Any] = {}
        #: True once a second signal asked to exit at once; cleanup should not block.
        self.forced = False
        #: Events that a stop request also sets (a relay's wake-up), so waits on them end.
        self._also: list[threading.Event] = []

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str = "stop requested") -> None:
        """Ask the worker to stop after the work in hand."""
        # The flag first, the log line after: a second signal that arrives while the
        # line is written must find the flag set (and exit at once).
        first = not self._event.is_set()
        self._event.set()
        for event in self._also:
            event.set()
        if first:
            logger.info("%s; finishing the work in hand", reason)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return early (True) when a stop is requested."""
        return self._event.wait(max(seconds, 0))

    def wakes(self, event: threading.Event) -> None:
        """Make a stop request set ``event`` too (a worker sleeping on it wakes up)."""
        self._also.append(event)
        if self._event.is_set():
            event.set()

    def run(self, target: Callable[[], T], *, name: str = "django-outbox-worker") -> T:
        """Run ``target`` in a worker thread while this (main) thread waits for signals.

        The kernel may deliver a signal to any thread of the process, and Python runs
        the handler in the main thread only once that thread runs Python code again.
        A main thread blocked in the Kafka client (a connection that never answers, a
        long poll) would hold a SIGTERM for as long as it blocks. So the work runs in
        a daemon thread and the main thread waits in short slices: a first signal sets
        the flag within a fraction of a second (the work finishes what it holds and
        returns), a second one raises ``SystemExit`` here at once (the daemon thread
        ends with the process). An exception of ``target`` is raised here.
        """
        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                outcome["result"] = target()
            except BaseException as exc:  # re-raised in the main thread
                outcome["error"] = exc
            finally:
                from django.db import connections

                connections.close_all()

        thread = threading.Thread(target=work, name=name, daemon=True)
        thread.start()
        while thread.is_alive():
            thread.join(self.SLICE)
        if "error" in outcome:
            raise outcome["error"]
        return outcome.get("result")  # type: ignore[return-value]

    #: Seconds between two looks at pending signals while ``run`` waits.
    SLICE = 0.1

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self._event.is_set():
            # Second signal: the user means it. Raising (rather than os._exit) lets
            # ``finally`` blocks run, and they check ``forced`` to skip slow cleanup.
            self.forced = True
            self.restore()
            logger.warning("%s received again; exiting at once", name)
            raise SystemExit(128 + signum)
        self.request(f"{name} received (send it again to exit at once)")

    def install(self) -> None:
        # Python only lets the main thread set handlers; a worker driven from a
        # test thread is stopped with request() instead.
        if threading.current_thread() is not threading.main_thread():
            return
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        while self._previous:
            sig, handler = self._previous.popitem()
            signal.signal(sig, handler)

    def __enter__(self) -> Shutdown:
        self.install()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.restore()
