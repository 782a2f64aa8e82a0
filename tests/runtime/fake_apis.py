"""Third-party APIs on loopback for SDK tests: a TLS-intercepting proxy and a recording API.

Functions call the real hosts (`https://api.stripe.com/v1/customers`): the runtime's egress
settings send every request to the proxy (`EgressConfig.https_proxy`), which answers CONNECT
with a certificate for the requested name signed by a test CA (`EgressConfig.ca_bundle`) and
hands the decrypted stream to `FakeApis`, a plain HTTP server that records each request (host,
method, path, headers, body) and answers with the response a test registered for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

Responder = Callable[["Received"], web.Response]


@dataclass
class Received:
    """One request the fake APIs got."""

    host: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON."""
        return orjson.loads(self.body)

    def text(self) -> str:
        """Return the body as text."""
        return self.body.decode("utf-8", errors="replace")


@dataclass
class FakeApis:
    """A recording HTTP server standing in for every third-party API host."""

    port: int = 0
    received: list[Received] = field(default_factory=list)
    routes: dict[tuple[str, str, str], Responder] = field(default_factory=dict)
    arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def on(self, host: str, method: str, path: str, respond: Responder) -> None:
        """Answer `method host path` (path without query) with `respond(request)`."""
        self.routes[(host, method, path)] = respond

    def reply(self, host: str, method: str, path: str, body: Any, status: int = 200) -> None:
        """Answer `method host path` with a JSON body."""
        self.on(host, method, path, lambda _r: web.json_response(body, status=status))

    def to(self, host: str) -> list[Received]:
        """Return the requests received for `host`."""
        return [r for r in self.received if r.host == host]

    async def _handle(self, request: web.Request) -> web.Response:
        host = (request.headers.get("Host") or "").split(":")[0].lower()
        got = Received(
            host=host,
            method=request.method,
            path=request.path_qs,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.read(),
        )
        async with self.arrived:
            self.received.append(got)
            self.arrived.notify_all()
        respond = self.routes.get((host, request.method, request.path))
        if respond is None:
            return web.json_response(
                {"error": f"no fake for {request.method} {host}{request.path}"}, status=404
            )
        return respond(got)


@dataclass
class TestCa:
    """A certificate authority for the proxy's per-host certificates."""

    __test__ = False
    directory: Path
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    contexts: dict[str, ssl.SSLContext] = field(default_factory=dict)

    @property
    def bundle(self) -> str:
        """Return the path of the CA certificate (PEM), for EgressConfig.ca_bundle."""
        return str(self.directory / "ca.pem")

    @classmethod
    def create(cls, directory: Path) -> TestCa:
        """Make a CA and write its certificate."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "eventfn test CA")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, key, cert)

    def server_context(self, host: str) -> ssl.SSLContext:
        """Return a server TLS context with a certificate for `host`, made on first use."""
        ctx = self.contexts.get(host)
        if ctx is not None:
            return ctx
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(self.key, hashes.SHA256())
        )
        stem = self.directory / host
        Path(f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        Path(f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(f"{stem}.pem", f"{stem}.key")
        self.contexts[host] = ctx
        return ctx


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy what `reader` reads to `writer` until it ends, then close the writer."""
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        with contextlib.suppress(ConnectionError, ssl.SSLError, RuntimeError):
            writer.close()


@dataclass
class InterceptingProxy:
    """An HTTP proxy on loopback that sends every request, TLS or not, to the fake APIs."""

    ca: TestCa
    upstream_port: int
    port: int = 0
    tunnels: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Return the proxy URL for EgressConfig.https_proxy / http_proxy."""
        return f"http://127.0.0.1:{self.port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        if method == "CONNECT":
            host = target.rsplit(":", 1)[0]
            self.tunnels.append(target)
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await writer.drain()
            await writer.start_tls(self.ca.server_context(host))
        else:
            up_writer.write(head)  # absolute-form request line: the API server reads the host
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


@contextlib.asynccontextmanager
async def fake_apis() -> AsyncIterator[tuple[FakeApis, InterceptingProxy]]:
    """Run the fake APIs and the intercepting proxy on 127.0.0.1."""
    apis = FakeApis()
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", apis._handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    apis.port = runner.addresses[0][1]
    with tempfile.TemporaryDirectory(prefix="eventfn-test-ca-") as tmp:
        proxy = InterceptingProxy(TestCa.create(Path(tmp)), apis.port)
        server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
        proxy.port = server.sockets[0].getsockname()[1]
        try:
            yield apis, proxy
        finally:
            server.close()
            await runner.cleanup()
