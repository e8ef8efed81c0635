"""OpenTelemetry tracing across the outbox; the only module that imports ``opentelemetry``.

The W3C trace context (``traceparent``, ``tracestate``) travels in the envelope's
``headers``, which the relay copies onto the Kafka record (``kafka.outbox_headers``), so
the Go service and any other reader see it as plain strings. Three kinds of span:

- ``send <topic>`` (PRODUCER), one per row that carries a trace context, a child of the
  publishing span: from the moment the relay handed its batch to the producer to the
  moment Kafka's answer for that row was known. Per row, not per batch: a batch span
  would start a trace of its own, and the request's trace would not show the relay at
  all. Rows without a trace context cost a scan of their headers, nothing more.
- ``process <event_type>`` (CONSUMER), one per call of a handler: for one event a
  child of the publishing span (read from the envelope, so that a record replayed from
  the rejected table continues its trace too); for a batch handler's list one span
  linked to each event's publishing span;
- the handler's own span (INTERNAL), a child of that, current while the handler runs:
  its spans, and events it publishes, join the trace.

Without ``opentelemetry-api`` installed, or while no tracer provider is configured,
every function here returns at its first line and nothing is added anywhere (a trace
context that arrived with a request is still passed on by ``publish_event``: that is
propagation, which needs no SDK).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the optional extra is not installed: tracing is off
    trace = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from django_outbox.envelope import Event

logger = logging.getLogger(__name__)

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_CARRIED = frozenset({TRACEPARENT, TRACESTATE})
#: Names of the instrumentation scope (``otel.scope.name``) and of our own attributes.
SCOPE = "django_outbox"
#: Links of a batch handler's ``process`` span: the SDK keeps 128 by default.
MAX_LINKS = 128

_NULL: AbstractContextManager[Any] = contextlib.nullcontext()
if trace is not None:
    # The W3C format whatever OTEL_PROPAGATORS says: the envelope's contract (and the Go
    # service's reading of it) names these two headers.
    _PROPAGATOR = TraceContextTextMapPropagator()
    _UNCONFIGURED = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
    _cached: tuple[Any, Any] = (None, None)


def tracer() -> Any:
    """The outbox's tracer, or None when tracing is off (no API, no provider configured)."""
    global _cached
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, _UNCONFIGURED):
        return None
    if _cached[0] is not provider:
        _cached = (provider, provider.get_tracer(SCOPE))
    return _cached[1]


def trace_id(headers: Mapping[str, Any]) -> str | None:
    """The trace id (32 hex digits) of the W3C ``traceparent`` in ``headers``, or None.

    Read as text (``version-traceid-spanid-flags``): no SDK needed, and an id of
    all zeros, which the standard calls invalid, is no trace.
    """
    parts = str(headers.get(TRACEPARENT) or "").strip().lower().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or parts[1] == "0" * 32:
        return None
    return parts[1] if all(c in "0123456789abcdef" for c in parts[1]) else None


