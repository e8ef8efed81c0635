"""The one module that imports the Kafka client (kafka-python).

With ``OUTBOX_KAFKA_CLIENT = "confluent"`` the relay's producer is librdkafka's
instead (``kafka_confluent``, imported from here on first use only); the consumer
and every other client stay kafka-python.

Everything else asks this module for clients, built from the ``OUTBOX_*``
settings, and for the record format (key, value, headers) of an outbox row.
"""

from __future__ import annotations

import json
import re
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import errors as kafka_errors
from kafka.admin import NewTopic
from kafka.errors import (
    InvalidRecordError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from django_outbox import cloudevents
from django_outbox.conf import outbox_settings
from django_outbox.envelope import (
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_OUTBOX_DB,
    HEADER_OUTBOX_ID,
    RESERVED_HEADERS,
)

if TYPE_CHECKING:
    from django_outbox.models import OutboxMessage

__all__ = [
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_OUTBOX_DB",
    "HEADER_OUTBOX_ID",
    "RESERVED_HEADERS",
    "KafkaConnectionError",
    "KafkaError",
    "KafkaTimeoutError",
    "NewTopic",
    "OffsetAndMetadata",
    "TopicPartition",
    "build_admin",
    "build_consumer",
    "build_producer",
    "build_relay_producer",
    "close_producer",
    "is_poison",
    "outbox_headers",
    "await_acks",
    "record_headers",
    "send_batch",
    "send_records",
    "Sending",
    "OutboxRecord",
]

#: What the outbox needs from a producer; OUTBOX_KAFKA_PRODUCER may override the rest.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable_idempotence": True,
    "linger_ms": 5,
    "client_id": "django-outbox-relay",
    # kafka-python waits 30-120 s by default; a relay must give up well within its
    # lease (OUTBOX_LEASE_SECONDS, 60 s), so that it records the failure itself.
    "bootstrap_timeout_ms": 10_000,
    "max_block_ms": 10_000,
    "request_timeout_ms": 10_000,
    "delivery_timeout_ms": 30_000,
    # A batch of 500 rows of ~1 KB fills 16 KB batches in no time; bigger batches
    # mean fewer produce requests per relay batch.
    "batch_size": 256 * 1024,
}

CONSUMER_DEFAULTS: dict[str, Any] = {
    "enable_auto_commit": False,
    "auto_offset_reset": "earliest",
    "client_id": "django-outbox-consumer",
}


def _bootstrap() -> list[str]:
    return outbox_settings.kafka_bootstrap_servers


def producer_config(**overrides: Any) -> dict[str, Any]:
    config = {"bootstrap_servers": _bootstrap(), **PRODUCER_DEFAULTS}
    config.update(outbox_settings.kafka_producer)
    config.update(overrides)
    return config


def build_producer(**overrides: Any) -> KafkaProducer:
    """A producer with ``acks='all'`` and idempotence, plus ``OUTBOX_KAFKA_PRODUCER``.

    Raises ``KafkaTimeoutError`` when no broker answers within ``bootstrap_timeout_ms``.
    """
    config = producer_config(**overrides)
    make_client = config.get("kafka_client", KafkaProducer.DEFAULT_CONFIG["kafka_client"])
    clients: list[Any] = []

    def tracked_client(**kwargs: Any) -> Any:
        client = make_client(**kwargs)
        clients.append(client)
        return client

    try:
        return KafkaProducer(**{**config, "kafka_client": tracked_client})
    except BaseException:
        # kafka-python leaves the network client of a failed constructor open: two
        # sockets per attempt, which a relay retrying against a dead broker would leak.
        for client in clients:
            try:
                client.close()
            except Exception:
                pass
        raise


# ------------------------------------------------------------- the librdkafka transport

#: kafka-python producer options (OUTBOX_KAFKA_PRODUCER, PRODUCER_DEFAULTS) and their
#: librdkafka names, for ``OUTBOX_KAFKA_CLIENT = "confluent"``.
CONFLUENT_NAMES: dict[str, str] = {
    "bootstrap_servers": "bootstrap.servers",
    "client_id": "client.id",
    "acks": "acks",
    "enable_idempotence": "enable.idempotence",
    "linger_ms": "linger.ms",
    "batch_size": "batch.size",
    "request_timeout_ms": "request.timeout.ms",
    "delivery_timeout_ms": "delivery.timeout.ms",
    "compression_type": "compression.type",
    "max_in_flight_requests_per_connection": "max.in.flight.requests.per.connection",
    "retry_backoff_ms": "retry.backoff.ms",
    "reconnect_backoff_ms": "reconnect.backoff.ms",
    "reconnect_backoff_max_ms": "reconnect.backoff.max.ms",
    "max_request_size": "message.max.bytes",
    "connections_max_idle_ms": "connections.max.idle.ms",
    "metadata_max_age_ms": "metadata.max.age.ms",
    "security_protocol": "security.protocol",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_plain_username": "sasl.username",
    "sasl_plain_password": "sasl.password",
    "ssl_cafile": "ssl.ca.location",
    "ssl_certfile": "ssl.certificate.location",
    "ssl_keyfile": "ssl.key.location",
    "ssl_password": "ssl.key.password",
}
#: kafka-python options that mean nothing to librdkafka (it connects lazily and never
#: blocks ``produce``): left out.
CONFLUENT_IGNORED = frozenset(
    {"bootstrap_timeout_ms", "max_block_ms", "kafka_client", "api_version", "retries"}
)


