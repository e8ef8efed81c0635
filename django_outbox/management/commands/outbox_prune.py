"""``manage.py outbox_prune``: delete old final rows from the outbox table."""

from __future__ import annotations

import datetime
import functools
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from django_outbox.history.archive import Archive
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
        parser.add_argument(
            "--archive",
            metavar="FILE",
            type=Path,
            help="Append every outbox row deleted to FILE first (JSON Lines; gzip when FILE "
            "ends in .gz), synced to disk before the row goes; outbox_replay --from-archive "
            "FILE sends them again.",
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
        archive = None
        if options["archive"] is not None and not options["dry_run"]:
            try:
                archive = Archive(options["archive"])
            except OSError as exc:
                raise CommandError(f"cannot open the archive {options['archive']}: {exc}") from None
        try:
            self._prune(aliases, statuses, cutoff, days, archive, options["dry_run"])
        finally:
            if archive is not None:
                archive.close()

    def _prune(
        self,
        aliases: list[str],
        statuses: tuple[str, ...],
        cutoff: datetime.datetime,
        days: float,
        archive: Archive | None,
        dry_run: bool,
    ) -> None:
        for alias in aliases:
            rows = OutboxMessage.objects.using(alias)
            if dry_run:
                count = rows.count_prunable(cutoff, statuses)
                verb = "would delete"
            elif archive is not None:
                keep = functools.partial(archive.keep, alias=alias)
                count = rows.prune_kept(cutoff, keep, statuses)
                verb = f"archived to {archive.path} and deleted"
            else:
                count = rows.prune(cutoff, statuses)
                verb = "deleted"
            self.stdout.write(
                f"{alias}: {verb} {count} {'/'.join(statuses)} row(s) older than {days:g} days"
            )
            # The history of failed attempts goes with its rows (see attempts.py).
            attempts = FailedAttempt.objects.using(alias)
            verb = "would delete" if dry_run else "deleted"
            if dry_run:
                count = attempts.filter(failed_at__lt=cutoff).count()
            else:
                count = attempts.prune(cutoff)
            self.stdout.write(f"{alias}: {verb} {count} failed attempt(s) older than {days:g} days")
            # Where Kafka put the rows just pruned (publications.py); kept rows keep theirs.
            entries = Publication.objects.using(alias)
            if dry_run:
                count = entries.count_prunable(cutoff, rows.finished_before(cutoff, statuses))
            else:
                count = entries.prune(cutoff)
            self.stdout.write(f"{alias}: {verb} {count} publication(s) of pruned rows")
            # Fence rows of relays that died (fencing.py); a live claim's are kept.
            fences = fencing.stale(alias, cutoff)
            count = fences.count() if dry_run else fences.delete()[0]
            self.stdout.write(f"{alias}: {verb} {count} stale claim fence(s)")
