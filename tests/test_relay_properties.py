"""Property-based: whatever a row holds, the relay never raises and every row ends settled.

Rows are written straight to the table, as the Go service (or a hand-made INSERT)
may write them: any payload text, any key, any event type. Against the real broker,
each example is one burst: every row must end ``published`` or ``dead`` with a
reason, nothing leased, and every ``published`` row is in Kafka.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from django_outbox.envelope import HEADER_OUTBOX_ID, Event
from django_outbox.models import OutboxMessage, Status
from django_outbox.relay.loop import Relay
from tests.kafka_fixtures import read_topic, topic_record_count

from .relay_support import FAST_FAIL_PRODUCER, IGNORE_LEAKED_SOCKETS

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.slow,
    pytest.mark.django_db(transaction=True),
    pytest.mark.filterwarnings(IGNORE_LEAKED_SOCKETS),
]


def storable(text: str) -> bool:
    """What every database of the suite can hold in a text column: UTF-8, no NUL."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return "\x00" not in text


texts = st.text(max_size=200).filter(storable)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def payloads(draw) -> str:
    """Envelopes as this app writes them, as the Go service may, and anything else."""
    kind = draw(st.sampled_from(["envelope", "reordered", "any json", "any text", "nested"]))
    if kind in ("envelope", "reordered"):
        event = Event(
            event_type="prop.tested",
            data=draw(json_values),
            key="k",
            headers=draw(st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3)),
        )
        document = json.loads(event.to_json())
        if draw(st.booleans()):
            document["event_id"] = draw(
                st.sampled_from(
                    [
                        str(event.event_id).upper(),
                        f"{{{event.event_id}}}",
                        event.event_id.hex,
                        f"urn:uuid:{event.event_id}",
                        draw(st.text(max_size=40)),
                    ]
                )
            )
        # json.dumps escapes lone surrogates (ensure_ascii): always storable text
        return json.dumps(document, sort_keys=kind == "reordered")
    if kind == "any json":
        return json.dumps(draw(json_values))
    if kind == "nested":
        depth = draw(st.integers(min_value=500, max_value=5000))
        return '{"data":' + "[" * depth + "]" * depth + "}"
    return draw(texts)


rows = st.lists(
    st.tuples(
        payloads(),
        st.text(min_size=1, max_size=128).filter(storable),
        st.text(min_size=1, max_size=64).filter(storable),
    ),
    min_size=1,
    max_size=8,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rows=rows)
def test_any_row_ends_published_or_dead_and_the_relay_never_raises(
    rows, settings_fixture, kafka_bootstrap, kafka_topic
):
    OutboxMessage.objects.all().delete()  # examples share the test's table and topic
    made = [
        OutboxMessage.objects.create(
            event_type=event_type, topic=kafka_topic, message_key=key, payload=payload
        )
        for payload, key, event_type in rows
    ]
    Relay(burst=True).run()  # must not raise
    states = dict(OutboxMessage.objects.values_list("pk", "status"))
    assert set(states) == {row.pk for row in made}
    assert set(states.values()) <= {Status.PUBLISHED, Status.DEAD}
    assert not OutboxMessage.objects.in_flight().exists()
    for row in OutboxMessage.objects.dead():
        assert row.last_error  # dead with a reason
    published = {pk for pk, status in states.items() if status == Status.PUBLISHED}
    total = topic_record_count(kafka_bootstrap, kafka_topic)  # this example's and earlier ones
    records = read_topic(kafka_bootstrap, kafka_topic, expected_count=total)
    ours = {int(dict(r.headers)[HEADER_OUTBOX_ID]) for r in records}
    assert published <= ours


@pytest.fixture
def settings_fixture(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_KAFKA_PRODUCER = dict(FAST_FAIL_PRODUCER)
    return settings
