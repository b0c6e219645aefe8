from django.conf import settings
from django.contrib import admin
from django.http import HttpRequest, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from approvals.api import (
    ProposalApproveView,
    ProposalDetailView,
    ProposalExecuteView,
    ProposalListView,
    ProposalRejectView,
    ProposalSignatureView,
)
from approvals.api_wallets import WalletChallengeView, WalletListView, WalletMeView
from orchestrator.automations.api import (
    ConfigDetailView,
    ConfigListView,
    ExecutorDetailView,
    ExecutorListView,
    SubscriptionCancelView,
    SubscriptionDetailView,
    SubscriptionListView,
    SubscriptionLogsView,
)
from orchestrator.engine.api import WorkflowDetailView
from orchestrator.infra.metrics import metrics
from orchestrator.operations.health import readyz
from vaults.api import FeedView, VaultDetailView, VaultIntentsView, VaultListView


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: answers as soon as the process is up, touching nothing else."""
    return JsonResponse({"status": "ok"})


urlpatterns = [
    # Before the admin: its catch-all would answer these paths first.
    path("admin/operations/", include("orchestrator.operations.urls")),
    path("admin/", admin.site.urls),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("metrics", metrics, name="metrics"),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("v1/workflows/<str:run_id>", WorkflowDetailView.as_view(), name="workflow-detail"),
    path("v1/feeds", FeedView.as_view(), name="feeds"),
    path("v1/executors", ExecutorListView.as_view(), name="executors"),
    path("v1/executors/<str:registry_id>", ExecutorDetailView.as_view(), name="executor-detail"),
    path("v1/config", ConfigListView.as_view(), name="configs"),
    path("v1/config/<str:config_id>", ConfigDetailView.as_view(), name="config-detail"),
    path("v1/subscriptions", SubscriptionListView.as_view(), name="subscriptions"),
    path("v1/subscriptions/<str:sub_id>", SubscriptionDetailView.as_view(), name="subscription-detail"),
    path("v1/subscriptions/<str:sub_id>/cancel", SubscriptionCancelView.as_view(), name="subscription-cancel"),
    path("v1/<str:sub_id>/logs", SubscriptionLogsView.as_view(), name="subscription-logs"),
    path("v1/proposals", ProposalListView.as_view(), name="proposals"),
    path("v1/proposals/<str:proposal_id>", ProposalDetailView.as_view(), name="proposal-detail"),
    path("v1/proposals/<str:proposal_id>/approve", ProposalApproveView.as_view(), name="proposal-approve"),
    path("v1/proposals/<str:proposal_id>/reject", ProposalRejectView.as_view(), name="proposal-reject"),
    path("v1/proposals/<str:proposal_id>/signatures", ProposalSignatureView.as_view(), name="proposal-signatures"),
    path("v1/proposals/<str:proposal_id>/execute", ProposalExecuteView.as_view(), name="proposal-execute"),
    path("v1/wallets/challenge", WalletChallengeView.as_view(), name="wallet-challenge"),
    path("v1/wallets/me", WalletMeView.as_view(), name="wallet-me"),
    path("v1/wallets", WalletListView.as_view(), name="wallets"),
    path("v1/vaults", VaultListView.as_view(), name="vaults"),
    path("v1/vaults/<str:vault_id>", VaultDetailView.as_view(), name="vault-detail"),
    path("v1/vaults/<str:vault_id>/intents", VaultIntentsView.as_view(), name="vault-intents"),
]

if settings.DEMO_ORACLE:
    # The demo's oracle (make run sets DEMO_ORACLE); production never routes it.
    from orchestrator.devtools.demo.oracle import demo_oracle_feed

    urlpatterns.append(path("demo/oracle/feed", demo_oracle_feed, name="demo-oracle-feed"))

handler400 = "orchestrator.infra.errors.json_bad_request"
handler403 = "orchestrator.infra.errors.json_permission_denied"
handler404 = "orchestrator.infra.errors.json_not_found"
handler500 = "orchestrator.infra.errors.json_server_error"
