"""The chaos test's supervisor: the fault plan, the workers, the run and the verdict.

Used by tests/test_chaos.py (see its docstring for what is asserted and the environment);
the programs the workers run are in tests/chaos_support.py.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from django.db import connection

from django_outbox.conf import outbox_settings
from django_outbox.models import OutboxMessage, Status
from tests.chaos_support import EFFECT_TABLE, EVENT_TYPE, LEDGER_TABLE, read_ledger
from tests.kafka_fixtures import (
    Cluster,
    order_inversions,
    read_topic,
    start_broker,
    stop_broker,
    topic_record_count,
)
from tests.relay_support import database_url

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPPORT = REPO_ROOT / "tests" / "chaos_support.py"
MANAGE = REPO_ROOT / "testproject" / "manage.py"

RELAYS = ("relay-0", "relay-1")
CONSUMERS = ("consumer-0", "consumer-1")
WRITERS = ("writer-0", "writer-1", "writer-2")
SIGTERM_GRACE = 30.0  # seconds a worker has to exit after SIGTERM
HANG_GRACE = 20.0  # seconds a writer has to reach its hang point after SIGUSR1
SAMPLE = 10  # ids shown per failed invariant
LOG_TAIL = 12  # lines of a worker's log shown on failure


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved here, not in a forked child


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the test process dies, however it dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text[-lines:])


def describe_exit(path: Path) -> str:
    """What a worker's log says about its end: the lines before its last traceback, and
    that traceback shortened to this project's frames; else the log's tail."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"(no log: {exc})"
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent")]
    if not starts:
        return f"log tail ({path}):\n{tail(path)}"
    before = lines[max(starts[-1] - 6, 0) : starts[-1]]
    block = lines[starts[-1] :]
    shown = [block[0]]
    for index, line in enumerate(block[1:], 1):
        if line.startswith("  File ") and "site-packages" not in line:
            shown += block[index : index + 2]
    errors = [line for line in block[1:] if line and not line.startswith(" ")]
    return f"log ({path}), its last traceback shortened:\n" + "\n".join(
        before + shown + errors[-3:]
    )


def sample(ids: Any) -> str:
    ordered = sorted(ids, key=str)
    more = f" (+{len(ordered) - SAMPLE} more)" if len(ordered) > SAMPLE else ""
    return ", ".join(str(i) for i in ordered[:SAMPLE]) + more


# ----------------------------------------------------------------------------- the plan


@dataclass(order=True)
class Action:
    at: float
    kind: str = field(compare=False)  # kill, term, hang, outage, blip
    target: str = field(default="", compare=False)
    restart_after: float = field(default=0.0, compare=False)


def names(kind: str, count: int) -> tuple[str, ...]:
    return tuple(f"{kind}-{index}" for index in range(count))


def plan(
    rng: random.Random,
    chaos: float,
    outage: float,
    blips: int,
    relays: tuple[str, ...] = RELAYS,
    consumers: tuple[str, ...] = CONSUMERS,
    fault: str = "broker",
) -> list[Action]:
    """The fault schedule: a function of the seed, the durations and the workers only.
    ``fault`` names what the Kafka outage takes down (``KafkaFault.target``)."""
    actions = []
    workers = relays + consumers
    moment = rng.uniform(2, 6)
    while moment < chaos - 5:
        actions.append(Action(moment, "kill", rng.choice(workers), rng.uniform(0.3, 3.0)))
        moment += rng.uniform(3, 9)
    actions.append(Action(rng.uniform(0.1, 0.9) * chaos, "term", rng.choice(relays), 1.0))
    actions.append(Action(rng.uniform(0.1, 0.9) * chaos, "term", rng.choice(consumers), 1.0))
    actions.append(Action(rng.uniform(0.15, 0.6) * chaos, "hang", rng.choice(WRITERS)))
    actions.append(Action(rng.uniform(0.25, 0.45) * chaos, "outage", fault, outage))
    for _ in range(blips):
        actions.append(Action(rng.uniform(0.1, 0.9) * chaos, "blip", "postgresql"))
    for group in (relays, consumers):  # at least one SIGKILL of each kind, however short
        if not any(a.kind == "kill" and a.target in group for a in actions):
            actions.append(Action(rng.uniform(0.2, 0.8) * chaos, "kill", rng.choice(group), 1.0))
    return sorted(actions)


