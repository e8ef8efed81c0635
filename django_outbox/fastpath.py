"""Delivery right after commit, from the process that committed (the "fast path").

``publish_event()`` registers ``deliver_after_commit(alias, ids)`` with
``transaction.on_commit``. What happens next depends on ``OUTBOX_FAST_PATH_MODE``:

``"thread"`` (the default)
    The callback only hands ``(alias, ids)`` to a bounded queue and returns. A
    daemon thread per process (started on first use, and again after ``fork()``)
    takes what is queued, many transactions' ids at once, and delivers them. A
    full queue drops the hand-off: those rows stay for the relay.
``"sync"``
    The callback delivers in the committing thread, at most about twice
    ``OUTBOX_FAST_PATH_TIMEOUT``.

Either way a delivery claims the rows like the relay does (fenced write-backs),
but with a short lease (``lease_seconds()``), so that rows of a process that died
are soon due for the relay again; sends them with one producer shared by the
process; waits at most ``OUTBOX_FAST_PATH_TIMEOUT`` for the acks; records the
outcome; and releases what got no answer. Nothing raises: whatever the fast path
could not deliver stays for the relay. After a failure to reach Kafka the fast
path stays off for a while (a circuit breaker, 1 s doubling up to 30 s).

``flush(timeout)`` waits until the thread has handled everything queued; an
``atexit`` hook does the same, for at most twice the timeout, when the process
exits.
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

from django.db import close_old_connections, connections
from django.utils import timezone

from . import kafka
from .backoff import backoff_delay
from .claiming import Claim, Failure, claim, record_failed, record_published, release
from .conf import outbox_settings
from .relay import describe

logger = logging.getLogger(__name__)

#: The circuit breaker's pause after a failure to reach Kafka: 1 s, doubling to 30 s.
BREAKER_BASE = 1.0
BREAKER_MAX = 30.0

#: Hand-offs (one per committed transaction) that may wait for the delivery thread.
QUEUE_SIZE = 10_000

#: Added to the longest a delivery can hold its rows (twice the timeout) to make its lease.
LEASE_MARGIN = 2.0


@dataclass
class Stats:
    """Counters of this process's fast path (for tests, benchmarks and debugging)."""

    handoffs: int = 0  # transactions queued for the delivery thread
    dropped: int = 0  # hand-offs refused because the queue was full
    skipped: int = 0  # deliveries not tried because the circuit breaker was open
    claims: int = 0  # claims made (one per batch of coalesced hand-offs and alias)
    delivered: int = 0  # rows Kafka acknowledged
    errors: int = 0  # deliveries that raised (logged; their rows stay for the relay)

    def reset(self) -> None:
        for field in fields(self):
            setattr(self, field.name, 0)


stats = Stats()


