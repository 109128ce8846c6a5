"""localstripe (a Stripe-API-speaking server from PyPI) on loopback, for the payment tests."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tools.deployment import free_port, stop_process_groups

WEBHOOK_SECRET = "whsec_localstripe_test"
SECRET_KEY = "sk_test_platform"
PUBLISHABLE_KEY = "pk_test_platform"


class LocalStripe:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp / "localstripe.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "localstripe", "--port", str(self.port), "--from-scratch"],
            cwd=tmp,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("localstripe did not start:\n" + self.log.read_text(errors="replace")) from None
                time.sleep(0.1)

    def env(self) -> dict[str, str]:
        return {
            "STRIPE_SECRET_KEY": SECRET_KEY,
            "STRIPE_PUBLISHABLE_KEY": PUBLISHABLE_KEY,
            "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "STRIPE_API_BASE": self.url,
            "STRIPE_JS_URL": f"{self.url}/js.stripe.com/v3/",
            "STRIPE_PAYMENT_METHOD_TYPES": "card",
        }

    def register_webhook(self, url: str) -> None:
        """localstripe delivers its events to `url`, signed with Stripe's scheme."""
        data = f"url={url}&secret={WEBHOOK_SECRET}".encode()
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/_config/webhooks/platform", data=data), timeout=10)

    def stop(self) -> None:
        stop_process_groups([self.proc], timeout=10)


def signed(event: dict, secret: str = WEBHOOK_SECRET) -> tuple[bytes, str]:
    """An event body and its Stripe-Signature header, by the SDK's own scheme."""
    import stripe

    payload = json.dumps(event)
    return payload.encode(), stripe.WebhookSignature.generate_signature_header(payload, secret)
