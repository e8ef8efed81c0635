"""``manage.py outbox_topics``: the Kafka topics the settings imply, and creating them."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_outbox import kafka
from django_outbox.conf import outbox_settings
from django_outbox.management.worker import positive_float, positive_int
from django_outbox.topics import SINGLE_COPY_FIX, implied_topics, single_copy_problem


class Command(BaseCommand):
    help = (
        "List the topics OUTBOX_TOPICS and OUTBOX_DEFAULT_TOPIC name, with their partitions "
        "and replication factor; --create makes the missing ones. Warns when a topic has "
        "fewer partitions than --consumers (consumers of a group share partitions: more "
        "consumers than partitions sit idle), and when a topic has one copy on a cluster "
        "of several brokers."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--create", action="store_true", help="Create the missing topics.")
        parser.add_argument(
            "--partitions", type=positive_int, metavar="N", help="Partitions of new topics."
        )
        parser.add_argument(
            "--replication-factor",
            type=positive_int,
            metavar="R",
            help="Replication factor of new topics (3 on a production cluster).",
        )
        parser.add_argument(
            "--min-insync-replicas",
            type=positive_int,
            metavar="M",
            help="min.insync.replicas of new topics: how many copies an acks=all write "
            "needs (2 with replication factor 3: one broker may be lost). Default: the "
            "broker's.",
        )
        parser.add_argument(
            "--consumers",
            type=positive_int,
            metavar="N",
            help="How many outbox_consume processes you run in the group: warn if a topic "
            "has fewer partitions.",
        )
        parser.add_argument(
            "--timeout",
            type=positive_float,
            default=10.0,
            metavar="SECONDS",
            help="Seconds to wait for the broker (default 10).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        names = implied_topics()
        if not names:
            raise CommandError("no topic configured: set OUTBOX_TOPICS or OUTBOX_DEFAULT_TOPIC")
        if options["create"] and not (options["partitions"] and options["replication_factor"]):
            raise CommandError("--create needs --partitions N and --replication-factor R")
        replication, min_insync = options["replication_factor"], options["min_insync_replicas"]
        if min_insync is not None and replication is not None and min_insync > replication:
            raise CommandError(
                f"--min-insync-replicas {min_insync} exceeds --replication-factor "
                f"{replication}: every acks=all write would fail; use at most {replication} "
                f"({replication - 1} lets one broker go down)"
            )
        try:
            admin = kafka.admin_client(options["timeout"])
        except Exception as exc:
            servers = ",".join(outbox_settings.kafka_bootstrap_servers)
            raise CommandError(f"Kafka at {servers} does not answer: {exc}") from exc
        try:
            brokers = kafka.cluster_brokers(admin)
            topics = kafka.describe_topics(admin, names)
            missing = [topic.name for topic in topics if not topic.exists]
            if options["create"]:
                if replication > brokers:
                    raise CommandError(
                        f"--replication-factor {replication} needs {replication} brokers; the "
                        f"cluster has {brokers}: use --replication-factor {brokers} or add brokers"
                    )
                if missing:
                    configs = {} if min_insync is None else {"min.insync.replicas": str(min_insync)}
                    kafka.create_topics(admin, missing, options["partitions"], replication, configs)
                    self.stdout.write(f"created {', '.join(missing)}")
                    topics = self._created(admin, names, options["timeout"])
        finally:
            admin.close()
        self._show(topics, options["consumers"], brokers)

    def _created(self, admin: Any, names: list[str], timeout: float) -> list[kafka.TopicInfo]:
        """The topics once the metadata shows the new ones: on a cluster the broker asked
        may learn of a topic a moment after the controller created it."""
        deadline = time.monotonic() + max(timeout, 1.0)
        while True:
            topics = kafka.describe_topics(admin, names)
            if all(topic.exists for topic in topics) or time.monotonic() >= deadline:
                return topics
            time.sleep(0.2)

    def _show(self, topics: list[kafka.TopicInfo], consumers: int | None, brokers: int) -> None:
        width = max(len(topic.name) for topic in topics)
        self.stdout.write(f"{'topic':<{width}}  partitions  replication")
        for topic in topics:
            if topic.exists:
                self.stdout.write(
                    f"{topic.name:<{width}}  {topic.partitions:>10}  {topic.replication:>11}"
                )
            else:
                self.stdout.write(f"{topic.name:<{width}}  {'missing':>10}")
        for topic in topics:
            if not topic.exists:
                self.stderr.write(
                    f"warning: topic {topic.name} does not exist; create it with --create "
                    "--partitions N --replication-factor R (a broker that auto-creates topics "
                    "gives it its default partition count)"
                )
                continue
            problem = single_copy_problem(topic.name, topic.replication, brokers)
            if problem:
                self.stderr.write(f"warning: {problem}. {SINGLE_COPY_FIX}")
            if consumers and topic.partitions < consumers:
                self.stderr.write(
                    f"warning: topic {topic.name} has {topic.partitions} partition(s) for "
                    f"{consumers} consumers: {consumers - topic.partitions} of them will sit "
                    "idle (partitions can be added, but that moves keys to other partitions)"
                )
