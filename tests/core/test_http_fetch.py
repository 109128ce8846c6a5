"""core.http_fetch: SSRF-safe fetching of client-given URLs, driven against loopback
servers with a patched resolver (issue #13 item 5)."""

from __future__ import annotations

import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from core.errors import InvalidRequest
from core.http_fetch import (
    FetchRefused,
    FetchTooLarge,
    address_connect_target,
    http_fetch,
)
from images.fetch import image_bytes_from_reference

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 10
PUBLIC = "93.184.215.14"  # a globally routable address; nothing in these tests ever connects to it
REAL_GETADDRINFO = socket.getaddrinfo
REAL_CREATE_CONNECTION = socket.create_connection


# --- a loopback server whose every answer the test writes by hand -------------------------------


class Server:
    """Accepts on 127.0.0.1, records each request head, and answers with `respond(conn, head)`."""

    def __init__(self, respond: Callable[[socket.socket, str], None], tls: ssl.SSLContext | None = None) -> None:
        self.respond, self.tls = respond, tls
        self.requests: list[str] = []
        self.server_names: list[str | None] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        if tls is not None:
            tls.sni_callback = lambda sslsock, name, ctx: self.server_names.append(name)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(5)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            self.requests.append(head.decode("latin-1"))
            self.respond(conn, head.decode("latin-1"))
        except OSError:  # the client went away (as it should from a slow server)
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def serve():
    servers: list[Server] = []

    def start(respond, tls=None) -> Server:
        servers.append(Server(respond, tls))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def answer(body: bytes = PNG, status: str = "200 OK", headers: dict[str, str] | None = None, length: bool = True):
    def respond(conn: socket.socket, head: str) -> None:
        lines = [f"HTTP/1.1 {status}", "Content-Type: image/png", "Connection: close"]
        if length:
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        conn.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    return respond


def drip(where: str, every: float = 0.3, count: int = 20):
    """A byte every `every` seconds, in the headers or in the body: each read is quick,
    the whole answer is not."""

    def respond(conn: socket.socket, head: str) -> None:
        if where == "headers":
            conn.sendall(b"HTTP/1.1 200 OK\r\n")
            for _ in range(count):
                conn.sendall(b"X")
                time.sleep(every)
            conn.sendall(b": y\r\nContent-Length: 0\r\n\r\n")
        else:
            conn.sendall(f"HTTP/1.1 200 OK\r\nContent-Length: {count}\r\n\r\n".encode())
            for _ in range(count):
                conn.sendall(b"x")
                time.sleep(every)

    return respond


@pytest.fixture
def dns(monkeypatch):
    """`dns({"name": [first answer, second answer, ...]})`: each lookup of a name takes
    the next answer (the last repeats); other names resolve for real. Returns the
    names looked up, in order."""
    lookups: list[str] = []

    def install(table: dict[str, list[list[str]]]) -> list[str]:
        def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
            if host not in table:
                return REAL_GETADDRINFO(host, port, family, type, proto, flags)
            lookups.append(host)
            answers = table[host]
            addresses = answers[min(lookups.count(host), len(answers)) - 1]
            return [
                (socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0))
                if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in addresses
            ]

        monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
        return lookups

    return install


