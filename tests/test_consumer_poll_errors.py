"""Issue 16, defect 3: an error about the client's rights or the cluster skips no record.

Only an error about one fetched record (it cannot be decoded) makes the consumer keep
that record as rejected and pass it; the broker away is waited out as before; the
broker refusing the consumer (an ACL, credentials, the group's state) is waited out
loudly, with nothing skipped and nothing committed.
"""

from __future__ import annotations

import logging

import pytest
from kafka import KafkaConsumer
from kafka import errors as kafka_errors

from django_outbox import kafka, publish_event
from django_outbox.consumer import broker
from django_outbox.models import OutboxMessage, Status
from django_outbox.models.inbox import RejectedRecord

from .consumer_support import (
    COUNTER,
    committed_offsets,
    consume,
    count_handler,
    registered,
    send_rows,
    unique_group,
)

CASES = [
    (kafka_errors.TopicAuthorizationFailedError, kafka.BLOCKED),
    (kafka_errors.GroupAuthorizationFailedError, kafka.BLOCKED),
    (kafka_errors.ClusterAuthorizationFailedError, kafka.BLOCKED),
    (kafka_errors.SaslAuthenticationFailedError, kafka.BLOCKED),
    (kafka_errors.UnknownTopicOrPartitionError, kafka.BLOCKED),
    (kafka_errors.NotCoordinatorError, kafka.BLOCKED),
    (kafka_errors.RebalanceInProgressError, kafka.BLOCKED),
    (kafka_errors.IllegalGenerationError, kafka.BLOCKED),
    (kafka_errors.UnknownMemberIdError, kafka.BLOCKED),
    (kafka_errors.InvalidSessionTimeoutError, kafka.BLOCKED),
    (kafka_errors.OffsetOutOfRangeError, kafka.BLOCKED),
    (kafka_errors.CommitFailedError, kafka.BLOCKED),
    (kafka_errors.KafkaConnectionError, kafka.TRANSPORT),
    (kafka_errors.KafkaTimeoutError, kafka.TRANSPORT),
    (kafka_errors.NodeNotReadyError, kafka.TRANSPORT),
    (kafka_errors.CorruptRecordError, kafka.RECORD),
    (kafka_errors.UnsupportedCodecError, kafka.RECORD),
    (RuntimeError, kafka.BLOCKED),  # unknown: never a reason to skip
]


@pytest.mark.parametrize(("error", "kind"), CASES, ids=[c[0].__name__ for c in CASES])
def test_every_error_out_of_poll_has_one_class(error, kind):
    assert kafka.classify_poll_error(error("x")) == kind


def test_a_sasl_password_never_reaches_the_log_line(settings):
    settings.OUTBOX_KAFKA_CONSUMER = {"sasl_plain_password": "hunter2"}
    text = "SASL failed: sasl_plain_password='hunter2' for user app"
    assert "hunter2" not in kafka.redact(text)


@pytest.mark.kafka
@pytest.mark.django_db(transaction=True)
def test_an_authorization_error_skips_nothing_and_is_waited_out(
    settings, kafka_bootstrap, kafka_topic, monkeypatch, caplog
):
    settings.OUTBOX_KAFKA_BOOTSTRAP_SERVERS = kafka_bootstrap
    settings.OUTBOX_DEFAULT_TOPIC = kafka_topic
    settings.OUTBOX_WAKE_RELAY = False
    rows = [publish_event(COUNTER, {"conversation_id": 0}) for _ in range(3)]
    send_rows(kafka_bootstrap, kafka_topic, rows, partition=0)
    real, calls = KafkaConsumer.poll, []

    def refusing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) <= 3:  # the ACL is granted after three polls
            raise kafka_errors.TopicAuthorizationFailedError(kafka_topic)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(KafkaConsumer, "poll", refusing)
    monkeypatch.setattr(broker, "BLOCKED_FIRST_DELAY", 0.05)
    group = unique_group()
    with registered(COUNTER, count_handler), caplog.at_level(logging.WARNING, "django_outbox"):
        consumer = consume(kafka_topic, group)
    assert consumer.stats.outcomes == {"handled": 3}  # every record, once; none skipped
    assert not RejectedRecord.objects.filter(consumer_group=group).exists()
    assert consumer.stats.blocked_turns == 3 and consumer.stats.blocked_by is None
    assert "blocked" in caplog.text and "TopicAuthorizationFailedError" in caplog.text
    assert "resumed" in caplog.text
    assert committed_offsets(kafka_topic, group)[0] == 3
    assert {OutboxMessage.objects.get(pk=r.pk).status for r in rows} == {Status.CONSUMED}