class _State:
    """The process-wide producer, circuit breaker and delivery thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()  # guards the producer
        self.producer: Any = None
        self.config_key: str | None = None
        self.pid: int | None = None
        self.closed_until = 0.0  # time.monotonic() before which the fast path is off
        self.failures = 0
        self.worker_lock = threading.Lock()  # guards starting and stopping the thread
        self.worker: _Worker | None = None
        self.warned_full = False


_state = _State()


class _Handoffs:
    """A bounded queue of ``(alias, ids)`` that knows when all of it has been handled."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: deque[tuple[str, list[int]]] = deque()
        self.unfinished = 0
        self.closed = False
        self.changed = threading.Condition()

    def put(self, alias: str, ids: list[int]) -> bool:
        with self.changed:
            if self.closed or len(self.items) >= self.size:
                return False
            self.items.append((alias, ids))
            self.unfinished += 1
            self.changed.notify_all()
            return True

    def take(self, max_ids: int) -> list[tuple[str, list[int]]] | None:
        """Wait for hand-offs; return the first ones, up to ``max_ids`` ids (at least one
        hand-off). None once closed and empty."""
        with self.changed:
            while not self.items and not self.closed:
                self.changed.wait()
            if not self.items:
                return None
            taken = [self.items.popleft()]
            count = len(taken[0][1])
            while self.items and count + len(self.items[0][1]) <= max_ids:
                taken.append(self.items.popleft())
                count += len(taken[-1][1])
            return taken

    def done(self, count: int) -> None:
        with self.changed:
            self.unfinished -= count
            self.changed.notify_all()

    def wait_handled(self, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self.changed:
            while self.unfinished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self.changed.wait(remaining)
            return True

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()


class _Worker(NamedTuple):
    thread: threading.Thread
    queue: _Handoffs
    pid: int


# --------------------------------------------------------------------------- public API


def deliver_after_commit(alias: str, ids: Sequence[int]) -> None:
    """Deliver the rows ``ids`` of ``alias`` (queue them, or at once in ``"sync"`` mode).

    Never raises: the relay delivers whatever the fast path does not.
    """
    try:
        ids = list(ids)
        if not ids or not outbox_settings.fast_path:
            return
        if outbox_settings.fast_path_mode == "sync":
            _deliver(alias, ids, producer_first=False)
        else:
            _hand_off(alias, ids)
    except Exception:
        stats.errors += 1
        logger.exception("outbox fast path failed; the relay will deliver %s on %r", ids, alias)


def flush(timeout: float | None = None) -> bool:
    """Wait until the delivery thread has handled every hand-off queued so far.

    Returns False if ``timeout`` seconds passed first. Handled means delivered, or
    left to the relay.
    """
    worker = _state.worker
    if worker is None or worker.pid != os.getpid():
        return True
    return worker.queue.wait_handled(timeout)


def stop(timeout: float | None = None) -> bool:
    """Let the delivery thread handle what is queued, then end it (it closes its
    database connections). A later hand-off starts a new one.

    Returns False if the thread was still busy after ``timeout`` seconds; it then
    finishes in the background.
    """
    with _state.worker_lock:
        worker, _state.worker = _state.worker, None
    if worker is None or worker.pid != os.getpid():
        return True
    worker.queue.close()
    worker.thread.join(timeout)
    return not worker.thread.is_alive()


def reset_producer() -> None:
    """Stop the delivery thread, close the shared producer, forget the breaker and
    the counters (tests, or after a settings change)."""
    stop(timeout=2 * outbox_settings.fast_path_timeout + LEASE_MARGIN)
    with _state.lock:
        producer, _state.producer = _state.producer, None
        _state.config_key = None
        _state.closed_until = 0.0
        _state.failures = 0
    stats.reset()
    if producer is not None:
        if _state.pid == os.getpid():
            kafka.close_producer(producer, timeout=0)
        else:
            kafka.abandon_producer(producer)


def lease_seconds() -> float:
    """The fast path's lease: the longest a delivery can take (about twice
    ``OUTBOX_FAST_PATH_TIMEOUT``) plus a margin; ``lease_expiry`` rounds it up to
    a whole second. Much shorter than the relay's: a process that dies holding
    rows leaves them to the relay within seconds."""
    return math.ceil(2 * outbox_settings.fast_path_timeout + LEASE_MARGIN)


# --------------------------------------------------------------------------- the thread


def _hand_off(alias: str, ids: list[int]) -> None:
    if _breaker_open():
        stats.skipped += 1
        return
    queue = _worker().queue
    if queue.put(alias, ids):
        stats.handoffs += 1
        _state.warned_full = False
        return
    stats.dropped += 1
    if not _state.warned_full:  # once per run of full-queue drops, not per request
        _state.warned_full = True
        logger.warning(
            "outbox fast path: %d transactions are waiting for the delivery thread; "
            "the rows of new ones go through the relay",
            queue.size,
        )


def _worker() -> _Worker:
    """This process's delivery thread, started on first use (or after fork, or if it died)."""
    worker = _state.worker
    if worker is not None and worker.pid == os.getpid() and worker.thread.is_alive():
        return worker
    with _state.worker_lock:
        worker = _state.worker
        if worker is not None and worker.pid == os.getpid() and worker.thread.is_alive():
            return worker
        if worker is not None and worker.pid == os.getpid() and not worker.queue.closed:
            queue = worker.queue  # the thread died: its successor takes over its queue
        else:
            queue = _Handoffs(QUEUE_SIZE)
        thread = threading.Thread(
            target=_work, args=(queue,), name="django-outbox-fastpath", daemon=True
        )
        thread.start()
        _state.worker = _Worker(thread, queue, os.getpid())
        _register_exit_hook()
        return _state.worker


def _work(queue: _Handoffs) -> None:
    try:
        while True:
            handoffs = queue.take(_batch_size())
            if handoffs is None:
                return
            try:
                _deliver_handoffs(handoffs)
            except Exception:  # the thread must outlive any error; the relay is the fallback
                stats.errors += 1
                logger.exception("outbox fast path failed; the relay will deliver those rows")
            finally:
                queue.done(len(handoffs))
    finally:
        connections.close_all()  # this thread's connections only


def _batch_size() -> int:
    try:
        return max(int(outbox_settings.batch_size), 1)
    except (TypeError, ValueError):  # reported by check django_outbox.E007
        return 500


def _deliver_handoffs(handoffs: list[tuple[str, list[int]]]) -> None:
    by_alias: dict[str, set[int]] = {}
    for alias, ids in handoffs:
        by_alias.setdefault(alias, set()).update(ids)
    # Like a request: connections past CONN_MAX_AGE (or broken) are closed before
    # and after, so an idle thread holds none with the default CONN_MAX_AGE = 0.
    close_old_connections()
    try:
        for alias, id_set in by_alias.items():
            ids = sorted(id_set)
            size = _batch_size()
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size]
                try:
                    _deliver(alias, chunk, producer_first=True)
                except Exception:
                    stats.errors += 1
                    logger.exception(
                        "outbox fast path failed; the relay will deliver %d row(s) on %r",
                        len(chunk),
                        alias,
                    )
                    connections.close_all()  # a broken connection must not serve the next batch
    finally:
        close_old_connections()