@pytest.fixture
def connects(monkeypatch):
    """Records every socket.create_connection; connecting to PUBLIC is refused (so no
    test touches the internet)."""
    attempts: list[str] = []

    def create_connection(address, *args, **kwargs):
        attempts.append(address[0])
        if address[0] == PUBLIC:
            raise ConnectionRefusedError("test: no internet")
        return REAL_CREATE_CONNECTION(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", create_connection)
    return attempts


@pytest.fixture
def private_allowed(settings):
    settings.IMAGE_FETCH_ALLOW_PRIVATE = True
    settings.IMAGE_FETCH_TIMEOUT_SECONDS = 3


# --- resolve once, connect to what was checked ------------------------------------------------


def test_rebinding_answer_never_reaches_loopback(serve, dns, connects, settings):
    settings.IMAGE_FETCH_ALLOW_PRIVATE = False
    server = serve(answer())
    lookups = dns({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})
    with pytest.raises(InvalidRequest) as caught:
        image_bytes_from_reference(f"http://rebind.test:{server.port}/x.png", param="image", max_bytes=1 << 20)
    assert caught.value.code == "invalid_image_url" and caught.value.param == "image"
    assert server.requests == [], "the second (rebinding) answer was connected to"
    assert lookups == ["rebind.test"] and connects == [PUBLIC]


def test_connects_to_the_checked_address_with_the_original_host(serve, dns, connects, private_allowed):
    server = serve(answer())
    lookups = dns({"img.test": [["127.0.0.1"], ["10.9.9.9"]]})
    result = http_fetch(f"http://img.test:{server.port}/a/b.png?v=1", max_bytes=1 << 20)
    assert (result.content, result.content_type, result.address) == (PNG, "image/png", "127.0.0.1")
    assert lookups == ["img.test"] and connects == ["127.0.0.1"]
    head = server.requests[0]
    assert head.startswith("GET /a/b.png?v=1 HTTP/1.1\r\n") and f"\r\nHost: img.test:{server.port}\r\n" in head


def test_one_private_answer_among_public_ones_refuses(dns, connects, settings):
    settings.IMAGE_FETCH_ALLOW_PRIVATE = False
    dns({"mixed.test": [[PUBLIC, "127.0.0.1"]]})
    with pytest.raises(FetchRefused, match="non-public address"):
        http_fetch("http://mixed.test/x.png", max_bytes=100)
    assert connects == []


# --- every notation of a non-global address -----------------------------------------------------

REFUSED = [
    "127.0.0.1",
    "127.8.9.10",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "240.0.0.1",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "ff02::1",
    "ff0e::1",
    "2001:db8::1",
    "100::1",
    "3fff::1",
    "5f00::1",
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::7f00:1",
    "::127.0.0.1",
    "::8.8.8.8",  # IPv4-compatible (deprecated: never, even around a public one)
    "64:ff9b::7f00:1",
    "64:ff9b::a9fe:a9fe",
    "64:ff9b::a00:1",  # NAT64 well-known prefix
    "64:ff9b:1::808:808",
    "64:ff9b:1::7f00:1",  # local-use NAT64
    "2002:7f00:1::1",
    "2002:a9fe:a9fe::1",
    "2002:c0a8:101::1",  # 6to4 of 127.0.0.1, 169.254.169.254, 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe",  # Teredo whose client is 127.0.0.1
]
ALLOWED = [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_global_address_is_refused_in_every_notation(address, dns, connects, settings):
    settings.IMAGE_FETCH_ALLOW_PRIVATE = False
    assert address_connect_target(ipaddress.ip_address(address)) is None
    dns({"evil.test": [[address]]})
    with pytest.raises(FetchRefused, match="non-public address"):
        http_fetch("http://evil.test/x.png", max_bytes=100)
    assert connects == []


@pytest.mark.parametrize("address", ALLOWED)
def test_global_addresses_pass(address):
    target = address_connect_target(ipaddress.ip_address(address))
    assert target is not None
    if address == "::ffff:8.8.8.8":
        assert target == ipaddress.IPv4Address("8.8.8.8")  # mapped: connected to as IPv4


def test_allow_private_still_refuses_compatible_multicast_and_unspecified():
    for address in ("::7f00:1", "0.0.0.0", "::", "224.0.0.1", "ff02::1", "255.255.255.255"):
        assert address_connect_target(ipaddress.ip_address(address), allow_private=True) is None, address
    assert address_connect_target(
        ipaddress.ip_address("::ffff:127.0.0.1"), allow_private=True
    ) == ipaddress.IPv4Address("127.0.0.1")


@pytest.mark.parametrize(
    "host",
    ["localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]"],
)
def test_loopback_spellings_in_the_url_are_refused(host, serve, settings):
    settings.IMAGE_FETCH_ALLOW_PRIVATE = False
    server = serve(answer())
    with pytest.raises(FetchRefused):
        http_fetch(f"http://{host}:{server.port}/x.png", max_bytes=1 << 20)
    assert server.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/x.png",
        "file:///etc/passwd",
        "http:///x.png",
        "http://example.com:99999/x.png",
        "http://a..b/x.png",
    ],
)
def test_malformed_or_non_http_urls_are_refused(url, connects):
    with pytest.raises(FetchRefused):
        http_fetch(url, max_bytes=100)
    assert connects == []


# --- one deadline ---------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_slow_server_is_cut_off_at_the_deadline(where, serve, dns, private_allowed, settings):
    settings.IMAGE_FETCH_TIMEOUT_SECONDS = 1
    server = serve(drip(where))
    dns({"slow.test": [["127.0.0.1"]]})
    start = time.monotonic()
    with pytest.raises(FetchRefused, match="took longer than 1 s"):
        http_fetch(f"http://slow.test:{server.port}/x.png", max_bytes=1 << 20)
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 1.5, f"{elapsed:.2f} s"


