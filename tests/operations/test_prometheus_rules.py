"""deploy/prometheus/alerts.yml: promtool accepts it and its unit tests pass, and every metric
its rules read is one /metrics serves (a renamed metric would leave an alert silent forever)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

RULES = Path(settings.BASE_DIR) / "deploy" / "prometheus"
# Our metric names: the prefixes every collector of the project uses.
OURS = re.compile(r"\b((?:orchestrator|relayer|approvals|automation|celery)_[a-z_]+)\b")


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make promtool` installs it (Debian's prometheus package)"
    return found


@pytest.mark.parametrize("command", [["check", "rules", "alerts.yml"], ["test", "rules", "alerts_test.yml"]])
def test_promtool_accepts_the_rules_and_their_unit_tests_pass(command: list[str]) -> None:
    result = subprocess.run([promtool(), *command], cwd=RULES, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def served_names() -> set[str]:
    """Every sample name /metrics can serve, from its families (also those with no sample now)."""
    names: set[str] = set()
    for family in text_string_to_metric_families(Client().get("/metrics").content.decode()):
        suffixes = {"histogram": ("_bucket", "_count", "_sum"), "counter": ("_total",)}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


@pytest.mark.django_db
def test_every_metric_the_rules_read_is_served() -> None:
    rules = [rule for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for rule in group["rules"]]
    read = {name for rule in rules for name in OURS.findall(rule["expr"])}
    assert {"relayer_signer_balance_wei", "approvals_proposal_expires_in_seconds"} <= read  # the pattern finds them
    assert read - served_names() == set()


def test_every_rule_has_a_severity_what_to_do_and_a_link() -> None:
    rules = [rule for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for rule in group["rules"]]
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning"), rule["alert"]
        assert {"summary", "description", "admin_url"} <= set(rule["annotations"]), rule["alert"]
        assert rule["annotations"]["admin_url"].startswith("{{ $externalLabels.orchestrator_url }}/"), rule["alert"]


def test_every_rule_has_a_unit_test_where_it_fires() -> None:
    rules = {
        rule["alert"]
        for group in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"]
        for rule in group["rules"]
    }
    cases = [
        case
        for test in yaml.safe_load((RULES / "alerts_test.yml").read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    assert rules - {case["alertname"] for case in cases if case.get("exp_alerts")} == set()
