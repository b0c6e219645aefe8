from __future__ import annotations

from datetime import timedelta
from typing import Any

from django import forms
from django.utils import timezone

from orchestrator.operations.audit import FORMATS, BadAuditRange, audit_range


class DiscardForm(forms.Form):
    reason = forms.CharField(
        max_length=1000,
        strip=True,
        widget=forms.Textarea(attrs={"rows": 2, "cols": 40, "placeholder": "Why this run is given up"}),
    )


class AuditExportForm(forms.Form):
    since = forms.CharField(help_text="A date (2026-01-31, that whole day) or an ISO date and time (UTC if naive).")
    until = forms.CharField(required=False, help_text="Inclusive for a date, exclusive for a time; empty: now.")
    format = forms.ChoiceField(choices=[(f, f.upper()) for f in FORMATS], initial="csv")

    @classmethod
    def initial_values(cls) -> dict[str, str]:
        today = timezone.now().date()
        return {"since": (today - timedelta(days=7)).isoformat(), "until": today.isoformat(), "format": "csv"}

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if "since" in data:
            try:
                data["range"] = audit_range(data["since"], data.get("until") or None)
            except BadAuditRange as exc:
                raise forms.ValidationError(str(exc)) from exc
        return data
