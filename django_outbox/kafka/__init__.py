"""The Kafka clients behind one small interface: the only package that imports a Kafka client.

The rest of the outbox imports this package (``from django_outbox import kafka``) and
calls ``kafka.send_batch(...)``, ``kafka.build_group_consumer(...)``... at call time;
never a module inside it, so that the names below are the whole interface (and a
test's patch of ``kafka.NAME`` reaches every caller outside this package). Inside
it, a module calls its siblings directly: a test that stubs a helper used within
``kafka/`` patches it where it lives.

One module per job:

- ``config.py``: the clients' options from the ``OUTBOX_*`` settings, the producer
  client switch, librdkafka's names for the options, secrets kept out of logs;
- ``records.py``: an outbox row's Kafka record (key, value, headers), the envelope head;
- ``sending.py``: records handed to a producer, acks awaited against a deadline;
- ``errors.py``: what an error is about (the record, the transport, a refusal);
- ``consuming.py``: offsets, lag, caught up, the error of one record read alone;
- ``cluster.py``: topics and brokers (admin client, TCP probe);
- ``producers.py``: which producer each worker gets (kafka-python or librdkafka);
- ``kafka_python.py``: kafka-python's clients, built from the settings;
- ``confluent.py``: librdkafka's producer (confluent-kafka, an optional extra).

Imports go one way: ``config``, ``records`` and ``errors`` import no sibling;
``kafka_python`` imports ``config``; ``sending`` none at run time; ``consuming``,
``cluster`` and ``producers`` the ones they name; this file imports them all.
"""

from __future__ import annotations

# kafka-python's names that the rest of the outbox uses: the exceptions and structs are
# the vocabulary of both clients (librdkafka's errors are translated into them).
from kafka.admin import NewTopic
from kafka.errors import (
    CommitFailedError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
)
from kafka.structs import OffsetAndMetadata, TopicPartition

from django_outbox.envelope import (
    HEADER_EVENT_ID,
    HEADER_EVENT_TYPE,
    HEADER_OUTBOX_DB,
    HEADER_OUTBOX_ID,
    RESERVED_HEADERS,
)
from django_outbox.kafka.cluster import (
    TopicInfo,
    admin_client,
    cluster_brokers,
    create_topics,
    describe_topics,
    unreachable_brokers,
)
from django_outbox.kafka.config import (
    CONFLUENT_IGNORED,
    CONFLUENT_NAMES,
    CONSUMER_DEFAULTS,
    CONSUMER_OUTAGE_DEFAULTS,
    PRODUCER_DEFAULTS,
    SECRET_OPTIONS,
    bootstrap_servers,
    confluent_available,
    confluent_config,
    kafka_client,
    producer_config,
    redact,
    untranslatable_options,
)
from django_outbox.kafka.consuming import (
    CommitOnRevoke,
    caught_up,
    commit_offsets,
    consumer_lag,
    missing_topics,
    partition_names,
    read_error_at,
)
from django_outbox.kafka.errors import (
    BLOCKED,
    LIBRDKAFKA_ERRORS,
    POISON_ERRORS,
    RECORD,
    TRANSPORT,
    blocked_fix,
    classify_librdkafka_error,
    classify_poll_error,
    confluent_error,
    is_poison,
    is_transport_error,
    is_unreadable_record,
)
from django_outbox.kafka.kafka_python import (
    build_admin,
    build_consumer,
    build_group_consumer,
    build_probe_consumer,
    build_producer,
)
from django_outbox.kafka.producers import (
    build_dead_letter_producer,
    build_relay_producer,
    close_producer,
    confluent_version,
    raw_confluent_producer,
)
from django_outbox.kafka.records import OutboxRecord, outbox_headers, record_headers
from django_outbox.kafka.sending import (
    SLICE,
    NotAcknowledged,
    NotSent,
    Sending,
    acked_positions,
    await_acks,
    send_batch,
    send_records,
)

__all__ = [
    # kafka-python's vocabulary
    "CommitFailedError",
    "KafkaConnectionError",
    "KafkaError",
    "KafkaTimeoutError",
    "NewTopic",
    "OffsetAndMetadata",
    "TopicPartition",
    # the envelope's headers
    "HEADER_EVENT_ID",
    "HEADER_EVENT_TYPE",
    "HEADER_OUTBOX_DB",
    "HEADER_OUTBOX_ID",
    "RESERVED_HEADERS",
    # config.py
    "CONFLUENT_IGNORED",
    "CONFLUENT_NAMES",
    "CONSUMER_DEFAULTS",
    "CONSUMER_OUTAGE_DEFAULTS",
    "PRODUCER_DEFAULTS",
    "SECRET_OPTIONS",
    "bootstrap_servers",
    "confluent_available",
    "confluent_config",
    "kafka_client",
    "producer_config",
    "redact",
    "untranslatable_options",
    # records.py
    "OutboxRecord",
    "outbox_headers",
    "record_headers",
    # sending.py
    "SLICE",
    "NotAcknowledged",
    "NotSent",
    "Sending",
    "acked_positions",
    "await_acks",
    "send_batch",
    "send_records",
    # errors.py
    "BLOCKED",
    "LIBRDKAFKA_ERRORS",
    "POISON_ERRORS",
    "RECORD",
    "TRANSPORT",
    "blocked_fix",
    "classify_librdkafka_error",
    "classify_poll_error",
    "confluent_error",
    "is_poison",
    "is_transport_error",
    "is_unreadable_record",
    # consuming.py
    "caught_up",
    "CommitOnRevoke",
    "commit_offsets",
    "partition_names",
    "consumer_lag",
    "missing_topics",
    "read_error_at",
    # cluster.py
    "TopicInfo",
    "admin_client",
    "cluster_brokers",
    "create_topics",
    "describe_topics",
    "unreachable_brokers",
    # producers.py
    "build_dead_letter_producer",
    "build_relay_producer",
    "close_producer",
    "confluent_version",
    "raw_confluent_producer",
    # kafka_python.py
    "build_admin",
    "build_consumer",
    "build_group_consumer",
    "build_probe_consumer",
    "build_producer",
]