# ----------------------------------------------------------------------------- Kafka faults


class KafkaFault:
    """What the plan's "outage" takes down, and brings back: ``begin()`` and ``end()``
    each return a line for the timeline."""

    target = ""

    def begin(self) -> str:
        raise NotImplementedError

    def end(self) -> str:
        raise NotImplementedError

    def restore(self) -> None:
        """Teardown: Kafka whole again, whenever the run stopped."""
        raise NotImplementedError


class BrokerOutage(KafkaFault):
    """The single broker stopped, then started again on the same port and data."""

    target = "broker"

    def __init__(self, port: int):
        self.port = port

    def begin(self) -> str:
        stop_broker(self.port)
        return "broker stopped"

    def end(self) -> str:
        start_broker(self.port)
        return "broker started again"

    def restore(self) -> None:
        start_broker(self.port)


class LeaderKill(KafkaFault):
    """The cluster node leading one partition of the topic SIGKILLed, then restarted
    (``end`` returns once it is back in the ISR)."""

    target = "leader"

    def __init__(self, cluster: Cluster, topic: str, partition: int):
        self.cluster, self.topic, self.partition = cluster, topic, partition
        self.node = -1

    def begin(self) -> str:
        self.node = self.cluster.leader(self.topic, self.partition)
        self.cluster.kill(self.node)
        return f"node {self.node} (leader of partition {self.partition}) SIGKILLed"

    def end(self) -> str:
        self.cluster.restart(self.node)
        moved = self.cluster.leader(self.topic, self.partition)
        return f"node {self.node} restarted and in sync; partition {self.partition} led by {moved}"

    def restore(self) -> None:
        for node in sorted(self.cluster.down):
            self.cluster.restart(node)


# ----------------------------------------------------------------------------- workers


