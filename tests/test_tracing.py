"""Tracing across the outbox (django_outbox/ops/tracing.py) with the OpenTelemetry SDK.

The chain runs on the real broker: a request span publishes, the in-process relay sends,
the in-process consumer handles; the in-memory exporter shows how the spans hang together.
"""

from __future__ import annotations

import time

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from django_outbox import publish_event
from django_outbox.consumer import Delivery, Handling, Outcome
from django_outbox.kafka import KafkaTimeoutError
from django_outbox.models import OutboxMessage, Status
from django_outbox.ops import tracing
from django_outbox.relay.loop import Relay
from django_outbox.relay.send import build_record
from tests.kafka_fixtures import read_topic

from .consumer_support import consume, registered, unique_group
from .relay_support import IGNORE_LEAKED_SOCKETS, fresh_python
from .tracing_support import by_name, installed_provider, parent_of

EVENT = "test.traced"
FOLLOW_UP = "test.traced.follow-up"

pytestmark = pytest.mark.django_db(transaction=True)
on_the_broker = [pytest.mark.kafka, pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)]


@pytest.fixture
def spans():
    with installed_provider() as exporter:
        yield exporter


def traceparent_of(span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


def delivery_of(record, offset: int = 0) -> Delivery:
    return Delivery(record.topic, 0, offset, record.key, record.value, tuple(record.headers))


# --------------------------------------------------------------------------- the whole chain


@pytest.mark.parametrize("path", ["local row", "inbox"])
@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_one_trace_from_the_request_through_the_relay_to_the_handler(
    relay_settings, kafka_bootstrap, spans, path
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    seen = []

    def on_traced(event):
        seen.append(trace.get_current_span())
        publish_event(FOLLOW_UP, {"after": str(event.event_id)})  # joins the trace too

    with trace.get_tracer("tests").start_as_current_span("request") as request:
        with transaction.atomic():
            row = publish_event(EVENT, {"n": 1}, key="k", headers={"tenant": "t1"})
    assert row.event.headers == {"traceparent": traceparent_of(request), "tenant": "t1"}

    Relay(burst=True).run()
    (record,) = read_topic(kafka_bootstrap, topic, expected_count=1)
    assert dict(record.headers)["traceparent"] == traceparent_of(request).encode()

    group = unique_group()
    owning = group if path == "local row" else "another-service"
    with registered(EVENT, on_traced):
        consumer = consume(topic, group, owning_group=owning)
    assert consumer.stats.count(Outcome.HANDLED) == 1, consumer.stats

    finished = spans.get_finished_spans()
    (send,) = by_name(finished, f"send {topic}")
    (process,) = by_name(finished, f"process {EVENT}")
    (handler,) = [span for span in finished if span.name.endswith("on_traced")]
    request_id = request.get_span_context().span_id
    trace_id = request.get_span_context().trace_id
    assert {span.context.trace_id for span in (send, process, handler)} == {trace_id}
    assert parent_of(send) == request_id
    assert parent_of(process) == request_id
    assert parent_of(handler) == process.context.span_id
    assert (send.kind, process.kind, handler.kind) == (
        SpanKind.PRODUCER,
        SpanKind.CONSUMER,
        SpanKind.INTERNAL,
    )
    assert send.attributes["messaging.destination.name"] == topic
    assert send.attributes["django_outbox.outbox_id"] == str(row.pk)
    assert send.attributes["messaging.message.id"] == str(row.event.event_id)
    assert send.status.status_code is StatusCode.UNSET
    assert send.start_time <= send.end_time
    assert process.attributes["messaging.message.id"] == str(row.event.event_id)
    assert process.status.status_code is StatusCode.UNSET
    # The handler ran inside its span; what it published continues the trace from there.
    assert [span.get_span_context().span_id for span in seen] == [handler.context.span_id]
    follow_up = OutboxMessage.objects.get(event_type=FOLLOW_UP)
    assert follow_up.event.headers["traceparent"] == traceparent_of(seen[0])


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_a_batch_handler_runs_in_one_process_span_linked_to_each_request(
    relay_settings, kafka_bootstrap, spans
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    calls = []

    def on_many(events):
        calls.append((len(events), trace.get_current_span()))

    requests = []
    for n in range(3):
        with trace.get_tracer("tests").start_as_current_span(f"request {n}") as request:
            with transaction.atomic():
                publish_event(EVENT, {"n": n}, key=f"k{n}")
        requests.append(request)
    Relay(burst=True).run()
    read_topic(kafka_bootstrap, topic, expected_count=3)

    group = unique_group()
    with registered(EVENT, on_many, batch=True):
        consumer = consume(topic, group, owning_group=group)
    assert consumer.stats.count(Outcome.HANDLED) == 3, consumer.stats
    assert sum(size for size, _ in calls) == 3

    finished = spans.get_finished_spans()
    processes = by_name(finished, f"process {EVENT}")
    handlers = [span for span in finished if span.name.endswith("on_many")]
    assert len(processes) == len(handlers) == len(calls)
    linked = {link.context.span_id for process in processes for link in process.links}
    assert linked | {parent_of(p) for p in processes if p.parent} >= {
        r.get_span_context().span_id for r in requests
    }
    for process, handler in zip(processes, handlers, strict=True):
        assert parent_of(handler) == process.context.span_id
    assert {span.get_span_context().span_id for _, span in calls} == {
        h.context.span_id for h in handlers
    }


def test_a_failing_handler_marks_its_span_and_the_process_span_as_failed(settings, spans):
    settings.OUTBOX_CONSUMER_GROUP = "g"

    def refuse(event):
        raise ValueError("no thanks")

    with trace.get_tracer("tests").start_as_current_span("request"):
        row = publish_event(EVENT, {}, topic="t")
    with registered(EVENT, refuse):
        result = Handling("g").handle(delivery_of(build_record(row, "default")))
    assert result.outcome is Outcome.RETRY
    (process,) = by_name(spans.get_finished_spans(), f"process {EVENT}")
    (handler,) = [s for s in spans.get_finished_spans() if s.name.endswith("refuse")]
    for span in (process, handler):
        assert span.status.status_code is StatusCode.ERROR
        assert "no thanks" in span.status.description
    assert [event.name for event in handler.events] == ["exception"]


def test_a_duplicate_is_not_an_error_of_the_process_span(settings, spans):
    settings.OUTBOX_CONSUMER_GROUP = "owner"  # the events go through the inbox
    with trace.get_tracer("tests").start_as_current_span("request"):
        row = publish_event(EVENT, {}, topic="t")
    delivery = delivery_of(build_record(row, "default"))
    with registered(EVENT, lambda event: None):
        assert Handling("g").handle(delivery).outcome is Outcome.HANDLED
        assert Handling("g").handle(delivery).outcome is Outcome.DUPLICATE
    statuses = [
        s.status.status_code for s in by_name(spans.get_finished_spans(), f"process {EVENT}")
    ]
    assert StatusCode.ERROR not in statuses


def test_a_send_that_failed_is_a_failed_span_as_long_as_the_send_took(spans):
    with trace.get_tracer("tests").start_as_current_span("request") as request:
        row = publish_event(EVENT, {}, topic="t")
    untraced = publish_event(EVENT, {}, topic="t")
    records = [build_record(row, "default"), build_record(untraced, "default")]
    before = time.time_ns()
    tracing.record_sends(records, [KafkaTimeoutError("no answer"), None], time.monotonic() - 0.5)
    (send,) = by_name(spans.get_finished_spans(), "send t")  # the untraced row has none
    assert parent_of(send) == request.get_span_context().span_id
    assert send.status.status_code is StatusCode.ERROR
    assert "no answer" in send.status.description
    assert 0.4e9 < send.end_time - send.start_time < 5e9
    assert send.start_time < before


def test_the_trace_context_keeps_its_tracestate(spans):
    remote = TraceContextTextMapPropagator().extract(
        {
            "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "tracestate": "vendor=opaque,other=1",
        }
    )
    with trace.get_tracer("tests").start_as_current_span("request", context=remote):
        row = publish_event(EVENT, {}, topic="t")
    headers = row.event.headers
    assert headers["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
    assert headers["tracestate"] == "vendor=opaque,other=1"


def test_a_traceparent_the_caller_set_is_kept(spans):
    mine = "00-11111111111111111111111111111111-2222222222222222-01"
    with trace.get_tracer("tests").start_as_current_span("request"):
        row = publish_event(EVENT, {}, topic="t", headers={"traceparent": mine})
    assert row.event.headers == {"traceparent": mine}


# --------------------------------------------------------------------------- no tracing


def test_without_a_tracer_provider_nothing_is_traced_or_added():
    assert tracing.tracer() is None
    with trace.get_tracer("tests").start_as_current_span("request"):
        row = publish_event(EVENT, {}, topic="t")
    assert row.event.headers == {}
    assert tracing.consuming([row.event], "default") is tracing._NULL
    assert tracing.handling(print, [row.event]) is tracing._NULL
    tracing.record_sends(None, None, 0.0)  # type: ignore[arg-type]  # returns before reading


def test_without_opentelemetry_installed_publish_and_handling_go_on():
    script = """
import sys
sys.modules["opentelemetry"] = None  # as if the [otel] extra were not installed
import django
django.setup()
from django_outbox.ops import tracing
from django_outbox.envelope import Event
assert tracing.trace is None and tracing.tracer() is None
headers = {"a": "b"}
assert tracing.with_trace_context(headers) is headers
event = Event("t", {}, "k")
assert tracing.consuming([event], "default") is tracing._NULL
assert tracing.handling(print, [event]) is tracing._NULL
tracing.record_sends(None, None, 0.0)
print("ok")
"""
    assert fresh_python(script) == "ok"


# --------------------------------------------------------------------------- bad input

#: Trace headers as anyone may have written them: valid, near misses, anything at all.
VALID = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
NEAR_MISSES = [
    "",
    " ",
    VALID.upper(),
    VALID[:-1],
    VALID + "-extra",
    "ff" + VALID[2:],
    "00-00000000000000000000000000000000-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
    "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future",
    "x" * 600,
]
near_misses = st.sampled_from(NEAR_MISSES)
trace_headers = st.one_of(near_misses, st.text(max_size=80))


@given(traceparent=trace_headers, tracestate=st.one_of(st.none(), trace_headers))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_any_trace_header_leaves_delivery_and_handling_alone(
    spans, settings, traceparent, tracestate
):
    settings.OUTBOX_CONSUMER_GROUP = "g"
    headers = {"traceparent": traceparent}
    if tracestate is not None:
        headers["tracestate"] = tracestate
    handled = []
    row = publish_event(EVENT, {"n": 1}, topic="t", headers=headers)
    record = build_record(row, "default")
    assert dict(record.headers)["traceparent"] == traceparent.encode()
    tracing.record_sends([record], [None], time.monotonic())
    with registered(EVENT, handled.append):
        result = Handling("g").handle(delivery_of(record))
    assert result.outcome is Outcome.HANDLED
    assert [event.event_id for event in handled] == [row.event.event_id]
    assert OutboxMessage.objects.get(pk=row.pk).status == Status.CONSUMED
    spans.clear()


@pytest.mark.kafka
@pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS)
def test_garbage_trace_headers_are_relayed_and_handled_on_the_broker(
    relay_settings, kafka_bootstrap, spans
):
    topic = relay_settings.OUTBOX_DEFAULT_TOPIC
    values = [*NEAR_MISSES, "\x00\n\u2028", "é" * 40, "{}"]
    rows = [
        publish_event(EVENT, {"n": n}, key=f"k{n}", headers={"traceparent": v, "tracestate": v})
        for n, v in enumerate(values)
    ]
    Relay(burst=True).run()
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.PUBLISHED}
    handled = []
    group = unique_group()
    with registered(EVENT, handled.append):
        consume(topic, group)
    assert sorted(event.data["n"] for event in handled) == list(range(len(rows)))
    assert set(OutboxMessage.objects.values_list("status", flat=True)) == {Status.CONSUMED}
    # Only a traceparent that reads as one continued its trace; the others started none.
    propagator = TraceContextTextMapPropagator()
    readable = {
        str(row.pk)
        for row, value in zip(rows, values, strict=True)
        if trace.get_current_span(propagator.extract({"traceparent": value}))
        .get_span_context()
        .is_valid
    }
    assert readable  # the future version's form, at least
    sends = by_name(spans.get_finished_spans(), f"send {topic}")
    assert {span.attributes["django_outbox.outbox_id"] for span in sends} == readable