def kafka_client() -> str:
    """``OUTBOX_KAFKA_CLIENT``: ``"kafka-python"`` (default) or ``"confluent"``."""
    return outbox_settings.kafka_client


def confluent_available() -> bool:
    """True when confluent-kafka can be imported (the ``confluent`` extra)."""
    import importlib.util

    return importlib.util.find_spec("confluent_kafka") is not None


def untranslatable_options(options: dict[str, Any]) -> list[str]:
    """The kafka-python producer options that have no librdkafka name here."""
    return sorted(k for k in options if k not in CONFLUENT_NAMES and k not in CONFLUENT_IGNORED)


def confluent_config(**overrides: Any) -> dict[str, Any]:
    """``producer_config`` in librdkafka's names, then ``OUTBOX_CONFLUENT_OPTIONS`` on top.

    Raises ``ValueError`` for a kafka-python option without a librdkafka name (check
    ``django_outbox.E081`` says so at start-up).
    """
    config = producer_config(**overrides)
    unknown = untranslatable_options(config)
    if unknown:
        raise ValueError(
            f"OUTBOX_KAFKA_PRODUCER option(s) {unknown} have no librdkafka name; "
            "give them in librdkafka's names in OUTBOX_CONFLUENT_OPTIONS"
        )
    translated: dict[str, Any] = {}
    for name, value in config.items():
        if name in CONFLUENT_IGNORED:
            continue
        if name == "bootstrap_servers" and not isinstance(value, str):
            value = ",".join(value)
        if name == "acks" and value == "all":
            value = -1
        translated[CONFLUENT_NAMES[name]] = value
    # The idempotent producer keeps key order with up to 5 requests in flight.
    translated.setdefault("max.in.flight.requests.per.connection", 5)
    translated.update(outbox_settings.confluent_options)
    return translated


#: librdkafka's own (negative) error codes that say the record itself is at fault.
_CONFLUENT_POISON = {"_MSG_SIZE_TOO_LARGE": MessageSizeTooLargeError}


def _confluent_error(
    name: str, code: int, text: str, retriable: bool, fatal: bool
) -> BaseException:
    """A librdkafka error as the exception the kafka-python path would have met.

    A broker's error code is Kafka's own, so it maps to kafka-python's class for it
    (``MessageSizeTooLargeError``, ``TopicAuthorizationFailedError``...), and
    ``is_poison``/``is_transport_error`` judge it the same. librdkafka's local errors
    (timeouts, transport, all brokers down, purged, unknown topic) are of unknown
    fate, except a record too large for the client's own limit.
    """
    message = f"{name}: {text}"
    if fatal:  # the idempotent producer gave up: a definite error, the producer replaced
        return KafkaError(f"fatal producer error {message}")
    if code > 0:
        return kafka_errors.for_code(code)(message)
    poison = _CONFLUENT_POISON.get(name)
    if poison is not None:
        return poison(message)
    return KafkaTimeoutError(message)


def build_relay_producer(**overrides: Any) -> Any:
    """The relay's producer: ``build_producer`` or, with ``OUTBOX_KAFKA_CLIENT = "confluent"``,
    a librdkafka producer with the same settings (see ``confluent_config``)."""
    if kafka_client() != "confluent":
        return build_producer(**overrides)
    from django_outbox.kafka import confluent as kafka_confluent

    return kafka_confluent.Producer(confluent_config(**overrides), _confluent_error, NotSent)


def raw_confluent_producer(**overrides: Any) -> Any:
    """A plain ``confluent_kafka.Producer`` on ``confluent_config`` (bench/relay_bench.py)."""
    from django_outbox.kafka import confluent as kafka_confluent

    return kafka_confluent.raw_producer(confluent_config(**overrides))


def confluent_version() -> str:
    from django_outbox.kafka import confluent as kafka_confluent

    return kafka_confluent.version()


def build_consumer(*topics: str, **overrides: Any) -> KafkaConsumer:
    """A consumer in ``OUTBOX_CONSUMER_GROUP``, auto commit off, earliest offset first."""
    config = {
        "bootstrap_servers": _bootstrap(),
        "group_id": outbox_settings.consumer_group,
        **CONSUMER_DEFAULTS,
    }
    config.update(outbox_settings.kafka_consumer)
    config.update(overrides)
    return KafkaConsumer(*topics, **config)


def build_admin(**overrides: Any) -> KafkaAdminClient:
    return KafkaAdminClient(bootstrap_servers=_bootstrap(), **overrides)


def record_headers(
    message: OutboxMessage, alias: str, extra: dict[str, str] | None = None
) -> list[tuple[str, bytes]]:
    """The headers of the Kafka record for ``message`` (row in database ``alias``).

    ``extra`` are the envelope's own headers; the reserved names always win.
    """
    event_id = occurred_at = ""
    try:
        event = message.event
        event_id, occurred_at = str(event.event_id), event.as_dict()["occurred_at"]
    except Exception:  # a malformed payload still gets delivered; the consumer records it
        pass
    return _headers(event_id, message.event_type, message.pk, alias, extra, occurred_at)


