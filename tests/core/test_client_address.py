"""core.client_address: the one client address every address-keyed limit uses; the
forwarded header counts only as far as the operator trusts proxies (issue 19)."""

from __future__ import annotations

import pytest
from django.test import RequestFactory

from core.client_address import client_address, client_network


def request(remote: str = "10.0.0.2", forwarded: str | None = None):
    extra = {"REMOTE_ADDR": remote}
    if forwarded is not None:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded
    return RequestFactory().get("/", **extra)


@pytest.mark.parametrize(
    ("trusted", "forwarded", "expected"),
    [
        (0, "198.51.100.7", "10.0.0.2"),  # no proxy trusted: the header is the client's own text
        (1, None, "10.0.0.2"),  # not through the proxy: the connection is the client
        (1, "198.51.100.7", "198.51.100.7"),
        (1, "1.2.3.4, 198.51.100.7", "198.51.100.7"),  # a forged left entry is ignored
        (2, "1.2.3.4, 198.51.100.7, 172.16.0.9", "198.51.100.7"),
        (2, "198.51.100.7", "198.51.100.7"),  # fewer hops than proxies: a trusted proxy wrote it
        (1, "not-an-address", "10.0.0.2"),
        (1, "[2001:db8::1]:443", "2001:db8::1"),
        (1, "198.51.100.7:5555", "198.51.100.7"),
    ],
)
def test_client_address_trusts_only_the_configured_number_of_proxies(settings, trusted, forwarded, expected):
    settings.TRUSTED_PROXY_COUNT = trusted
    assert client_address(request(forwarded=forwarded)) == expected


def test_axes_allauth_and_drf_use_the_same_address(settings, rf):
    from allauth.account.adapter import get_adapter
    from axes.helpers import get_client_ip_address
    from rest_framework.settings import api_settings

    settings.TRUSTED_PROXY_COUNT = 1
    r = request(forwarded="1.2.3.4, 198.51.100.7")
    assert get_client_ip_address(r) == "198.51.100.7"
    assert get_adapter(r).get_client_ip(r) == "198.51.100.7"
    assert settings.REST_FRAMEWORK["NUM_PROXIES"] == api_settings.NUM_PROXIES == 0  # read at start-up


def test_client_network_is_the_24_or_the_64():
    assert client_network("198.51.100.77") == "198.51.100.0/24"
    assert client_network("2001:db8:1:2:3:4:5:6") == "2001:db8:1:2::/64"
    assert client_network("::ffff:198.51.100.77") == "198.51.100.0/24"
    assert client_network("") == ""
