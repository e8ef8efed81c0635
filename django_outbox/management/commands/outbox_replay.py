"""``manage.py outbox_replay``: send published/consumed/dead rows (or an archive) again.

Thin: it parses the filters, checks the target group, records the run and hands it
to ``history.replay.Replayer``. See docs/replay.rst.
"""

from __future__ import annotations

import argparse
import datetime
import getpass
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from django_outbox.conf import outbox_settings
from django_outbox.exceptions import describe
from django_outbox.history import replay
from django_outbox.history.archive import ArchiveError, read_archive
from django_outbox.history.progress import progress_line
from django_outbox.history.selection import DEFAULT_STATUSES, REPLAYABLE_STATUSES, Selection
from django_outbox.management.worker import command_logging, positive_float, positive_int
from django_outbox.models import ReplayRun, RunState
from django_outbox.models.replay_runs import table_source_name
from django_outbox.shutdown import Shutdown

#: Rows shown by ``--dry-run``.
SAMPLE = 5


def moment(text: str) -> datetime.datetime:
    """``--since``/``--until``: an ISO 8601 time or date; without a zone, the current one."""
    value = parse_datetime(text)
    if value is None:
        day = parse_date(text) if len(text) == 10 else None
        if day is None:
            raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time or date")
        value = datetime.datetime.combine(day, datetime.time())
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    return value