def _headers(
    event_id: str,
    event_type: str,
    pk: int,
    alias: str,
    extra: dict[str, str] | None,
    occurred_at: str = "",
) -> list[tuple[str, bytes]]:
    """The one builder of a record's headers (the trace context is among ``extra``)."""
    headers = [
        (name, value.encode())
        for name, value in (extra or {}).items()
        if name not in RESERVED_HEADERS
    ]
    headers += [
        (HEADER_EVENT_ID, event_id.encode()),
        (HEADER_EVENT_TYPE, event_type.encode()),
        (HEADER_OUTBOX_ID, str(pk).encode()),
        (HEADER_OUTBOX_DB, alias.encode()),
    ]
    return cloudevents.binary_headers(
        headers, event_id=event_id, event_type=event_type, occurred_at=occurred_at, alias=alias
    )


# --------------------------------------------------------------------------- producer side


class OutboxRecord(NamedTuple):
    """One Kafka record, ready for ``send_records`` (None: a record without key, or value)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def build_dead_letter_producer() -> KafkaProducer:
    """The consumer's producer of dead-letter copies: ``build_producer``, its own client id."""
    return build_producer(client_id="django-outbox-dead-letter")


def outbox_headers(pk: int, event_type: str, payload: str, alias: str) -> list[tuple[str, bytes]]:
    """``record_headers`` for a row given as plain values (the relay's hot path).

    Reads only ``event_id``, ``occurred_at`` and ``headers`` from the payload: full envelope
    validation is the consumer's job, and a malformed payload is still delivered
    (with an empty event id) so that the consumer can record it.
    """
    head = _envelope_head(payload)
    if head is None:
        head = _envelope_head_parsed(payload)
    event_id, occurred_at, found = head
    extra = None
    if isinstance(found, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in found.items()
    ):
        extra = found
    return _headers(event_id, event_type, pk, alias, extra, occurred_at)


_JSON_STRING = r'"(?:[^"\\]++|\\.)*+"'
#: How ``envelope.dumps`` writes every envelope: compact, keys in this order, ``data``
#: last, ``event_id`` a UUID (nothing to unescape).
_CANONICAL_HEAD = re.compile(
    r'\{"event_id":"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})",'
    rf'"event_type":{_JSON_STRING},"version":\d+,"occurred_at":"([^"\\]*+)",'
    rf'"key":{_JSON_STRING},"headers":'
)
#: The scanner behind ``json.loads``: reads one value at an index, returns (value, end).
_scan_json_value: Callable[[str, int], tuple[Any, int]]
_scan_json_value = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _envelope_head(payload: str) -> tuple[str, str, Any] | None:
    """``(event_id, occurred_at, headers)`` of a canonical envelope, without parsing the rest.

    One regular expression finds ``event_id`` and the start of ``headers``; only
    ``headers`` is parsed, ``data`` (nearly all of a payload) is skipped unread.
    Anything else (another key order, as the Go service may write, whitespace, an
    upper-case UUID) returns None, and the caller parses the whole document. What
    is skipped is not validated: the consumer does that. Like any reader that stops
    early, this one would not see a duplicate key after ``data``; ``json.dumps`` of
    a dict never writes one.
    """
    head = _CANONICAL_HEAD.match(payload)
    if head is None:
        return None
    try:
        headers, position = _scan_json_value(payload, head.end())
    except (StopIteration, ValueError):  # not JSON after all
        return None
    if not payload.startswith(',"data":', position):
        return None
    return head.group(1), head.group(2), headers


def _envelope_head_parsed(payload: str) -> tuple[str, str, Any]:
    """``(event_id, occurred_at, headers)`` with one ``json.loads``; ``("", "", None)`` when
    malformed."""
    try:
        document = json.loads(payload)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than json can read
        return "", "", None
    if not isinstance(document, dict):
        return "", "", None
    occurred_at = document.get("occurred_at")
    return (
        _canonical_id(document.get("event_id")),
        occurred_at if isinstance(occurred_at, str) else "",
        document.get("headers"),
    )


def _canonical_id(value: Any) -> str:
    """A UUID in its canonical spelling (any spelling ``uuid.UUID`` reads), else as given.

    The Go service may write upper-case, braced, ``urn:uuid:`` or undashed ids; the
    header carries the one spelling the consumer compares with the envelope's.
    """
    if not value:
        return ""
    text = str(value)
    try:
        return str(uuid.UUID(text))
    except ValueError:
        return text


class NotAcknowledged(KafkaTimeoutError):
    """Kafka gave no answer for a record within the time the caller could wait."""


class NotSent(KafkaTimeoutError):
    """A record was not handed to the producer: the time budget was spent first."""


class Sending:
    """Records handed to a producer (``send_batch``), whose acks are still to come."""

    __slots__ = ("outcomes", "futures", "deadline", "timeout")

    def __init__(self, size: int, deadline: float, timeout: float) -> None:
        #: One per record: None (acked, or not known yet) or the exception it met.
        self.outcomes: list[BaseException | None] = [None] * size
        self.futures: list[tuple[int, Any]] = []
        self.deadline = deadline
        self.timeout = timeout

    @property
    def failed_early(self) -> bool:
        """Some record failed before reaching the producer (no metadata, too large...)."""
        return any(outcome is not None for outcome in self.outcomes)


