"""What became of one record in the consumer: its ``Outcome`` and the ``Result`` that
carries it (with the error and, for a rejected record, the reason)."""

from __future__ import annotations

import enum
from dataclasses import dataclass


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
