"""Delivery right after commit, from the process that committed (the "fast path").

``publish_event()`` registers ``deliver_after_commit(alias, ids)`` with
``transaction.on_commit``. It claims those rows exactly like the relay (same
lease, same fences), sends them with one producer shared by the whole process,
waits at most ``OUTBOX_FAST_PATH_TIMEOUT`` seconds for the acks and records the
outcome. It never raises: whatever it could not deliver stays for the relay.

The cost to the request is bounded: the producer is built with
``bootstrap_timeout_ms`` / ``max_block_ms`` equal to the timeout, and after a
failure to reach Kafka the fast path stays off for a while (a circuit breaker,
1 s doubling up to 30 s), so a dead broker costs one request about the timeout,
and the next ones nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

from django.utils import timezone

from . import kafka
from .backoff import backoff_delay
from .claiming import Failure, claim, record_failed, record_published, release
from .conf import outbox_settings
from .relay import describe

logger = logging.getLogger(__name__)

#: The circuit breaker's pause after a failure to reach Kafka: 1 s, doubling to 30 s.
BREAKER_BASE = 1.0
BREAKER_MAX = 30.0


class _State:
    """The process-wide producer and circuit breaker (guarded by ``lock``)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.producer: Any = None
        self.config_key: str | None = None
        self.pid: int | None = None
        self.closed_until = 0.0  # time.monotonic() before which the fast path is off
        self.failures = 0


_state = _State()


def deliver_after_commit(alias: str, ids: Sequence[int]) -> None:
    """Deliver the rows ``ids`` of ``alias`` now; never raises (the relay is the fallback)."""
    try:
        _deliver(alias, list(ids))
    except Exception:
        logger.exception("outbox fast path failed; the relay will deliver %s on %r", ids, alias)


def reset_producer() -> None:
    """Close the shared producer and forget breaker state (tests, or after settings change)."""
    with _state.lock:
        producer, _state.producer = _state.producer, None
        _state.config_key = None
        _state.closed_until = 0.0
        _state.failures = 0
    if producer is not None:
        kafka.close_producer(producer, timeout=0)


def _deliver(alias: str, ids: list[int]) -> None:
    if not ids or not outbox_settings.fast_path:
        return
    timeout = outbox_settings.fast_path_timeout
    deadline = time.monotonic() + timeout
    if time.monotonic() < _state.closed_until:
        logger.debug("outbox fast path paused after a Kafka failure; %d row(s) left", len(ids))
        return
    batch = claim(alias, outbox_settings.batch_size, outbox_settings.lease_seconds, ids=ids)
    if not batch.rows:
        return  # already taken by a relay (or rolled back meanwhile)
    claimed = [row.id for row in batch.rows]
    try:
        producer = _shared_producer(deadline)
    except Exception as exc:
        release(batch, claimed)
        _trip(f"cannot reach Kafka ({describe(exc)})")
        return
    if producer is None:  # another thread was building it and the time ran out
        release(batch, claimed)
        return
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
    record_published(batch, acked, now)
    release(batch, unanswered, now)
    if failures:
        record_failed(batch, failures, now)
    if acked or not unanswered:
        _state.failures = 0
    else:
        _trip(f"no acknowledgement within {timeout:.1f}s")


def _trip(reason: str) -> None:
    _state.failures += 1
    pause = backoff_delay(_state.failures, BREAKER_BASE, BREAKER_MAX)
    _state.closed_until = time.monotonic() + pause
    logger.warning(
        "outbox fast path: %s; rows go through the relay for the next %.1fs", reason, pause
    )


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
            # A producer's threads do not survive fork(); a new bootstrap (tests,
            # settings changed) must not reuse the old connections.
            old, _state.producer = _state.producer, None
            if _state.pid == os.getpid():
                kafka.close_producer(old, timeout=0)
        if _state.producer is None:
            overrides["bootstrap_timeout_ms"] = max(
                min(timeout_ms, int((deadline - time.monotonic()) * 1000)), 1
            )
            _state.producer = kafka.build_producer(**overrides)
            _state.pid = os.getpid()
            _state.config_key = config_key
        return _state.producer
    finally:
        _state.lock.release()