def send_batch(producer: KafkaProducer, records: Sequence[OutboxRecord], timeout: float) -> Sending:
    """Hand ``records`` to ``producer`` and return at once; ``await_acks`` collects the outcomes.

    ``timeout`` (seconds, from now) bounds both this call and the wait for acks. A
    record that fails (too large, invalid topic) fails alone. When a topic's
    metadata cannot be fetched (broker down, topic missing), the first ``send``
    blocks up to ``max_block_ms``; the other records of that topic then share its
    error instead of blocking again. Once ``timeout`` is spent, the remaining
    records are not sent (``NotSent``).
    """
    deadline = time.monotonic() + timeout
    sending = Sending(len(records), deadline, timeout)
    outcomes, futures = sending.outcomes, sending.futures
    if getattr(producer, "is_librdkafka", False):
        producer.send_into(records, outcomes, futures, deadline)
        return sending
    unavailable: dict[str, BaseException] = {}
    send = producer.send
    for index, record in enumerate(records):
        blocked = unavailable.get(record.topic)
        if blocked is not None:
            outcomes[index] = blocked
            continue
        if time.monotonic() >= deadline:
            outcomes[index] = NotSent("not sent: the time allowed for this batch ran out")
            continue
        try:
            future = send(record.topic, value=record.value, key=record.key, headers=record.headers)
        except KafkaTimeoutError as exc:  # no metadata for this topic within max_block_ms
            unavailable[record.topic] = exc
            outcomes[index] = exc
        except Exception as exc:  # too large, invalid topic name, closed producer: this one only
            outcomes[index] = exc
        else:
            futures.append((index, future))
    return sending


def await_acks(
    producer: KafkaProducer,
    sending: Sending,
    *,
    flush: bool = True,
    cutoff: Callable[[], float | None] | None = None,
) -> list[BaseException | None]:
    """Wait for the acks of ``sending`` until its deadline; one outcome per record.

    ``None`` means Kafka acknowledged the record (acks=all); otherwise the exception
    that record met. Records not acknowledged in time get ``NotAcknowledged`` (the
    producer may still deliver them: at least once). ``flush=True`` makes the
    producer send what it holds at once (without ``linger_ms``) and waits for all
    of it: right when nothing was sent after ``sending``. With ``flush=False`` only
    these records are waited for, so a later batch may keep filling the producer.
    ``cutoff``, asked between short waits, may bring the deadline forward (a
    worker asked to stop waits a few seconds, not the whole budget). Never raises
    for the client's own errors: they become the outcomes of the records.
    """
    outcomes, futures = sending.outcomes, sending.futures

    def left() -> float:
        deadline = sending.deadline
        if cutoff is not None and (sooner := cutoff()) is not None:
            deadline = min(deadline, sooner)
        return deadline - time.monotonic()

    if getattr(producer, "is_librdkafka", False):
        producer.await_into(
            futures,
            outcomes,
            left,
            flush,
            SLICE,
            lambda: NotAcknowledged(f"no acknowledgement from Kafka within {sending.timeout:.1f}s"),
        )
        return outcomes
    if futures and flush:
        while left() > 0 and not all(future.is_done for _, future in futures):
            try:
                producer.flush(timeout=min(max(left(), 0), SLICE))
            except Exception:  # timeout, or kafka-python's UnknownError('Future not done')
                pass  # the futures still pending are read one by one below
    for index, future in futures:
        while not future.is_done and left() > 0:
            try:
                future.get(timeout=min(max(left(), 0), SLICE))
            except Exception:
                pass  # read from the future below
        if not future.is_done:
            outcomes[index] = NotAcknowledged(
                f"no acknowledgement from Kafka within {sending.timeout:.1f}s"
            )
        elif future.exception is not None:
            outcomes[index] = future.exception
    return outcomes


#: Seconds of one wait for acks, between two looks at the caller's cutoff.
SLICE = 0.25


def acked_positions(producer: Any, sending: Sending) -> list[tuple[int, int] | None]:
    """After ``await_acks``: one (partition, offset) per record Kafka acknowledged, else None."""
    positions: list[tuple[int, int] | None] = [None] * len(sending.outcomes)
    if getattr(producer, "is_librdkafka", False):
        for index, position in producer.positions_of(sending.futures).items():
            positions[index] = position
        return positions
    for index, future in sending.futures:
        if future.is_done and future.exception is None and future.value is not None:
            positions[index] = (future.value.partition, future.value.offset)
    return positions


def send_records(
    producer: KafkaProducer, records: Sequence[OutboxRecord], timeout: float
) -> list[BaseException | None]:
    """Send ``records``, wait up to ``timeout`` seconds for acks; one outcome per record.

    ``send_batch`` then ``await_acks`` (see both).
    """
    return await_acks(producer, send_batch(producer, records, timeout))


#: Errors a record meets every time, whatever the broker's health: retrying is futile.
POISON_ERRORS: tuple[type[BaseException], ...] = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    InvalidTopicError,
    InvalidRecordError,  # e.g. no key on a compacted topic
    ValueError,  # kafka-python's own check of topic names
    TypeError,
)


