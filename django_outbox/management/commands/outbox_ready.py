"""``manage.py outbox_ready``: do the databases and the Kafka broker answer? (readiness)"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_outbox import kafka
from django_outbox.conf import outbox_settings
from django_outbox.management.worker import add_database_argument, database_aliases, positive_float
from django_outbox.models import OutboxMessage


class Command(BaseCommand):
    help = (
        "Exit 0 if every database of OUTBOX_DATABASES answers (the outbox table included) "
        "and a Kafka broker answers; exit 1 naming what does not. A readiness check: "
        "liveness is --health-file of outbox_relay / outbox_consume."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_database_argument(parser)
        parser.add_argument(
            "--timeout",
            type=positive_float,
            default=5.0,
            metavar="SECONDS",
            help="Seconds to wait for the broker (default 5).",
        )
        parser.add_argument("--skip-broker", action="store_true", help="Check the databases only.")

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = database_aliases(options)
        failures = []
        for alias in aliases:
            try:
                OutboxMessage.objects.using(alias).order_by().values_list("pk")[:1].exists()
            except Exception as exc:
                failures.append(f"database {alias!r} does not answer: {exc}")
            else:
                self.stdout.write(f"database {alias!r}: ok")
        if not options["skip_broker"]:
            servers = ",".join(outbox_settings.kafka_bootstrap_servers)
            try:
                admin = kafka.admin_client(options["timeout"])
                try:
                    brokers = kafka.cluster_brokers(admin)
                finally:
                    admin.close()
            except Exception as exc:
                failures.append(f"Kafka at {servers} does not answer: {type(exc).__name__}: {exc}")
            else:
                self.stdout.write(f"Kafka at {servers}: ok ({brokers} broker(s))")
        if failures:
            raise CommandError("; ".join(failures))
