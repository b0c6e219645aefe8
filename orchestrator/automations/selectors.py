"""Reads for the automation API."""

from __future__ import annotations

import uuid

from django.db.models import QuerySet

from orchestrator.automations.models import Firing, Subscription
from relayer.models import KeyPurpose, SigningKey

# The orchestrator's one validator key for tasks through Safe policy modules (services/module_route.py).
VALIDATOR_LABEL = "automation validator"


# Offset paging done as a keyset read: the inner query walks firing_log_idx alone (an index-only
# scan: subscription_id, created_at and id are all in it) to the row at `offset`, and the outer
# one reads `limit` rows from there by a row comparison the index answers. A plain OFFSET reads
# every skipped row from the table first, heap page and all. One statement, so both halves see
# the same snapshot: a page is what OFFSET would have given at that instant, counting only the
# rows that exist (retention's deletions included). No row at `offset`: the comparison is with
# NULL and the page is empty.
# Only the columns an entry shows (wire.log_entry_json) are read; the delivery state, keys and
# leases stay in the table (deferred on the instances, never touched).
LOG_PAGE_SQL = """
SELECT id, created_at, request, response, post_execution_state, status, reason, output_tx_hash
FROM automations_firing
WHERE subscription_id = %(sub)s AND (created_at, id) <= (
    SELECT created_at, id FROM automations_firing WHERE subscription_id = %(sub)s
    ORDER BY created_at DESC, id DESC OFFSET %(offset)s LIMIT 1
)
ORDER BY created_at DESC, id DESC LIMIT %(limit)s
"""

# The API's read: the owner's subscription and its page in one statement, one round trip to the
# database instead of two (on a busy machine each round trip is a wait for the server process to
# be scheduled, and that wait is most of a page's time; bench logs). The subscription is the
# outer row of a nested loop: someone else's, or none, and the page is never read. Its own with
# an empty page (past the end, limit 0): one row of NULL firing columns.
OWNED_LOG_PAGE_SQL = f"""
SELECT page.*, s.id AS log_sub_id, s.chain_id AS log_sub_chain_id,
       s.sub_account_address AS log_sub_account_address
FROM automations_subscription s LEFT JOIN ({LOG_PAGE_SQL}) page ON true
WHERE s.id = %(sub)s AND s.owner_id = %(owner)s
ORDER BY page.created_at DESC, page.id DESC
"""  # noqa: S608 (two constants: the values are parameters)
_SUB_FIELDS = ("id", "chain_id", "sub_account_address")  # what an entry shows of its subscription


def subscription_logs(*, subscription: Subscription, offset: int, limit: int) -> list[Firing]:
    """One page of the execution log, newest first, ties on created_at broken by id, descending
    (index firing_log_idx); what `ORDER BY created_at DESC, id DESC OFFSET offset LIMIT limit`
    answers, at a cost that grows with `offset` only through the index (see LOG_PAGE_SQL)."""
    if limit <= 0:
        return []
    page = list(Firing.objects.raw(LOG_PAGE_SQL, {"sub": subscription.pk, "offset": offset, "limit": limit}))
    for firing in page:
        firing.subscription = subscription  # the entries all belong to it: no join per row
    return page


def owned_subscription_logs(
    *, sub_id: uuid.UUID, owner_id: int, offset: int, limit: int
) -> tuple[Subscription, list[Firing]] | None:
    """`owner_id`'s subscription `sub_id` (only what an entry shows of it) and one page of its
    log as subscription_logs reads it, in one statement; None if it is not theirs or not there."""
    params = {"sub": sub_id, "owner": owner_id, "offset": offset, "limit": max(limit, 0)}
    rows = list(Firing.objects.raw(OWNED_LOG_PAGE_SQL, params))
    if not rows:
        return None
    first = rows[0]
    values = (first.log_sub_id, first.log_sub_chain_id, first.log_sub_account_address)  # type: ignore[attr-defined]
    subscription = Subscription.from_db(Firing.objects.db, _SUB_FIELDS, values)  # the rest deferred, as .only()
    page = [firing for firing in rows if firing.pk is not None]
    for firing in page:
        firing.subscription = subscription
    return subscription, page


def validator_keys() -> QuerySet[SigningKey]:
    """The validator key first made (there is one; the oldest wins should there be more)."""
    return SigningKey.objects.filter(purpose=KeyPurpose.VALIDATOR, label=VALIDATOR_LABEL).order_by("created_at", "pk")


def validator_address() -> str | None:
    """The address Safe owners register with their module's setValidator, None until made."""
    return validator_keys().values_list("address", flat=True).first()