def is_poison(exc: BaseException) -> bool:
    """True when the record itself is at fault (too large, invalid topic)."""
    return isinstance(exc, POISON_ERRORS)


def unreachable_brokers(servers: Sequence[str] | None = None, timeout: float = 1.0) -> list[str]:
    """The bootstrap servers that refuse or ignore a TCP connection within ``timeout``.

    A plain socket probe: it answers in a second where the client would wait for its
    own timeouts, so that an outage is named in the log at once.
    """
    down = []
    for server in servers if servers is not None else _bootstrap():
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout):
                pass
        except (OSError, ValueError):
            down.append(server)
    return down


def close_producer(producer: KafkaProducer, timeout: float = 10.0) -> None:
    """Close ``producer``, waiting up to ``timeout`` seconds for what it still holds."""
    try:
        producer.close(timeout=timeout)
    except Exception:  # closing is best effort; the records are still in the outbox
        pass


# ----------------------------------------------------------------------------- consumer side

from kafka.errors import (  # noqa: E402
    CommitFailedError,  # noqa: F401  (used by the consumer)
    CorruptRecordError,
    NodeNotReadyError,
    UnsupportedCodecError,
)


def commit_offsets(
    consumer: KafkaConsumer, offsets: dict[TopicPartition, int], timeout_ms: int = 10_000
) -> None:
    """Commit synchronously, for each partition, the offset of the next record to read.

    Raises ``CommitFailedError`` when the group rebalanced meanwhile, and
    ``KafkaTimeoutError`` when the coordinator does not answer within ``timeout_ms``.
    """
    consumer.commit(
        {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()},
        timeout_ms=timeout_ms,
    )


def consumer_lag(consumer: KafkaConsumer) -> int | None:
    """Records between the position and the last known end of the assigned partitions.

    From the consumer's last fetch responses, without a request; None before any fetch.
    """
    lag, known = 0, False
    for tp in consumer.assignment():
        end = consumer.highwater(tp)
        position = consumer.position(tp, timeout_ms=1000)
        if end is not None and position is not None:
            lag, known = lag + max(end - position, 0), True
    return lag if known else None


def caught_up(consumer: KafkaConsumer, timeout_ms: int = 5000) -> bool:
    """True when every assigned partition was read up to its end offset (asks the broker)."""
    assigned = list(consumer.assignment())
    if not assigned:
        return False
    for tp in assigned:  # cheap first: the last fetch already says so
        end = consumer.highwater(tp)
        position = consumer.position(tp, timeout_ms=timeout_ms)
        if position is None or (end is not None and position < end):
            return False
    ends = consumer.end_offsets(assigned, timeout_ms=timeout_ms)
    return all(
        (position := consumer.position(tp, timeout_ms=timeout_ms)) is not None and position >= end
        for tp, end in ends.items()
    )


def missing_topics(consumer: KafkaConsumer, topics: list[str]) -> list[str]:
    """The ``topics`` the cluster has no partitions for; refreshes the consumer's metadata.

    Called before the first poll, so that the group's assignment sees every topic
    (a join made before the metadata arrived assigns nothing until its next refresh).
    """
    return [topic for topic in topics if not consumer.partitions_for_topic(topic)]


#: What a consumer needs to live through broker outages; OUTBOX_KAFKA_CONSUMER may
#: override them. kafka-python's defaults wait 30 s to bootstrap (deaf to SIGTERM
#: meanwhile) and back off reconnects up to 30 s (slow to see the broker back).
CONSUMER_OUTAGE_DEFAULTS: dict[str, Any] = {
    "bootstrap_timeout_ms": 5_000,
    "reconnect_backoff_max_ms": 2_000,
}


def build_group_consumer(topics: Sequence[str], group_id: str, **options: Any) -> KafkaConsumer:
    """``build_consumer`` for the outbox consumer: outage-friendly timeouts, then the settings.

    Raises ``KafkaTimeoutError`` when no broker answers within ``bootstrap_timeout_ms``.
    """
    config = {
        "bootstrap_servers": _bootstrap(),
        "group_id": group_id,
        **CONSUMER_DEFAULTS,
        **CONSUMER_OUTAGE_DEFAULTS,
    }
    config.update(outbox_settings.kafka_consumer)
    config.update(options)
    return KafkaConsumer(*topics, **config)


def bootstrap_servers() -> list[str]:
    return _bootstrap()


def is_transport_error(exc: BaseException) -> bool:
    """True when Kafka could not be reached or did not answer (the record is not at fault).

    For a record sent, its fate is then unknown: it may be in Kafka. A row must never
    die of such an error; it is sent again later and the consumer drops a duplicate.
    """
    return isinstance(exc, KafkaConnectionError | KafkaTimeoutError | NodeNotReadyError) or (
        isinstance(exc, KafkaError)
        and bool(getattr(exc, "retriable", False))
        and not isinstance(exc, CorruptRecordError)
    )


def is_unreadable_record(exc: BaseException) -> bool:
    """True when kafka-python could not decode a fetched record (codec, CRC, header name)."""
    return isinstance(exc, UnsupportedCodecError | CorruptRecordError | UnicodeDecodeError)


