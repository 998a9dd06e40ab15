"""A forward proxy for tests, as a corporate one is reached. For an https:// URL the client asks it to
`CONNECT host:port`, then the proxy relays a blind tunnel of bytes both ways (TLS goes through it end
to end; the proxy sees no plaintext). For an http:// URL the client sends it the request itself, with
the whole URL as its target (`GET http://host:port/v1/models HTTP/1.1`), and the proxy relays that
connection to the host as it is (HTTP/1.1 servers take such a target). It keeps the `host:port` of
every connection it relayed, so a test can tell that a client really went through it.

    with connect_proxy() as proxy:
        env = {"HTTPS_PROXY": proxy.url}
        ...
        assert proxy.tunnels == ["127.0.0.1:8443"]

Also here: `self_signed_certificate`, a certificate for 127.0.0.1 that is its own CA, to serve the
simulator over TLS and to hand to the client as its private CA bundle.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from batchrun.simulator.server_thread import ServerThread

__all__ = ["ConnectProxy", "connect_proxy", "self_signed_certificate"]


@contextmanager
def connect_proxy() -> Iterator[ConnectProxy]:
    """A proxy listening for the length of the block."""
    proxy = ConnectProxy()
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


class ConnectProxy(ServerThread):
    """The proxy on a background thread with its own event loop, on a free loopback port."""

    thread_name = "connect-proxy"

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._tunnels: list[str] = []
        self._forwarded: list[str] = []
        self.refused = 0  # requests it could not relay (no absolute http:// URL to go by)
        self._port: int | None = None

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("the proxy is not listening")
        return f"http://127.0.0.1:{self._port}"

    @property
    def tunnels(self) -> list[str]:
        """The `host:port` of every CONNECT tunnel opened so far, in order."""
        with self._lock:
            return list(self._tunnels)

    @property
    def forwarded(self) -> list[str]:
        """The `host:port` of every plain-HTTP connection relayed so far, in order."""
        with self._lock:
            return list(self._forwarded)

    async def _serve(self, ready: Callable[[], None], stop: asyncio.Event) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self._port = server.sockets[0].getsockname()[1]
        async with server:
            ready()
            await stop.wait()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            if method == "CONNECT":
                where, relayed = target, self._tunnels
            else:
                parts = urlsplit(target)
                if parts.scheme != "http" or not parts.hostname:
                    with self._lock:
                        self.refused += 1
                    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    await writer.drain()
                    return
                where, relayed = f"{parts.hostname}:{parts.port or 80}", self._forwarded
            host, _, port = where.rpartition(":")
            upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            with self._lock:
                relayed.append(where)
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                await writer.drain()
            else:
                upstream_writer.write(head)  # the request as it came, absolute URL and all
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client or upstream that went away: the tunnel ends
        finally:
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """(certificate, key) PEM files of a certificate for IP 127.0.0.1 that is its own CA, valid a day:
    made with the `cryptography` package if it is installed, else with the `openssl` command."""
    cert, key = folder / "ca.pem", folder / "ca-key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        openssl = shutil.which("openssl")
        assert openssl, "a TLS test needs the cryptography package or the openssl command"
        subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                        "-subj", "/CN=batchrun test CA", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-addext", "basicConstraints=critical,CA:TRUE"],
                       check=True, capture_output=True)
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchrun test CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key
