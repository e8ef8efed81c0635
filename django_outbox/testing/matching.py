"""How a captured event is compared with what a test expects, and how a miss reads.

``differences()`` lists what keeps an event from matching (empty: it matches):
``data`` and ``headers`` match partially by default, a dict of the expected value
only naming the keys it cares about, recursively; ``unittest.mock.ANY`` matches
anything. ``describe_miss()`` writes the failure a test shows: what was expected,
the closest captured events with their differences, and the events written whose
transaction did not commit.
"""

from __future__ import annotations

import pprint
from collections.abc import Mapping, Sequence
from typing import Any

#: An argument not given: anything matches.
UNSET: Any = type("Unset", (), {"__repr__": lambda self: "UNSET"})()

#: Closest events shown when nothing matches.
SHOWN = 3


def _diff_value(path: str, expected: Any, actual: Any, exact: bool) -> list[str]:
    if isinstance(expected, Mapping) and isinstance(actual, Mapping):
        found = []
        for key, value in expected.items():
            where = f"{path}[{key!r}]"
            if key not in actual:
                found.append(f"{where}: missing (expected {value!r})")
            else:
                found += _diff_value(where, value, actual[key], exact)
        if exact:
            found += [f"{path}[{key!r}]: not expected" for key in actual if key not in expected]
        return found
    if (
        isinstance(expected, list | tuple)
        and isinstance(actual, list | tuple)
        and len(expected) == len(actual)
    ):
        found = []
        for index, (one, other) in enumerate(zip(expected, actual, strict=True)):
            found += _diff_value(f"{path}[{index}]", one, other, exact)
        return found
    if expected == actual:
        return []
    return [f"{path}: expected {expected!r}, got {actual!r}"]


def differences(captured: Any, criteria: Mapping[str, Any], exact: bool = False) -> list[str]:
    """What keeps ``captured`` (a ``CapturedEvent``) from matching ``criteria``."""
    found = []
    for name in ("event_type", "key", "topic", "alias", "version"):
        expected = criteria.get(name, UNSET)
        if expected is not UNSET and expected != getattr(captured, name):
            found.append(f"{name}: expected {expected!r}, got {getattr(captured, name)!r}")
    for name in ("data", "headers"):
        expected = criteria.get(name, UNSET)
        if expected is not UNSET:
            found += _diff_value(name, expected, getattr(captured, name), exact)
    return found


def describe_criteria(criteria: Mapping[str, Any]) -> str:
    shown = [repr(criteria["event_type"])] if criteria.get("event_type", UNSET) is not UNSET else []
    shown += [
        f"{name}={value!r}"
        for name, value in criteria.items()
        if name != "event_type" and value is not UNSET
    ]
    return ", ".join(shown) or "any event"


def describe_event(captured: Any) -> str:
    data = pprint.pformat(captured.data, width=88, compact=True, sort_dicts=False)
    return f"{captured.event_type} key={captured.key!r} on {captured.alias!r}, data={data}"


def describe_miss(
    headline: str,
    criteria: Mapping[str, Any],
    committed: Sequence[Any],
    uncommitted: Sequence[Any],
    exact: bool = False,
) -> str:
    """The failure message of an assertion that found no (or the wrong number of) events."""
    lines = [f"{headline}: {describe_criteria(criteria)}"]
    if not committed:
        lines.append("No event was published (and committed) in the capture.")
    else:
        ranked = sorted(
            committed,
            key=lambda one: (
                criteria.get("event_type", UNSET) not in (UNSET, one.event_type),
                len(differences(one, criteria, exact)),
            ),
        )
        lines.append(f"{len(committed)} event(s) captured; the closest {min(SHOWN, len(ranked))}:")
        for one in ranked[:SHOWN]:
            lines.append(f"  - {describe_event(one)}")
            lines += [f"      {text}" for text in differences(one, criteria, exact)]
        if len(ranked) > SHOWN:
            others = ", ".join(one.event_type for one in ranked[SHOWN:])
            lines.append(f"  and {len(ranked) - SHOWN} more: {others}")
    matching = [one for one in uncommitted if not differences(one, criteria, exact)]
    if matching:
        lines.append(
            f"{len(matching)} matching event(s) were written by publish_event() but their "
            "transaction did not commit (rolled back, or still open): "
            + "; ".join(describe_event(one) for one in matching[:SHOWN])
        )
    return "\n".join(lines)