def read_error_at(tp: TopicPartition, offset: int, timeout: float = 5.0) -> BaseException | None:
    """The error kafka-python meets reading the record at ``offset`` of ``tp``, if any.

    A throwaway consumer outside any group reads that one position, so that the
    consumer's own client (its assignment, positions, fetch buffers) is left alone.
    None when the record reads fine, or when there is no record there (yet).
    """
    options = {
        k: v
        for k, v in outbox_settings.kafka_consumer.items()
        if k not in ("group_id", "enable_auto_commit", "client_id")
    }
    probe = KafkaConsumer(
        bootstrap_servers=_bootstrap(),
        group_id=None,
        enable_auto_commit=False,
        client_id="django-outbox-probe",
        **{**CONSUMER_OUTAGE_DEFAULTS, **options},
    )
    try:
        probe.assign([tp])
        probe.seek(tp, offset)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if probe.poll(timeout_ms=500, max_records=1):
                    return None
            except Exception as exc:
                if is_transport_error(exc):
                    raise
                return exc
        return None
    finally:
        probe.close(autocommit=False, timeout_ms=1000)


# --- topic administration (outbox_topics) ----------------------------------------------
# Used by manage.py outbox_topics and outbox_ready only; nothing above depends on it.


class TopicInfo(NamedTuple):
    """A topic as the cluster describes it; ``partitions`` is 0 when it does not exist."""

    name: str
    partitions: int
    replication: int

    @property
    def exists(self) -> bool:
        return self.partitions > 0


def admin_client(timeout: float = 10.0) -> KafkaAdminClient:
    """An admin client that gives up after ``timeout`` seconds when no broker answers."""
    millis = int(timeout * 1000)
    return build_admin(bootstrap_timeout_ms=millis, request_timeout_ms=millis)


def describe_topics(admin: KafkaAdminClient, names: Sequence[str]) -> list[TopicInfo]:
    """Partition count and replication factor of each of ``names`` (never creates one)."""
    found = {}
    for topic in admin.describe_topics(list(names)):
        partitions = topic.get("partitions") or []
        if topic.get("error_code") or not partitions:
            continue
        replication = min(len(p.get("replica_nodes") or []) for p in partitions)
        found[topic["name"]] = TopicInfo(topic["name"], len(partitions), replication)
    return [found.get(name, TopicInfo(name, 0, 0)) for name in names]


def create_topics(
    admin: KafkaAdminClient,
    names: Sequence[str],
    partitions: int,
    replication: int,
    configs: dict[str, str] | None = None,
) -> None:
    """Create ``names`` with ``partitions``, ``replication`` and topic ``configs`` (e.g.
    ``min.insync.replicas``); wait until they are usable."""
    options = {
        "num_partitions": partitions,
        "replication_factor": replication,
        "configs": dict(configs or {}),
    }
    admin.create_topics({name: dict(options) for name in names}, wait_for_metadata=True)


def cluster_brokers(admin: KafkaAdminClient) -> int:
    """How many brokers the cluster reports (asks it: a readiness check)."""
    return len(admin.describe_cluster().get("brokers") or [])


# --- what an error out of the consumer's poll() or commit() is about ----------------------
# One place, so that the consumer (and the planned librdkafka consumer) never tells
# "this record is unreadable" from "the broker refuses us" by guesswork: a record is
# skipped (kept as rejected) only on an error about that record; the client's rights
# and the cluster's state are waited out, loudly; anything else is too.

#: The record is at fault: kafka-python read it and could not decode it (bad CRC, a
#: codec it lacks, a header name that is not UTF-8). ``read_error_at`` finds its offset.
RECORD = "record"
#: The broker could not be reached or did not answer in time: wait and retry.
TRANSPORT = "transport"
#: The broker answered, and refuses: the client's rights, its configuration, the
#: group's or the cluster's state. Nothing may be skipped; an operator may have to act.
BLOCKED = "blocked"

_RECORD_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.CorruptRecordError,
    kafka_errors.UnsupportedCodecError,
    kafka_errors.InvalidRecordError,
    UnicodeDecodeError,
)

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.KafkaConnectionError,
    kafka_errors.KafkaTimeoutError,
    kafka_errors.NodeNotReadyError,
    kafka_errors.RequestTimedOutError,
    kafka_errors.BrokerNotAvailableError,
    kafka_errors.LeaderNotAvailableError,
    kafka_errors.NotLeaderForPartitionError,
    kafka_errors.ReplicaNotAvailableError,
    kafka_errors.NetworkExceptionError,
    kafka_errors.KafkaStorageError,
    kafka_errors.CoordinatorNotAvailableError,
    kafka_errors.CoordinatorLoadInProgressError,
    kafka_errors.StaleMetadata,
    kafka_errors.MetadataEmptyBrokerList,
    kafka_errors.TooManyInFlightRequests,
    kafka_errors.Cancelled,
    kafka_errors.CorrelationIdError,
    kafka_errors.InvalidReceiveError,
    kafka_errors.FencedLeaderEpochError,
    kafka_errors.UnknownLeaderEpochError,
    kafka_errors.FetchSessionIdNotFoundError,
    kafka_errors.InvalidFetchSessionEpochError,
    kafka_errors.FetchSessionTopicIdError,
    kafka_errors.OffsetNotAvailableError,
    kafka_errors.ThrottlingQuotaExceededError,
    kafka_errors.NotEnoughReplicasError,
    OSError,  # a socket error that escaped the client
)