# --- no proxy, no redirect, bounded answers ------------------------------------------------------


def test_environment_proxies_are_ignored(serve, dns, private_allowed, monkeypatch):
    proxy = serve(answer(b"via the proxy"))
    dead = socket.create_server(("127.0.0.1", 0))
    dead_port = dead.getsockname()[1]
    dead.close()  # nothing listens there: a fetch through it would fail
    for name, port in (
        ("HTTP_PROXY", proxy.port),
        ("http_proxy", proxy.port),
        ("HTTPS_PROXY", dead_port),
        ("https_proxy", dead_port),
        ("ALL_PROXY", dead_port),
        ("all_proxy", dead_port),
    ):
        monkeypatch.setenv(name, f"http://127.0.0.1:{port}")
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = serve(answer())
    dns({"img.test": [["127.0.0.1"]]})
    assert http_fetch(f"http://img.test:{server.port}/x.png", max_bytes=1 << 20).content == PNG
    assert proxy.requests == [] and len(server.requests) == 1


def test_redirects_are_not_followed(serve, dns, private_allowed):
    target = serve(answer())
    server = serve(answer(b"", status="302 Found", headers={"Location": f"http://img.test:{target.port}/inside.png"}))
    dns({"img.test": [["127.0.0.1"]]})
    with pytest.raises(FetchRefused, match="HTTP 302"):
        http_fetch(f"http://img.test:{server.port}/x.png", max_bytes=1 << 20)
    assert target.requests == []


@pytest.mark.parametrize("status", ["404 Not Found", "500 Internal Server Error", "204 No Content"])
def test_non_200_is_refused(status, serve, dns, private_allowed):
    server = serve(answer(b"", status=status))
    dns({"img.test": [["127.0.0.1"]]})
    with pytest.raises(FetchRefused, match=f"HTTP {status[:3]}") as caught:
        http_fetch(f"http://img.test:{server.port}/x.png", max_bytes=1 << 20, param="image")
    assert (caught.value.status_code, caught.value.param) == (400, "image")


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "until-close"])
def test_oversized_body_is_refused(length, serve, dns, private_allowed):
    server = serve(answer(b"x" * 1001, length=length))
    exact = serve(answer(b"x" * 1000, length=length))
    dns({"img.test": [["127.0.0.1"]]})
    with pytest.raises(FetchTooLarge):
        http_fetch(f"http://img.test:{server.port}/x.png", max_bytes=1000)
    assert http_fetch(f"http://img.test:{exact.port}/x.png", max_bytes=1000).content == b"x" * 1000


def test_oversized_image_through_the_seed_adapter_is_file_too_large(serve, dns, private_allowed):
    server = serve(answer(b"x" * ((1 << 20) + 1)))
    dns({"img.test": [["127.0.0.1"]]})
    with pytest.raises(InvalidRequest) as caught:
        image_bytes_from_reference(f"http://img.test:{server.port}/x.png", param="image", max_bytes=1 << 20)
    assert (caught.value.code, caught.value.param) == ("file_too_large", "image")


# --- https: pinned address, certificate still checked against the name ---------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """A throwaway CA and a certificate for img.test signed by it."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command")
    d = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=test ca",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    )
    run("req", *ec, "-keyout", "leaf.key", "-out", "leaf.csr", "-subj", "/CN=img.test")
    (d / "ext").write_text("subjectAltName=DNS:img.test\n")
    run(
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "leaf.pem",
        "-days",
        "2",
        "-extfile",
        "ext",
    )
    return d


@pytest.fixture
def tls_server(serve, certificates, monkeypatch):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificates / "leaf.pem", certificates / "leaf.key")
    trusting = ssl.create_default_context(cafile=str(certificates / "ca.pem"))
    import core.http_fetch

    monkeypatch.setattr(core.http_fetch.ssl, "create_default_context", lambda: trusting)
    return serve(answer(), tls=context)


def test_https_connects_to_the_pinned_address_with_sni_and_verifies_the_name(
    tls_server, dns, connects, private_allowed
):
    dns({"img.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    result = http_fetch(f"https://img.test:{tls_server.port}/x.png", max_bytes=1 << 20)
    assert result.content == PNG and connects == ["127.0.0.1"]
    assert tls_server.server_names == ["img.test"]
    assert f"\r\nHost: img.test:{tls_server.port}\r\n" in tls_server.requests[0]
    with pytest.raises(FetchRefused, match="certificate"):
        http_fetch(f"https://other.test:{tls_server.port}/x.png", max_bytes=1 << 20)
    assert len(tls_server.requests) == 1
