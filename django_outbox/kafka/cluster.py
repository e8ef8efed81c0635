"""What the cluster has: its topics and brokers, as the admin client reports them.

Owns ``TopicInfo``, the admin client with a deadline, the description and creation of
topics (``manage.py outbox_topics``, ``outbox_ready``, the topics check), the broker
count, and a plain TCP probe of the bootstrap servers that names an outage at once.

Imports ``kafka/config.py`` and ``kafka/kafka_python.py``; no client of its own.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

from django_outbox.kafka.config import bootstrap_servers
from django_outbox.kafka.kafka_python import build_admin

if TYPE_CHECKING:
    from kafka import KafkaAdminClient


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


def unreachable_brokers(servers: Sequence[str] | None = None, timeout: float = 1.0) -> list[str]:
    """The bootstrap servers that refuse or ignore a TCP connection within ``timeout``.

    A plain socket probe: it answers in a second where the client would wait for its
    own timeouts, so that an outage is named in the log at once.
    """
    down = []
    for server in servers if servers is not None else bootstrap_servers():
        host, _, port = server.rpartition(":")
        try:
            with socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout):
                pass
        except (OSError, ValueError):
            down.append(server)
    return down
