"""What an error from Kafka is about: the record, the transport, or a refusal.

Owns the one taxonomy the relay and the consumer judge errors by: a record at fault
(``is_poison``, ``RECORD``), the broker away or slow (``is_transport_error``,
``TRANSPORT``), the broker refusing the client (``BLOCKED``, with ``blocked_fix``
for the log line), and librdkafka's errors turned into the same exceptions
(``confluent_error``), so that both clients are judged alike.

Imports kafka-python's exception classes only (they are the vocabulary of both
clients): no client, no other module of ``kafka/``.
"""

from __future__ import annotations

from collections.abc import Sequence

from kafka import errors as kafka_errors
from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    NodeNotReadyError,
    RecordListTooLargeError,
    UnsupportedCodecError,
)

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


#: librdkafka's own (negative) error codes that say the record itself is at fault.
_CONFLUENT_POISON = {"_MSG_SIZE_TOO_LARGE": MessageSizeTooLargeError}


def confluent_error(name: str, code: int, text: str, retriable: bool, fatal: bool) -> BaseException:
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
