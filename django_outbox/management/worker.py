"""What the outbox's management commands share: argument types and the worker base.

Not under ``commands/``, so Django does not list it as a command.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.db import connections

from django_outbox.conf import outbox_settings
from django_outbox.ops import metrics
from django_outbox.ops.health import HealthFile
from django_outbox.shutdown import Shutdown

VERBOSITY_LEVELS = {0: logging.WARNING, 1: logging.INFO}


def _number(
    kind: Callable[[str], Any], test: Callable[[Any], bool], rule: str
) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, not {text}")
        return value

    parse.__name__ = f"{kind.__name__} ({rule})"
    return parse


#: ``type=`` validators: a bad value is a usage error naming the rule.
positive_int = _number(int, lambda v: v >= 1, "at least 1")
non_negative_int = _number(int, lambda v: v >= 0, "non-negative")
positive_float = _number(float, lambda v: v > 0, "positive")
non_negative_float = _number(float, lambda v: v >= 0, "non-negative")
port_number = _number(int, lambda v: 1 <= v <= 65535, "a port number, 1 to 65535")


def add_database_argument(parser: CommandParser, verb: str = "Database alias") -> None:
    """``--database ALIAS`` (repeatable), read back with ``database_aliases``."""
    parser.add_argument(
        "--database",
        action="append",
        dest="databases",
        metavar="ALIAS",
        help=f"{verb} (repeatable; default OUTBOX_DATABASES).",
    )


def database_aliases(options: dict[str, Any]) -> list[str]:
    """The ``--database`` aliases, else ``OUTBOX_DATABASES``; unknown ones are an error."""
    aliases = list(options.get("databases") or outbox_settings.databases)
    unknown = [alias for alias in aliases if alias not in connections]
    if unknown:
        raise CommandError(f"unknown database alias(es) {unknown}; see settings.DATABASES")
    return aliases


class WorkerCommand(BaseCommand):
    """Base of the long-running commands (``outbox_relay``, ``outbox_consume``).

    It parses ``--health-file``, maps ``--verbosity`` to the level of the
    ``django_outbox`` loggers (a handler on stdout only when the project configured
    none), installs the SIGTERM/SIGINT handlers of one ``Shutdown`` for the run and
    restores the previous ones after it. ``--metrics-port`` serves Prometheus metrics
    for the run (``metrics.MetricsServer``); a worker with ``refreshes_backlog`` also
    refreshes the backlog gauges of its databases while metrics are on. Subclasses add
    their arguments in ``add_worker_arguments`` and build and run their worker in ``work``.
    """

    #: Whether this worker keeps the backlog gauges fresh (the relay does).
    refreshes_backlog = False

    def add_arguments(self, parser: CommandParser) -> None:
        self.add_worker_arguments(parser)
        parser.add_argument(
            "--health-file",
            type=Path,
            metavar="PATH",
            help="Touch PATH on every loop turn (at most once a second), for a liveness probe "
            "that checks its age; removed on exit.",
        )
        parser.add_argument(
            "--metrics-port",
            type=port_number,
            metavar="PORT",
            help="Serve Prometheus metrics on http://ADDRESS:PORT/metrics "
            "(needs prometheus-client: pip install 'django-outbox[prometheus]').",
        )
        parser.add_argument(
            "--metrics-address",
            default="0.0.0.0",
            metavar="ADDRESS",
            help="Address the metrics server listens on (default 0.0.0.0).",
        )

    def add_worker_arguments(self, parser: CommandParser) -> None:
        pass

    def handle(self, *args: Any, **options: Any) -> None:
        heartbeat = HealthFile(options["health_file"]) if options["health_file"] else None
        shutdown = Shutdown()
        try:
            with command_logging(self.stdout, options["verbosity"]), shutdown:
                with self.serving_metrics(options):
                    if heartbeat is not None:
                        heartbeat()
                    self.work(shutdown, heartbeat, **options)
        finally:
            if heartbeat is not None:
                heartbeat.remove()

    @contextmanager
    def serving_metrics(self, options: dict[str, Any]) -> Iterator[None]:
        """The metrics server (``--metrics-port``) and backlog refresher of the run."""
        server = refresher = None
        port = options.get("metrics_port")
        if port is not None:
            try:
                server = metrics.MetricsServer(port, options.get("metrics_address") or "0.0.0.0")
            except metrics.MetricsUnavailable as exc:
                raise CommandError(str(exc)) from None
            except OSError as exc:
                raise CommandError(f"cannot serve metrics on port {port}: {exc}") from None
        if self.refreshes_backlog and metrics.enabled():
            interval = outbox_settings.metrics_interval
            refresher = metrics.BacklogRefresher(database_aliases(options), interval).start()
        try:
            yield
        finally:
            if refresher is not None:
                refresher.stop()
            if server is not None:
                server.close()

    def work(self, shutdown: Shutdown, heartbeat: HealthFile | None, **options: Any) -> None:
        raise NotImplementedError


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
