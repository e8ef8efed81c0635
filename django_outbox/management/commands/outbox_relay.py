"""``manage.py outbox_relay``: deliver pending outbox rows to Kafka."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandError, CommandParser

from django_outbox.management.worker import (
    WorkerCommand,
    add_database_argument,
    database_aliases,
    non_negative_float,
    positive_float,
    positive_int,
)
from django_outbox.ops.health import HealthFile
from django_outbox.relay.loop import Relay
from django_outbox.shutdown import Shutdown


class Command(WorkerCommand):
    help = (
        "Deliver pending outbox rows to Kafka. SIGTERM/SIGINT finish the batch in hand "
        "and exit; a second signal exits at once."
    )
    refreshes_backlog = True

    def add_worker_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=positive_int, help="Rows per claim (default OUTBOX_BATCH_SIZE)."
        )
        parser.add_argument(
            "--interval",
            type=non_negative_float,
            default=1.0,
            help="Seconds to wait when nothing is due (default 1).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Deliver everything due, then exit."
        )
        add_database_argument(parser, "Database alias to serve")
        parser.add_argument(
            "--lease",
            type=positive_float,
            help="Seconds a claim lasts (default OUTBOX_LEASE_SECONDS).",
        )
        parser.add_argument(
            "--progress-interval",
            type=positive_float,
            default=10.0,
            help="Seconds between progress lines at INFO (default 10).",
        )

    def work(self, shutdown: Shutdown, heartbeat: HealthFile | None, **options: Any) -> None:
        databases = database_aliases(options)
        relay = Relay(
            databases=databases,
            batch_size=options["batch_size"],
            interval=options["interval"],
            lease_seconds=options["lease"],
            burst=options["burst"],
            shutdown=shutdown,
            progress_interval=options["progress_interval"],
            heartbeat=heartbeat,
        )
        # The WorkerCommand installed the signal handlers in this (main) thread; the
        # loop runs in another (see Shutdown.run).
        shutdown.run(relay.run, name="outbox-relay")
        if relay.errors and options["burst"]:
            raise CommandError(
                f"{relay.errors} database error(s) during the burst; see the log above"
            )
