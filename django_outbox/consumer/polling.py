"""The consumer's Kafka client: built once the broker answers, polled, replaced when it
stalls; and the search for a record kafka-python cannot decode.

Every call goes through ``django_outbox.kafka`` (the only module that knows the
client). Whether the broker answers is ``broker.BrokerWatch``'s to say.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from django_outbox import kafka
from django_outbox.consumer.broker import BrokerWatch

logger = logging.getLogger("django_outbox.consumer")

#: Records asked of one poll, at least (rounded up to whole chunks).
POLL_RECORDS = 1000

#: Seconds without an assignment after which new metadata is asked for.
REFRESH_UNASSIGNED = 5


class Polling:
    """One consumer's Kafka client (``client``, None until built) and its polls."""

    def __init__(
        self,
        topics: Sequence[str],
        group: str,
        consumer_options: dict[str, Any],
        *,
        poll_timeout: float,
        batch_size: int,
        broker_probe_interval: float,
        client_stall_timeout: float,
        give_up: Callable[[set[Any]], dict[Any, int]],
    ) -> None:
        self.topics = list(topics)
        self.group = group
        self.consumer_options = consumer_options
        self.poll_timeout = poll_timeout
        #: Records per poll: whole chunks, at least ``POLL_RECORDS`` (fewer polls, commits).
        self.poll_size = batch_size * max(1, -(-POLL_RECORDS // batch_size))
        self.client_stall_timeout = client_stall_timeout
        self.broker = BrokerWatch(broker_probe_interval, client_stall_timeout)
        self.client: Any = None
        #: The offsets to commit for partitions being revoked (``Offsets.give_up``).
        self.give_up = give_up
        self.last_refresh = self.unassigned_since = time.monotonic()

    def connect(self) -> None:
        """Build the Kafka client; when the broker is away, say so and leave it None."""
        unreachable = kafka.unreachable_brokers()
        if unreachable and len(unreachable) == len(kafka.bootstrap_servers()):
            raise kafka.KafkaConnectionError(f"cannot connect to {', '.join(unreachable)}")
        listener = kafka.CommitOnRevoke(self.give_up, _log_assigned)
        self.client = kafka.build_group_consumer(
            self.topics, self.group, listener, **self.consumer_options
        )
        self.last_refresh = self.unassigned_since = time.monotonic()
        missing = kafka.missing_topics(self.client, self.topics)
        if missing:
            logger.warning("outbox consumer: topics %s do not exist (yet)", missing)

    def poll(self) -> dict[Any, list[Any]]:
        """One poll of the client (raises what the client raised)."""
        client = self.client
        now = time.monotonic()
        if not client.assignment() and now - self.last_refresh > REFRESH_UNASSIGNED:
            # Nothing assigned yet: new metadata (a topic created since) makes the
            # group rebalance, sooner than metadata_max_age_ms would.
            kafka.missing_topics(client, self.topics)
            self.last_refresh = now
        batch: dict[Any, list[Any]] = client.poll(
            timeout_ms=int(self.poll_timeout * 1000), max_records=self.poll_size
        )
        return batch

    def stalled(self, got_records: bool) -> bool:
        """After a poll that did not fail: the client should be replaced (once)."""
        return self.broker.polled(time.monotonic(), got_records)

    def burst_over(self, assignment_timeout: float) -> bool:
        """A burst is over: every assigned partition is read to its end offset, or no
        partition came within ``assignment_timeout``."""
        client = self.client
        if client.assignment():
            self.unassigned_since = time.monotonic()
            if kafka.caught_up(client):
                logger.info("outbox consumer: caught up; stopping (burst)")
                return True
        elif time.monotonic() - self.unassigned_since > assignment_timeout:
            logger.warning(
                "outbox consumer: no partition assigned after %.0f s; stopping (burst)",
                assignment_timeout,
            )
            return True
        return False

    def skip_unreadable(
        self, exc: BaseException, reject: Callable[[Any, int, BaseException], None]
    ) -> None:
        """A record kafka-python cannot decode: find it, have it ``reject``-ed, pass it.

        The fetcher does not say which partition failed: the record at the position
        of each assigned partition is read again by a throwaway client
        (``kafka.read_error_at``) until one fails with an error about that record
        (``kafka.RECORD``); any other error it meets is raised, so waited out.
        """
        client = self.client
        logger.warning(
            "outbox consumer: a fetched record cannot be read (%s: %s)", type(exc).__name__, exc
        )
        for tp in sorted(client.assignment()):
            position = client.position(tp, timeout_ms=5000)
            if position is None:
                continue
            error = kafka.read_error_at(tp, position)
            if error is None:
                continue
            if kafka.classify_poll_error(error) != kafka.RECORD:
                raise error
            reject(tp, position, error)
            return
        raise exc

    def take_client(self) -> Any:
        """The client, handed over to be closed; None from now on."""
        client, self.client = self.client, None
        return client


def _log_assigned(partitions: set[Any]) -> None:
    logger.info(
        "outbox consumer: partitions assigned: %s",
        kafka.partition_names(partitions) or "none",
        extra={"partitions": len(partitions)},
    )
