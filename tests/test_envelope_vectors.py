"""The shared envelope vectors (tests/vectors/): what Event.from_json makes of each.

The Go peer reads the same files (test_the_go_peer_agrees_with_the_vectors in test_interop_go.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from django_outbox.envelope import Event
from django_outbox.exceptions import MalformedEvent

VECTORS = Path(__file__).resolve().parent / "vectors"
MANIFEST = json.loads((VECTORS / "manifest.json").read_text())
SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "docs" / "envelope.schema.json").read_text()
)


def by_name(entries):
    return pytest.mark.parametrize("vector", entries, ids=[Path(e["file"]).stem for e in entries])


@by_name([entry for entry in MANIFEST if entry["valid"]])
def test_valid_vectors_parse_to_the_normalised_event(vector):
    raw = (VECTORS / vector["file"]).read_bytes()
    event = Event.from_json(raw)
    assert str(event.event_id) == vector["event_id"]
    assert event.as_dict()["occurred_at"] == vector["occurred_at"]
    assert Event.from_json(raw.decode()) == event  # str and bytes alike
    assert Event.from_json(event.to_json()) == event  # and what we write back reads the same


@by_name([entry for entry in MANIFEST if not entry["valid"]])
def test_invalid_vectors_raise_malformed_event_with_their_error(vector):
    raw = (VECTORS / vector["file"]).read_bytes()
    for text in (raw, raw.decode()):
        with pytest.raises(MalformedEvent) as info:
            Event.from_json(text)
        assert vector["error"] in str(info.value)


def test_every_vector_file_is_in_the_manifest_and_both_kinds_are_there():
    files = {str(p.relative_to(VECTORS)) for p in VECTORS.glob("*/*.json")}
    assert files == {entry["file"] for entry in MANIFEST}
    assert {entry["valid"] for entry in MANIFEST} == {True, False}


def test_the_schema_requires_what_the_parser_requires():
    from django_outbox.envelope import FIELDS, MAX_EVENT_TYPE_LENGTH, MAX_KEY_LENGTH

    assert SCHEMA["required"] == list(FIELDS)
    assert set(SCHEMA["properties"]) == set(FIELDS)
    assert SCHEMA["properties"]["event_type"]["maxLength"] == MAX_EVENT_TYPE_LENGTH
    assert SCHEMA["properties"]["key"]["maxLength"] == MAX_KEY_LENGTH
    assert "additionalProperties" not in SCHEMA  # unknown keys are allowed


def test_a_lone_surrogate_in_a_str_is_malformed_too():
    # the surrogate itself, not its escape: in a str, and in bytes that are not UTF-8
    # but that json.loads decodes anyway (it uses "surrogatepass")
    raw = (VECTORS / "valid" / "documented-order.json").read_text().replace("hello", "\ud800")
    for text in (raw, raw.encode("utf-8", "surrogatepass")):
        with pytest.raises(MalformedEvent, match="lone UTF-16 surrogate"):
            Event.from_json(text)
