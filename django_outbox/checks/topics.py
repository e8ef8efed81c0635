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


def check_dead_letter_topic(**kwargs: Any) -> list[CheckMessage]:
    """E070: ``OUTBOX_DEAD_LETTER_TOPIC`` is no usable name or pattern; E071: it names a
    topic the outbox consumes (the copies would be read again, and rejected again)."""
    from django_outbox.topics import dead_letter_pattern_problem, dead_letter_topic, source_topics

    pattern = outbox_settings.raw("DEAD_LETTER_TOPIC")
    if pattern is None:
        return []
    problem = dead_letter_pattern_problem(pattern)
    group = outbox_settings.consumer_group
    try:
        sources = source_topics()
    except (TypeError, ValueError):  # OUTBOX_TOPICS is no dict: E004 says so
        sources = []
    if problem is None:
        for topic in sources:
            problem = topic_problem(dead_letter_topic(topic, group) or "")
            if problem:
                problem = f"for topic {topic!r} and group {group!r}, {problem}"
                break
    if problem:
        return [
            Error(
                f"OUTBOX_DEAD_LETTER_TOPIC {problem}.",
                hint="Use a topic name, or a pattern with {topic} and {group} such as "
                "'{topic}.DLT', or None (no dead-letter topic). Nothing is copied meanwhile.",
                id="django_outbox.E070",
            )
        ]
    looping = [(t, dlt) for t in sources if (dlt := dead_letter_topic(t, group)) in sources]
    if looping:
        topic, dead = looping[0]
        return [
            Error(
                f"OUTBOX_DEAD_LETTER_TOPIC makes {dead!r} the dead-letter topic of {topic!r}, "
                f"and the outbox consumes {dead!r}: the copies would be read and rejected again.",
                hint="Give the dead-letter topics names of their own, e.g. '{topic}.DLT'.",
                id="django_outbox.E071",
            )
        ]
    return []
