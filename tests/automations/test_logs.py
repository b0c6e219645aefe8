"""The logs API's paging (selectors.subscription_logs): every page is what `ORDER BY created_at
DESC, id DESC OFFSET .. LIMIT ..` gives, ties on created_at included, past the end, with limit 0
and after retention deleted rows; and the entries are the same JSON as the whole rows give."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone
from rest_framework.test import APIClient

from orchestrator.automations.models import Firing, Subscription
from orchestrator.automations.selectors import subscription_logs
from orchestrator.automations.wire import log_entry_json
from orchestrator.infra.tokens import api_token_issue
from orchestrator.operations.retention import retention_prune
from tests.operations import retention_rows as rows

pytestmark = pytest.mark.django_db


def _firings(sub: Subscription, *, stamps: int, per_stamp: int, age_days: float = 0, **fields: Any) -> None:
    """`stamps` created_at values a minute apart, `per_stamp` firings at each: ties only ids order."""
    base = timezone.now() - timedelta(days=age_days)
    batch = []
    for s in range(stamps):
        for _ in range(per_stamp):
            rid = uuid.uuid4().hex
            at = base - timedelta(minutes=s)
            batch.append(
                Firing(
                    subscription=sub,
                    key=f"{sub.pk}:{rid}",
                    request_id=rid,
                    trigger_type="INTERVAL",
                    due_at=at,
                    request={"requestID": rid, "n": s},
                    response={"skip": True, "requestID": rid},
                    status=fields.get("status", "skipped"),
                    created_at=at,
                )
            )
    Firing.objects.bulk_create(batch)


def _plain(sub: Subscription, offset: int, limit: int) -> list[uuid.UUID]:
    ordered = Firing.objects.filter(subscription=sub).order_by("-created_at", "-id")
    return list(ordered.values_list("id", flat=True)[offset : offset + limit])


def _page(sub: Subscription, offset: int, limit: int) -> list[uuid.UUID]:
    return [f.pk for f in subscription_logs(subscription=sub, offset=offset, limit=limit)]


def test_every_page_is_the_offset_page_newest_first_with_ties_ordered_by_id() -> None:
    sub, neighbour = rows.subscription(), rows.subscription()
    _firings(sub, stamps=6, per_stamp=4)
    _firings(neighbour, stamps=6, per_stamp=4)  # same created_at values, another log
    everything = _page(sub, 0, 100)
    assert len(everything) == 24 and everything == _plain(sub, 0, 100)
    stamps = list(Firing.objects.filter(pk__in=everything).values_list("pk", "created_at"))
    at = dict(stamps)
    assert [at[i] for i in everything] == sorted(at.values(), reverse=True)
    for a, b in itertools.pairwise(everything):
        assert at[a] > at[b] or (at[a] == at[b] and a > b)  # within a tie: id descending
    for offset in range(26):
        for limit in (1, 3, 4, 10):
            assert _page(sub, offset, limit) == _plain(sub, offset, limit), (offset, limit)


def test_past_the_end_and_limit_zero_are_empty_pages() -> None:
    sub = rows.subscription()
    _firings(sub, stamps=3, per_stamp=2)
    assert _page(sub, 6, 10) == [] == _page(sub, 1000, 10) == _page(sub, 0, 0) == _page(sub, 2, 0)
    assert len(_page(sub, 5, 10)) == 1
    assert _page(rows.subscription(), 0, 10) == []  # no firings at all


def test_pages_count_only_the_rows_retention_left(settings: Any) -> None:
    settings.RETENTION_FIRINGS_DAYS = 90
    settings.RETENTION_STEP_JOURNAL_DAYS = settings.RETENTION_IDEMPOTENCY_DAYS = settings.RETENTION_AUDIT_DAYS = 0
    sub = rows.subscription()
    _firings(sub, stamps=5, per_stamp=2)  # young: kept
    # Old and final: deleted, in one run, though batches of 5 cut through groups of 3 equal
    # timestamps (the walk's keyset is (created_at, id); on created_at alone it left 2 of 12).
    _firings(sub, stamps=4, per_stamp=3, age_days=100)
    _firings(sub, stamps=2, per_stamp=2, age_days=101, status="pending")  # old, still pending: kept
    assert retention_prune(batch=5, pause=0).deleted["firings"] == 12
    assert Firing.objects.filter(subscription=sub).count() == 14
    for offset in range(16):
        for limit in (1, 4, 10):
            assert _page(sub, offset, limit) == _plain(sub, offset, limit), (offset, limit)
    assert [Firing.objects.get(pk=i).status for i in _page(sub, 10, 10)] == ["pending"] * 4


def test_the_api_answers_the_entries_the_whole_rows_make(django_assert_num_queries: Any) -> None:
    sub = rows.subscription()
    _firings(sub, stamps=4, per_stamp=3)
    Firing.objects.filter(subscription=sub).update(
        post_execution_state={"logs": ["ok"]}, reason="why", output_tx_hash="0x" + "ab" * 32
    )
    client = APIClient()
    owner = get_user_model().objects.get(pk=sub.owner_id)
    client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=owner)}")
    with django_assert_num_queries(2):  # the token; the subscription and its page: nothing per entry
        response = client.get(f"/v1/{sub.pk}/logs", {"offset": 2, "limit": 5})
    assert response.status_code == 200
    expected = [log_entry_json(Firing.objects.select_related("subscription").get(pk=i)) for i in _plain(sub, 2, 5)]
    assert response.json() == json.loads(json.dumps({"data": expected}))
    assert client.get(f"/v1/{sub.pk}/logs", {"limit": 0}).json() == {"data": []}
    assert client.get(f"/v1/{sub.pk}/logs", {"offset": 12}).json() == {"data": []}


def test_someone_elses_subscription_is_not_found_before_its_query_is_judged() -> None:
    """The page and the subscription are one statement; a bad offset or limit on a subscription
    that is not the caller's still answers 404, not 400 (nothing about it is told)."""
    sub = rows.subscription()
    _firings(sub, stamps=2, per_stamp=1)
    owner = get_user_model().objects.get(pk=sub.owner_id)
    own, stranger = APIClient(), APIClient()
    own.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=owner)}")
    other = get_user_model().objects.create(username=f"stranger-{uuid.uuid4().hex[:8]}")
    stranger.credentials(HTTP_AUTHORIZATION=f"Token {api_token_issue(user=other)}")
    for query in ({"offset": -1}, {"limit": 101}, {}):
        assert stranger.get(f"/v1/{sub.pk}/logs", query).status_code == 404, query
    assert own.get(f"/v1/{sub.pk}/logs", {"offset": -1}).status_code == 400
    assert own.get(f"/v1/{uuid.uuid4()}/logs", {"offset": -1}).status_code == 404
    assert [e["id"] for e in own.get(f"/v1/{sub.pk}/logs").json()["data"]] == [str(i) for i in _plain(sub, 0, 10)]


def test_autovacuum_keeps_the_firing_table_visible_after_ten_thousand_changes() -> None:
    """The walk to a deep offset stays index-only only on all-visible pages (migration 0005)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT reloptions FROM pg_class WHERE relname = 'automations_firing'")
        options = set(cursor.fetchone()[0])
    assert {
        "autovacuum_vacuum_scale_factor=0",
        "autovacuum_vacuum_insert_scale_factor=0",
        "autovacuum_vacuum_threshold=10000",
        "autovacuum_vacuum_insert_threshold=10000",
    } <= options
