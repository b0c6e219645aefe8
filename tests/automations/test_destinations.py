"""Hook destinations against DNS rebinding (issue 14): a call connects to the addresses its
check passed, never to a later answer for the name, and keeps the name for the Host header,
TLS's server name and the certificate check.

The tests own the name service: `FakeDNS` replaces socket.getaddrinfo, the resolver both this
code and urllib3 use, with answers that change from one lookup to the next. A public address
cannot be served from a test, so FakeDNS also routes it: a connection to PUBLIC reaches a
recording server on 127.0.0.2 that stands in for the executor's real machine. Loopback
(127.0.0.1, same port) is where a rebinding attacker would send the call."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from orchestrator.automations.models import Firing, FiringStatus, Subscription
from orchestrator.automations.services import hooks
from orchestrator.automations.services.delivery import firings_deliver
from orchestrator.automations.services.destinations import DestinationRefused, destination_pin
from orchestrator.automations.services.firings import intervals_dispatch
from orchestrator.automations.services.hooks import HookCall, hook_url, hooks_post
from tests.support.automations import automation_create
from tests.support.executor_server import ExecutorServer

PUBLIC = "93.184.215.14"  # any global address: FakeDNS routes it to STAND_IN
STAND_IN = "127.0.0.2"


class FakeDNS:
    """getaddrinfo with scripted answers: each lookup of a scripted name takes the next answer
    (the last one repeats); `routes` sends connections for an address elsewhere."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.answers: dict[str, list[str]] = {}
        self.routes: dict[str, str] = {}
        self.lookups: list[str] = []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        self.lookups.append(name)
        if name in self.answers:
            queue = self.answers[name]
            address = queue.pop(0) if len(queue) > 1 else queue[0]
            return [self._info(address, port)]
        if name in self.routes:
            return self.real(self.routes[name], port, *args, **kwargs)
        return self.real(host, port, *args, **kwargs)

    @staticmethod
    def _info(address: str, port: Any) -> tuple[Any, ...]:
        family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
        return (family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))

    def of(self, name: str) -> int:
        return self.lookups.count(name)


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDNS:
    fake = FakeDNS(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    fake.routes[PUBLIC] = STAND_IN
    return fake


@dataclass
class Recorder:
    """An HTTP(S) server on address:port that records each request's Host and path (and the
    TLS server name a client sent) and answers 503, so a firing sent to it is retried."""

    address: str
    port: int = 0
    tls: ssl.SSLContext | None = None
    hosts: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                recorder.hosts.append(f"{self.headers['Host']} {self.path}")
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer((self.address, self.port), Handler)
        self.httpd.daemon_threads = True
        if self.tls is not None:
            self.tls.sni_callback = lambda sock, name, ctx: self.server_names.append(name)
            self.httpd.socket = self.tls.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def loopback() -> Iterator[Recorder]:
    recorder = Recorder("127.0.0.1")
    yield recorder
    recorder.stop()


@pytest.fixture
def stand_in(loopback: Recorder) -> Iterator[Recorder]:
    """The public machine, on the loopback recorder's port (one URL, two addresses)."""
    recorder = Recorder(STAND_IN, loopback.port)
    yield recorder
    recorder.stop()


def _call(url: str) -> HookCall:
    return HookCall(
        url=hook_url(url, "trigger"),
        destination=destination_pin(url),
        body={"requestID": "r-1"},
        request_id="r-1",
        hmac_key="00" * 32,
        verifying_signature="0x",
    )


def test_a_name_that_rebinds_to_loopback_after_the_check_is_not_called(
    dns: FakeDNS, loopback: Recorder, stand_in: Recorder, settings: Any
) -> None:
    settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS = True
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = False
    url = f"http://rebind.test:{loopback.port}"
    dns.answers["rebind.test"] = [PUBLIC, "127.0.0.1"]
    (result,) = hooks_post([_call(url)])
    assert result.status == 503
    assert loopback.hosts == []
    assert stand_in.hosts == [f"rebind.test:{loopback.port} /kernel/trigger"]  # the name, kept as Host
    assert dns.of("rebind.test") == 1  # the check's lookup; the connection made none
    # Checked again at the next call, the name is refused before anything connects.
    with pytest.raises(DestinationRefused, match=r"non-public address \(127.0.0.1\)"):
        destination_pin(url)


def test_every_address_a_name_answers_must_be_public(dns: FakeDNS, settings: Any) -> None:
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = False
    dns.answers["mixed.test"] = [PUBLIC]
    assert destination_pin("https://mixed.test").addresses == (PUBLIC,)
    real = dns.real

    def two(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "mixed.test":
            return [FakeDNS._info(PUBLIC, port), FakeDNS._info("10.0.0.7", port)]
        return real(host, port, *args, **kwargs)

    dns.real = two
    del dns.answers["mixed.test"]
    with pytest.raises(DestinationRefused, match=r"non-public address \(10.0.0.7\)"):
        destination_pin("https://mixed.test")


@pytest.mark.django_db(transaction=True)
def test_delivery_sends_a_firing_to_the_address_it_checked(
    dns: FakeDNS,
    server: ExecutorServer,
    stand_in: Recorder,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """End to end through `firings_deliver`: the executor server on 127.0.0.1 is what the
    name rebinds to; the config was made while private destinations were allowed."""
    settings.AUTOMATION_ALLOW_INSECURE_DESTINATIONS = True
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True
    port = int(server.url.rsplit(":", 1)[1])
    stand_in.stop()
    public = Recorder(STAND_IN, port)
    monkeypatch.setattr(type(server), "url", property(lambda self: f"http://rebind.test:{port}"))
    automation = automation_create(server, source={"type": "INTERVAL", "value": 30})
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = False
    dns.answers["rebind.test"] = [PUBLIC, "127.0.0.1"]
    sub = automation.subscribe()
    Subscription.objects.filter(pk=sub["id"]).update(next_run_at=Subscription.objects.get(pk=sub["id"]).created_at)
    tokens: list[tuple[list[str], str]] = []
    intervals_dispatch(deliver=lambda ids, token, eta: tokens.append((ids, token)))
    firings_deliver(firing_ids=tokens[0][0], token=tokens[0][1])
    public.stop()
    assert server.executor.triggers() == []
    assert public.hosts == [f"rebind.test:{port} /kernel/trigger"]
    firing = Firing.objects.get(subscription_id=sub["id"])
    assert firing.status == FiringStatus.PENDING and "HTTP 503" in firing.reason


# --- TLS ---------------------------------------------------------------------------------------


def _certificates(tmp: Path, name: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A CA and a certificate for `name` it signed: (the server's context, a client's that
    trusts only that CA and checks host names)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(tmp / "leaf.pem", tmp / "leaf.key")
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def test_tls_keeps_the_name_for_sni_and_the_certificate(
    dns: FakeDNS, tmp_path: Path, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.AUTOMATION_ALLOW_PRIVATE_DESTINATIONS = True  # the test's server is on loopback
    server_tls, client_tls = _certificates(tmp_path, "executor.test")
    monkeypatch.setattr(hooks, "_tls", lambda: client_tls)
    recorder = Recorder("127.0.0.1", tls=server_tls)
    try:
        dns.answers["executor.test"] = ["127.0.0.1", "127.0.0.3"]
        (result,) = hooks_post([_call(f"https://executor.test:{recorder.port}")])
        assert result.status == 503, result.error
        assert recorder.server_names == ["executor.test"]
        assert recorder.hosts == [f"executor.test:{recorder.port} /kernel/trigger"]
        # Connected by address, checked by name: a certificate for another name is refused.
        dns.answers["impostor.test"] = ["127.0.0.1"]
        (refused,) = hooks_post([_call(f"https://impostor.test:{recorder.port}")])
        assert refused.status is None and "impostor.test" in refused.error
        assert len(recorder.hosts) == 1
    finally:
        recorder.stop()
