from django.apps import AppConfig
from django.db.models.signals import post_migrate


class ApprovalsConfig(AppConfig):
    name = "approvals"

    def ready(self) -> None:
        import approvals.policy_commits  # commits module vaults' policies (on_policy_commit)
        import approvals.safe_workflows  # noqa: F401  (registers the safe.execute workflow)
        from approvals.groups import on_post_migrate

        # The groups "Approvers" and "Operators" (approvals/groups.py).
        post_migrate.connect(on_post_migrate, sender=self, dispatch_uid="approvals.groups")
