"""``manage.py outbox_relay``: deliver pending outbox rows to Kafka."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import connections

from django_outbox.conf import outbox_settings
from django_outbox.relay import Relay
from django_outbox.shutdown import Shutdown

VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO}


@contextmanager
def command_logging(stdout: OutputWrapper, verbosity: int) -> Iterator[None]:
    """Verbosity sets the level; a stdout handler only when the project configured none."""
    package = logging.getLogger("django_outbox")
    level = package.level
    package.setLevel(VERBOSITY_LEVELS.get(verbosity, logging.DEBUG))
    handler = None
    if not package.handlers:
        handler = logging.StreamHandler(stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)
    try:
        yield
    finally:
        if handler is not None:
            package.removeHandler(handler)
        package.setLevel(level)


class Command(BaseCommand):
    help = (
        "Deliver pending outbox rows to Kafka. SIGTERM/SIGINT finish the batch in hand "
        "and exit; a second signal exits at once."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, help="Rows per claim (default OUTBOX_BATCH_SIZE)."
        )
        parser.add_argument(
            "--interval",
            type=float,
            default=1.0,
            help="Seconds to wait when nothing is due (default 1).",
        )
        parser.add_argument(
            "--burst", action="store_true", help="Deliver everything due, then exit."
        )
        parser.add_argument(
            "--database",
            action="append",
            dest="databases",
            metavar="ALIAS",
            help="Database alias to serve (repeatable; default OUTBOX_DATABASES).",
        )
        parser.add_argument(
            "--lease", type=float, help="Seconds a claim lasts (default OUTBOX_LEASE_SECONDS)."
        )
        parser.add_argument(
            "--progress-interval",
            type=float,
            default=10.0,
            help="Seconds between progress lines at INFO (default 10).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        databases = options["databases"] or outbox_settings.databases
        unknown = [alias for alias in databases if alias not in connections]
        if unknown:
            raise CommandError(f"unknown database alias(es) {unknown}; see settings.DATABASES")
        if options["batch_size"] is not None and options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1")
        if options["interval"] < 0:
            raise CommandError("--interval must not be negative")
        if options["lease"] is not None and options["lease"] <= 0:
            raise CommandError("--lease must be positive")
        shutdown = Shutdown()
        relay = Relay(
            databases=databases,
            batch_size=options["batch_size"],
            interval=options["interval"],
            lease_seconds=options["lease"],
            burst=options["burst"],
            shutdown=shutdown,
            progress_interval=options["progress_interval"],
        )
        # Handlers in this (main) thread, the work in another: see Shutdown.run.
        with command_logging(self.stdout, options["verbosity"]), shutdown:
            shutdown.run(relay.run, name="outbox-relay")
        if relay.errors and options["burst"]:
            raise CommandError(
                f"{relay.errors} database error(s) during the burst; see the log above"
            )
