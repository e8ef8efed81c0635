"""What became of one record in the consumer: its ``Outcome`` and the ``Result`` that
carries it (with the error and, for a rejected record, the reason; for a handler's
failure, the exception and the attempts, which the dead-letter copy reports)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Outcome(str, enum.Enum):
    HANDLED = "handled"  # the handler ran and its effects committed
    DUPLICATE = "duplicate"  # handled before: nothing done
    RETRY = "retry"  # handler failed; the row is pending again, the relay re-delivers it
    DEAD = "dead"  # handler failed and the row ran out of retries
    RETRY_IN_PLACE = "retry_in_place"  # an inbox event's handler failed; try it here again
    FAILED = "failed"  # an inbox event's handler kept failing; recorded as rejected
    SKIPPED = "skipped"  # unknown event type, or a row that is dead already
    REJECTED = "rejected"  # malformed record, recorded as rejected


@dataclass(frozen=True)
class Result:
    outcome: Outcome
    error: str = ""
    #: Why a record was kept as rejected (a ``RejectionReason``); empty otherwise.
    reason: str = ""
    #: The exception behind a failure or a rejection, when there is one.
    failure: BaseException | None = field(default=None, compare=False, repr=False)
    #: Attempts made: the row's ``retry_count`` for a dead row, the inbox attempts.
    attempts: int = 1
