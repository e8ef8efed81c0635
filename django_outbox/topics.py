"""Kafka topic names: what Kafka accepts, checked before anything is written."""

from __future__ import annotations

import re

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
