"""Prometheus metrics of the relay and the consumer (the optional extra ``prometheus``).

Off by default, and then they cost one flag test per handler call and per batch:
nothing listens to the signals. They are on in a process once ``enable()`` ran:
``OUTBOX_METRICS = True`` does it at start-up, ``--metrics-port`` in a worker too.
The counters are signal receivers (``django_outbox.signals``); handler and batch
durations are timed where they happen (``handler_timer``, ``batch_recorded``);
the backlog gauges are refreshed every ``OUTBOX_METRICS_INTERVAL`` seconds by a
thread of the relay (``BacklogRefresher``), never per scrape. Names and labels
are listed in docs/observability.rst.

A worker serves ``/metrics`` itself (``serve``); a web process through
``metrics_view``, which adds up every process's files in prometheus-client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, gunicorn).
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.util
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.utils import timezone
from django.views.decorators.cache import never_cache

from django_outbox import signals
from django_outbox.conf import outbox_settings
from django_outbox.exceptions import ImproperlyConfiguredOutbox

if TYPE_CHECKING:
    from django_outbox.models.claiming import Claim

#: prometheus-client, imported on first use (``_prometheus``): with metrics off (the
#: default) no process pays its import (45-80 ms alone on a 2-core machine, about 20
#: ms of a worker's ``django.setup()``, whose imports share some of its own). None:
#: not installed; everything works, without metrics.
_UNLOADED: Any = object()
prometheus_client: Any = _UNLOADED


def _prometheus() -> Any:
    """The prometheus_client module, imported now if need be; None if not installed."""
    global prometheus_client
    if prometheus_client is _UNLOADED:
        try:
            prometheus_client = importlib.import_module("prometheus_client")
        except ImportError:  # the optional extra is not installed
            prometheus_client = None
    return prometheus_client


logger = logging.getLogger(__name__)

INSTALL = 'pip install "django-outbox[prometheus]"'

#: Seconds: from a millisecond (in-process wake-up) to an hour (a relay that was down).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: Seconds a handler or a relay batch takes.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: The derived states of ``django_outbox_backlog_rows`` (see ``status.py``).
BACKLOG_STATES = ("ready", "scheduled", "backing_off", "in_flight", "dead")

_TYPE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,79}(?=:|$)")


class MetricsUnavailable(ImproperlyConfiguredOutbox):
    """Metrics were asked for, and prometheus-client is not installed."""

    def __init__(self, what: str = "Prometheus metrics need") -> None:
        super().__init__(f"{what} prometheus-client: {INSTALL}")


class _Metrics:
    """The metric objects, created once per process in the default registry."""

    def __init__(self) -> None:
        client = _prometheus()
        assert client is not None
        prefix = "django_outbox_"
        self._create_counters(prefix, client.Counter)
        self._create_histograms(prefix, client.Histogram)
        self._create_gauges(prefix, client.Gauge)

    def _create_counters(self, prefix: str, counter: Any) -> None:
        self.published = counter(f"{prefix}published", "Rows Kafka acknowledged (relay).")
        self.failed = counter(
            f"{prefix}failed",
            "Failed attempts: a row not delivered (relay), a handler that raised (consumer).",
            ["side", "reason"],
        )
        self.dead = counter(f"{prefix}dead", "Rows that became dead.", ["side"])
        self.consumed = counter(f"{prefix}consumed", "Events whose handler ran and committed.")
        self.rejected = counter(
            f"{prefix}rejected", "Records kept as rejected (RejectedRecord).", ["reason"]
        )
        self.on_commit_failed = counter(
            f"{prefix}on_commit_failed",
            "Callbacks a handler registered with transaction.on_commit() that raised.",
            ["event_type"],
        )
        self.ordering_violations = counter(
            f"{prefix}ordering_violations",
            "Records handled after a later record of their key (ordering detector).",
            ["topic"],
        )
        self.consumer_blocked = counter(
            f"{prefix}consumer_blocked",
            "Consumer polls or commits the broker refused (rights, settings, group state); "
            "nothing is skipped meanwhile.",
            ["error"],
        )
        self.dead_letter = counter(
            f"{prefix}dead_letter_copies",
            "Copies of given-up or rejected records for the dead-letter topic, by outcome: "
            "sent, failed, skipped (the topic failed moments ago).",
            ["outcome"],
        )

    def _create_histograms(self, prefix: str, histogram: Any) -> None:
        self.commit_to_published = histogram(
            f"{prefix}commit_to_published_seconds",
            "From a row's created_at to Kafka's acknowledgement, recorded.",
            buckets=LATENCY_BUCKETS,
        )
        self.published_to_consumed = histogram(
            f"{prefix}published_to_consumed_seconds",
            "From the record's Kafka timestamp to its handler's commit.",
            buckets=LATENCY_BUCKETS,
        )
        self.handler_duration = histogram(
            f"{prefix}handler_duration_seconds",
            "Time spent in the handler.",
            ["event_type"],
            buckets=DURATION_BUCKETS,
        )
        #: ``handler_duration.labels(event_type).observe`` by event type (labels() locks).
        self.handler_observers: dict[str, Any] = {}
        self.batch_duration = histogram(
            f"{prefix}relay_batch_duration_seconds",
            "From a relay's claim to the write-back of the batch's outcome.",
            buckets=DURATION_BUCKETS,
        )

    def _create_gauges(self, prefix: str, gauge: Any) -> None:
        # Every relay measures the same table: the latest figure is the one to show.
        self.backlog = gauge(
            f"{prefix}backlog_rows",
            "Outbox rows per derived state, as of the last refresh.",
            ["database", "state"],
            multiprocess_mode="mostrecent",
        )
        self.oldest_due_age = gauge(
            f"{prefix}oldest_due_age_seconds",
            "How long the oldest due row has waited, as of the last refresh (0: none).",
            ["database"],
            multiprocess_mode="mostrecent",
        )
        self.buckets_owned = gauge(
            f"{prefix}relay_buckets_owned",
            "Buckets of the key space a relay owns (relay buckets; docs/relay.rst).",
            ["database", "relay"],
            multiprocess_mode="mostrecent",
        )
        self.refreshed = gauge(
            f"{prefix}backlog_refreshed_timestamp_seconds",
            "When the backlog gauges were last refreshed (Unix time).",
            ["database"],
            multiprocess_mode="mostrecent",
        )


_created: _Metrics | None = None
#: The metrics while enabled, else None (the one test on the hot paths).
_on: _Metrics | None = None
_lock = threading.Lock()
_NOTHING = contextlib.nullcontext()


def available() -> bool:
    """Whether prometheus-client is installed (without importing it, if not yet imported)."""
    if prometheus_client is _UNLOADED:
        return importlib.util.find_spec("prometheus_client") is not None
    return prometheus_client is not None


def enabled() -> bool:
    return _on is not None


def _uid(receiver: Any) -> str:
    return f"django_outbox.ops.metrics.{receiver.__name__}"


def enable() -> None:
    """Turn metrics on in this process (idempotent); ``MetricsUnavailable`` without the package."""
    global _created, _on
    if _prometheus() is None:
        raise MetricsUnavailable()
    with _lock:
        if _created is None:
            _created = _Metrics()
        for signal, receiver in RECEIVERS:
            signal.connect(receiver, weak=False, dispatch_uid=_uid(receiver))
        _on = _created


def enable_from_settings() -> None:
    """``OUTBOX_METRICS = True``: on at start-up (check W020 says when the package is missing)."""
    if outbox_settings.metrics and available():
        enable()


def disable() -> None:
    """Turn metrics off again: the receivers are disconnected, values are kept."""
    global _on
    with _lock:
        for signal, receiver in RECEIVERS:
            signal.disconnect(dispatch_uid=_uid(receiver))
        _on = None


# ------------------------------------------------------------------------ hot-path hooks


class _Timer:
    """Observes the seconds between ``__enter__`` and ``__exit__`` (a failure too)."""

    __slots__ = ("observe", "started")

    def __init__(self, observe: Any) -> None:
        self.observe = observe
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc_info: object) -> None:
        self.observe(time.perf_counter() - self.started)


def handler_timer(event_type: str) -> contextlib.AbstractContextManager[Any]:
    """A context manager timing one handler call (does nothing while metrics are off)."""
    on = _on
    if on is None:
        return _NOTHING
    observe = on.handler_observers.get(event_type)
    if observe is None:
        observe = on.handler_observers[event_type] = on.handler_duration.labels(event_type).observe
    return _Timer(observe)


def batch_recorded(claim: Claim) -> None:
    """A relay batch's outcome is written: observe the time since its claim."""
    on = _on
    if on is not None:
        on.batch_duration.observe(time.monotonic() - claim.claimed_at)


