#!/usr/bin/env python
"""Every benchmark on every database, in one table (and docs/benchmarks.rst, and charts).

Usage (PostgreSQL and MariaDB from ``scripts/databases start``, a broker from
``scripts/kafka-local start``; a database that does not answer is skipped)::

    python bench/run.py [--quick] [--databases sqlite,postgresql,mysql]
        [--only relay,consumer,publish,latency,claim,status,startup] [--out DIR] [--no-docs]

Each bench script runs as a subprocess with ``DATABASE_URL`` set (SQLite: a file in
a temporary directory; PostgreSQL and MariaDB: the server of ``--postgresql-url`` /
``--mysql-url`` with a database of the bench's own, ``<name>_<bench>``) and
``--json PATH``; it writes its figures as bench/results.py describes. A script that
fails, or writes no JSON, becomes an error row with the last line of its error
output; its whole output is in ``--out``. ``--quick`` passes small sizes (the
scripts' own options, see ``BENCHES``), for a smoke run of a few minutes; a full
run passes the relay bench ``--sweep`` (the batch sizes of its chart). Both pass
the relay bench ``--client confluent`` when confluent-kafka is importable (a line
says so when it is not, and those figures are missing).

The figures, per database (issue 19's table, each with its baseline from the same run):

- relay: the relay on kafka-python vs the raw kafka-python producer; with
  confluent-kafka, the relay on librdkafka vs the raw confluent-kafka producer and
  vs raw kafka-python; the relay (and the confluent relay) vs its database floor
  (bench/floor.py: claim + fenced write-back, no Kafka);
- consumer: no-op handler vs a raw kafka-python consumer + ``json.loads``, no-op vs
  its database floor, the one-INSERT handler vs the same INSERTs in a plain loop;
- publish, claim, status: ``publish_event()`` against a bare INSERT; the claim,
  and the status page's and prune's jobs, at 1M rows against the same at a small
  table;
- latency: commit -> handler at 50 events/s, p50, p90, p99 and max, each against a
  bare produce -> poll at the same rate; the p99 has the limit 50 ms;
- startup: seconds from launching ``outbox_consume --burst`` to its first chunk
  handled (limit 0.5 s), and from launching ``outbox_relay --burst`` to its first
  claim (limit 0.5 s) and its first write-back (bench/startup_bench.py says which
  baseline each has).

The table: per database and figure, the value and its baseline (medians over the
repetitions, measured in the same run), the ratio value / baseline (min, median,
max over the repetitions), the target and whether the median meets it. A target is
a bound of the ratio (``>= 0.9x``; for lower-is-better figures an upper bound,
``<= 1.5x``), or an absolute bound of the median value in the figure's unit (a
``limit`` in bench/results.py: ``<= 50 ms``, ``<= 0.5 s``), or both; ``met`` is yes
when the median meets each. A goal such as "the first record within half a second"
is absolute, so it is a limit, not a ratio against a made-up baseline: the baseline
column still shows what a bare client needs for the same step in the same run, to
read the limit against. The note of a figure against the database floor gives the
share (``relay = 0.55 of the database floor``). Unless
``--no-docs``, the table is written into docs/benchmarks.rst between the markers
``.. bench-run: start`` and ``.. bench-run: end`` (the rest of the page is kept),
with docs/img/bench-relay-batch.png (throughput against batch size, relay and raw
producer, from the relay bench's series) and docs/img/bench-ratios.png (every
ratio against its target, per database). ``--from-json DIR`` renders the files of
an earlier run instead of running anything.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import results  # noqa: E402

DATABASES = ("sqlite", "postgresql", "mysql")
DEFAULT_URLS = {
    "postgresql": "postgres://outbox:outbox@127.0.0.1:5432/outbox",
    "mysql": "mysql://outbox:outbox@127.0.0.1:3306/outbox",
}
DATABASE_NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL", "mysql": "MariaDB"}
START_MARKER = ".. bench-run: start"
END_MARKER = ".. bench-run: end"


@dataclass
class Bench:
    script: str
    kafka: bool
    #: Extra arguments of a ``--quick`` run (the script's own size options).
    quick: list[str] = field(default_factory=list)
    #: Extra arguments of a full run.
    full: list[str] = field(default_factory=list)
    #: Extra arguments of both, when confluent-kafka is importable (else left out, said why).
    confluent: list[str] = field(default_factory=list)


BENCHES = {
    "relay": Bench(
        "relay_bench.py",
        True,
        quick=["--rows", "3000", "--repeat", "2", "--sweep", "250,1000"],
        full=["--sweep", "100,250,500,1000,2000"],
        # the relay on librdkafka against raw confluent-kafka, and against its floor
        confluent=["--client", "confluent"],
    ),
    "consumer": Bench("consumer_bench.py", True, quick=["--events", "2000", "--repeat", "2"]),
    "publish": Bench(
        "publish_bench.py", True, quick=["--transactions", "200", "--repeat", "3", "--latency", "0"]
    ),
    # commit -> handler at 50 events/s against a bare produce -> poll at the same rate
    # (200 events: fewer and the p99 would be the max)
    "latency": Bench("latency_bench.py", True, quick=["--events", "200"]),
    "claim": Bench("claim_1m.py", False, quick=["--rows", "100000", "--runs", "5"]),
    "status": Bench("status_1m.py", False, quick=["--rows", "100000", "--runs", "7"]),
    # outbox_relay / outbox_consume --burst in a fresh interpreter: seconds to the first work
    "startup": Bench("startup_bench.py", True, quick=["--events", "200", "--repeat", "2"]),
}


def confluent_missing() -> str:
    """An empty string if confluent-kafka is importable, else why a run leaves it out."""
    if importlib.util.find_spec("confluent_kafka") is not None:
        return ""
    return "confluent-kafka is not installed (pip install -e '.[confluent]')"


def bench_args(name: str, quick: bool, own: dict[str, list[str]]) -> list[str]:
    """The options of bench ``name``: ``--args``'s, else ``--quick``'s or a full run's,
    then the confluent options (unless ``--args`` gives ``--client`` itself)."""
    bench = BENCHES[name]
    sizes = own[name] if name in own else bench.quick if quick else bench.full
    extra = bench.confluent
    if extra and "--client" in sizes:
        extra = []
    if extra:
        why = confluent_missing()
        if why:
            print(f"{name}: {shlex.join(extra)} left out: {why}")
            extra = []
    return [*sizes, *extra]


@dataclass
class Row:
    """One line of the table: a figure of one database, or an error."""

    database: str
    bench: str
    figure: str
    unit: str = ""
    value: float | None = None
    baseline: float | None = None
    ratios: list[float] = field(default_factory=list)
    target: float | None = None
    higher_is_better: bool = True
    error: str = ""
    #: An absolute bound of the median value, in ``unit`` (bench/results.py).
    limit: float | None = None

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def met(self) -> bool | None:
        """Whether the median meets each goal the figure has; None without a goal."""
        checks = []
        if self.target is not None and self.ratio is not None:
            checks.append(self.within(self.ratio, self.target))
        if self.limit is not None and self.value is not None:
            checks.append(self.within(self.value, self.limit))
        return all(checks) if checks else None

    def within(self, measured: float, bound: float) -> bool:
        return measured >= bound if self.higher_is_better else measured <= bound


@dataclass
class Outcome:
    """What one bench script produced on one database."""

    database: str
    bench: str
    figures: list[results.Figure] = field(default_factory=list)
    series: list[results.Series] = field(default_factory=list)
    error: str = ""


def rows_of(outcomes: list[Outcome]) -> list[Row]:
    rows = []
    for outcome in outcomes:
        if outcome.error:
            rows.append(Row(outcome.database, outcome.bench, "-", error=outcome.error))
            continue
        for figure in outcome.figures:
            rows.append(
                Row(
                    outcome.database,
                    outcome.bench,
                    figure.name,
                    figure.unit,
                    statistics.median(figure.values) if figure.values else None,
                    statistics.median(figure.baseline_values) if figure.baseline_values else None,
                    figure.ratios(),
                    figure.target,
                    figure.higher_is_better,
                    limit=figure.limit,
                )
            )
    return rows


def number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"
    return f"{text} {unit}".strip()


HEADER = (
    "database",
    "figure",
    "value",
    "baseline",
    "ratio min / median / max",
    "target",
    "met",
    "note",
)


def cells(row: Row) -> tuple[str, ...]:
    database = DATABASE_NAMES.get(row.database, row.database)
    if row.error:
        return (database, f"{row.bench}: error", "-", "-", "-", "-", "-", row.error)
    ratio = "-"
    if row.ratios:
        ratio = f"{min(row.ratios):.2f} / {row.ratio:.2f} / {max(row.ratios):.2f}x"
    met = {None: "-", True: "yes", False: "no"}[row.met]
    return (
        database,
        row.figure,
        number(row.value, row.unit),
        number(row.baseline, row.unit),
        ratio,
        goals(row),
        met,
        floor_note(row),
    )


def goals(row: Row) -> str:
    """``>= 0.9x`` for a ratio target, ``<= 50 ms`` for an absolute limit, or both."""
    sign = ">=" if row.higher_is_better else "<="
    parts = []
    if row.target is not None:
        parts.append(f"{sign} {row.target:g}x")
    if row.limit is not None:
        parts.append(f"{sign} {number(row.limit, row.unit)}")
    return "; ".join(parts) or "-"


#: Figures whose baseline is the worker's database work alone (bench/floor.py).
FLOOR_SUFFIX = " vs its database floor"


def floor_note(row: Row) -> str:
    """``relay = 0.55 of the database floor``, for a figure against the floor."""
    if not row.figure.endswith(FLOOR_SUFFIX) or row.ratio is None:
        return ""
    return f"{row.figure.removesuffix(FLOOR_SUFFIX)} = {row.ratio:.2f} of the database floor"


def widths_of(lines: list[tuple[str, ...]]) -> list[int]:
    """Column widths; the last column (notes) may run past its border, as RST allows."""
    widths = [max(len(line[column]) for line in lines) for column in range(len(HEADER))]
    widths[-1] = len(HEADER[-1])
    return widths


def text_table(rows: list[Row]) -> str:
    """The table as the terminal shows it."""
    lines = [HEADER, *(cells(row) for row in rows)]
    widths = widths_of(lines)
    out = []
    for index, line in enumerate(lines):
        out.append("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if index == 0:
            out.append("  ".join("-" * width for width in widths))
    return "\n".join(part.rstrip() for part in out)


def rst_table(rows: list[Row]) -> str:
    """The table as an RST simple table."""
    lines = [HEADER, *(cells(row) for row in rows)]
    widths = widths_of(lines)
    rule = "  ".join("=" * width for width in widths)

    def line(parts: tuple[str, ...]) -> str:
        # An empty first cell would continue the row above in an RST simple table.
        parts = (parts[0] or "-", *parts[1:])
        return "  ".join(part.ljust(width) for part, width in zip(parts, widths, strict=True))

    body = [line(parts).rstrip() for parts in lines[1:]]
    return "\n".join([rule, line(HEADER).rstrip(), rule, *body, rule])


def replace_block(page: str, block: str) -> str:
    """``page`` with the text between the markers replaced by ``block``."""
    start, end = page.find(START_MARKER), page.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(
            f"the page lacks the markers {START_MARKER!r} ... {END_MARKER!r}; add them "
            "where the table belongs"
        )
    head = page[: start + len(START_MARKER)]
    return f"{head}\n\n{block.strip()}\n\n{page[end:]}"


#: The charts, and what they show (their ``:alt:`` text).
CHARTS = {
    "bench-ratios.png": "every ratio against its target, per database",
    "bench-relay-batch.png": "relay and raw producer throughput against the batch size",
}


def rst_block(rows: list[Row], command: str, machine: str, images: list[str]) -> str:
    """The generated part of the page: the table, then the charts among ``images``."""
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Generated by ``{command}`` on {when}; {machine}.", "", rst_table(rows)]
    for name, alt in CHARTS.items():
        if name in images:
            lines += ["", f".. image:: img/{name}", f"   :alt: {alt}"]
    return "\n".join(lines)


def charts(outcomes: list[Outcome], directory: Path) -> list[Path]:
    """Write the charts; return the files written (none for a chart without data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    relay = [outcome for outcome in outcomes if outcome.bench == "relay" and outcome.series]
    if relay:
        figure, axes = plt.subplots(
            1, len(relay), figsize=(4.5 * len(relay), 3.6), squeeze=False, sharey=True
        )
        for axis, outcome in zip(axes[0], relay, strict=True):
            for series in outcome.series:
                points = sorted(series.points)
                axis.plot([p[0] for p in points], [p[1] for p in points], "o-", label=series.name)
            axis.set_title(DATABASE_NAMES.get(outcome.database, outcome.database))
            axis.set_xlabel(outcome.series[0].x)
            axis.set_xscale("log", base=2)
            sizes = sorted({point[0] for series in outcome.series for point in series.points})
            axis.set_xticks(sizes, [f"{size:g}" for size in sizes])
            axis.minorticks_off()
            axis.grid(True, alpha=0.3)
        axes[0][0].set_ylabel(relay[0].series[0].y)
        axes[0][0].legend(fontsize="small")
        figure.tight_layout()
        path = directory / "bench-relay-batch.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    rows = [row for row in rows_of(outcomes) if row.ratios]
    databases = [name for name in DATABASES if any(row.database == name for row in rows)]
    if rows:
        figures = sorted({row.figure for row in rows})
        figure, axes = plt.subplots(
            1,
            len(databases),
            figsize=(4.5 * len(databases) + 2.5, 0.45 * len(figures) + 1.4),
            squeeze=False,
            sharey=True,
        )
        for axis, database in zip(axes[0], databases, strict=True):
            mine = {row.figure: row for row in rows if row.database == database}
            for position, name in enumerate(figures):
                row = mine.get(name)
                if row is None or row.ratio is None:
                    continue
                colour = {True: "tab:green", False: "tab:red", None: "tab:gray"}[row.met]
                low, high = row.ratio - min(row.ratios), max(row.ratios) - row.ratio
                axis.barh(position, row.ratio, color=colour, xerr=[[low], [high]], capsize=3)
                if row.target is not None:
                    axis.plot([row.target] * 2, [position - 0.4, position + 0.4], "k-", lw=2)
            axis.set_title(DATABASE_NAMES.get(database, database))
            axis.set_xlabel("ratio; black: target, bars: median, min-max")
            axis.grid(True, axis="x", alpha=0.3)
        bounds = {row.figure: row for row in rows}
        labels = [f"{name} ({'>=' if bounds[name].higher_is_better else '<='})" for name in figures]
        axes[0][0].set_yticks(range(len(figures)), labels, fontsize="small")
        axes[0][0].invert_yaxis()
        figure.tight_layout()
        path = directory / "bench-ratios.png"
        figure.savefig(path, dpi=100)
        plt.close(figure)
        written.append(path)
    return written


def reachable(database: str, url: str) -> str:
    """An empty string if the server of ``url`` answers, else why not."""
    parts = urlparse(url)
    try:
        if database == "postgresql":
            import psycopg

            psycopg.connect(
                host=parts.hostname,
                port=parts.port or 5432,
                user=parts.username,
                password=parts.password,
                dbname="postgres",
                connect_timeout=5,
            ).close()
        elif database == "mysql":
            import MySQLdb

            MySQLdb.connect(
                host=parts.hostname,
                port=parts.port or 3306,
                user=parts.username,
                password=parts.password or "",
                connect_timeout=5,
            ).close()
    except Exception as exc:  # any failure to connect means: skip this database
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
    return ""


def broker_answers(bootstrap: str) -> bool:
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=3).close()
    except (OSError, ValueError):
        return False
    return True


