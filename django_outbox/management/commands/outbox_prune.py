"""``manage.py outbox_prune``: delete old final rows from the outbox table."""

from __future__ import annotations

import datetime
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_outbox.management.worker import add_database_argument, database_aliases
from django_outbox.models import OutboxMessage, Status, fencing
from django_outbox.models.attempts import FailedAttempt
from django_outbox.models.publications import Publication


class Command(BaseCommand):
    help = (
        "Delete consumed (and, with --dead, dead; with --published, published) outbox rows "
        "whose last change is older than --days, the failed attempts older than that, and "
        "where Kafka put the rows deleted. "
        "Pending rows are never touched."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=float, required=True, help="Keep rows changed within this many days."
        )
        parser.add_argument("--dead", action="store_true", help="Delete old dead rows too.")
        parser.add_argument(
            "--published",
            action="store_true",
            help="Delete old published rows too: events no consumer of this database marks "
            "consumed (handled by another service, or of a type with no handler here).",
        )
        add_database_argument(parser)
        parser.add_argument(
            "--dry-run", action="store_true", help="Count what would go; delete nothing."
        )

    def handle(self, *args: Any, **options: Any) -> None:
        days: float = options["days"]
        if days < 0:
            raise CommandError("--days must not be negative")
        aliases = database_aliases(options)
        statuses: tuple[str, ...] = (Status.CONSUMED,)
        if options["dead"]:
            statuses += (Status.DEAD,)
        if options["published"]:
            statuses += (Status.PUBLISHED,)
        cutoff = timezone.now() - datetime.timedelta(days=days)
        for alias in aliases:
            rows = OutboxMessage.objects.using(alias)
            if options["dry_run"]:
                count = rows.count_prunable(cutoff, statuses)
                verb = "would delete"
            else:
                count = rows.prune(cutoff, statuses)
                verb = "deleted"
            self.stdout.write(
                f"{alias}: {verb} {count} {'/'.join(statuses)} row(s) older than {days:g} days"
            )
            # The history of failed attempts goes with its rows (see attempts.py).
            attempts = FailedAttempt.objects.using(alias)
            if options["dry_run"]:
                count = attempts.filter(failed_at__lt=cutoff).count()
            else:
                count = attempts.prune(cutoff)
            self.stdout.write(f"{alias}: {verb} {count} failed attempt(s) older than {days:g} days")
            # Where Kafka put the rows just pruned (publications.py); kept rows keep theirs.
            entries = Publication.objects.using(alias)
            if options["dry_run"]:
                count = entries.count_prunable(cutoff, rows.finished_before(cutoff, statuses))
            else:
                count = entries.prune(cutoff)
            self.stdout.write(f"{alias}: {verb} {count} publication(s) of pruned rows")
            # Fence rows of relays that died (fencing.py); a live claim's are kept.
            fences = fencing.stale(alias, cutoff)
            count = fences.count() if options["dry_run"] else fences.delete()[0]
            self.stdout.write(f"{alias}: {verb} {count} stale claim fence(s)")