def buckets_owned(alias: str, relay: str, count: int) -> None:
    """A relay's bucket count on ``alias`` after its last tick."""
    on = _on
    if on is not None:
        on.buckets_owned.labels(alias, relay).set(count)


def on_commit_failed(event_type: str) -> None:
    on = _on
    if on is not None:
        on.on_commit_failed.labels(event_type).inc()


def consumer_blocked(error: str) -> None:
    """One poll or commit the broker refused (``kafka.BLOCKED``), by the error's name."""
    on = _on
    if on is not None:
        on.consumer_blocked.labels(error).inc()


def dead_letter_copies(outcome: str, count: int = 1) -> None:
    """``count`` dead-letter copies ``sent``, ``failed`` or ``skipped``."""
    on = _on
    if on is not None:
        on.dead_letter.labels(outcome).inc(count)


def ordering_violation(topic: str) -> None:
    on = _on
    if on is not None:
        on.ordering_violations.labels(topic).inc()


# ------------------------------------------------------------------------ receivers


def reason_of(error: str) -> str:
    """The exception type an error text starts with (``delivery.describe``), else ``other``."""
    found = _TYPE_NAME.match(error)
    return found.group(0) if found else "other"


def _published(sender: Any, rows: Sequence[Any] = (), **kwargs: Any) -> None:
    on = _on
    if on is None or not rows:
        return
    on.published.inc(len(rows))
    now = time.time()
    observe = on.commit_to_published.observe
    for row in rows:
        created = row.created_at
        if created is not None:
            if timezone.is_naive(created):
                created = created.replace(tzinfo=datetime.timezone.utc)
            observe(max(now - created.timestamp(), 0.0))