class Command(BaseCommand):
    help = (
        "Send outbox rows to Kafka again (by default published and consumed ones), or the "
        "rows of an archive written by outbox_prune --archive. --group G: only consumer "
        "group G handles them again, every other group acknowledges them unrun; "
        "--all-groups: EVERY consumer group of the topics handles them again (each once). "
        "One of the two is required. --dry-run counts and shows a sample, sends nothing. "
        "Each run is recorded (admin: replay runs) and resumable with --resume RUN_ID."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        window = parser.add_argument_group("which rows")
        window.add_argument("--since", type=moment, help="created_at at or after (ISO 8601).")
        window.add_argument("--until", type=moment, help="created_at before (ISO 8601).")
        window.add_argument("--event-type", action="append", dest="event_types", default=[])
        window.add_argument("--key", action="append", dest="keys", default=[])
        window.add_argument("--id", action="append", dest="ids", type=positive_int, default=[])
        window.add_argument(
            "--status",
            action="append",
            dest="statuses",
            choices=REPLAYABLE_STATUSES,
            help="Repeatable; default published and consumed.",
        )
        window.add_argument("--from-archive", metavar="FILE", type=Path)
        window.add_argument(
            "--database", help="Database alias of the rows and the run (default OUTBOX_DATABASE)."
        )
        target = parser.add_mutually_exclusive_group()
        target.add_argument("--group", help="The one consumer group that handles them again.")
        target.add_argument(
            "--all-groups",
            action="store_true",
            help="Every consumer group of the topics handles them again.",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Replay for a group the cluster does not know; resume a run marked running "
            "whose process was killed.",
        )
        parser.add_argument("--dry-run", action="store_true", help="Count and show; send nothing.")
        parser.add_argument("--rate", type=positive_float, help="At most this many records/s.")
        parser.add_argument("--batch-size", type=positive_int, default=replay.BATCH_SIZE)
        parser.add_argument("--resume", type=positive_int, metavar="RUN_ID")
        parser.add_argument("--operator", help="Who runs it (default: the OS user).")

    def handle(self, *args: Any, **options: Any) -> None:
        alias = options["database"] or outbox_settings.database
        if alias not in connections:
            raise CommandError(f"unknown database alias {alias!r}; see settings.DATABASES")
        with command_logging(self.stdout, options["verbosity"]):
            if options["resume"]:
                planned: tuple[ReplayRun, replay.Source] | None = self._resumed(
                    alias, options["resume"], options["force"]
                )
            else:
                planned = self._planned(alias, options)
            if planned is not None:
                self._send(*planned, options)

    def _planned(
        self, alias: str, options: dict[str, Any]
    ) -> tuple[ReplayRun, replay.Source] | None:
        """The new run, recorded, and its rows; None when nothing is to be sent (dry run,
        no row)."""
        try:
            selection = Selection(
                since=options["since"],
                until=options["until"],
                event_types=tuple(options["event_types"]),
                keys=tuple(options["keys"]),
                ids=tuple(options["ids"]),
                statuses=tuple(options["statuses"] or DEFAULT_STATUSES),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if not options["group"] and not options["all_groups"]:
            raise CommandError(
                "say who handles the replay: --group G (only that consumer group) or "
                "--all-groups (every consumer group of the topics handles the events again)"
            )
        source_name = table_source_name(alias)
        if options["from_archive"] is not None:
            source_name = f"archive:{options['from_archive']}"
        source, matched, sample = self._source(source_name, selection)
        shown = f"{matched} row(s) of {source_name} match {selection.as_dict()}"
        if matched == 0:
            self.stdout.write(
                f"no row of {source_name} matches {selection.as_dict()}: nothing sent"
            )
            return None
        if options["dry_run"]:
            self.stdout.write(f"{shown}; nothing sent (--dry-run). First {len(sample)}:")
            for row in sample:
                self.stdout.write(f"  #{row.pk} {row.event_type} key={row.key!r} topic={row.topic}")
            if options["group"]:
                self.stdout.write(
                    f"consumer group {options['group']!r} not checked (--dry-run asks "
                    "nothing of Kafka); the run itself refuses a group the cluster does not know"
                )
            return None
        group = options["group"] or ""
        if group and not options["force"]:
            self._check_group(group)
        run = ReplayRun.objects.using(alias).create(
            operator=options["operator"] or _os_user(),
            target_group=group,
            source=source_name,
            filters=selection.as_dict(),
            matched=matched,
        )
        self.stdout.write(f"replay run {run.pk}: {shown}, for {run.group_label}")
        return run, source

    def _source(
        self, source_name: str, selection: Selection
    ) -> tuple[replay.Source, int, list[replay.Replayable]]:
        kind, _, where = source_name.partition(":")
        if kind == "archive":
            try:
                rows = read_archive(where)
            except ArchiveError as exc:
                raise CommandError(str(exc)) from None
            source = replay.archive_source(rows, selection)
            matched = sum(1 for row in rows if selection.matches(row))
        else:
            source = replay.table_source(selection, where)
            matched = selection.queryset(where).count()
        sample = next(source(None, SAMPLE), [])
        return source, matched, sample

    def _check_group(self, group: str) -> None:
        try:
            groups = replay.known_groups()
        except Exception as exc:
            raise CommandError(
                f"Kafka cannot be reached to list its consumer groups ({describe(exc)}); "
                "nothing was sent, no run recorded"
            ) from None
        if group not in groups:
            listed = ", ".join(sorted(groups)) or "none"
            raise CommandError(
                f"no consumer group {group!r} is known to the cluster (known: {listed}). A "
                "group is known once it has joined or committed offsets: check the name "
                "(the OUTBOX_CONSUMER_GROUP of the service meant to handle the events), or "
                f"pass --force to send the replay for {group!r} anyway (no other group "
                "handles it). Nothing was sent."
            )

    def _resumed(self, alias: str, pk: int, force: bool) -> tuple[ReplayRun, replay.Source]:
        run = ReplayRun.objects.using(alias).filter(pk=pk).first()
        if run is None:
            raise CommandError(f"no replay run {pk} in database {alias!r}")
        if run.state == RunState.DONE:
            raise CommandError(f"replay run {pk} is done already: nothing to resume")
        if run.state == RunState.RUNNING and not force:
            # Two processes on one run would send its rows twice over, in no order.
            raise CommandError(
                f"replay run {pk} is running (last progress at {run.updated_at}); if its "
                f"process is gone (killed), resume it with --resume {pk} --force"
            )
        source, _, _ = self._source(run.source, Selection.from_dict(run.filters))
        self.stdout.write(
            f"replay run {pk}: resumed after id/line {run.last_id}, {run.sent} sent before"
        )
        return run, source

    def _send(self, run: ReplayRun, source: replay.Source, options: dict[str, Any]) -> None:
        if run.state != RunState.RUNNING:
            run.resume()
        shutdown = Shutdown()
        #: when this process began sending, and what the run had sent before (a resume)
        self._started = (time.monotonic(), run.sent)
        replayer = replay.Replayer(
            run,
            source,
            rate=options["rate"],
            batch_size=options["batch_size"],
            shutdown=shutdown,
            progress=self._progress,
        )
        try:
            with shutdown:
                replayer.run()
        except replay.ReplayStopped as exc:
            if shutdown.requested:
                self.stdout.write(str(exc))
                return
            raise CommandError(str(exc)) from None
        self.stdout.write(f"replay run {run.pk} done: {run.sent} record(s) sent again")

    def _progress(self, run: ReplayRun) -> None:
        started, sent_before = self._started
        line = progress_line(
            run.pk, run.sent, run.matched, run.sent - sent_before, time.monotonic() - started
        )
        self.stdout.write(line)


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in the environment nor in the password database
        return "unknown"