def bench_url(database: str, base: str, bench: str, scratch: Path) -> str:
    if database == "sqlite":
        return f"sqlite:///{scratch / f'{bench}.sqlite3'}"
    head, _, name = base.rpartition("/")
    return f"{head}/{name or 'outbox'}_{bench}"


def run_bench(
    database: str,
    bench: str,
    command: list[str],
    env: dict[str, str],
    out: Path,
    timeout: float,
) -> Outcome:
    """Run one bench script; its figures, or an error naming what went wrong."""
    json_path = out / f"{database}-{bench}.json"
    log_path = out / f"{database}-{bench}.log"
    json_path.unlink(missing_ok=True)
    outcome = Outcome(database, bench)
    try:
        with log_path.open("w") as log:
            done = subprocess.run(
                [*command, "--json", str(json_path)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                cwd=ROOT,
            )
    except subprocess.TimeoutExpired:
        outcome.error = f"no result within {timeout:g} s (log: {log_path})"
        return outcome
    lines = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()]
    last = lines[-1].strip() if lines else "no output"
    if done.returncode:
        outcome.error = f"exit {done.returncode}: {last[:160]}"
        return outcome
    try:
        _, _, outcome.figures, outcome.series = results.read(json_path)
    except FileNotFoundError:
        outcome.error = "wrote no --json file (does it take --json yet?)"
    except (ValueError, KeyError, TypeError) as exc:
        outcome.error = f"bad --json file: {exc}"
    return outcome


