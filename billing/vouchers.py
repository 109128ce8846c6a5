"""Voucher codes: generated in batches (the admin, `vouchers_create`), stored hashed like
API keys (a prefix to find the row, SHA-256 of the secret part), redeemed on the dashboard
and by POST /v1/credits/redeem.

A code is used at most `max_uses` times even under concurrent redemption (one
conditional `UPDATE ... SET uses = uses + 1 WHERE uses < max_uses`) and at most once per
tenant (a unique constraint); the credits enter through the ledger keyed
`voucher:<voucher id>:<tenant id>`. Wrong codes are counted per key or member
(VOUCHER_FAILURE_LIMIT) and per tenant (VOUCHER_FAILURE_TENANT_LIMIT) in a window; past
either, redemption answers 429. Never per client address: behind a proxy every
customer shares one, and one tenant's guesses would lock everybody else out."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from datetime import datetime

from django.conf import settings
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from accounts.models import Tenant
from billing.errors import InvalidAmount, InvalidVoucher, VoucherNotRedeemable
from billing.models import Voucher, VoucherBatch, VoucherRedemption
from billing.services import MAX_GRANT, account_for, credits_grant
from core.errors import RateLimited

_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: codes are typed by people
PREFIX_LENGTH = 8
SECRET_LENGTH = 32  # 32 symbols of 32 = 160 bits
MAX_BATCH = 10_000


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _normalise(code: str) -> tuple[str, str] | None:
    """(prefix, secret) of a code as typed (any case, spaces and dashes anywhere)."""
    cleaned = "".join(ch for ch in str(code or "").upper() if ch.isalnum())
    if len(cleaned) != PREFIX_LENGTH + SECRET_LENGTH:
        return None
    return cleaned[:PREFIX_LENGTH], cleaned[PREFIX_LENGTH:]


def _format(prefix: str, secret: str) -> str:
    return f"{prefix}-" + "-".join(secret[i : i + 8] for i in range(0, len(secret), 8))


@transaction.atomic
def vouchers_create(
    *,
    credits: int,
    count: int,
    max_uses: int = 1,
    expires_at: datetime | None = None,
    note: str = "",
    created_by: str = "",
) -> tuple[VoucherBatch, list[str]]:
    """A batch of `count` codes worth `credits` each, `max_uses` redemptions per code.
    Returns the batch and the raw codes: they are shown (or downloaded) once and never
    stored."""
    for name, value, top in (
        ("credits", credits, MAX_GRANT),
        ("count", count, MAX_BATCH),
        ("uses", max_uses, 1_000_000),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= top:
            raise InvalidAmount(f"'{name}' must be a whole number from 1 to {top}.", param=name)
    batch = VoucherBatch.objects.create(
        credits=credits,
        count=count,
        max_uses=max_uses,
        expires_at=expires_at,
        note=note[:200],
        created_by=created_by[:150],
    )
    codes, rows = [], []
    for _ in range(count):
        prefix, secret = _random(PREFIX_LENGTH), _random(SECRET_LENGTH)
        codes.append(_format(prefix, secret))
        rows.append(
            Voucher(
                batch=batch,
                prefix=prefix,
                code_hash=_hash(secret),
                credits=credits,
                max_uses=max_uses,
                expires_at=expires_at,
                note=note[:200],
            )
        )
    Voucher.objects.bulk_create(rows)
    return batch, codes


# ---- wrong-code limits ----


def _failure_buckets(tenant: Tenant, actor: str) -> list[tuple[str, int]]:
    """(cache key, limit) of each counter an attempt by `actor` for `tenant` counts in."""
    window = int(time.time() // settings.VOUCHER_FAILURE_WINDOW_SECONDS)
    buckets = [
        (f"vfail:t:{tenant.pk}:{window}", settings.VOUCHER_FAILURE_TENANT_LIMIT),
        (f"vfail:m:{tenant.pk}:{actor or '-'}:{window}", settings.VOUCHER_FAILURE_LIMIT),
    ]
    return [(key, limit) for key, limit in buckets if limit > 0]


def _counter_add(key: str, delta: int) -> int:
    """Atomic add on a cache counter (Redis INCRBY/DECRBY with the cache's Redis; a
    lock in the local-memory cache); the counter lives one window."""
    cache.add(key, 0, timeout=settings.VOUCHER_FAILURE_WINDOW_SECONDS + 5)
    try:
        return cache.incr(key, delta)
    except ValueError:  # expired between the two calls
        cache.add(key, max(delta, 0), timeout=settings.VOUCHER_FAILURE_WINDOW_SECONDS + 5)
        return max(delta, 0)


def _attempt_reserve(tenant: Tenant, actor: str) -> list[str]:
    """Count this attempt as a failure up front (atomic increments), so concurrent
    guesses cannot all pass a check made before any of them is counted; past a limit,
    429. The caller gives the reservation back (`_attempt_release`) when the code turns
    out to be a real one."""
    buckets = _failure_buckets(tenant, actor)
    counted = []
    for key, limit in buckets:
        counted.append(key)
        if _counter_add(key, 1) > limit:
            _attempt_release(counted)  # a refused attempt is not a guess
            window = settings.VOUCHER_FAILURE_WINDOW_SECONDS
            retry = max(1, window - int(time.time()) % window)
            raise RateLimited(
                f"Too many wrong voucher codes. Try again in {retry} s.",
                code="voucher_attempts_exceeded",
                headers={"Retry-After": str(retry)},
            )
    return counted


def _attempt_release(keys: list[str]) -> None:
    for key in keys:
        _counter_add(key, -1)


@dataclass(frozen=True)
class Redeemed:
    redemption: VoucherRedemption
    balance: int  # credits, after the grant
    available: int  # credits


def voucher_redeem(*, tenant: Tenant, code: str, actor: str = "") -> Redeemed:
    """Redeem `code` for `tenant`: 400 `invalid_voucher` for a wrong code (counted for
    `actor`, the key or member, and for the tenant; 429 `voucher_attempts_exceeded` past
    either limit, even for a right code), 400 `voucher_expired`, `voucher_used_up` or
    `voucher_already_redeemed` for a real code that cannot be used (not counted)."""
    reserved = _attempt_reserve(tenant, actor)
    parsed = _normalise(code)
    voucher = Voucher.objects.filter(prefix=parsed[0]).first() if parsed else None
    if voucher is None or not hmac.compare_digest(voucher.code_hash, _hash(parsed[1])):
        raise InvalidVoucher("This voucher code is not valid.")  # the reservation stays: a counted failure
    _attempt_release(reserved)
    if voucher.expires_at is not None and voucher.expires_at <= timezone.now():
        raise VoucherNotRedeemable("This voucher code has expired.", code="voucher_expired")
    if VoucherRedemption.objects.filter(voucher=voucher, tenant=tenant).exists():
        raise VoucherNotRedeemable(
            "This voucher code was already redeemed for your account.", code="voucher_already_redeemed"
        )
    try:
        with transaction.atomic():
            # The one check-and-write: concurrent redemptions cannot both take the last use.
            if not Voucher.objects.filter(pk=voucher.pk, uses__lt=F("max_uses")).update(uses=F("uses") + 1):
                raise VoucherNotRedeemable("This voucher code has been used up.", code="voucher_used_up")
            redemption = VoucherRedemption.objects.create(
                voucher=voucher, tenant=tenant, credits=voucher.credits, redeemed_by=actor[:150]
            )
            credits_grant(
                tenant=tenant,
                amount=voucher.credits,
                actor=actor or "voucher",
                note=f"voucher {voucher.prefix} (batch {voucher.batch_id})",
                idempotency_key=f"voucher:{voucher.pk}:{tenant.pk}",
            )
    except IntegrityError:  # the same tenant redeeming the same code twice at once
        raise VoucherNotRedeemable(
            "This voucher code was already redeemed for your account.", code="voucher_already_redeemed"
        ) from None
    account = account_for(tenant=tenant)
    return Redeemed(redemption=redemption, balance=account.balance, available=account.available)
