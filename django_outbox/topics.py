"""Kafka topics: the names Kafka accepts (checked before anything is written), the topics
the settings imply (dead-letter topics among them), and whether their copies survive the
loss of a broker."""

from __future__ import annotations

import re
import string

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


def source_topics() -> list[str]:
    """The values of ``OUTBOX_TOPICS`` and ``OUTBOX_DEFAULT_TOPIC``, sorted, once each."""
    topics = set(outbox_settings.topics.values())
    if outbox_settings.default_topic:
        topics.add(outbox_settings.default_topic)
    return sorted(topics)


def implied_topics() -> list[str]:
    """``source_topics()`` and the dead-letter topics they imply for ``OUTBOX_CONSUMER_GROUP``."""
    sources = source_topics()
    group = outbox_settings.consumer_group
    dead = {dead_letter_topic(topic, group) for topic in sources}
    return sorted({*sources, *(name for name in dead if name)})


#: The placeholders ``OUTBOX_DEAD_LETTER_TOPIC`` may hold.
DEAD_LETTER_PLACEHOLDERS = ("topic", "group")


def dead_letter_pattern_problem(pattern: object) -> str | None:
    """Why ``pattern`` cannot be an ``OUTBOX_DEAD_LETTER_TOPIC``, or None (None is off)."""
    if pattern is None:
        return None
    if not isinstance(pattern, str) or not pattern:
        return f"must be a topic name or a pattern such as '{{topic}}.DLT', not {pattern!r}"
    try:
        fields = [
            (name, spec, conversion)
            for _text, name, spec, conversion in string.Formatter().parse(pattern)
            if name is not None
        ]
    except ValueError as exc:  # a lone '{' or '}'
        return f"{pattern!r} is not a valid pattern ({exc})"
    for name, spec, conversion in fields:
        if name not in DEAD_LETTER_PLACEHOLDERS or spec or conversion:
            known = ", ".join(f"{{{known}}}" for known in DEAD_LETTER_PLACEHOLDERS)
            return f"{pattern!r} holds {{{name}}}; the placeholders are {known}, as they are"
    problem = topic_problem(_render(pattern, "orders", "billing"))
    if problem is not None:
        return f"{pattern!r} gives a name Kafka refuses: {problem}"
    return None


def dead_letter_topic(topic: str, group: str) -> str | None:
    """The dead-letter topic of records of ``topic`` given up by ``group``; None when off
    (``OUTBOX_DEAD_LETTER_TOPIC`` unset) or when the pattern is not usable (check E070)."""
    pattern = outbox_settings.dead_letter_topic
    if pattern is None or dead_letter_pattern_problem(pattern) is not None:
        return None
    return _render(pattern, topic, group)


def _render(pattern: str, topic: str, group: str) -> str:
    return pattern.format(topic=topic, group=group)


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
