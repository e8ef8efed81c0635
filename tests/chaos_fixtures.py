"""Pytest fixtures of the chaos tests (tests/test_chaos.py on one broker,
tests/test_cluster_chaos.py on the 3-node cluster), and the run they share.

Loaded from tests/conftest.py (``pytest_plugins``).

- ``chaos_tables``: the ledger and effect tables on the test database, dropped after.
- ``interruptible``: SIGTERM/SIGHUP to pytest (a CI timeout) unwind the test instead of
  killing it, so the teardown still kills the workers and makes Kafka whole again.
- ``chaos_budget``: the seed and durations from the environment (see tests/test_chaos.py),
  the log directory; prints the seed first, so a failed run can be replayed.
- ``run_and_judge(harness, budget)``: run the plan, verify, clean up, print the verdict's
  line and fail the test with every failure.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.db import connection

from tests.chaos_harness import Chaos, Interrupted, env_float
from tests.chaos_support import CREATE_TABLES, DROP_TABLES


@pytest.fixture
def chaos_tables() -> Iterator[None]:
    with connection.cursor() as cursor:
        for statement in DROP_TABLES + CREATE_TABLES:
            cursor.execute(statement)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            for statement in DROP_TABLES:
                cursor.execute(statement)


@pytest.fixture
def interruptible() -> Iterator[None]:
    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted(f"signal {signum}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@dataclass
class Budget:
    seed: int
    chaos: float  # seconds of faults
    drain: float  # seconds the drain may take at most
    outage: float  # seconds Kafka stays down (the broker, or one cluster node)
    blips: int
    log_dir: Path


@pytest.fixture
def chaos_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Budget:
    seed = int(os.environ.get("OUTBOX_CHAOS_SEED") or random.randrange(1_000_000))
    total = env_float("OUTBOX_CHAOS_SECONDS", 120)
    chaos = total * 2 / 3
    log_dir = Path(os.environ.get("OUTBOX_CHAOS_LOG_DIR") or tmp_path)
    log_dir = log_dir / f"chaos-{seed}-{os.getpid()}"
    log_dir.mkdir(parents=True)
    with capsys.disabled():
        print(f"\nchaos: seed={seed} (OUTBOX_CHAOS_SEED={seed} to replay); logs in {log_dir}")
    return Budget(
        seed=seed,
        chaos=chaos,
        drain=total - chaos,
        outage=min(env_float("OUTBOX_CHAOS_OUTAGE", 20), chaos / 3),
        blips=int(env_float("OUTBOX_CHAOS_DB_BLIPS", 2)),
        log_dir=log_dir,
    )


def run_and_judge(harness: Chaos, budget: Budget, capsys: pytest.CaptureFixture[str]) -> None:
    try:
        harness.run(budget.chaos, budget.drain, budget.outage, budget.blips)
        report = harness.verify(harness.read_topic())
    finally:
        harness.close()
        harness.fault.restore()
    line = report.line()
    (budget.log_dir / "result.txt").write_text("\n".join([*report.failures, line]) + "\n")
    with capsys.disabled():
        print(line)
    if report.failures:
        pytest.fail("\n\n".join([*report.failures, line]), pytrace=False)
