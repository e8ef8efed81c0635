"""Graceful shutdown of the long-running commands (relay, consumer).

The first SIGTERM or SIGINT only sets a stop flag: the worker finishes what it
holds (a batch sent, its outcome recorded), closes its clients and returns. A
second signal exits at once. The previous handlers are restored on exit.
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType, TracebackType
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_SIGNALS = (signal.SIGTERM, signal.SIGINT)


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

    @property
    def requested(self) -> bool:
        return self._event.is_set()

    def request(self, reason: str = "stop requested") -> None:
        """Ask the worker to stop after the work in hand."""
        first = not self._event.is_set()
        # Set before logging: a test (or an impatient user) sends the second signal as
        # soon as this line appears, and its handler may run inside this very call.
        self._event.set()
        if first:
            logger.info("%s; finishing the work in hand", reason)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return early (True) when a stop is requested."""
        return self._event.wait(max(seconds, 0))

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