class Worker:
    """One supervised subprocess, started again (a new incarnation) after each planned stop."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path):
        self.name = name
        self.argv = argv
        self.env = env
        self.log_dir = log_dir
        self.incarnation = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log: TextIO | None = None
        self.expected: str | None = None  # why we expect it to exit: kill, term, stop
        self.term_deadline: float | None = None
        self.hang_deadline: float | None = None
        self.restart_at: float | None = None
        self.restart_after = 0.0
        self.every_process: list[subprocess.Popen[bytes]] = []

    @property
    def kind(self) -> str:
        return self.name.split("-")[0]

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.incarnation}.log"

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    #: What a worker logs once its signal handlers are in place (a SIGTERM before that
    #: meets the interpreter's default action: the process ends with -15).
    READY_MARKERS = ("outbox relay started", "outbox consumer starting")

    def ready(self) -> bool:
        """Running, and past start-up: its log has its start line."""
        if not self.running():
            return False
        if self.kind == "writer":
            return True
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return False
        return any(marker in text for marker in self.READY_MARKERS)

    def start(self) -> None:
        self.incarnation += 1
        self.expected = None
        self.term_deadline = self.hang_deadline = self.restart_at = None
        self.log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killpg reaches all of it
            preexec_fn=_die_with_parent,
        )
        self.every_process.append(self.process)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        try:
            os.killpg(self.process.pid, signum)
        except ProcessLookupError:
            pass

    def reaped(self) -> None:
        self.process = None
        if self.log is not None:
            self.log.close()
            self.log = None

    def kill_all(self) -> None:
        """Teardown: SIGKILL every process group this worker ever had, and reap them."""
        for process in self.every_process:
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(timeout=30)
        self.reaped()


class Interrupted(BaseException):
    """SIGTERM/SIGHUP to the test process: unwind, so the teardown kills the workers."""


# ----------------------------------------------------------------------------- the run


@dataclass
class Report:
    seed: int
    committed: int = 0
    rolled_back: int = 0
    unknown: int = 0
    lost: set[str] = field(default_factory=set)
    dup_effects: dict[str, int] = field(default_factory=dict)
    phantom: set[str] = field(default_factory=set)
    phantom_records: set[str] = field(default_factory=set)
    stuck: dict[int, str] = field(default_factory=dict)
    dead: dict[int, str] = field(default_factory=dict)
    records: int = 0
    dup_records: int = 0
    drain: float = 0.0  # seconds from the writers' stop to no row waiting
    order_inversions: int = 0  # asserted 0 when relays share the work by bucket
    unexpected_exits: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def line(self) -> str:
        distinct = self.records - self.dup_records
        rate = 100.0 * self.dup_records / distinct if distinct else 0.0
        return (
            f"chaos: seed={self.seed} committed={self.committed} "
            f"rolled_back={self.rolled_back} unknown={self.unknown} lost={len(self.lost)} "
            f"dup_effects={len(self.dup_effects)} phantom={len(self.phantom)} "
            f"phantom_records={len(self.phantom_records)} stuck={len(self.stuck)} "
            f"dead={len(self.dead)} dup_records={self.dup_records} ({rate:.1f}%) "
            f"unexpected_exits={len(self.unexpected_exits)} failures={len(self.failures)} "
            f"drain={self.drain:.0f}s order_inversions={self.order_inversions}"
        )


class Chaos:
    """The run: ``relays`` relays and ``consumers`` consumers on one database, the
    writers, and ``fault`` for the plan's Kafka outage."""

    def __init__(
        self,
        seed: int,
        log_dir: Path,
        bootstrap: str,
        topic: str,
        fault: KafkaFault,
        relays: int = len(RELAYS),
        consumers: int = len(CONSUMERS),
    ):
        self.seed = seed
        self.log_dir = log_dir
        self.bootstrap = bootstrap
        self.topic = topic
        self.fault = fault
        #: Same-key inversions fail the run (relay/keyorder.py keeps a key's order through
        #: failures); OUTBOX_CHAOS_REQUIRE_ORDER=0 only counts and prints them.
        self.require_order = os.environ.get("OUTBOX_CHAOS_REQUIRE_ORDER", "1") != "0"
        self.relays, self.consumers = names("relay", relays), names("consumer", consumers)
        self.t0 = time.monotonic()
        self.timeline = open(log_dir / "timeline.log", "w", buffering=1)
        self.report = Report(seed)
        self.restarts = True  # off for the final shutdown
        self.none_alive_since: dict[str, float] = {}
        self.longest_gap: dict[str, float] = {}  # kind -> longest time with none alive
        self.hung_events: list[str] = []
        self.outage: threading.Thread | None = None
        self.outage_error: BaseException | None = None
        self.markers = log_dir / "markers"
        self.markers.mkdir()
        self.ledgers = {name: log_dir / f"{name}.ledger" for name in WRITERS}
        group = f"chaos-{seed}-{uuid.uuid4().hex[:6]}"
        env = dict(os.environ)
        env.update(
            {
                "DJANGO_SETTINGS_MODULE": "tests.relay_subprocess_settings",
                "DATABASE_URL": database_url("default"),
                "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "PYTHONPATH": str(REPO_ROOT),
                "PYTHONUNBUFFERED": "1",
                "OUTBOX_TEST_LEASE": "5",
                # the group that owns the outbox rows (marks them consumed); another
                # group would run its handlers through its inbox and leave them published
                "OUTBOX_CONSUMER_GROUP": group,
                "OUTBOX_TEST_PRODUCER": os.environ.get("OUTBOX_CHAOS_PRODUCER", "{}"),
            }
        )
        rate = str(env_float("OUTBOX_CHAOS_RATE", 15))
        python = sys.executable
        self.workers: dict[str, Worker] = {}
        for name in self.relays:
            argv = [python, str(MANAGE), "outbox_relay", "--batch-size", "20"]
            argv += ["--interval", "0.2", "--lease", "5", "--progress-interval", "5"]
            self.workers[name] = Worker(name, argv, env, log_dir)
        for name in self.consumers:
            argv = [python, str(SUPPORT), "consumer", name, "--topic", topic, "--group", group]
            argv += ["--batch-size", "5", "--poll-timeout", "0.5", "--progress-interval", "5"]
            self.workers[name] = Worker(name, argv, env, log_dir)
        for index, name in enumerate(WRITERS):
            argv = [python, str(SUPPORT), "writer", name, str(seed * 10 + index), rate, topic]
            argv += [str(self.ledgers[name]), str(self.markers)]
            self.workers[name] = Worker(name, argv, env, log_dir)

    # -- bookkeeping

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        line = f"{self.now():7.1f}s {message}"
        self.timeline.write(line + "\n")
        print(line, flush=True)

    def fail(self, message: str) -> None:
        self.report.failures.append(message)
        self.say(f"FAILURE: {message.splitlines()[0]}")

    # -- the supervisor

    def tick(self) -> None:
        now = self.now()
        for kind in ("relay", "consumer"):
            alive = any(w.running() for w in self.workers.values() if w.kind == kind)
            if alive:
                self.none_alive_since.pop(kind, None)
            else:
                since = self.none_alive_since.setdefault(kind, now)
                self.longest_gap[kind] = max(self.longest_gap.get(kind, 0.0), now - since)
        for worker in self.workers.values():
            process = worker.process
            if process is None:
                if worker.restart_at is not None and now >= worker.restart_at:
                    worker.start()
                    self.say(f"{worker.name} started (incarnation {worker.incarnation})")
                continue
            code = process.poll()
            if code is None:
                self._watch_running(worker, now)
                continue
            self._exited(worker, code, now)

    def _watch_running(self, worker: Worker, now: float) -> None:
        if worker.term_deadline is not None and now > worker.term_deadline:
            self.fail(
                f"{worker.name}#{worker.incarnation} did not exit within {SIGTERM_GRACE:.0f}s "
                f"of SIGTERM; {describe_exit(worker.log_path)}"
            )
            worker.expected = "kill"
            worker.term_deadline = None
            worker.signal(signal.SIGKILL)
        if worker.hang_deadline is not None:
            marker = self.markers / f"hung-{worker.name}.json"
            if marker.exists():
                events = json.loads(marker.read_text())["events"]
                self.hung_events += [event_id for event_id, _ in events]
                worker.expected = "kill"
                worker.hang_deadline = None
                worker.signal(signal.SIGKILL)
                self.say(f"{worker.name} SIGKILLed in a transaction holding {len(events)} events")
            elif now > worker.hang_deadline:
                self.fail(f"{worker.name} did not reach its hang point within {HANG_GRACE:.0f}s")
                worker.hang_deadline = None

    def _exited(self, worker: Worker, code: int, now: float) -> None:
        label = f"{worker.name}#{worker.incarnation}"
        expected = worker.expected
        worker.reaped()
        if expected == "kill":
            self.say(f"{label} exited {code} (SIGKILL)")
            if worker.kind != "writer" and self.restarts:
                worker.restart_at = now + worker.restart_after
        elif expected in ("term", "final", "stop"):
            self.say(f"{label} exited {code} after SIGTERM")
            if code != 0:
                self.fail(
                    f"{label} exited {code} after SIGTERM (expected 0); "
                    + describe_exit(worker.log_path)
                )
            if expected == "term" and self.restarts:
                worker.restart_at = now + worker.restart_after
        else:
            message = (
                f"{label} exited unexpectedly with code {code} at {now:.1f}s; "
                + describe_exit(worker.log_path)
            )
            self.report.unexpected_exits.append(label)
            self.fail(message)
            if self.restarts and os.environ.get("OUTBOX_CHAOS_RESTART_UNEXPECTED") == "1":
                worker.restart_at = now + 1.0

    def act(self, action: Action) -> bool:
        """Carry ``action`` out; False when its target was not there to take it."""
        if action.kind == "outage":
            self._start_outage(action.restart_after)
            return True
        if action.kind == "blip":
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    " AND backend_type = 'client backend'"
                )
                (count,) = cursor.fetchone()
            self.say(f"database blip: {count} backends of the test database terminated")
            return True
        worker = self.workers[action.target]
        if not worker.running() or worker.expected is not None:
            self.say(f"{action.kind} {worker.name}: skipped (not running or already stopping)")
            return False
        if action.kind == "term" and not worker.ready():
            # A planned SIGTERM is for a worker at work; one still starting (before its
            # handlers exist) would only test the interpreter's default action.
            self.say(f"term {worker.name}: waiting for it to finish starting")
            return False
        if action.kind == "kill":
            worker.expected = "kill"
            worker.restart_after = action.restart_after
            worker.signal(signal.SIGKILL)
            self.say(f"SIGKILL {worker.name}#{worker.incarnation}")
        elif action.kind == "term":
            self._terminate(worker, "term")
            worker.restart_after = action.restart_after
        elif action.kind == "hang":
            assert worker.process is not None
            worker.hang_deadline = self.now() + HANG_GRACE
            os.kill(worker.process.pid, signal.SIGUSR1)
            self.say(f"SIGUSR1 {worker.name}: hang inside the next transaction")
        return True

    def _terminate(self, worker: Worker, why: str) -> None:
        worker.expected = why
        worker.term_deadline = self.now() + SIGTERM_GRACE
        worker.signal(signal.SIGTERM)
        self.say(f"SIGTERM {worker.name}#{worker.incarnation}")

    def _start_outage(self, seconds: float) -> None:
        def outage() -> None:
            try:
                self.say(f"{self.fault.begin()}; down for {seconds:.0f}s")
                time.sleep(seconds)
                self.say(self.fault.end())
            except BaseException as exc:  # reported by the main thread
                self.outage_error = exc

        self.say(f"Kafka fault: {self.fault.target}")
        self.outage = threading.Thread(target=outage, name="chaos-outage", daemon=True)
        self.outage.start()

    def wait_outage(self) -> None:
        if self.outage is not None:
            outage = self.outage
            self.supervise_until(lambda: not outage.is_alive(), self.now() + 120)
            if outage.is_alive():
                self.fail("the Kafka outage thread did not finish within 120s")
            self.outage = None
        if self.outage_error is not None:
            self.fail(f"the Kafka outage ({self.fault.target}) failed: {self.outage_error!r}")
            self.outage_error = None

    def supervise_until(self, condition: Any, deadline: float, step: float = 0.1) -> bool:
        while True:
            self.tick()
            if condition():
                return True
            if self.now() >= deadline:
                return False
            time.sleep(step)

    # -- the phases

    def run(self, chaos: float, drain: float, outage: float, blips: int) -> None:
        rng = random.Random(self.seed)
        actions = plan(rng, chaos, outage, blips, self.relays, self.consumers, self.fault.target)
        self.say(f"plan: {', '.join(f'{a.at:.1f}s {a.kind} {a.target}' for a in actions)}")
        self.t0 = time.monotonic()
        for worker in self.workers.values():
            worker.start()
        self.say("workers started")
        while actions:
            action = actions.pop(0)
            self.supervise_until(lambda: False, action.at)
            if not self.act(action) and action.kind in ("term", "hang"):
                # The one SIGTERM or writer kill must happen: again once the target is back.
                later = self.now() + 0.5
                if later < chaos:
                    actions = sorted(
                        [*actions, Action(later, action.kind, action.target, action.restart_after)]
                    )
        self.supervise_until(lambda: False, chaos)

        writers = [self.workers[name] for name in WRITERS]
        for worker in writers:
            if worker.running() and worker.expected is None:
                self._terminate(worker, "stop")
        self.supervise_until(lambda: all(w.process is None for w in writers), chaos + 40)
        self.wait_outage()
        self.say("writers stopped; draining")

        started = self.now()
        drained = self.supervise_until(self._drained, started + drain, step=1.0)
        self.report.drain = self.now() - started
        self.say(
            f"drained in {self.report.drain:.1f}s" if drained else f"not drained in {drain:.0f}s"
        )
        gaps = ", ".join(f"{kind} {gap:.1f}s" for kind, gap in sorted(self.longest_gap.items()))
        self.say(f"longest time with none alive: {gaps or 'never'}")
        self.restarts = False
        for worker in self.workers.values():
            if worker.kind != "writer":
                worker.restart_at = None
                if worker.running() and worker.expected is None:
                    self._terminate(worker, "final")
        self.supervise_until(
            lambda: all(w.process is None for w in self.workers.values()),
            self.now() + SIGTERM_GRACE + 5,
        )

    def _drained(self) -> bool:
        """True when no row waits for delivery or handling, or when none ever will be
        handled (no relay or no consumer left: they exited unexpectedly)."""
        workers = self.workers.values()
        if any(w.process is None and w.restart_at is not None for w in workers):
            return False
        for kind in ("relay", "consumer"):
            if not any(w.process is not None for w in workers if w.kind == kind):
                self.say(f"no {kind} left to drain with")
                return True
        return not (
            OutboxMessage.objects.filter(event_type=EVENT_TYPE)
            .filter(status__in=(Status.PENDING, Status.PUBLISHED))
            .exists()
        )

    # -- the verdict

    def read_topic(self) -> list[Any]:
        total = topic_record_count(self.bootstrap, self.topic)
        records = read_topic(self.bootstrap, self.topic, expected_count=total, timeout=60)
        if len(records) != total:
            self.fail(f"read {len(records)} of the topic's {total} records")
        return records

    def verify(self, records: list[Any]) -> Report:
        """Check every invariant against the database, the ledgers and the topic's records."""
        report = self.report
        written: dict[str, set[str]] = {"commit": set(), "rollback": set(), "unknown": set()}
        for path in self.ledgers.values():
            for entry in read_ledger(path):
                written[entry["outcome"]].update(event_id for event_id, _ in entry["events"])
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT event_id::text FROM {LEDGER_TABLE}")
            committed = {row[0] for row in cursor.fetchall()}
            cursor.execute(f"SELECT event_id::text, count(*) FROM {EFFECT_TABLE} GROUP BY 1")
            effects = dict(cursor.fetchall())
        rows = {}
        for pk, status, payload, retries, error in OutboxMessage.objects.filter(
            event_type=EVENT_TYPE
        ).values_list("id", "status", "payload", "retry_count", "last_error"):
            rows[pk] = (json.loads(payload)["event_id"], status, retries, error)
        row_events = {event_id for event_id, *_ in rows.values()}
        rolled_back = written["rollback"] | set(self.hung_events)

        report.committed = len(committed)
        report.rolled_back = len(rolled_back)
        report.unknown = len(written["unknown"])
        report.lost = committed - set(effects)
        by_event = {event_id: status for event_id, status, *_ in rows.values()}
        lost_states = Counter(by_event.get(event_id, "no row") for event_id in report.lost)
        if lost_states:
            self.say(f"lost events by row status: {dict(lost_states)}")
        report.dup_effects = {e: n for e, n in effects.items() if n > 1}
        report.phantom = set(effects) - committed
        report.stuck = {
            pk: f"{status} retries={retries} last_error={error!r}"
            for pk, (_, status, retries, error) in rows.items()
            if status in (Status.PENDING, Status.PUBLISHED)
        }
        report.dead = {
            pk: f"retries={retries} last_error={error!r}"
            for pk, (_, status, retries, error) in rows.items()
            if status == Status.DEAD
        }

        outbox_ids = Counter(dict(r.headers).get("outbox_id", b"").decode() for r in records)
        record_events = {dict(r.headers).get("event_id", b"").decode() for r in records}
        report.records = len(records)
        report.dup_records = sum(n - 1 for n in outbox_ids.values())
        report.phantom_records = record_events - committed
        report.order_inversions = order_inversions(records)

        checks = [
            ("lost (committed events without effect)", report.lost),
            ("duplicate effects (event: count)", report.dup_effects),
            ("phantom effects (effects of events not committed)", report.phantom),
            ("phantom records (rolled-back events in Kafka)", report.phantom_records),
            ("stuck rows (pk: state)", report.stuck),
            ("dead rows (pk: state)", report.dead),
            ("business rows without outbox row", committed - row_events),
            ("outbox rows without business row", row_events - committed),
            ("COMMIT returned, business row missing", written["commit"] - committed),
            ("rolled back, yet in the database", rolled_back & (committed | row_events)),
        ]
        for title, found in checks:
            if found:
                shown = (
                    sample(f"{k}: {v}" for k, v in found.items())
                    if isinstance(found, dict)
                    else sample(found)
                )
                self.fail(f"{title}: {len(found)}: {shown}")
        # One sender per key (relay buckets, decision 0003) should send a key's rows in id
        # order; without buckets several relays interleave a key's rows, so it is only reported.
        if report.order_inversions and outbox_settings.relay_buckets and self.require_order:
            self.fail(
                f"same-key order inversions (a record after a later row of its key): "
                f"{report.order_inversions}"
            )
        if report.committed == 0:
            self.fail("no event was committed: the run proves nothing")
        return report

    def close(self) -> None:
        for worker in self.workers.values():
            worker.kill_all()
        if self.outage is not None:
            self.outage.join(timeout=120)
        self.timeline.close()
