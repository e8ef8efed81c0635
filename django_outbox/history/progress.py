"""The progress line of ``outbox_replay``: a bar, the share sent, the rate, the time left.

One line per acknowledged batch, so that it reads the same in a terminal and in a log.
"""

from __future__ import annotations

import math

#: Characters of the bar.
WIDTH = 20


def progress_line(
    run: int, sent: int, matched: int, sent_here: int, elapsed: float, width: int = WIDTH
) -> str:
    """``replay run 7: [######--------------]  30% 3/10 sent, 2.0/s, about 4 s left``.

    ``sent`` and ``matched`` are the run's (a resumed run counts what it sent before);
    ``sent_here`` of them were sent by this process in ``elapsed`` seconds, which gives
    the rate. Any counts are accepted: a run that sent more than it matched (rows added
    to an id range meanwhile) shows a full bar, nothing matched shows an empty one.
    """
    share = min(max(sent / matched, 0.0), 1.0) if matched > 0 else 0.0
    filled = math.floor(share * width)
    bar = "#" * filled + "-" * (width - filled)
    line = f"replay run {run}: [{bar}] {share:4.0%} {sent}/{matched} sent"
    if sent_here > 0 and elapsed > 0:
        rate = sent_here / elapsed
        line += f", {rate:,.1f}/s"
        left = max(matched - sent, 0)
        if left:
            line += f", about {math.ceil(left / rate):,} s left"
    return line
