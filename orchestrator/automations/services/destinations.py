"""Where hooks may be sent: https only, and never to this machine's or a private network
(SSRF), unless the deployment allows it. Checked when a config is made and at every call."""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from django.conf import settings

from orchestrator.infra.errors import DomainError


class DestinationRefused(DomainError):
    """A baseURL hooks may not be sent to; in a request, an invalid destination.baseURL."""

    code = "invalid"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message, fields={"destination.baseURL": message})


def destination_check(url: str, *, resolve: bool = True) -> None:
    """Raises DestinationRefused with the reason."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise DestinationRefused("baseURL must be an absolute https URL")
    if parts.scheme == "http" and not settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS:
        raise DestinationRefused("baseURL must use https")
    if parts.username or parts.password:
        raise DestinationRefused("baseURL must not carry credentials")
    if settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS or not resolve:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror:
        raise DestinationRefused(f"{parts.hostname} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global or address.is_multicast:
            raise DestinationRefused(f"{parts.hostname} resolves to a non-public address ({address})")