def _register_exit_hook() -> None:
    # atexit runs the last registered first: registered again after each producer
    # is built, the drain runs before kafka-python's own hook closes that producer.
    atexit.unregister(_drain_at_exit)
    atexit.register(_drain_at_exit)


def _drain_at_exit() -> None:
    try:
        if not stop(timeout=2 * outbox_settings.fast_path_timeout):
            logger.warning(
                "outbox fast path: exiting with deliveries unfinished; the relay will deliver them"
            )
    except Exception:  # never disturb the interpreter's exit
        pass


def _after_fork_in_child() -> None:
    # The parent's thread does not exist here, its locks may be held by threads that
    # do not either, and its producer's sockets are the parent's: start afresh, and
    # never close that producer (closing shuts its sockets down for the parent too).
    global _state
    inherited = _state.producer
    _state = _State()
    stats.reset()
    if inherited is not None:
        kafka.abandon_producer(inherited)


os.register_at_fork(after_in_child=_after_fork_in_child)


# --------------------------------------------------------------------------- delivering


def _deliver(alias: str, ids: list[int], *, producer_first: bool) -> None:
    """Claim, send and record ``ids``. The thread gets the producer first, so that a
    dead broker leaves the rows untouched; the sync mode claims first, so that rows a
    relay already took cost the request no Kafka round trip."""
    if not ids or not outbox_settings.fast_path:
        return
    if _breaker_open():
        stats.skipped += 1
        logger.debug("outbox fast path paused after a Kafka failure; %d row(s) left", len(ids))
        return
    timeout = outbox_settings.fast_path_timeout
    producer = None
    if producer_first:
        producer = _producer(time.monotonic() + timeout)
        if producer is None:
            return
    deadline = time.monotonic() + timeout
    batch = claim(alias, _batch_size(), lease_seconds(), ids=ids)
    stats.claims += 1
    if not batch.rows:
        return  # already taken by a relay (or rolled back meanwhile)
    if producer is None:
        producer = _producer(deadline)
        if producer is None:
            release(batch, [row.id for row in batch.rows])
            return
    _send(batch, producer, deadline, timeout)


