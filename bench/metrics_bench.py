#!/usr/bin/env python
"""What metrics and the ordering detector cost per handler call, relay batch and record.

Usage (no broker, no database: the hooks alone, on in-memory values)::

    python bench/metrics_bench.py [--repeat 5] [--json PATH]

Each repetition times, on the same inputs, a baseline and the hook next to it:

- a handler call, bare, then inside ``metrics.handler_timer`` with metrics off and on;
- the relay's ``event_published`` send for a batch of 500 rows, off and on (on: the
  counter and one latency observation per row), against building the batch's 500
  Kafka records (``delivery.prepare``, work the relay does per batch anyway);
- the consumer's per-record ``event_consumed`` send, off and on, and the ordering
  detector's ``check``, against ``records.parse`` of the same record (work the
  consumer does per record anyway).

Prints each figure and the ratio to its baseline (median and spread over the
repetitions); asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")


#: Records the ordering detector checks per repetition.
CHECKS = 50_000


def per_call(action: Callable[[], object], calls: int) -> float:
    """Seconds per call of ``action``, over ``calls`` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        action()
    return (time.perf_counter() - started) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", type=Path, help="write the figures there (bench/run.py)")
    args = parser.parse_args()

    import django

    django.setup()
    from django.utils import timezone

    from django_outbox import signals
    from django_outbox.consumer import Consumer
    from django_outbox.consumer.ordering_detector import OrderingDetector
    from django_outbox.consumer.records import Delivery, parse
    from django_outbox.envelope import Event
    from django_outbox.kafka import outbox_headers
    from django_outbox.models.claiming import Claim, ClaimedRow
    from django_outbox.ops import metrics
    from django_outbox.relay.send import Sender, prepare

    now = timezone.now()
    events = [
        Event(event_type="bench.row", data={"n": i, "text": "x" * 200}, key=f"key-{i % 50}")
        for i in range(500)
    ]
    rows = [
        ClaimedRow(i, "bench.row", "bench", e.key, e.to_json(), 0, 20, now)
        for i, e in enumerate(events)
    ]
    claim = Claim("default", now, rows)
    deliveries = [
        Delivery(
            "bench", 0, i, e.key.encode(), e.to_bytes(),
            tuple(outbox_headers(i, e.event_type, e.to_json(), "default")),
            int(time.time() * 1000),
        )
        for i, e in enumerate(events)
    ]  # fmt: skip

    def handler(event: Event) -> None:
        pass

    event = events[0]

    def bare() -> None:
        handler(event)

    def timed() -> None:
        with metrics.handler_timer(event.event_type):
            handler(event)

    def published() -> None:
        signals.send(signals.event_published, Sender, alias="default", rows=rows)

    def build_batch() -> None:
        prepare(claim)

    record_iter = iter(())

    def next_delivery() -> Delivery:
        nonlocal record_iter
        try:
            return next(record_iter)
        except StopIteration:
            record_iter = iter(deliveries)
            return next(record_iter)

    def consumed() -> None:
        signals.send(signals.event_consumed, Consumer, group="g", record=next_delivery(), reason="")

    def parsed() -> None:
        parse(next_delivery())

    # Ids rising per key (no violation, nothing logged), 1,000 keys, new offsets.
    in_order = [
        Delivery(
            "bench", 0, i, f"key-{i % 1000}".encode(), b"{}",
            tuple(outbox_headers(i, "bench.row", "{}", "default")),
        )
        for i in range(CHECKS)
    ]  # fmt: skip

    def check_all() -> None:
        detector = OrderingDetector(1000)
        for delivery in in_order:
            detector.check(delivery)

    figures: dict[str, dict] = {}

    def add(name: str, unit: str, value: float, baseline_name: str, baseline: float) -> None:
        figure = figures.setdefault(
            name,
            {
                "name": name,
                "unit": unit,
                "higher_is_better": False,
                "baseline_name": baseline_name,
                "values": [],
                "baseline_values": [],
            },
        )
        figure["values"].append(value)
        figure["baseline_values"].append(baseline)

    for repetition in range(args.repeat):
        metrics.disable()
        base = per_call(bare, 200_000)
        off = per_call(timed, 200_000)
        batch_base = per_call(build_batch, 200)
        batch_off = per_call(published, 20_000)
        record_off = per_call(consumed, 100_000)
        parse_base = per_call(parsed, 20_000)
        check = per_call(check_all, 1) / CHECKS
        metrics.enable()
        on = per_call(timed, 100_000)
        batch_on = per_call(published, 200)
        record_on = per_call(consumed, 50_000)
        metrics.disable()
        ns, us = 1e9, 1e6
        add("handler call, metrics off", "ns", off * ns, "bare handler call", base * ns)
        add("handler call, metrics on", "ns", on * ns, "bare handler call", base * ns)
        add(
            "event_published send (500 rows), off",
            "us",
            batch_off * us,
            "prepare 500",
            batch_base * us,
        )
        add(
            "event_published send (500 rows), on",
            "us",
            batch_on * us,
            "prepare 500",
            batch_base * us,
        )
        add("event_consumed send, off", "ns", record_off * ns, "records.parse", parse_base * ns)
        add("event_consumed send, on", "ns", record_on * ns, "records.parse", parse_base * ns)
        add("ordering detector check", "ns", check * ns, "records.parse", parse_base * ns)
        print(f"repetition {repetition + 1}/{args.repeat} done", file=sys.stderr)

    print(f"{'figure':<42} {'median':>10} {'baseline':>10} {'ratio':>8} {'spread':>15}")
    for figure in figures.values():
        ratios = [v / b for v, b in zip(figure["values"], figure["baseline_values"], strict=True)]
        print(
            f"{figure['name']:<42} {statistics.median(figure['values']):>8.1f}"
            f"{figure['unit']:<2} {statistics.median(figure['baseline_values']):>8.1f}"
            f"{figure['unit']:<2} {statistics.median(ratios):>8.3f} "
            f"{min(ratios):>6.3f}-{max(ratios):.3f}   (vs {figure['baseline_name']})"
        )
    if args.json:
        document = {"bench": "metrics", "database": "none", "figures": list(figures.values())}
        args.json.write_text(json.dumps(document, indent=2))


if __name__ == "__main__":
    main()
