"""Fetching a URL that a client gave us, without letting it reach inside our network.

Server-side request forgery is refused by construction, not by a check that a later
step can undo:

- the host is resolved **once**, and every address of the answer must be globally
  routable (see `address_connect_target`); one non-global answer refuses the fetch;
- the connection goes to exactly an address that was checked (no second lookup, so a
  DNS-rebinding answer cannot swap in 127.0.0.1), with the Host header and the TLS SNI
  of the original name, and the certificate verified against that name;
- no proxy (the environment's HTTP(S)_PROXY are never read), no redirect followed;
- one deadline covers resolution, connect, TLS, headers and body together (a server
  sending a byte a second cannot stretch it), and the body is capped in bytes.

Plain `http.client` over a socket we connect ourselves: it reads no environment,
follows no redirects and lets us hand it the pinned socket.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from django.conf import settings

from core.errors import InvalidRequest

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Address ranges Python's `is_global` still calls global although they are not
# (IANA special-purpose registries; RFC numbers beside each).
_NOT_GLOBAL_V6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # IPv4-compatible (deprecated, RFC 4291), with :: and ::1
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
        "fec0::/10",  # site-local (deprecated, RFC 3879)
        "3fff::/20",  # documentation (RFC 9637)
        "5f00::/16",  # SRv6 SIDs (RFC 9602)
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052): the IPv4 is the last 32 bits

# A hung resolver must not hold the request past its deadline: lookups run on a small
# pool and are abandoned (left to finish in the background) when the deadline passes.
# One pool per process: a forked child does not inherit the parent's threads.
_resolvers: dict[int, ThreadPoolExecutor] = {}


class FetchRefused(InvalidRequest):
    """The URL may not be fetched, or did not answer with a usable body: a retry will
    not help, so 400."""

    code = "invalid_url"


class FetchTargetRefused(FetchRefused):
    """The URL's host is (or resolves to) an address that may not be reached."""


class FetchTooLarge(FetchRefused):
    code = "file_too_large"


@dataclass(frozen=True)
class FetchResult:
    content: bytes
    content_type: str
    address: str  # the address actually connected to


def _v4_is_global(address: ipaddress.IPv4Address) -> bool:
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_link_local
        or address.is_loopback
        or address == ipaddress.IPv4Address("255.255.255.255")
    )


def _v6_is_global(address: ipaddress.IPv6Address) -> bool:
    return address.is_global and not (
        address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or address.is_link_local
        or address.is_site_local
        or address.is_loopback
        or any(address in net for net in _NOT_GLOBAL_V6)
    )


