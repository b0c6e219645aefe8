"""The automation API's refusals: each a DomainError with its code and HTTP status, which the
API's exception handler turns into the error body (docs/api.md, "Conventions" and "Automation API")."""

from __future__ import annotations

from rest_framework import status

from orchestrator.infra.errors import DomainError


class AutomationError(DomainError):
    """A refused automation request."""


class InvalidSignature(AutomationError):
    code = "invalid_signature"
    http_status = status.HTTP_401_UNAUTHORIZED
    default_message = "The signature does not recover to the executor's address."


class SignatureReplayed(AutomationError):
    code = "signature_replayed"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This signature was used before."


class ConfigExists(AutomationError):
    code = "config_exists"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This registry already has an active config."


class ConfigDeleted(AutomationError):
    code = "config_deleted"
    http_status = status.HTTP_409_CONFLICT
    default_message = "This config is already deleted."


class NoActiveConfig(AutomationError):
    code = "no_active_config"
    http_status = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_message = "The registry has no active config."
