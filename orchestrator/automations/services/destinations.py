"""Where hooks may be sent: https only, and never to this machine's or a private network
(SSRF), unless the deployment allows it. Checked when a config is made and at every call.

A check at call time is worth only what the connection does with it: if the HTTP client
resolved the name again, a name that answers a public address to the check and 127.0.0.1 to the
connection (DNS rebinding) would pass. So the check returns the addresses it passed
(`destination_pin`) and the hook call connects to those and nothing else, keeping the name for
the Host header, TLS's server name and the certificate check (hooks.py)."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

from orchestrator.infra.errors import DomainError


class DestinationRefused(DomainError):
    """A baseURL hooks may not be sent to; in a request, an invalid destination.baseURL."""

    code = "invalid"
    http_status = 400

    def __init__(self, message: str) -> None:
        super().__init__(message, fields={"destination.baseURL": message})


@dataclass(frozen=True)
class Destination:
    """A checked destination: its scheme, host name and port, and the addresses the name
    resolved to when it was checked, in the resolver's order. A call connects only to these."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]


def destination_check(url: str) -> None:
    """At config time: raises DestinationRefused with the reason. Resolves the name only to
    refuse private addresses (nothing connects now)."""
    _, host, port = _parts(url)
    if not settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS:
        _public_only(host, _resolve(host, port))


def destination_pin(url: str) -> Destination:
    """Before a call: the same checks, and the addresses they passed, for the call to connect
    to (DestinationRefused otherwise). Resolves even where private destinations are allowed:
    the call never resolves the name itself."""
    scheme, host, port = _parts(url)
    addresses = _resolve(host, port)
    if not settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS:
        _public_only(host, addresses)
    return Destination(scheme=scheme, host=host, port=port, addresses=addresses)


def _parts(url: str) -> tuple[str, str, int]:
    """Raises ValueError for a port that is not a number (urlsplit's)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise DestinationRefused("baseURL must be an absolute https URL")
    if parts.scheme == "http" and not settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS:
        raise DestinationRefused("baseURL must use https")
    if parts.username or parts.password:
        raise DestinationRefused("baseURL must not carry credentials")
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _resolve(host: str, port: int) -> tuple[str, ...]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise DestinationRefused(f"{host} does not resolve") from None
    addresses = tuple(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise DestinationRefused(f"{host} does not resolve")
    return addresses


def _public_only(host: str, addresses: tuple[str, ...]) -> None:
    """Every address must be public, not just the first: the client may try any of them."""
    for raw in addresses:
        address = ipaddress.ip_address(raw.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0)
        if not address.is_global or address.is_multicast:
            raise DestinationRefused(f"{host} resolves to a non-public address ({address})")
