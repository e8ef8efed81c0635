"""What one run of the consumer did (``ConsumerStats``): records per outcome, commits,
ordering violations, and whether the broker refuses it now."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from django_outbox.consumer.outcomes import Outcome, Result


@dataclass
class ConsumerStats:
    """What one ``run()`` did: records seen, per outcome."""

    records: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    commits: int = 0
    #: Records of a key handled after a later record of that key (``OrderingDetector``).
    ordering_violations: int = 0
    started: float = field(default_factory=time.monotonic)
    #: ``time.monotonic()`` when the first records came from a poll, and when the
    #: offsets of the last ones were committed: ``busy_seconds()`` is between them.
    first_records_at: float | None = None
    last_commit_at: float | None = None
    #: While the broker refuses the consumer (``kafka.BLOCKED``): the error's class
    #: name and since when (``time.time()``); None otherwise.
    blocked_by: str | None = None
    blocked_since: float | None = None
    #: Polls and commits the broker refused, in all.
    blocked_turns: int = 0

    def add(self, result: Result) -> None:
        self.records += 1
        self.outcomes[result.outcome.value] = self.outcomes.get(result.outcome.value, 0) + 1

    def count(self, outcome: Outcome) -> int:
        return self.outcomes.get(outcome.value, 0)

    def busy_seconds(self) -> float:
        """Seconds from the first records received to the last offsets committed."""
        if self.first_records_at is None or self.last_commit_at is None:
            return 0.0
        return self.last_commit_at - self.first_records_at
