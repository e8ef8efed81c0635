"""The Go service's side of the contract, played by a real Go program (tests/interop/go).

The peer uses the Go service's model verbatim with GORM v1.31 and the MySQL driver, and
franz-go on Kafka. It is built once per test session with ``go`` from PATH. Without Go
these tests are skipped; with ``OUTBOX_REQUIRE_INTEROP=1`` (the CI) a missing Go or a
failed build fails them instead. The table tests need MySQL/MariaDB (the Go service's
database; the model's ``type:longtext`` does not exist on PostgreSQL).
"""

from __future__ import annotations

import base64
import datetime
import io
import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

from django_outbox import Event, publish_event
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import RejectedRecord
from django_outbox.relay.loop import Relay
from tests.consumer_support import consume, registered, unique_group
from tests.legacy import drop_app_tables

MODULE = Path(__file__).resolve().parent / "interop" / "go"
VECTORS = Path(__file__).resolve().parent / "vectors"
SCHEMA = Path(__file__).resolve().parent.parent / "docs" / "envelope.schema.json"
REQUIRED = os.environ.get("OUTBOX_REQUIRE_INTEROP") == "1"
EVENT_TYPE = "interop.go.happened"
SPELLINGS = ["canonical", "upper", "braces", "urn", "hex", "upper-hex", "upper-braces"]
RESERVED = ["event_id", "event_type", "outbox_id", "outbox_db"]
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

mysql_only = pytest.mark.skipif(
    "connection.vendor != 'mysql'", reason="the Go service's table lives on MySQL/MariaDB"
)


