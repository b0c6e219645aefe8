"""Reads for the automation API."""

from __future__ import annotations

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


def validator_keys() -> QuerySet[SigningKey]:
    """The validator key first made (there is one; the oldest wins should there be more)."""
    return SigningKey.objects.filter(purpose=KeyPurpose.VALIDATOR, label=VALIDATOR_LABEL).order_by("created_at", "pk")


def validator_address() -> str | None:
    """The address Safe owners register with their module's setValidator, None until made."""
    return validator_keys().values_list("address", flat=True).first()
