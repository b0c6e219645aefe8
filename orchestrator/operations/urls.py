"""Mounted at /admin/operations/ (before the admin's own URLs): every view goes through
admin_view, so only active staff get in, others are sent to the admin login."""

from django.contrib import admin
from django.urls import path

from orchestrator.operations import views

urlpatterns = [
    path("", admin.site.admin_view(views.dashboard), name="ops-dashboard"),
    path("runs/<uuid:run_id>/replay", admin.site.admin_view(views.run_replay), name="ops-run-replay"),
    path("runs/<uuid:run_id>/discard", admin.site.admin_view(views.run_discard), name="ops-run-discard"),
    path("audit/", admin.site.admin_view(views.audit), name="ops-audit"),
]
