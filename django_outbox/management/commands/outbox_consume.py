"""``manage.py outbox_consume``: run the consumer (Kafka -> handlers)."""

from __future__ import annotations

import logging
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_outbox.conf import outbox_settings
from django_outbox.consumer import DEFAULT_BATCH_SIZE, Consumer
from django_outbox.exceptions import ImproperlyConfiguredOutbox
from django_outbox.inbox import InboxEntry, RejectedRecord

VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG, 3: logging.DEBUG}


class Command(BaseCommand):
    help = (
        "Consume outbox events from Kafka and run their handlers, once each. "
        "SIGTERM/SIGINT stop after the record in hand (its chunk committed); a second signal "
        "exits at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
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
            "--max-messages", type=int, metavar="N", help="Exit after handling N records."
        )
        parser.add_argument(
            "--batch-size",
            type=int,
            default=DEFAULT_BATCH_SIZE,
            metavar="N",
            help="Records handled in one database transaction, a savepoint each "
            f"(default {DEFAULT_BATCH_SIZE}); 1 commits every record on its own.",
        )
        parser.add_argument(
            "--poll-timeout", type=float, default=1.0, help="Seconds a poll waits (default 1)."
        )
        parser.add_argument(
            "--progress-interval",
            type=float,
            default=30.0,
            help="Seconds between progress lines at INFO (default 30).",
        )
        parser.add_argument(
            "--prune",
            type=float,
            metavar="DAYS",
            help="Instead of consuming: delete inbox entries and rejected records older "
            "than DAYS days, then exit. Keep DAYS above the topics' retention.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        self._setup_logging(options["verbosity"])
        if options["prune"] is not None:
            self._prune(options["prune"])
            return
        if options["max_messages"] is not None and options["max_messages"] < 1:
            raise CommandError("--max-messages must be at least 1")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        try:
            consumer = Consumer(
                options["topics"],
                group=options["group"],
                burst=options["burst"],
                max_messages=options["max_messages"],
                batch_size=options["batch_size"],
                poll_timeout=options["poll_timeout"],
                progress_interval=options["progress_interval"],
            )
        except ImproperlyConfiguredOutbox as exc:
            raise CommandError(str(exc)) from exc
        # Handlers in this (main) thread, the work in another: see Shutdown.run.
        with consumer.shutdown:
            consumer.shutdown.run(consumer.run, name="outbox-consume")

    def _prune(self, days: float) -> None:
        if days < 0:
            raise CommandError("--prune DAYS must not be negative")
        alias = outbox_settings.database
        inbox = InboxEntry.objects.using(alias).prune(days)
        rejected = RejectedRecord.objects.using(alias).prune(days)
        logging.getLogger("django_outbox.consumer").info(
            "pruned %d inbox entries and %d rejected records older than %s days",
            inbox,
            rejected,
            days,
        )

    def _setup_logging(self, verbosity: int) -> None:
        package = logging.getLogger("django_outbox")
        package.setLevel(VERBOSITY_LEVELS.get(verbosity, logging.INFO))
        # A handler on stdout only when the project configured none for us.
        if not package.handlers and not logging.getLogger().handlers:
            handler = logging.StreamHandler(self.stdout)
            handler.setFormatter(
                logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
            )
            package.addHandler(handler)
