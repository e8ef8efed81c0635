"""The JSON a bench script writes with ``--json PATH``, read back by bench/run.py.

One object per script run::

    {"bench": "status", "database": "postgresql",
     "figures": [{"name": ..., "unit": "ms", "higher_is_better": false,
                  "baseline_name": ..., "values": [...], "baseline_values": [...],
                  "target": 1.5, "limit": null}],
     "series": [{"name": "relay", "x": "batch size", "y": "rows/s", "points": [[500, 6000.0]]}]}

``values`` and ``baseline_values`` hold one number per repetition, measured in the same
run; the ratio of repetition ``i`` is ``values[i] / baseline_values[i]``. With
``higher_is_better`` the target is a lower bound of the ratio, without it an upper
bound. ``limit`` (optional) is an absolute bound of the median value, in the
figure's unit, for a goal that is not a ratio (a p99 latency in ms, a start-up in
seconds): a lower bound with ``higher_is_better``, else an upper bound. A figure
may have both; it meets its goals when it meets each one it has. ``series``
(optional) are the points of a chart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Figure:
    name: str
    unit: str
    higher_is_better: bool
    baseline_name: str
    values: list[float]
    baseline_values: list[float]
    target: float | None = None
    limit: float | None = None

    def ratios(self) -> list[float]:
        return [
            value / baseline
            for value, baseline in zip(self.values, self.baseline_values, strict=True)
            if baseline
        ]


@dataclass
class Series:
    name: str
    x: str
    y: str
    points: list[list[float]] = field(default_factory=list)


def write(
    path: str | Path,
    bench: str,
    database: str,
    figures: list[Figure],
    series: list[Series] | None = None,
) -> None:
    """Write the result of one bench run to ``path`` (see the module)."""
    document: dict[str, Any] = {
        "bench": bench,
        "database": database,
        "figures": [asdict(figure) for figure in figures],
        "series": [asdict(one) for one in series or []],
    }
    Path(path).write_text(json.dumps(document, indent=1) + "\n")


def read(path: str | Path) -> tuple[str, str, list[Figure], list[Series]]:
    """``(bench, database, figures, series)`` from a file ``write`` made.

    Raises ``ValueError`` (or ``KeyError``/``TypeError``) on a document that does not
    follow the contract.
    """
    document = json.loads(Path(path).read_text())
    # Keys a script adds for its own readers (a batch size, a note) are left out.
    figures = [Figure(**_known(Figure, figure)) for figure in document["figures"]]
    for figure in figures:
        if len(figure.values) != len(figure.baseline_values):
            raise ValueError(f"{figure.name}: values and baseline_values differ in length")
    series = [Series(**_known(Series, one)) for one in document.get("series") or []]
    return document["bench"], document["database"], figures, series


def _known(kind: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {one.name for one in fields(kind)}
    return {key: value for key, value in values.items() if key in names}
