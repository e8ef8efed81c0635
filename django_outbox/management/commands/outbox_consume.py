"""``manage.py outbox_consume``: run the consumer (Kafka -> handlers)."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_outbox.conf import outbox_settings
from django_outbox.consumer import DEFAULT_BATCH_SIZE, Consumer
from django_outbox.exceptions import ImproperlyConfiguredOutbox
from django_outbox.management.worker import (
    WorkerCommand,
    non_negative_float,
    positive_float,
    positive_int,
)
from django_outbox.models.inbox import InboxEntry, RejectedRecord
from django_outbox.ops.health import HealthFile
from django_outbox.shutdown import Shutdown


class Command(WorkerCommand):
    help = (
        "Consume outbox events from Kafka and run their handlers, once each. "
        "SIGTERM/SIGINT stop after the record in hand (its chunk committed); a second signal "
        "exits at once."
    )

    def add_worker_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--topic",
            action="append",
            dest="topics",
            metavar="TOPIC",
            help="Topic to read (repeatable). Default: the topics of the registered handlers.",
        )
        parser.add_argument("--group", help="Consumer group. Default: OUTBOX_CONSUMER_GROUP.")
        parser.add_argument(
            "--burst",
            action="store_true",
            help="Exit once every assigned partition is read to its end.",
        )
        parser.add_argument(
            "--max-messages", type=positive_int, metavar="N", help="Exit after handling N records."
        )
        parser.add_argument(
            "--batch-size",
            type=positive_int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help="Records handled in one database transaction (default "
            f"{DEFAULT_BATCH_SIZE}; a batch handler gets those of its type as one list); "
            "1 commits every record on its own.",
        )
        parser.add_argument(
            "--poll-timeout",
            type=positive_float,
            default=1.0,
            help="Seconds a poll waits (default 1).",
        )
        parser.add_argument(
            "--progress-interval",
            type=positive_float,
            default=30.0,
            help="Seconds between progress lines at INFO (default 30).",
        )
        parser.add_argument(
            "--prune",
            type=non_negative_float,
            metavar="DAYS",
            help="Instead of consuming: delete inbox entries and rejected records older "
            "than DAYS days, then exit. Keep DAYS above the topics' retention.",
        )

    def work(self, shutdown: Shutdown, heartbeat: HealthFile | None, **options: Any) -> None:
        if options["prune"] is not None:
            self._prune(options["prune"])
            return
        try:
            consumer = Consumer(
                options["topics"],
                group=options["group"],
                burst=options["burst"],
                max_messages=options["max_messages"],
                batch_size=options["batch_size"],
                poll_timeout=options["poll_timeout"],
                progress_interval=options["progress_interval"],
                shutdown=shutdown,
                heartbeat=heartbeat,
            )
        except ImproperlyConfiguredOutbox as exc:
            raise CommandError(str(exc)) from exc
        # The WorkerCommand installed the signal handlers in this (main) thread; the
        # loop runs in another (see Shutdown.run).
        shutdown.run(consumer.run, name="outbox-consume")

    def _prune(self, days: float) -> None:
        alias = outbox_settings.database
        inbox = InboxEntry.objects.using(alias).prune(days)
        rejected = RejectedRecord.objects.using(alias).prune(days)
        logging.getLogger("django_outbox.consumer").info(
            "pruned %d inbox entries and %d rejected records older than %s days",
            inbox,
            rejected,
            days,
        )
