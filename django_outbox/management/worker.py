"""What the outbox's management commands share: argument types and the worker base.

Not under ``commands/``, so Django does not list it as a command.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _number(kind: Callable[[str], float], test: Callable[[float], bool], rule: str):
    def parse(text: str) -> float:
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
non_negative_int = _number(int, lambda v: v >= 0, "0 or more")
positive_float = _number(float, lambda v: v > 0, "positive")
non_negative_float = _number(float, lambda v: v >= 0, "0 or more")