def from_json(directory: Path) -> list[Outcome]:
    outcomes = []
    for path in sorted(directory.glob("*.json")):
        try:
            bench, database, figures, series = results.read(path)
        except (ValueError, KeyError, TypeError) as exc:
            database, _, bench = path.stem.partition("-")
            outcomes.append(Outcome(database, bench, error=f"bad --json file: {exc}"))
            continue
        outcomes.append(Outcome(database, bench, figures, series))
    # As a run makes them: per database, the benches in the order of ``BENCHES``.
    order = {name: index for index, name in enumerate(DATABASES)}
    benches = {name: index for index, name in enumerate(BENCHES)}
    return sorted(
        outcomes,
        key=lambda o: (order.get(o.database, len(order)), benches.get(o.bench, len(benches))),
    )


def machine() -> str:
    return (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {os.getloadavg()[0]:.1f} at the end"
    )


def write_docs(outcomes: list[Outcome], docs: Path, command: str) -> list[Path]:
    """Charts into ``docs/img``, the table and their references into the page."""
    (docs / "img").mkdir(exist_ok=True)
    written = charts(outcomes, docs / "img")
    page = docs / "benchmarks.rst"
    block = rst_block(rows_of(outcomes), command, machine(), [path.name for path in written])
    page.write_text(replace_block(page.read_text(), block))
    return [page, *written]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a smoke run")
    parser.add_argument("--databases", default=",".join(DATABASES))
    parser.add_argument("--only", default=",".join(BENCHES), help="benches to run")
    parser.add_argument("--out", type=Path, help="JSON files and logs (default: a temp dir)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/ as it is")
    parser.add_argument("--from-json", type=Path, help="render an earlier run's files")
    parser.add_argument(
        "--postgresql-url",
        default=os.environ.get("BENCH_POSTGRESQL_URL", DEFAULT_URLS["postgresql"]),
    )
    parser.add_argument(
        "--mysql-url", default=os.environ.get("BENCH_MYSQL_URL", DEFAULT_URLS["mysql"])
    )
    parser.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
    )
    parser.add_argument("--timeout", type=float, help="seconds per bench (default 600 / 7200)")
    parser.add_argument(
        "--args",
        action="append",
        default=[],
        metavar="BENCH=ARGS",
        help="the script's own options for BENCH instead of --quick's or a full run's "
        "(the relay bench's --client confluent stays, unless they name a --client), "
        "e.g. --args 'relay=--rows 10000 --repeat 3' (repeatable)",
    )
    args = parser.parse_args()
    own_args: dict[str, list[str]] = {}
    for item in args.args:
        name, sep, rest = item.partition("=")
        if not sep or name.strip() not in BENCHES:
            parser.error(
                f"--args: {item!r} is not BENCH=ARGS with BENCH one of {', '.join(BENCHES)}"
            )
        own_args[name.strip()] = shlex.split(rest)
    args.own_args = own_args
    databases = [name.strip() for name in args.databases.split(",") if name.strip()]
    benches = [name.strip() for name in args.only.split(",") if name.strip()]
    for name in databases:
        if name not in DATABASES:
            parser.error(f"--databases: {name!r} is none of {', '.join(DATABASES)}")
    for name in benches:
        if name not in BENCHES:
            parser.error(f"--only: {name!r} is none of {', '.join(BENCHES)}")
    command = "python bench/run.py " + shlex.join(sys.argv[1:])

    if args.from_json:
        outcomes = from_json(args.from_json)
    else:
        outcomes = run_all(args, databases, benches)
    print()
    print(text_table(rows_of(outcomes)))
    if not args.no_docs:
        for path in write_docs(outcomes, args.docs, command.strip()):
            print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