#: Known and named, though the client may call some of them retriable: waited out
#: as blocked, with the fix in the log (see ``blocked_fix``).
_BLOCKED_ERRORS: tuple[type[BaseException], ...] = (
    kafka_errors.AuthorizationError,  # topic, group, cluster, transactional id, token
    kafka_errors.SaslAuthenticationFailedError,
    kafka_errors.UnsupportedSaslMechanismError,
    kafka_errors.IllegalSaslStateError,
    kafka_errors.UnacceptableCredentialError,
    kafka_errors.PrincipalDeserializationFailureError,
    kafka_errors.SecurityDisabledError,
    kafka_errors.UnknownTopicOrPartitionError,
    kafka_errors.UnknownTopicIdError,
    kafka_errors.InconsistentTopicIdError,
    kafka_errors.NotCoordinatorError,
    kafka_errors.RebalanceInProgressError,
    kafka_errors.IllegalGenerationError,
    kafka_errors.UnknownMemberIdError,
    kafka_errors.MemberIdRequiredError,
    kafka_errors.FencedInstanceIdError,
    kafka_errors.InvalidSessionTimeoutError,
    kafka_errors.InconsistentGroupProtocolError,
    kafka_errors.InvalidGroupIdError,
    kafka_errors.GroupMaxSizeReachedError,
    kafka_errors.GroupIdNotFoundError,
    kafka_errors.OffsetOutOfRangeError,  # no auto_offset_reset policy
    kafka_errors.NoOffsetForPartitionError,
    kafka_errors.LogTruncationError,
    kafka_errors.UnsupportedVersionError,
    kafka_errors.UnrecognizedBrokerVersion,
    kafka_errors.KafkaConfigurationError,
    kafka_errors.IllegalStateError,
    kafka_errors.CommitFailedError,
)


def classify_poll_error(exc: BaseException) -> str:
    """``RECORD``, ``TRANSPORT`` or ``BLOCKED``: what an error out of poll()/commit() is about.

    ``RECORD`` only for the errors kafka-python raises about one fetched record it
    cannot decode; ``TRANSPORT`` when the broker is away or slow (and for the errors
    the client retries by itself); everything else, known or not, ``BLOCKED``: an
    answer the consumer cannot trust is never a reason to skip a record.
    """
    if isinstance(exc, _BLOCKED_ERRORS):
        return BLOCKED
    if isinstance(exc, _RECORD_ERRORS):
        return RECORD
    if isinstance(exc, _TRANSPORT_ERRORS):
        return TRANSPORT
    if isinstance(exc, KafkaError) and exc.retriable:
        return TRANSPORT
    return BLOCKED


#: librdkafka's own (negative, "_"-prefixed) error codes, for a librdkafka consumer;
#: a broker's error code (positive) is Kafka's own: ``classify_librdkafka_error``
#: maps it through kafka-python's class for it. Names as ``confluent_kafka.KafkaError``.
LIBRDKAFKA_ERRORS: dict[str, str] = {
    # about one record
    "_BAD_MSG": RECORD,
    "_BAD_COMPRESSION": RECORD,
    "_KEY_DESERIALIZATION": RECORD,
    "_VALUE_DESERIALIZATION": RECORD,
    # the broker away or slow
    "_TRANSPORT": TRANSPORT,
    "_ALL_BROKERS_DOWN": TRANSPORT,
    "_RESOLVE": TRANSPORT,
    "_TIMED_OUT": TRANSPORT,
    "_TIMED_OUT_QUEUE": TRANSPORT,
    "_MSG_TIMED_OUT": TRANSPORT,
    "_WAIT_COORD": TRANSPORT,
    "_WAIT_CACHE": TRANSPORT,
    "_NODE_UPDATE": TRANSPORT,
    "_RETRY": TRANSPORT,
    "_PARTIAL": TRANSPORT,
    "_UNKNOWN_BROKER": TRANSPORT,
    "_DESTROY_BROKER": TRANSPORT,
    "_IN_PROGRESS": TRANSPORT,
    "_PREV_IN_PROGRESS": TRANSPORT,
    "_INTR": TRANSPORT,
    "_QUEUE_FULL": TRANSPORT,
    # events, not errors: nothing to skip, nothing to wait for
    "_PARTITION_EOF": TRANSPORT,
    "_NOOP": TRANSPORT,
    "_ASSIGN_PARTITIONS": TRANSPORT,
    "_REVOKE_PARTITIONS": TRANSPORT,
    # rights, configuration, the group's or the cluster's state
    "_AUTHENTICATION": BLOCKED,
    "_SSL": BLOCKED,
    "_UNKNOWN_TOPIC": BLOCKED,
    "_UNKNOWN_PARTITION": BLOCKED,
    "_UNKNOWN_GROUP": BLOCKED,
    "_NO_OFFSET": BLOCKED,
    "_AUTO_OFFSET_RESET": BLOCKED,
    "_LOG_TRUNCATION": BLOCKED,
    "_ASSIGNMENT_LOST": BLOCKED,
    "_MAX_POLL_EXCEEDED": BLOCKED,
    "_FENCED": BLOCKED,
    "_FATAL": BLOCKED,
    "_STATE": BLOCKED,
    "_CONFLICT": BLOCKED,
    "_EXISTING_SUBSCRIPTION": BLOCKED,
    "_INVALID_ARG": BLOCKED,
    "_INVALID_TYPE": BLOCKED,
    "_NOT_CONFIGURED": BLOCKED,
    "_NOT_IMPLEMENTED": BLOCKED,
    "_UNSUPPORTED_FEATURE": BLOCKED,
    "_UNKNOWN_PROTOCOL": BLOCKED,
    "_OUTDATED": BLOCKED,
    "_INCONSISTENT": BLOCKED,
    "_GAPLESS_GUARANTEE": BLOCKED,
    "_INVALID_DIFFERENT_RECORD": BLOCKED,
    "_FAIL": BLOCKED,
    "_FS": BLOCKED,
    "_CRIT_SYS_RESOURCE": BLOCKED,
    "_DESTROY": BLOCKED,
    "_READ_ONLY": BLOCKED,
    "_NOENT": BLOCKED,
    "_UNDERFLOW": BLOCKED,
    "_PURGE_QUEUE": BLOCKED,
    "_PURGE_INFLIGHT": BLOCKED,
    "_APPLICATION": BLOCKED,
    "_KEY_SERIALIZATION": BLOCKED,
    "_VALUE_SERIALIZATION": BLOCKED,
    "_MSG_SIZE_TOO_LARGE": BLOCKED,
    "_ISR_INSUFF": BLOCKED,
}