def _failed(
    sender: Any, errors: Sequence[str] = (), record: Any = None, reason: str = "", **kwargs: Any
) -> None:
    on = _on
    if on is None:
        return
    if record is not None:
        on.failed.labels("consumer", reason or "handler").inc()
        return
    counts: dict[str, int] = {}
    for error in errors:
        name = reason_of(error)
        counts[name] = counts.get(name, 0) + 1
    for name, count in counts.items():
        on.failed.labels("relay", name).inc(count)


def _dead(sender: Any, rows: Sequence[Any] = (), record: Any = None, **kwargs: Any) -> None:
    on = _on
    if on is None:
        return
    if record is not None:
        on.dead.labels("consumer").inc()
    elif rows:
        on.dead.labels("relay").inc(len(rows))


def _consumed(sender: Any, record: Any = None, **kwargs: Any) -> None:
    on = _on
    if on is None:
        return
    on.consumed.inc()
    stamp = getattr(record, "timestamp", None)
    if stamp is not None and stamp > 0:
        on.published_to_consumed.observe(max(time.time() - stamp / 1000, 0.0))


def _rejected(sender: Any, reason: str = "", **kwargs: Any) -> None:
    on = _on
    if on is not None:
        on.rejected.labels(str(reason) or "unknown").inc()


RECEIVERS = (
    (signals.event_published, _published),
    (signals.event_failed, _failed),
    (signals.event_dead, _dead),
    (signals.event_consumed, _consumed),
    (signals.record_rejected, _rejected),
)


# ------------------------------------------------------------------------ the backlog


def refresh_backlog(aliases: Sequence[str], now: datetime.datetime | None = None) -> None:
    """Set the backlog gauges of ``aliases``: index range counts and the oldest due row."""
    from django_outbox.models import OutboxMessage
    from django_outbox.ops.status import oldest_due

    on = _on
    if on is None:
        return
    now = now or timezone.now()
    for alias in aliases:
        rows = OutboxMessage.objects.using(alias)
        counts = {
            "ready": rows.due(now).count(),
            "scheduled": rows.scheduled(now).count(),
            "backing_off": rows.backing_off(now).count(),
            "in_flight": rows.in_flight(now).count(),
            "dead": rows.dead().count(),
        }
        for state, count in counts.items():
            on.backlog.labels(alias, state).set(count)
        found = oldest_due(rows, now)
        age = 0.0 if found is None else max((now - found[0]).total_seconds(), 0.0)
        on.oldest_due_age.labels(alias).set(age)
        on.refreshed.labels(alias).set(time.time())


class BacklogRefresher:
    """A thread that runs ``refresh_backlog`` every ``interval`` seconds until ``stop()``."""

    def __init__(self, aliases: Sequence[str], interval: float) -> None:
        self.aliases = list(aliases)
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-metrics", daemon=True)

    def start(self) -> BacklogRefresher:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    refresh_backlog(self.aliases)
                except Exception as exc:  # metrics must never stop a worker
                    logger.warning("outbox metrics: refreshing the backlog failed: %s", exc)
                finally:
                    # This thread's own connections; a broken one is not kept.
                    for connection in connections.all(initialized_only=True):
                        connection.close()
                self._stop.wait(self.interval)
        finally:
            connections.close_all()


# ------------------------------------------------------------------------ exposition


def scraped_registry() -> Any:
    """The registry to expose: every process's files in multiprocess mode, else this one's."""
    client = _prometheus()
    assert client is not None
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = client.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return registry
    return client.REGISTRY


class MetricsServer:
    """``/metrics`` over HTTP in a thread of a worker (``--metrics-port``)."""

    def __init__(self, port: int, address: str = "0.0.0.0") -> None:
        client = _prometheus()
        if client is None:
            raise MetricsUnavailable("--metrics-port needs")
        self._server, self._thread = client.start_http_server(
            port, address, registry=client.REGISTRY
        )
        self.port = self._server.server_port
        logger.info("outbox metrics: serving http://%s:%d/metrics", address, self.port)
        self._turned_on = not enabled()
        enable()

    def close(self) -> None:
        """Stop serving; metrics go off again if this server turned them on."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        if self._turned_on:
            disable()


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    """``/metrics`` of a web process (see docs/observability.rst to mount and protect it)."""
    client = _prometheus()
    if client is None:
        return HttpResponse(
            f"metrics need prometheus-client: {INSTALL}\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
    return HttpResponse(
        client.generate_latest(scraped_registry()),
        content_type=client.CONTENT_TYPE_LATEST,
    )
