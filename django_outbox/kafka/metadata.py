"""A kafka-python client's first look at its topics, without waiting out its backoff.

kafka-python counts its bootstrap (brokers only, no topics) as a metadata refresh
and holds the next one ``retry_backoff_ms`` (100 ms) after it. A new consumer's
first ``missing_topics`` and a new producer's first ``send`` to a topic both need
that next refresh: each worker start, and each producer the relay builds again
after an outage, waited 100 ms for nothing (measured: a producer's first ack 0.111
-> 0.011 s, the consumer from its client to the group coordinator 0.11 -> 0.00 s).

``refresh_now`` lifts the hold once, asks for the topics, and waits for that
refresh (kafka-python 3 runs it on its I/O thread) up to a timeout. Later refreshes
keep the backoff. Only kafka-python's own attributes (3.0) are touched, and nothing
is done where they are missing. ``learn_topics`` does it once per producer and
topic, for the relay's ``send_batch``.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Seconds between two looks at the refresh's future.
POLL = 0.002

#: Per producer, the topics ``learn_topics`` asked for already.
_asked: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()


def cluster_of(client: Any) -> Any:
    """A kafka-python consumer's or producer's cluster metadata (None if not found)."""
    cluster = getattr(client, "_cluster", None) or getattr(client, "_metadata", None)
    return cluster if hasattr(cluster, "_last_refresh_ms") else None


def refresh_now(cluster: Any, topics: Iterable[str] = (), timeout: float = 1.0) -> None:
    """Refresh ``cluster``'s metadata now (with ``topics``), waiting up to ``timeout``."""
    if cluster is None or timeout <= 0:
        return
    for topic in topics:
        try:
            cluster.add_topic(topic)
        except (TypeError, ValueError):  # an invalid name: its records get their own error
            continue
    cluster._last_refresh_ms = 0
    future = cluster.request_update()
    deadline = time.monotonic() + timeout
    while not getattr(future, "is_done", True) and time.monotonic() < deadline:
        time.sleep(POLL)


def learn_topics(producer: Any, topics: Iterable[str], timeout: float) -> None:
    """Before a kafka-python producer's first records to ``topics``: their metadata now.

    Once per producer and topic: a topic the cluster does not have (its records wait
    out ``max_block_ms`` in ``send`` anyway) is not asked for again.
    """
    cluster = cluster_of(producer)
    if cluster is None:
        return
    try:
        asked = _asked.setdefault(producer, set())
    except TypeError:  # a client that cannot be weakly referenced: leave it be
        return
    new = {
        topic for topic in topics if topic not in asked and not cluster.partitions_for_topic(topic)
    }
    if not new:
        return
    asked.update(new)
    try:
        refresh_now(cluster, sorted(new), timeout)
    except Exception:  # never worth a batch: send() fetches the metadata itself
        logger.debug("outbox: fetching metadata for %s failed", sorted(new), exc_info=True)