def classify_librdkafka_error(name: str, code: int) -> str:
    """``classify_poll_error`` for a librdkafka error (``KafkaError.name()``, ``.code()``)."""
    if code > 0:
        return classify_poll_error(kafka_errors.for_code(code)())
    return LIBRDKAFKA_ERRORS.get(name, BLOCKED)


_FIXES: tuple[tuple[type[BaseException], str], ...] = (
    (
        kafka_errors.TopicAuthorizationFailedError,
        "grant READ and DESCRIBE on topic(s) {topics} to the consumer's principal",
    ),
    (
        kafka_errors.GroupAuthorizationFailedError,
        "grant READ on group {group!r} to the consumer's principal",
    ),
    (
        kafka_errors.ClusterAuthorizationFailedError,
        "grant the consumer's principal the cluster right it lacks (see the broker's log)",
    ),
    (
        kafka_errors.AuthorizationError,
        "grant the consumer's principal the right it lacks (see the broker's log)",
    ),
    (
        kafka_errors.SaslAuthenticationFailedError
        | kafka_errors.UnsupportedSaslMechanismError
        | kafka_errors.IllegalSaslStateError
        | kafka_errors.UnacceptableCredentialError
        | kafka_errors.PrincipalDeserializationFailureError
        | kafka_errors.SecurityDisabledError,
        "check the SASL/SSL settings and the credentials in OUTBOX_KAFKA_CONSUMER",
    ),
    (
        kafka_errors.UnknownTopicOrPartitionError
        | kafka_errors.UnknownTopicIdError
        | kafka_errors.InconsistentTopicIdError,
        "create topic(s) {topics} (manage.py outbox_topics --create) or fix OUTBOX_TOPICS",
    ),
    (
        kafka_errors.OffsetOutOfRangeError
        | kafka_errors.NoOffsetForPartitionError
        | kafka_errors.LogTruncationError,
        "set auto_offset_reset in OUTBOX_KAFKA_CONSUMER, or reset group {group!r}'s offsets",
    ),
    (
        kafka_errors.NotCoordinatorError
        | kafka_errors.RebalanceInProgressError
        | kafka_errors.IllegalGenerationError
        | kafka_errors.UnknownMemberIdError
        | kafka_errors.MemberIdRequiredError
        | kafka_errors.FencedInstanceIdError
        | kafka_errors.CommitFailedError,
        "the group {group!r} is rebalancing; if it lasts, check session_timeout_ms and "
        "max_poll_interval_ms, and that no other client uses group {group!r}",
    ),
    (
        kafka_errors.InvalidSessionTimeoutError
        | kafka_errors.InconsistentGroupProtocolError
        | kafka_errors.InvalidGroupIdError
        | kafka_errors.GroupMaxSizeReachedError
        | kafka_errors.KafkaConfigurationError,
        "fix the consumer's group settings in OUTBOX_KAFKA_CONSUMER (the broker refuses them)",
    ),
)


def blocked_fix(exc: BaseException, topics: Sequence[str], group: str) -> str:
    """What an operator does about a ``BLOCKED`` error, for the log line."""
    for errors, fix in _FIXES:
        if isinstance(exc, errors):
            return fix.format(topics=", ".join(topics), group=group)
    return "check the broker's log and the consumer's settings (OUTBOX_KAFKA_CONSUMER)"


#: Client options whose values never go into a log line.
SECRET_OPTIONS = ("sasl_plain_password", "ssl_password", "sasl_kerberos_password")


def redact(text: str) -> str:
    """``text`` without any secret of the Kafka client settings in it (for log lines)."""
    for options in (outbox_settings.kafka_consumer, outbox_settings.kafka_producer):
        for key in SECRET_OPTIONS:
            secret = options.get(key)
            if isinstance(secret, str) and secret:
                text = text.replace(secret, "***")
    return text