def address_connect_target(address: IPAddress, *, allow_private: bool = False) -> IPAddress | None:
    """The address to connect to for a resolved `address`, or None when it may not be used.

    IPv6 forms that carry an IPv4 address are judged by that address too: IPv4-mapped
    (::ffff:a.b.c.d, connected to as plain IPv4), IPv4-compatible (::a.b.c.d, never),
    NAT64 (64:ff9b::/96; 64:ff9b:1::/48 is local-use, never), 6to4 (2002::/16) and
    Teredo. Without `allow_private` everything must be globally routable; with it, any
    unicast address except an IPv4-compatible one passes."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        if address.is_multicast or address.is_unspecified or address == ipaddress.IPv4Address("255.255.255.255"):
            return None
        return address if allow_private or _v4_is_global(address) else None
    if address.is_multicast or address in _NOT_GLOBAL_V6[0]:  # multicast, ::, ::1, ::a.b.c.d
        return None
    if allow_private:
        return address
    if address in _NAT64:
        # The prefix itself is "reserved" (::/8); what it reaches is the embedded IPv4.
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)
        return address if _v4_is_global(embedded) else None
    embedded_v4 = [address.sixtofour] if address.sixtofour is not None else []
    if address.teredo is not None:
        embedded_v4 += list(address.teredo)
    if not all(_v4_is_global(v4) for v4 in embedded_v4):
        return None
    return address if _v6_is_global(address) else None


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    return left


def _resolve(host: str, port: int, deadline: float) -> list[str]:
    pool = _resolvers.get(os.getpid())
    if pool is None:
        pool = _resolvers.setdefault(os.getpid(), ThreadPoolExecutor(max_workers=4, thread_name_prefix="fetch-dns"))
    future = pool.submit(socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM)
    infos = future.result(timeout=_remaining(deadline))
    return list(dict.fromkeys(info[4][0] for info in infos if info[0] in (socket.AF_INET, socket.AF_INET6)))


class _Watchdog:
    """Shuts the socket down at the deadline, which wakes any read blocked on it (in
    the TLS handshake, the status line, the headers or the body)."""

    def __init__(self, seconds: float) -> None:
        self.sock: socket.socket | None = None
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        if self.sock is not None:
            try:
                # socket.socket's own shutdown: an SSLSocket's would drop its SSL state under the reader.
                socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        self._timer.cancel()


def http_fetch(
    url: str,
    *,
    max_bytes: int,
    timeout: float | None = None,
    allow_private: bool | None = None,
    accept: str = "*/*",
    param: str | None = None,
) -> FetchResult:
    """GET an http(s) URL: 200 and at most `max_bytes`, within `timeout` seconds in all
    (default IMAGE_FETCH_TIMEOUT_SECONDS), from a globally routable address unless
    `allow_private` (default IMAGE_FETCH_ALLOW_PRIVATE). Any failure is a FetchRefused
    (400) naming `param`."""
    timeout = settings.IMAGE_FETCH_TIMEOUT_SECONDS if timeout is None else timeout
    allow_private = settings.IMAGE_FETCH_ALLOW_PRIVATE if allow_private is None else allow_private
    deadline = time.monotonic() + timeout
    where = f" in '{param}'" if param else ""

    def refuse(message: str, error: type[FetchRefused] = FetchRefused) -> FetchRefused:
        return error(message, param=param)

    parts, host, port, targets = _checked_targets(url, allow_private=allow_private, deadline=deadline, param=param)
    watchdog = _Watchdog(max(0.0, deadline - time.monotonic()))
    sock = None
    try:
        sock, target = _open(parts, host, port, targets, deadline, watchdog)
        content, content_type = _get(
            sock,
            host=host,
            port=port,
            scheme=parts.scheme,
            parts=parts,
            accept=accept,
            max_bytes=max_bytes,
            refuse=refuse,
            where=where,
        )
        if watchdog.fired or time.monotonic() > deadline:
            raise TimeoutError("deadline passed")  # a body cut short by the watchdog is not a body
    except FetchRefused:
        raise
    except ssl.SSLCertVerificationError:
        raise refuse(f"The TLS certificate of the URL{where} is not valid for its host.") from None
    except (OSError, http.client.HTTPException, ValueError):
        if watchdog.fired or time.monotonic() >= deadline:
            raise refuse(f"Fetching the URL{where} took longer than {timeout:g} s.") from None
        raise refuse(f"Could not fetch the URL{where} (unreachable or the connection failed).") from None
    finally:
        watchdog.cancel()
        if sock is not None:
            sock.close()
    return FetchResult(content=content, content_type=content_type, address=str(target))


def _checked_targets(
    url: str, *, allow_private: bool, deadline: float, param: str | None
) -> tuple[SplitResult, str, int, list[IPAddress]]:
    """The URL's parts, IDNA host, port and the addresses to connect to: one DNS
    resolution within `deadline`, every answer checked (`address_connect_target`).
    Raises FetchRefused (a URL that is not http(s), has no host or does not resolve) or
    FetchTargetRefused (an answer that is not globally routable, unless `allow_private`),
    both naming `param`."""
    where = f" in '{param}'" if param else ""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise FetchRefused(f"The URL{where} must be http or https.", param=param)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError):
        raise FetchRefused(f"The URL{where} is not valid.", param=param) from None
    if not host:
        raise FetchRefused(f"The URL{where} has no host.", param=param)
    try:
        answers = _resolve(host, port, deadline)
    except TimeoutError:  # concurrent.futures' too, since 3.11
        raise FetchRefused(f"Resolving the host of the URL{where} took too long.", param=param) from None
    except (OSError, UnicodeError):
        raise FetchRefused(f"Could not resolve the host of the URL{where}.", param=param) from None
    targets: list[IPAddress] = []
    for answer in answers:
        target = address_connect_target(ipaddress.ip_address(answer), allow_private=allow_private)
        if target is None:
            raise FetchTargetRefused(
                f"The URL{where} points at a private, loopback or otherwise non-public address, which is not allowed.",
                param=param,
            )
        targets.append(target)
    if not targets:
        raise FetchRefused(f"Could not resolve the host of the URL{where}.", param=param)
    return parts, host, port, targets


def _open(
    parts: SplitResult, host: str, port: int, targets: list[IPAddress], deadline: float, watchdog: _Watchdog
) -> tuple[socket.socket, IPAddress]:
    """A connection to the first checked address that accepts one, TLS-wrapped for
    https with SNI and certificate checks for `host`, its timeout set to what is left
    of `deadline`; `watchdog` closes it when the deadline passes. The raw socket is
    closed if the TLS handshake fails."""
    sock, target = _connect(targets, port, deadline)
    watchdog.sock = sock
    if parts.scheme == "https":
        try:
            sock.settimeout(_remaining(deadline))
            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
        except BaseException:
            sock.close()
            raise
        watchdog.sock = sock
    sock.settimeout(_remaining(deadline))
    return sock, target


def _connect(targets: list[IPAddress], port: int, deadline: float) -> tuple[socket.socket, IPAddress]:
    """A TCP connection to the first checked address that accepts one."""
    error: OSError = OSError("no address")
    for target in targets:
        try:
            # An IP literal: create_connection's own getaddrinfo parses it, it never asks DNS.
            return socket.create_connection((str(target), port), timeout=_remaining(deadline)), target
        except TimeoutError:
            raise
        except OSError as exc:
            error = exc
    raise error


def _get(
    sock: socket.socket, *, host: str, port: int, scheme: str, parts, accept: str, max_bytes: int, refuse, where: str
) -> tuple[bytes, str]:
    connection = http.client.HTTPConnection(host, port)
    connection.sock = sock  # already connected to the checked address: http.client never connects itself
    default_port = 443 if scheme == "https" else 80
    host_header = f"[{host}]" if ":" in host else host
    if port != default_port:
        host_header += f":{port}"
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    connection.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    connection.putheader("Host", host_header)
    connection.putheader("User-Agent", "image-platform/1")
    connection.putheader("Accept", accept)
    connection.putheader("Connection", "close")
    connection.endheaders()
    response = connection.getresponse()
    try:
        return _read_body(response, max_bytes=max_bytes, refuse=refuse, where=where)
    finally:
        response.close()  # it holds a reference to the socket: the socket closes only once both are


def _read_body(response: http.client.HTTPResponse, *, max_bytes: int, refuse, where: str) -> tuple[bytes, str]:
    if response.status != 200:  # redirects included: they are never followed
        raise refuse(f"Fetching the URL{where} gave HTTP {response.status}.")
    too_large = refuse(f"The file at the URL{where} is larger than {max_bytes} bytes.", FetchTooLarge)
    length = response.getheader("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) > max_bytes:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(64 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks), response.getheader("Content-Type", "")


@dataclass(frozen=True)
class PostResult:
    status: int  # the HTTP status the server answered (a redirect is an answer, never followed)
    body: bytes  # at most `max_bytes` of the answer's body (the rest is not read)
    address: str  # the address actually connected to


def http_post(
    url: str,
    *,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    allow_private: bool = False,
    max_bytes: int = 4096,
    param: str | None = None,
) -> PostResult:
    """POST `body` to an http(s) URL under the same rules as `http_fetch` (one DNS
    resolution, every answer globally routable unless `allow_private`, the connection
    pinned to a checked address, no proxy, no redirect followed, one deadline of
    `timeout` seconds over everything). Used for outgoing webhooks (images.services.webhooks).

    Returns whatever status the server answered, with at most `max_bytes` of its body
    (the rest is never read). Raises FetchRefused for a refused target, a connection
    that failed or the deadline passed (its message says which)."""
    deadline = time.monotonic() + timeout
    where = f" in '{param}'" if param else ""

    def refuse(message: str) -> FetchRefused:
        return FetchRefused(message, param=param)

    parts, host, port, targets = _checked_targets(url, allow_private=allow_private, deadline=deadline, param=param)
    watchdog = _Watchdog(max(0.0, deadline - time.monotonic()))
    sock = None
    try:
        sock, target = _open(parts, host, port, targets, deadline, watchdog)
        connection = http.client.HTTPConnection(host, port)
        connection.sock = sock
        default_port = 443 if parts.scheme == "https" else 80
        host_header = f"[{host}]" if ":" in host else host
        if port != default_port:
            host_header += f":{port}"
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        connection.putheader("Host", host_header)
        connection.putheader("User-Agent", "image-platform-webhooks/1")
        connection.putheader("Content-Length", str(len(body)))
        connection.putheader("Connection", "close")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        try:
            content = response.read(max_bytes) if max_bytes else b""
            status = response.status
        finally:
            response.close()
        if watchdog.fired or time.monotonic() > deadline:
            raise TimeoutError("deadline passed")
    except ssl.SSLCertVerificationError:
        raise refuse(f"The TLS certificate of the URL{where} is not valid for its host.") from None
    except (OSError, http.client.HTTPException, ValueError):
        if watchdog.fired or time.monotonic() >= deadline:
            raise refuse(f"The URL{where} did not answer within {timeout:g} s.") from None
        raise refuse(f"Could not reach the URL{where} (unreachable or the connection failed).") from None
    finally:
        watchdog.cancel()
        if sock is not None:
            sock.close()
    return PostResult(status=status, body=content, address=str(target))
