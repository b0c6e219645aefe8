"""Engine endpoints: the status of a workflow run."""

from __future__ import annotations

import uuid

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from orchestrator.engine.models import StepRun, WorkflowRun
from orchestrator.engine.selectors import run_for_user
from orchestrator.infra.errors import NotFound
from orchestrator.infra.schema import api_responses, uuid_path


class StepSerializer(serializers.Serializer[StepRun]):
    index = serializers.IntegerField()
    name = serializers.CharField()
    kind = serializers.CharField()
    attempt = serializers.IntegerField()
    status = serializers.CharField()
    output = serializers.JSONField()
    error = serializers.CharField()
    startedAt = serializers.DateTimeField(source="started_at", allow_null=True)
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)


class WorkflowSerializer(serializers.Serializer[WorkflowRun]):
    id = serializers.UUIDField()
    kind = serializers.CharField()
    phase = serializers.CharField()
    transactionId = serializers.CharField(source="transaction_id", allow_null=True)
    error = serializers.CharField(allow_null=True)
    currentStep = serializers.CharField(source="step_name")
    attempts = serializers.IntegerField()
    correlationId = serializers.CharField(source="correlation_id")
    createdAt = serializers.DateTimeField(source="created_at")
    updatedAt = serializers.DateTimeField(source="updated_at")
    finishedAt = serializers.DateTimeField(source="finished_at", allow_null=True)
    steps = StepSerializer(many=True)

    def to_representation(self, instance: WorkflowRun) -> dict[str, object]:
        data = super().to_representation(instance)
        # The API says "none" with null (docs/api.md), where the model keeps "".
        data["transactionId"] = data["transactionId"] or None
        data["error"] = data["error"] or None
        return data


class WorkflowDetailView(APIView):
    @extend_schema(
        parameters=[uuid_path("run_id")],
        responses=api_responses({200: WorkflowSerializer}, errors=[404]),
        summary="Status of a workflow run",
    )
    def get(self, request: Request, run_id: str) -> Response:
        try:
            parsed = uuid.UUID(run_id)
        except ValueError:
            raise NotFound("No workflow run with that id.") from None
        run = run_for_user(run_id=parsed, user=request.user)
        if run is None:
            raise NotFound("No workflow run with that id.")
        return Response(WorkflowSerializer(run).data)
