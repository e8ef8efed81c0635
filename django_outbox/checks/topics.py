"""Checks of where events go: OUTBOX_TOPICS and OUTBOX_DEFAULT_TOPIC (E004, E005, W001),
and, under ``check --deploy``, how many copies the cluster keeps of those topics (W050)."""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning

from django_outbox.conf import outbox_settings
from django_outbox.topics import topic_problem


def check_topics(**kwargs: Any) -> list[CheckMessage]:
    messages: list[CheckMessage] = []
    topics = outbox_settings.raw("TOPICS")
    if not isinstance(topics, dict):
        return [
            Error(
                "OUTBOX_TOPICS must be a dict of event type to topic, "
                f"not {type(topics).__name__}.",
                hint="For example {'chat.message.created': 'chat-events'}.",
                id="django_outbox.E004",
            )
        ]
    for event_type, topic in topics.items():
        problem = topic_problem(topic)
        if not isinstance(event_type, str) or not event_type or len(event_type) > 64:
            problem = f"event type {event_type!r} is not a string of 1 to 64 characters"
        if problem:
            messages.append(
                Error(
                    f"OUTBOX_TOPICS[{event_type!r}]: {problem}.",
                    hint="Fix or remove that entry.",
                    id="django_outbox.E004",
                )
            )
    default = outbox_settings.raw("DEFAULT_TOPIC")
    if default is not None and (problem := topic_problem(default)):
        messages.append(
            Error(
                f"OUTBOX_DEFAULT_TOPIC: {problem}.",
                hint="Use a valid Kafka topic name, or None to require a topic per event type.",
                id="django_outbox.E005",
            )
        )
    if default is None and not topics:
        messages.append(
            Warning(
                "Neither OUTBOX_DEFAULT_TOPIC nor OUTBOX_TOPICS is set.",
                hint="Every publish_event() call will need topic=...; set OUTBOX_DEFAULT_TOPIC.",
                id="django_outbox.W001",
            )
        )
    return messages


def check_replication(**kwargs: Any) -> list[CheckMessage]:
    """W050 (``check --deploy`` only: it asks the cluster, for 2 s at most): a topic the
    outbox writes to has one copy on a cluster of several brokers. Silent when no broker
    answers (``outbox_ready`` reports that)."""
    from django_outbox import kafka
    from django_outbox.topics import SINGLE_COPY_FIX, implied_topics, single_copy_problem

    names = implied_topics()
    if not names:
        return []
    try:
        admin = kafka.admin_client(timeout=2.0)
    except Exception:
        return []
    try:
        brokers = kafka.cluster_brokers(admin)
        topics = kafka.describe_topics(admin, names)
    except Exception:
        return []
    finally:
        admin.close()
    problems = [single_copy_problem(t.name, t.replication, brokers) for t in topics if t.exists]
    return [
        Warning(f"Outbox {problem}.", hint=SINGLE_COPY_FIX, id="django_outbox.W050")
        for problem in problems
        if problem
    ]