def unavailable(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (OUTBOX_REQUIRE_INTEROP=1 makes this a failure)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def go_peer(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The peer, built once per session (the module cache makes later builds fast)."""
    go = shutil.which("go")
    if go is None:
        unavailable("the Go interop tests need `go` (1.26) on PATH")
    binary = tmp_path_factory.mktemp("go-peer") / "peer"
    build = subprocess.run(
        [str(go), "build", "-o", str(binary), "./cmd/peer"],
        cwd=MODULE,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if build.returncode:
        unavailable(f"go build of {MODULE} failed:\n{build.stderr}")
    return binary


def peer(binary: Path, *args: str, stdin: Any = None, env: dict[str, str] | None = None) -> Any:
    """Run one peer subcommand; return its JSON answer."""
    result = subprocess.run(
        [str(binary), *args],
        input=None if stdin is None else json.dumps(stdin, ensure_ascii=False),
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, f"peer {args[0]} failed:\n{result.stderr}"
    return json.loads(result.stdout)


def go_dsn(loc: str = "UTC") -> str:
    """The Go service's DSN for the test database (go-sql-driver/mysql syntax)."""
    config = connection.settings_dict
    host, port = config["HOST"] or "127.0.0.1", config["PORT"] or "3306"
    return (
        f"{config['USER']}:{config['PASSWORD']}@tcp({host}:{port})/{config['NAME']}"
        f"?charset=utf8mb4&parseTime=true&loc={loc}"
    )


def show_create_table() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SHOW CREATE TABLE agent_outbox_messages")
        return cursor.fetchone()[1]


def schema_changes(statements: list[str]) -> list[str]:
    return [
        s for s in statements if s.lstrip().split(" ", 1)[0].upper() in {"ALTER", "CREATE", "DROP"}
    ]


@pytest.fixture
def outbox_config(settings, kafka_bootstrap, kafka_topic):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_TOPICS = {}
    settings.OUTBOX_WAKE_RELAY = False  # the relay sends, when the test says so
    return settings


@pytest.fixture
def handled():
    """Event ids a handler of ``EVENT_TYPE`` saw, in order (repeats included)."""
    seen: list[uuid.UUID] = []
    with registered(EVENT_TYPE, lambda event: seen.append(event.event_id)):
        yield seen


def go_rows(count_per_spelling: int = 1, topic: str = "", orders=("struct", "map")) -> list[dict]:
    """Specs of rows as the Go service writes them: both key orders, every UUID spelling,
    non-ASCII keys and headers, characters encoding/json escapes (<, >, &)."""
    specs = []
    for order in orders:
        for spelling in SPELLINGS:
            for n in range(count_per_spelling):
                specs.append(
                    {
                        "topic": topic,
                        "event_type": EVENT_TYPE,
                        "key": f"会话-{order}-{spelling}-{n}",
                        "headers": {"trace_id": f"追踪-{n}", "来源": "go 服务"},
                        "data": {"text": "你好 <b>&</b> 🙂", "n": n},
                        "spelling": spelling,
                        "order": order,
                    }
                )
    return specs


# ------------------------------------------------------------------ the envelope


def test_the_go_peer_agrees_with_the_vectors(go_peer):
    """docs/envelope.schema.json (checked by a JSON Schema validator) plus the Go service's
    decoding accept exactly the vectors Event.from_json accepts (tests/test_envelope_vectors.py)."""
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    verdicts = peer(
        go_peer, "vectors", "--schema", str(SCHEMA), "--manifest", str(VECTORS / "manifest.json")
    )
    assert [v["file"] for v in verdicts] == [entry["file"] for entry in manifest]
    disagreements = [
        (v["file"], v["error"])
        for v, entry in zip(verdicts, manifest, strict=True)
        if v["valid"] != entry["valid"]
    ]
    assert disagreements == []


# ------------------------------------------------------------------ the DDL


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_gorm_automigrate_creates_the_table_and_fake_initial_adopts_it(go_peer):
    drop_app_tables()
    MigrationRecorder.Migration.objects.filter(app="django_outbox").delete()
    created = peer(go_peer, "automigrate", "--dsn", go_dsn())["statements"]
    assert [s.split("(", 1)[0] for s in schema_changes(created)] == [
        "CREATE TABLE `agent_outbox_messages` "
    ]
    before = show_create_table()

    call_command("migrate", "django_outbox", fake_initial=True, verbosity=0, stdout=io.StringIO())

    assert show_create_table() == before
    assert MigrationRecorder.Migration.objects.filter(app="django_outbox", name="0001_initial")
    assert schema_changes(peer(go_peer, "automigrate", "--dsn", go_dsn())["statements"]) == []


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_gorm_automigrate_changes_nothing_on_the_table_django_migrated(go_peer):
    before = show_create_table()
    statements = peer(go_peer, "automigrate", "--dsn", go_dsn())["statements"]
    # it did look (one query reads every column's type, default and comment)
    assert any("information_schema.columns" in s for s in statements)
    assert schema_changes(statements) == []
    assert show_create_table() == before


# ------------------------------------------------------------------ rows both ways


@pytest.mark.parametrize("spelling", SPELLINGS)
@mysql_only
@pytest.mark.django_db(transaction=True)
def test_go_written_rows_are_relayed_and_consumed_once(
    go_peer, outbox_config, kafka_topic, handled, spelling
):
    specs = [spec for spec in go_rows(2, topic=kafka_topic) if spec["spelling"] == spelling]
    written = peer(go_peer, "write", "--dsn", go_dsn(), stdin=specs)
    assert len(written) == 4
    # the documented key order and encoding/json's sorted map keys
    assert {w["payload"].split(":", 1)[0] for w in written} == {'{"event_id"', '{"data"'}

    Relay(burst=True).run()
    consumer = consume(kafka_topic, unique_group())

    assert consumer.stats.outcomes == {"handled": len(written)}
    assert sorted(map(str, handled)) == sorted(w["canonical_event_id"] for w in written)
    ids = [w["id"] for w in written]
    assert set(OutboxMessage.objects.filter(pk__in=ids).values_list("status", flat=True)) == {
        Status.CONSUMED
    }
    for row in peer(go_peer, "rows", "--dsn", go_dsn(), "--ids", ",".join(map(str, ids))):
        assert row["status"] == "consumed" and row["consumed_at"] and row["published_at"]


def go_time(value: str | None) -> datetime.datetime | None:
    return None if value is None else datetime.datetime.fromisoformat(value)


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_django_rows_read_by_gorm_and_go_status_changes_read_by_django(go_peer, outbox_config):
    plain = publish_event("interop.django", {"x": "<é>"}, key="键-1", headers={"来源": "django"})
    retried = publish_event("interop.django", [1, 2], key="k2", max_retry=3)
    moment = timezone.now() + datetime.timedelta(seconds=30)
    OutboxMessage.objects.filter(pk=retried.pk).update(
        retry_count=2, next_retry_at=moment, last_error="错误 'quoted' \\ back"
    )
    ids = ",".join(str(pk) for pk in (plain.pk, retried.pk))

    go_plain, go_retried = peer(go_peer, "rows", "--dsn", go_dsn(), "--ids", ids)
    for go_row, pk in ((go_plain, plain.pk), (go_retried, retried.pk)):
        row = OutboxMessage.objects.get(pk=pk)
        assert go_row["id"] == row.pk
        assert (go_row["event_type"], go_row["topic"], go_row["message_key"]) == (
            row.event_type,
            row.topic,
            row.message_key,
        )
        assert go_row["payload"] == row.payload  # the string the envelope was written as
        assert go_row["status"] == "pending"
        assert (go_row["retry_count"], go_row["max_retry"]) == (row.retry_count, row.max_retry)
        assert go_row["published_at"] is None and go_row["consumed_at"] is None
        assert go_time(go_row["created_at"]) == row.created_at  # to the millisecond
        assert go_time(go_row["updated_at"]) == row.updated_at
    assert (go_plain["retry_count"], go_plain["max_retry"]) == (0, 20)  # the column defaults
    assert go_plain["next_retry_at"] is None and go_plain["last_error"] is None
    assert (
        go_time(go_retried["next_retry_at"])
        == OutboxMessage.objects.get(pk=retried.pk).next_retry_at
    )
    assert go_retried["last_error"] == "错误 'quoted' \\ back"

    published = peer(
        go_peer, "mark", "--dsn", go_dsn(), "--ids", str(plain.pk), "--status", "published"
    )
    consumed = peer(
        go_peer, "mark", "--dsn", go_dsn(), "--ids", str(retried.pk), "--status", "consumed"
    )
    assert published["updated"] == consumed["updated"] == 1
    millisecond = datetime.timedelta(milliseconds=1)  # MySQL rounds, MariaDB truncates

    row = OutboxMessage.objects.get(pk=plain.pk)
    assert row.status == Status.PUBLISHED
    assert abs(row.published_at - go_time(published["at"])) <= millisecond
    # GORM stamps updated_at itself, a moment after the peer took "at"
    assert row.updated_at >= go_time(published["at"]) - millisecond
    assert row.updated_at > plain.updated_at
    assert row.consumed_at is None
    assert OutboxMessage.objects.published().filter(pk=plain.pk).exists()

    row = OutboxMessage.objects.get(pk=retried.pk)
    assert row.status == Status.CONSUMED
    assert abs(row.consumed_at - go_time(consumed["at"])) <= millisecond
    assert row.retry_count == 2 and row.last_error == "错误 'quoted' \\ back"


# ------------------------------------------------------------------ Kafka both ways


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_relayed_records_read_by_go_are_byte_exact(
    go_peer, outbox_config, kafka_bootstrap, kafka_topic
):
    publish_event(
        EVENT_TYPE, {"text": "<&> é 🙂"}, key="键-django", headers={"来源": "django", "t": "1"}
    )
    publish_event(EVENT_TYPE, None, key="k")
    peer(
        go_peer, "write", "--dsn", go_dsn(), stdin=go_rows(topic=kafka_topic)[:: len(SPELLINGS) - 1]
    )
    rows = {row.pk: row for row in OutboxMessage.objects.all()}
    assert len(rows) == 5

    Relay(burst=True).run()
    records = peer(
        go_peer,
        "read",
        "--brokers",
        kafka_bootstrap,
        "--topic",
        kafka_topic,
        "--count",
        str(len(rows)),
    )

    assert len(records) == len(rows)
    for record in records:
        headers = [(name, base64.b64decode(value)) for name, value in record["headers"]]
        row = rows.pop(int(dict(headers)["outbox_id"]))
        assert base64.b64decode(record["key_b64"]) == row.message_key.encode()
        assert base64.b64decode(record["value_b64"]) == row.payload.encode()
        # documented: the envelope's own headers (its order), then the four reserved ones
        event = row.event
        assert [name for name, _ in headers] == [*event.headers, *RESERVED]
        assert [value.decode() for _, value in headers[: len(event.headers)]] == list(
            event.headers.values()
        )
        reserved = dict(headers[len(event.headers) :])
        assert uuid.UUID(reserved["event_id"].decode()) == event.event_id
        assert reserved["event_type"] == row.event_type.encode()
        assert reserved["outbox_id"] == str(row.pk).encode()
        assert reserved["outbox_db"] == b"default"
        assert record["problems"] == []  # what the Go reader relies on holds
    assert rows == {}


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_trace_context_and_cloudevents_headers_leave_what_go_relies_on(
    go_peer, outbox_config, kafka_bootstrap, kafka_topic
):
    """An active span's traceparent (django_outbox/ops/tracing.py) and the CloudEvents headers
    (OUTBOX_CLOUDEVENTS) are more headers: the Go reader finds everything it reads as before."""
    from opentelemetry import trace

    from tests.tracing_support import installed_provider

    outbox_config.OUTBOX_CLOUDEVENTS = True
    with installed_provider(), trace.get_tracer("tests").start_as_current_span("request"):
        row = publish_event(EVENT_TYPE, {"n": 1}, key="k", headers={"tenant": "t1"})
    assert set(row.event.headers) == {"traceparent", "tenant"}
    Relay(burst=True).run()
    (record,) = peer(
        go_peer, "read", "--brokers", kafka_bootstrap, "--topic", kafka_topic, "--count", "1"
    )
    headers = {name: base64.b64decode(value).decode() for name, value in record["headers"]}
    assert headers["traceparent"] == row.event.headers["traceparent"]
    assert headers["ce_id"] == str(row.event.event_id)
    assert record["problems"] == []


def produce(
    go_peer: Path, bootstrap: str, topic: str, records: list[dict], codec: str = ""
) -> dict:
    args = ["produce", "--brokers", bootstrap, "--topic", topic]
    return peer(go_peer, *args, *(["--codec", codec] if codec else []), stdin=records)


def envelope(n: int, padding: int = 0) -> Event:
    return Event(event_type=EVENT_TYPE, data={"n": n, "pad": "ab" * padding}, key=f"k-{n}")


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_headerless_records_from_a_go_producer_are_handled_once(
    go_peer, outbox_config, kafka_bootstrap, kafka_topic, handled
):
    events = [envelope(n) for n in range(3)]
    records = [{"key": e.key, "value": e.to_json()} for e in events]
    produce(go_peer, kafka_bootstrap, kafka_topic, records + records[:1], codec="none")

    group = unique_group()
    consume(kafka_topic, group)

    assert sorted(handled) == sorted(e.event_id for e in events)
    assert not RejectedRecord.objects.filter(consumer_group=group).exists()


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_a_go_relay_beside_ours_its_records_end_the_rows_consumed(
    go_peer, outbox_config, kafka_bootstrap, kafka_topic, handled
):
    """Rollout step: the Go relay still sends (key and value, no headers), Django consumes."""
    written = peer(
        go_peer, "write", "--dsn", go_dsn(), stdin=go_rows(topic=kafka_topic, orders=("struct",))
    )
    ids = ",".join(str(w["id"]) for w in written)
    produce(
        go_peer,
        kafka_bootstrap,
        kafka_topic,
        [{"key": json.loads(w["payload"])["key"], "value": w["payload"]} for w in written],
    )
    peer(go_peer, "mark", "--dsn", go_dsn(), "--ids", ids, "--status", "published")

    consume(kafka_topic, unique_group())

    assert sorted(map(str, handled)) == sorted(w["canonical_event_id"] for w in written)
    statuses = OutboxMessage.objects.filter(pk__in=[w["id"] for w in written]).values_list(
        "status", flat=True
    )
    assert set(statuses) == {Status.CONSUMED}


@pytest.mark.parametrize("codec", CODECS)
@mysql_only
@pytest.mark.django_db(transaction=True)
def test_compressed_records_from_a_go_producer_are_handled_once(
    go_peer, outbox_config, kafka_bootstrap, kafka_topic, handled, codec
):
    events = [envelope(n, padding=200) for n in range(4)]  # compressible, so franz-go compresses
    records = [
        {
            "key": e.key,
            "value": e.to_json(),
            "headers": [["event_id", str(e.event_id)], ["event_type", e.event_type]],
        }
        for e in events
    ]
    sent = produce(go_peer, kafka_bootstrap, kafka_topic, records, codec=codec)
    assert sent["batches_by_codec"] == {codec: len(events)}  # really sent with that codec

    group = unique_group()
    consumer = consume(kafka_topic, group)

    assert sorted(handled) == sorted(e.event_id for e in events)
    assert consumer.stats.outcomes == {"handled": len(events)}


# ------------------------------------------------------------------ time zones


@mysql_only
@pytest.mark.django_db(transaction=True)
def test_a_loc_local_go_writer_off_utc_shifts_every_time_it_stores(go_peer, outbox_config):
    """What docs/go-service.rst says about the DSN: ``loc=UTC`` agrees with Django,
    ``loc=Local`` on a host at UTC+8 writes (and reads) times eight hours off."""
    spec = go_rows(orders=("struct",))[:1]
    shanghai = {"TZ": "Asia/Shanghai"}
    millisecond, eight_hours = datetime.timedelta(milliseconds=1), datetime.timedelta(hours=8)

    before = timezone.now()
    (utc,) = peer(go_peer, "write", "--dsn", go_dsn("UTC"), stdin=spec, env=shanghai)
    (local,) = peer(go_peer, "write", "--dsn", go_dsn("Local"), stdin=spec, env=shanghai)
    after = timezone.now()

    utc_row = OutboxMessage.objects.get(pk=utc["id"])
    local_row = OutboxMessage.objects.get(pk=local["id"])
    assert before - millisecond <= utc_row.created_at <= after
    # Django reads the Go service's wall-clock time as UTC: eight hours in the future
    assert before + eight_hours - millisecond <= local_row.created_at <= after + eight_hours

    # and such a Go service reads Django's UTC times as Shanghai's: eight hours early
    django_row = publish_event(EVENT_TYPE, {}, key="k")
    (seen,) = peer(
        go_peer, "rows", "--dsn", go_dsn("Local"), "--ids", str(django_row.pk), env=shanghai
    )
    assert seen["created_at"].endswith("+08:00")
    assert go_time(seen["created_at"]) == django_row.created_at - eight_hours
