"""The API's schema class (REST_FRAMEWORK["DEFAULT_SCHEMA_CLASS"]). Apart from schema.py, which
the request validation imports: drf-spectacular's openapi module reads the DRF settings as it
loads, and so imports the parsers that import schema.py."""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema


class AutoSchema(SpectacularAutoSchema):
    """drf-spectacular documents a request body for POST, PUT and PATCH only. DELETE
    /v1/config/{id} takes one (its signature): a DELETE whose view declares `request=` gets it."""

    def _get_request_body(self, direction: str = "request") -> Any:
        if self.method != "DELETE" or self.get_request_serializer() is None:
            return super()._get_request_body(direction)
        self.method = "POST"  # the method is read only by that guard and by the PATCH rules
        try:
            return super()._get_request_body(direction)
        finally:
            self.method = "DELETE"