def run_all(args: argparse.Namespace, databases: list[str], benches: list[str]) -> list[Outcome]:
    out = args.out or Path(tempfile.mkdtemp(prefix="outbox-bench-run-"))
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="outbox-bench-sqlite-"))
    timeout = args.timeout or (600 if args.quick else 7200)
    outcomes: list[Outcome] = []
    try:
        run_databases(args, databases, benches, out, scratch, timeout, outcomes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"JSON files and logs: {out}")
    return outcomes


def run_databases(
    args: argparse.Namespace,
    databases: list[str],
    benches: list[str],
    out: Path,
    scratch: Path,
    timeout: float,
    outcomes: list[Outcome],
) -> None:
    urls = {"postgresql": args.postgresql_url, "mysql": args.mysql_url}
    broker = broker_answers(args.bootstrap)
    if not broker and any(BENCHES[name].kafka for name in benches):
        print(f"no broker answers at {args.bootstrap} (scripts/kafka-local start)")
    for database in databases:
        if database in urls:
            why = reachable(database, urls[database])
            if why:
                print(f"{database}: skipped, not reachable at {urls[database]} ({why})")
                continue
        for name in benches:
            bench = BENCHES[name]
            script = HERE / bench.script
            if not script.exists():
                outcomes.append(Outcome(database, name, error=f"bench/{bench.script} not there"))
                continue
            if bench.kafka and not broker:
                outcomes.append(Outcome(database, name, error=f"no broker at {args.bootstrap}"))
                continue
            env = {
                **os.environ,
                "DATABASE_URL": bench_url(database, urls.get(database, ""), name, scratch),
                "KAFKA_BOOTSTRAP_SERVERS": args.bootstrap,
                "PYTHONUNBUFFERED": "1",
            }
            sizes = bench_args(name, args.quick, getattr(args, "own_args", {}))
            command = [sys.executable, str(script), *sizes]
            print(f"{database} {name}: {shlex.join(command[1:])} ...", flush=True)
            outcome = run_bench(database, name, command, env, out, timeout)
            print(f"  {outcome.error or f'{len(outcome.figures)} figure(s)'}", flush=True)
            outcomes.append(outcome)


if __name__ == "__main__":
    main()
