"""``manage.py outbox_topics``: the Kafka topics the settings imply, and creating them."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_outbox import kafka
from django_outbox.conf import outbox_settings
from django_outbox.management.worker import positive_float, positive_int


def implied_topics() -> list[str]:
    """The values of ``OUTBOX_TOPICS`` and ``OUTBOX_DEFAULT_TOPIC``, sorted, once each."""
    topics = set(outbox_settings.topics.values())
    if outbox_settings.default_topic:
        topics.add(outbox_settings.default_topic)
    return sorted(topics)


class Command(BaseCommand):
    help = (
        "List the topics OUTBOX_TOPICS and OUTBOX_DEFAULT_TOPIC name, with their partitions "
        "and replication factor; --create makes the missing ones. Warns when a topic has "
        "fewer partitions than --consumers (consumers of a group share partitions: more "
        "consumers than partitions sit idle)."
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
        try:
            admin = kafka.admin_client(options["timeout"])
        except Exception as exc:
            servers = ",".join(outbox_settings.kafka_bootstrap_servers)
            raise CommandError(f"Kafka at {servers} does not answer: {exc}") from exc
        try:
            topics = kafka.describe_topics(admin, names)
            missing = [topic.name for topic in topics if not topic.exists]
            if missing and options["create"]:
                kafka.create_topics(
                    admin, missing, options["partitions"], options["replication_factor"]
                )
                self.stdout.write(f"created {', '.join(missing)}")
                topics = kafka.describe_topics(admin, names)
        finally:
            admin.close()
        self._show(topics, options["consumers"])

    def _show(self, topics: list[kafka.TopicInfo], consumers: int | None) -> None:
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
            elif consumers and topic.partitions < consumers:
                self.stderr.write(
                    f"warning: topic {topic.name} has {topic.partitions} partition(s) for "
                    f"{consumers} consumers: {consumers - topic.partitions} of them will sit "
                    "idle (partitions can be added, but that moves keys to other partitions)"
                )