def _send(batch: Claim, producer: Any, deadline: float, timeout: float) -> None:
    alias = batch.alias
    records = [
        kafka.OutboxRecord(
            row.topic,
            row.message_key.encode(),
            row.payload.encode(),
            kafka.outbox_headers(row.id, row.event_type, row.payload, alias),
        )
        for row in batch.rows
    ]
    outcomes = kafka.send_records(producer, records, max(deadline - time.monotonic(), 0))
    now = timezone.now()
    acked = [row.id for row, out in zip(batch.rows, outcomes, strict=True) if out is None]
    # No answer in time: unknown fate, so no attempt is counted; the relay sends
    # them again soon (Kafka may then hold them twice: at least once).
    unanswered = [
        row.id
        for row, out in zip(batch.rows, outcomes, strict=True)
        if out is not None and kafka.is_timeout(out)
    ]
    failures = [
        Failure(row, describe(out), final=kafka.is_poison(out))
        for row, out in zip(batch.rows, outcomes, strict=True)
        if out is not None and not kafka.is_timeout(out)
    ]
    stats.delivered += record_published(batch, acked, now)
    release(batch, unanswered, now)
    if failures:
        record_failed(batch, failures, now)
    if acked or not unanswered:
        _state.failures = 0
    else:
        _trip(f"no acknowledgement within {timeout:.1f}s")


def _breaker_open() -> bool:
    return time.monotonic() < _state.closed_until


def _trip(reason: str) -> None:
    _state.failures += 1
    pause = backoff_delay(_state.failures, BREAKER_BASE, BREAKER_MAX)
    _state.closed_until = time.monotonic() + pause
    logger.warning(
        "outbox fast path: %s; rows go through the relay for the next %.1fs", reason, pause
    )


def _producer(deadline: float) -> Any:
    """The shared producer, or None (breaker tripped, or no time left)."""
    try:
        return _shared_producer(deadline)
    except Exception as exc:
        _trip(f"cannot reach Kafka ({describe(exc)})")
        return None


def _shared_producer(deadline: float) -> Any:
    """The process's producer, built on first use (or after a fork or a settings change)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not _state.lock.acquire(timeout=remaining):
        return None
    try:
        timeout_ms = max(int(outbox_settings.fast_path_timeout * 1000), 1)
        overrides = {
            "client_id": "django-outbox-fastpath",
            "linger_ms": 0,
            # Bounded waits: building against a dead broker probes its version for
            # bootstrap_timeout_ms, and send() waits max_block_ms for metadata.
            "bootstrap_timeout_ms": timeout_ms,
            "max_block_ms": timeout_ms,
        }
        config_key = repr(sorted(kafka.producer_config(**overrides).items()))
        if _state.producer is not None and (
            _state.pid != os.getpid() or _state.config_key != config_key
        ):
            # A new bootstrap (tests, settings changed) must not reuse the old
            # connections; a producer inherited across fork() is the parent's.
            old, _state.producer = _state.producer, None
            if _state.pid == os.getpid():
                kafka.close_producer(old, timeout=0)
            else:
                kafka.abandon_producer(old)
        if _state.producer is None:
            overrides["bootstrap_timeout_ms"] = max(
                min(timeout_ms, int((deadline - time.monotonic()) * 1000)), 1
            )
            _state.producer = kafka.build_producer(**overrides)
            _state.pid = os.getpid()
            _state.config_key = config_key
            if _state.worker is not None:
                _register_exit_hook()
        return _state.producer
    finally:
        _state.lock.release()
