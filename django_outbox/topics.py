"""Kafka topics: the names Kafka accepts (checked before anything is written), the topics
the settings imply, and whether their copies survive the loss of a broker."""

from __future__ import annotations

import re

from django_outbox.conf import outbox_settings

#: Kafka's own rule: ASCII letters, digits, '.', '_' and '-'; not '.' or '..'.
_LEGAL = re.compile(r"[a-zA-Z0-9._-]+")
#: The legacy ``topic`` column is varchar(128) (Kafka itself allows 249).
MAX_LENGTH = 128


def topic_problem(topic: object) -> str | None:
    """Why ``topic`` cannot be used, or None when it can."""
    if not isinstance(topic, str) or not topic:
        return f"a topic must be a non-empty string, not {topic!r}"
    if len(topic) > MAX_LENGTH:
        return f"topic {topic[:40]!r}... is {len(topic)} characters; at most {MAX_LENGTH} fit"
    if topic in {".", ".."} or not _LEGAL.fullmatch(topic):
        return f"topic {topic!r} may contain only ASCII letters, digits, '.', '_' and '-'"
    return None


def implied_topics() -> list[str]:
    """The values of ``OUTBOX_TOPICS`` and ``OUTBOX_DEFAULT_TOPIC``, sorted, once each."""
    topics = set(outbox_settings.topics.values())
    if outbox_settings.default_topic:
        topics.add(outbox_settings.default_topic)
    return sorted(topics)


def single_copy_problem(topic: str, replication: int, brokers: int) -> str | None:
    """Why a topic with ``replication`` copies is fragile on a cluster of ``brokers``, or None.

    One copy on a multi-broker cluster: when that broker dies its partitions stop taking
    writes (the relay backs off) and a lost disk loses the records."""
    if replication != 1 or brokers < 2:
        return None
    return (
        f"topic {topic} has replication factor 1 on a cluster of {brokers} brokers: the loss "
        "of one broker stops its partitions, or loses their records"
    )


#: How to fix a ``single_copy_problem``.
SINGLE_COPY_FIX = (
    "Recreate it with replication factor 3 and min.insync.replicas=2 (outbox_topics --create "
    "--replication-factor 3 --min-insync-replicas 2), or add replicas with "
    "kafka-reassign-partitions."
)
