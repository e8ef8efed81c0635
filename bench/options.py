"""``NAME=VALUE`` pairs of a bench's command line (``--setting``, ``--relay-option``...).

A value is read as a Python literal when it is one (``64``, ``True``, ``[1, 2]``),
else kept as a string.
"""

from __future__ import annotations

import ast
from typing import Any


def options(pairs: list[str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            parsed[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed[name] = value
    return parsed
