"""The client's address: the one function every limit that keys on an address uses
(sign-up limits through allauth's adapter, django-axes' login lockouts through
AXES_CLIENT_IP_CALLABLE, allauth's own rate limits).

Behind reverse proxies the connection's address (`REMOTE_ADDR`) is the nearest proxy's.
`X-Forwarded-For` names the client, but any client can send that header, so it is read
only when the operator says how many proxies in front of the server are theirs
(TRUSTED_PROXY_COUNT): each of them appends the address it saw, so the client is the
entry that many places from the right, and everything to its left is the client's own
(forgeable) text. Without that setting the header is ignored.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest


def _parse(value: str) -> str | None:
    value = value.strip()
    if value.startswith("[") and "]" in value:  # "[2001:db8::1]:443"
        value = value[1 : value.index("]")]
    elif value.count(":") == 1:  # "192.0.2.1:443"
        value = value.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return None


def client_address(request: HttpRequest) -> str:
    """The client's IP address as text ("" when there is none, e.g. no REMOTE_ADDR).

    TRUSTED_PROXY_COUNT = 0 (default): `REMOTE_ADDR`. N > 0: the N-th entry of
    `X-Forwarded-For` from the right (the address the outermost trusted proxy saw); a
    header with fewer entries than N (the request skipped the outer proxies) gives its
    left-most entry, which one of the trusted proxies wrote; no header, or an entry that
    is not an IP address, gives `REMOTE_ADDR`."""
    remote = _parse(request.META.get("REMOTE_ADDR", "") or "") or ""
    trusted = settings.TRUSTED_PROXY_COUNT
    if trusted <= 0:
        return remote
    hops = [h for h in (request.META.get("HTTP_X_FORWARDED_FOR", "") or "").split(",") if h.strip()]
    if not hops:
        return remote
    entry = hops[-trusted] if len(hops) >= trusted else hops[0]
    return _parse(entry) or remote


def client_network(address: str) -> str:
    """The network an address belongs to, for limits that a client could dodge by
    changing addresses inside its own allocation: the /24 of an IPv4 address, the /64
    of an IPv6 one (CIDR text); "" for no address."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        parsed = parsed.ipv4_mapped
    prefix = 24 if parsed.version == 4 else 64
    return str(ipaddress.ip_network(f"{parsed}/{prefix}", strict=False))
