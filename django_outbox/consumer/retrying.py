"""Handling that waits out a database away, and retries an inbox event in place.

A chunk whose database does not answer is tried again, with a backoff, until the
database is back (nothing of it is recorded before). If the database answers but the
chunk keeps failing, or a handler broke its transaction, its records are handled one
by one, so one handler's errors cannot block the others. An inbox event whose handler
failed is tried again here, a few times with a short pause, then given up on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

from django_outbox.backoff import retry_delay
from django_outbox.consumer.database import DATABASE_ERRORS, databases_answer, drop_connections
from django_outbox.consumer.handling import Handling, Outcome, Result
from django_outbox.consumer.records import Delivery
from django_outbox.models.inbox import RejectionReason
from django_outbox.shutdown import Shutdown

logger = logging.getLogger("django_outbox.consumer")

#: Database errors in a row, with the database answering, after which a handler's
#: OperationalError counts as a handler failure (a deadlock retried in vain, a bug).
DATABASE_ERRORS_BEFORE_FAILURE = 3


class Retrying:
    """``Handling`` again and again while the database fails; None if stopped meanwhile."""

    def __init__(
        self,
        handling: Handling,
        shutdown: Shutdown,
        *,
        inbox_attempts: int,
        inbox_retry_max_delay: float,
        database_retry_delay: float,
        database_retry_max_delay: float,
    ) -> None:
        self.handling = handling
        self.shutdown = shutdown
        self.inbox_attempts = inbox_attempts
        self.inbox_retry_max_delay = inbox_retry_max_delay
        self.database_retry_delay = database_retry_delay
        self.database_retry_max_delay = database_retry_max_delay

    def handle_chunk(self, chunk: list[Delivery]) -> list[Result | None]:
        """``handle_batch``, again while the database fails; all None if stopped meanwhile."""
        errors, delay = 0, self.database_retry_delay
        while True:
            try:
                return self.handling.handle_batch(chunk, stop=lambda: self.shutdown.requested)
            except DATABASE_ERRORS as exc:
                drop_connections()
                answers = self.database_answers(chunk)
                errors = errors + 1 if answers else 0
                logger.warning(
                    "database error on the chunk %s..%s (%d records) (%s); %s",
                    chunk[0],
                    chunk[-1],
                    len(chunk),
                    exc,
                    "retrying" if answers else f"database unavailable, retrying in {delay:.1f} s",
                )
                if errors >= DATABASE_ERRORS_BEFORE_FAILURE:
                    # The database answers, the chunk still fails: perhaps one handler's
                    # own error. One by one, it fails alone and the others go through.
                    return self._one_by_one(chunk)
                if errors == 1 and answers:
                    continue  # a dropped connection or a deadlock: once more at once
                if self.shutdown.wait(delay):
                    return [None] * len(chunk)
                delay = min(delay * 2, self.database_retry_max_delay)
            except Exception:
                # A handler broke the chunk's transaction beyond a savepoint's reach, or
                # a commit failed (a deferred constraint): nothing of the chunk is kept.
                logger.warning(
                    "the chunk %s..%s failed as a whole; handling its records one by one",
                    chunk[0],
                    chunk[-1],
                    exc_info=True,
                )
                drop_connections()
                return self._one_by_one(chunk)

    def _one_by_one(self, chunk: list[Delivery]) -> list[Result | None]:
        results: list[Result | None] = []
        for delivery in chunk:
            results.append(None if self.shutdown.requested else self.handle(delivery))
        return results

    def handle(self, delivery: Delivery, result: Result | None = None) -> Result | None:
        """One record on its own, with retries; ``result``: a first attempt made elsewhere."""
        attempt = 1
        while True:
            if result is None:
                result = self.retrying_database(
                    delivery, functools.partial(self._try_handle, delivery)
                )
                if result is None:
                    return None
            if result.outcome is not Outcome.RETRY_IN_PLACE:
                return result
            if attempt >= self.inbox_attempts:
                give_up = functools.partial(
                    self._give_up, delivery, result.error, attempt, result.failure
                )
                return self.retrying_database(delivery, give_up)
            # Bounded, so an inbox event blocks its partition for seconds at most.
            if self.shutdown.wait(min(retry_delay(attempt), self.inbox_retry_max_delay)):
                return None
            attempt, result = attempt + 1, None

    def _try_handle(self, delivery: Delivery, database_errors_fail: bool) -> Result:
        try:
            return self.handling.handle(delivery, database_errors_fail=database_errors_fail)
        except DATABASE_ERRORS:
            raise
        except Exception as exc:
            # Not the handler's doing (that is recorded as its failure): the consumer's
            # own bookkeeping broke on this record. Keep it as rejected, never loop on it.
            logger.exception("outbox consumer: record %s could not be handled", delivery)
            return self.store_rejected(
                delivery,
                RejectionReason.MALFORMED,
                f"the consumer could not handle it: {type(exc).__name__}: {exc}",
                exc,
            )

    def _give_up(
        self,
        delivery: Delivery,
        error: str,
        attempts: int,
        failure: BaseException | None,
        database_errors_fail: bool,
    ) -> Result:
        return self.handling.give_up(delivery, error, attempts, failure)

    def store_rejected(
        self, delivery: Delivery, reason: str, error: str, failure: BaseException | None = None
    ) -> Result:
        self.handling.reject(delivery, reason, error)
        return Result(Outcome.REJECTED, error, reason, failure)

    def retrying_database(
        self, delivery: Delivery, action: Callable[[bool], Result]
    ) -> Result | None:
        """``action()``, again and again while the database fails; None if stopped meanwhile."""
        # Errors in a row while the database answers: only those can be the handler's fault.
        errors, delay = 0, self.database_retry_delay
        while True:
            try:
                return action(errors >= DATABASE_ERRORS_BEFORE_FAILURE)
            except DATABASE_ERRORS as exc:
                drop_connections()
                answers = self.database_answers([delivery])
                errors = errors + 1 if answers else 0
                logger.warning(
                    "database error on record %s (%s); %s",
                    delivery,
                    exc,
                    "retrying" if answers else f"database unavailable, retrying in {delay:.1f} s",
                    extra={"topic": delivery.topic, "offset": delivery.offset},
                )
                if errors == 1 and answers:
                    continue  # a dropped connection or a deadlock: once more at once
                if self.shutdown.wait(delay):
                    return None
                delay = min(delay * 2, self.database_retry_max_delay)

    def database_answers(self, deliveries: Sequence[Delivery]) -> bool:
        """Whether the databases of ``deliveries`` answer a trivial query now."""
        return databases_answer(sorted(self.handling.databases(deliveries)))