def with_trace_context(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` plus the current span's ``traceparent``/``tracestate`` (``publish_event``).

    Headers the caller set explicitly are kept as they are.
    """
    if trace is None:
        return headers
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid or TRACEPARENT in headers:
        return headers
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    carrier.update(headers)
    return carrier


def _parent(headers: Mapping[str, Any]) -> Any:
    """The context a span continues: the one in ``headers``, or None if none is valid."""
    try:
        context = _PROPAGATOR.extract(headers)
    except Exception:  # whatever a foreign writer put there: no parent, never an error
        return None
    if not trace.get_current_span(context).get_span_context().is_valid:
        return None
    return context


def _failed(span: Any, exc: BaseException) -> None:
    span.record_exception(exc)
    span.set_status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")


# ---------------------------------------------------------------------------- relay


def record_sends(
    records: Sequence[Any],
    outcomes: Sequence[BaseException | None],
    sent_at: float,
) -> None:
    """One ``send`` span per traced record of a settled batch (``delivery.Sender.settle``).

    ``records`` are ``kafka.OutboxRecord``s, ``outcomes`` their answers (None: acked),
    ``sent_at`` the ``time.monotonic()`` at which the batch went to the producer. The
    spans are made once the answers are known, with the times they would have had.
    """
    otel_tracer = tracer()
    if otel_tracer is None:
        return
    try:
        _record_sends(otel_tracer, records, outcomes, sent_at)
    except Exception:  # a span is never worth a relay's turn
        logger.debug("outbox: recording the relay's send spans failed", exc_info=True)


def _record_sends(
    otel_tracer: Any,
    records: Sequence[Any],
    outcomes: Sequence[BaseException | None],
    sent_at: float,
) -> None:
    now_ns, elapsed = time.time_ns(), time.monotonic() - sent_at
    start_ns = now_ns - int(max(elapsed, 0.0) * 1e9)
    for record, outcome in zip(records, outcomes, strict=True):
        carrier = {name: _text(value) for name, value in record.headers if name in _CARRIED}
        if TRACEPARENT not in carrier:
            continue
        parent = _parent(carrier)
        if parent is None:
            continue
        span = otel_tracer.start_span(
            f"send {record.topic}",
            context=parent,
            kind=trace.SpanKind.PRODUCER,
            start_time=start_ns,
        )
        if span.is_recording():  # not when the sampler dropped the trace: spare the rest
            headers = dict(record.headers)
            span.set_attributes(
                {
                    "messaging.system": "kafka",
                    "messaging.operation.type": "send",
                    "messaging.destination.name": record.topic,
                    "messaging.kafka.message.key": _text(record.key),
                    "messaging.message.id": _text(headers.get("event_id", b"")),
                    "django_outbox.outbox_id": _text(headers.get("outbox_id", b"")),
                    "django_outbox.database": _text(headers.get("outbox_db", b"")),
                }
            )
            if outcome is not None:
                _failed(span, outcome)
        span.end(end_time=now_ns)


def _text(value: Any) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------- consumer


def consuming(
    events: Sequence[Event], alias: str, ok: tuple[type[BaseException], ...] = ()
) -> AbstractContextManager[Any]:
    """The ``process`` span of ``events`` (handled on database ``alias``), current inside.

    One event: a child of its publishing span. A batch handler's list: one span for the
    call, linked to each event's publishing span (a span has one parent; links are how
    OpenTelemetry names a batch's many origins). An exception leaving the block marks
    the span as failed, except those in ``ok``.
    """
    otel_tracer = tracer()
    if otel_tracer is None or not events:
        return _NULL
    first = events[0]
    try:
        attributes: dict[str, str | int] = {
            "messaging.system": "kafka",
            "messaging.operation.type": "process",
            "django_outbox.event_type": first.event_type,
            "django_outbox.database": alias,
        }
        if len(events) == 1:
            attributes["messaging.message.id"] = str(first.event_id)
            span = otel_tracer.start_span(
                f"process {first.event_type}",
                context=_parent(first.headers),
                kind=trace.SpanKind.CONSUMER,
                attributes=attributes,
            )
        else:
            attributes["messaging.batch.message_count"] = len(events)
            span = otel_tracer.start_span(
                f"process {first.event_type}",
                kind=trace.SpanKind.CONSUMER,
                attributes=attributes,
                links=_links(events),
            )
    except Exception:  # a span is never worth an event
        logger.debug("outbox: starting a consumer span failed", exc_info=True)
        return _NULL
    return _current(span, ok)


def _links(events: Sequence[Event]) -> list[Any]:
    links = []
    for event in events[:MAX_LINKS]:
        context = _parent(event.headers)
        if context is not None:
            links.append(trace.Link(trace.get_current_span(context).get_span_context()))
    return links


def handling(handler: Any, events: Sequence[Event]) -> AbstractContextManager[Any]:
    """The span a handler runs in, a child of the current (``process``) span."""
    otel_tracer = tracer()
    if otel_tracer is None or not events:
        return _NULL
    name = getattr(handler, "__qualname__", None) or type(handler).__qualname__
    module = getattr(handler, "__module__", None) or ""
    try:
        span = otel_tracer.start_span(
            str(name),
            attributes={
                "code.function.name": f"{module}.{name}" if module else str(name),
                "django_outbox.event_type": events[0].event_type,
            },
        )
    except Exception:  # a span is never worth an event
        logger.debug("outbox: starting a handler span failed", exc_info=True)
        return _NULL
    return _current(span, ())


@contextlib.contextmanager
def _current(span: Any, ok: tuple[type[BaseException], ...]) -> Iterator[Any]:
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield span
    except BaseException as exc:
        if not isinstance(exc, ok):
            _failed(span, exc)
        raise
    finally:
        otel_context.detach(token)
        span.end()
