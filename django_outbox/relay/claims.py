"""The claim: the relay's next batch of each database, leased on the database thread.

A batch is claimed from the lowest due id, one ahead per database while the batch
before it is with Kafka; one claimed ahead that is not sent (Kafka unreachable, a
stop, a lease run short while it waited) is given back, due at once, no attempt
spent. The claim itself and its fence are ``django_outbox.models.claiming``; the
share of a lease Kafka may take is ``budget``.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from concurrent.futures import Future

from django.utils import timezone

from django_outbox.models.claiming import Claim, Owner, claim
from django_outbox.relay.dbthread import Submit
from django_outbox.relay.outages import Outages
from django_outbox.relay.write_back import WriteBacks

#: Share of the lease the relay may spend waiting for Kafka; the rest is margin
#: for recording the outcome before another relay may take the rows.
LEASE_SHARE = 0.75


def full_budget(lease_seconds: float) -> float:
    """Seconds Kafka may take for a batch claimed just now."""
    return max(lease_seconds * LEASE_SHARE, 0.5)


def budget(batch: Claim, lease_seconds: float) -> float:
    """Seconds Kafka may take for ``batch``: the share of its lease that is left."""
    left = (batch.lease - timezone.now()).total_seconds()
    return min(left - lease_seconds * (1 - LEASE_SHARE), full_budget(lease_seconds))


class Claims:
    """The relay's claims: taken now or ahead, given back when they were not sent."""

    def __init__(
        self,
        *,
        batch_size: int,
        lease_seconds: float,
        due_by: datetime.datetime | None,
        submit: Submit,
        owner: Callable[[str], Owner | None],
        outages: Outages,
        write_backs: WriteBacks,
    ) -> None:
        self.batch_size = batch_size
        self.lease_seconds = lease_seconds
        # A burst takes what was due when it started: rows it fails back off until
        # after that moment, so it ends even while Kafka is down.
        self.due_by = due_by
        self._submit = submit
        self._owner = owner
        self._outages = outages
        self._write_backs = write_backs
        #: Per database, the next batch, claimed ahead on the database thread.
        self.ahead: dict[str, Future[Claim]] = {}

    def next(self, alias: str) -> Claim:
        """The next batch of ``alias``: the one claimed ahead, or one claimed now."""
        ahead = self.ahead.pop(alias, None)
        batch = (ahead or self._submit_claim(alias)).result()
        if (
            ahead is not None
            and batch.rows
            and budget(batch, self.lease_seconds) < full_budget(self.lease_seconds) / 2
        ):
            # Claimed ahead long ago (the previous batch waited for Kafka): the lease
            # left is too short to send it in. Give it back; take it afresh.
            self._write_backs.give_back(batch)
            batch = self._submit_claim(alias).result()
        return batch

    def claim_ahead(self, alias: str) -> None:
        """Have the database claim the next batch of ``alias`` while this one is sent."""
        self.ahead[alias] = self._submit_claim(alias)

    def give_back_ahead(self) -> None:
        ahead, self.ahead = self.ahead, {}
        for alias, future in ahead.items():
            try:
                batch = future.result()
            except Exception:
                self._outages.database_failed(alias)
                continue
            if batch.rows:
                self._write_backs.give_back(batch)

    def _submit_claim(self, alias: str) -> Future[Claim]:
        return self._submit(alias, self._take, alias)

    def _take(self, alias: str) -> Claim:
        """On the database thread: lease the next batch of ``alias``, from its lowest due id.

        Never from where the last batch ended: a row that commits late below that
        floor would go out after a later row of its key (``claiming.claim``). With
        relay buckets, only the keyed rows of the buckets this relay owns.
        """
        owner = self._owner(alias)
        return claim(alias, self.batch_size, self.lease_seconds, due_by=self.due_by, owner=owner)
