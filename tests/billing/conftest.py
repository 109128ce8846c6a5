from __future__ import annotations

import pytest

from tests.billing.localstripe import LocalStripe


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory):
    server = LocalStripe(tmp_path_factory.mktemp("localstripe"))
    yield server
    server.stop()


@pytest.fixture
def stripe_on(localstripe, settings):
    """The platform's Stripe settings pointing at localstripe."""
    for name, value in localstripe.env().items():
        setattr(settings, name, value.split(",") if name == "STRIPE_PAYMENT_METHOD_TYPES" else value)
    return localstripe


@pytest.fixture
def reconciled():
    """billing_reconcile must be clean after the test."""
    yield
    from billing.selectors import ledger_reconcile

    assert ledger_reconcile() == []
