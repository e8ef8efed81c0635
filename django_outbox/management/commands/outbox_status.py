"""``manage.py outbox_status``: the state of the outbox, for people, cron and probes."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from django_outbox.management.worker import (
    add_database_argument,
    database_aliases,
    non_negative_float,
    non_negative_int,
)
from django_outbox.ops.status import database_status, problems, render

#: Exit code when a --fail-if-* threshold is crossed (1 stays "the command failed").
THRESHOLD_EXIT = 2


class Command(BaseCommand):
    help = (
        "Count outbox rows per status and per state of the pending ones (ready, backing off, "
        "in flight), per database; the oldest due row's age, dead rows of the last hour, "
        f"published rows not consumed in time. Exits {THRESHOLD_EXIT} when a --fail-if-* "
        "threshold is crossed. Indexed queries only."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_database_argument(parser)
        parser.add_argument("--by-type", action="store_true", help="Counts per event type too.")
        parser.add_argument(
            "--exact",
            action="store_true",
            help="Count consumed rows exactly (reads the whole index; by default they are "
            "counted up to 10,000, then estimated). --by-type counts exactly too.",
        )
        parser.add_argument("--json", action="store_true", help="One JSON document on stdout.")
        parser.add_argument(
            "--published-older-than",
            type=non_negative_float,
            default=3600.0,
            metavar="SECONDS",
            help="Count published rows older than this, not consumed yet (default 3600).",
        )
        parser.add_argument(
            "--fail-if-oldest",
            type=non_negative_float,
            metavar="SECONDS",
            help=f"Exit {THRESHOLD_EXIT} if the oldest due row has waited longer than this.",
        )
        parser.add_argument(
            "--fail-if-dead",
            type=non_negative_int,
            metavar="N",
            help=f"Exit {THRESHOLD_EXIT} if more than N rows went dead in the last hour.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = database_aliases(options)
        figures = [
            database_status(
                alias,
                by_type=options["by_type"],
                exact=options["exact"],
                published_older_than=options["published_older_than"],
            )
            for alias in aliases
        ]
        crossed = problems(
            figures,
            fail_if_oldest=options["fail_if_oldest"],
            fail_if_dead=options["fail_if_dead"],
        )
        if options["json"]:
            document = {"databases": [db.as_dict() for db in figures], "problems": crossed}
            self.stdout.write(json.dumps(document, indent=2))
        else:
            self.stdout.write("\n".join(render(db) for db in figures))
        if crossed:
            raise CommandError("; ".join(crossed), returncode=THRESHOLD_EXIT)
