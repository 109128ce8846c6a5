"""Money. Every amount is an integer number of credits (1 credit = the unit the
operator sells; docs/configuration.md suggests 1 credit = US$0.001). No floats."""

from __future__ import annotations

from django.db import models
from django.db.models import F, Q

from accounts.models import APIKey, Tenant
from billing.currencies import currency_normalise, currency_validate, minimum_charge_problem


class CreditAccount(models.Model):
    """A tenant's balance: a cache of its ledger, updated in the same transaction.

    The balance may fall below `held`, and below zero, through one path only: a Stripe
    refund or lost dispute takes back all the credits it paid for, spent or held
    (`billing.services.credits_reverse`). Then `owed` > 0 is a debt: every hold needs
    `balance >= held + price`, so nothing more is spent until later credits cover it.
    Every other removal (operator, capture of a hold) stays within the balance, and the
    database refuses `held > balance + debt_allowed`."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="credit_account")
    balance = models.BigIntegerField(default=0)  # credits owned = sum(ledger.amount)
    held = models.BigIntegerField(default=0)  # credits reserved by open holds = sum(ledger.held_delta)
    # Credits by which `held` may exceed `balance` (a debt): raised only by a reversal that
    # took more than was available, cleared by the next hold (which needs no debt).
    debt_allowed = models.BigIntegerField(default=0)
    # Holds still open = the tenant's jobs queued or running (every job gets its hold in
    # its own transaction, and every end of a job settles it in the same transaction as
    # the status change): kept by the hold's and the settle's own account UPDATE, so the
    # in-flight cap needs no COUNT of jobs (issue 20). = count(Hold, status=open).
    holds_open = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(held__gte=0), name="account_held_non_negative"),
            # The database itself refuses overspending: holds never exceed the balance, save
            # for the debt a reversal left (debt_allowed, 0 for every account not in debt).
            models.CheckConstraint(
                condition=Q(balance__gte=F("held") - F("debt_allowed")), name="account_held_covered"
            ),
            models.CheckConstraint(condition=Q(debt_allowed__gte=0), name="account_debt_allowed_non_negative"),
        ]

    def __str__(self) -> str:
        return f"account of tenant {self.tenant_id}: {self.balance} credits ({self.held} held)"

    @property
    def available(self) -> int:
        """Credits that may still be spent; negative while the tenant owes credits."""
        return self.balance - self.held

    @property
    def owed(self) -> int:
        """Credits the tenant owes (0 when none): what later credits must cover before
        anything can be spent again; credits still held count as spent."""
        return max(0, self.held - self.balance)


class LedgerEntry(models.Model):
    """Append-only: one row per grant, hold, capture, release, refund or adjustment."""

    class Kind(models.TextChoices):
        GRANT = "grant"
        ADJUSTMENT = "adjustment"
        HOLD = "hold"
        CAPTURE = "capture"
        RELEASE = "release"
        REFUND = "refund"
        REVERSAL = "reversal"  # a Stripe refund or dispute took back (or returned) a payment's credits

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="ledger")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = models.BigIntegerField()  # credits added to (+) or taken from (-) the balance
    held_delta = models.BigIntegerField(default=0)  # credits added to (+) or freed from (-) holds
    balance_after = models.BigIntegerField()  # credits, after this row
    held_after = models.BigIntegerField()  # credits, after this row
    job = models.ForeignKey("images.Job", null=True, blank=True, on_delete=models.PROTECT, related_name="ledger")
    actor = models.CharField(max_length=150, blank=True, default="")  # operator username or "system"
    note = models.TextField(blank=True, default="")
    idempotency_key = models.CharField(max_length=200, unique=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]
        verbose_name_plural = "ledger entries"

    def __str__(self) -> str:
        return f"{self.kind} {self.amount:+d} (tenant {self.tenant_id})"


class Hold(models.Model):
    """Credits reserved for one job; captured on success, released on failure. One per job."""

    class Status(models.TextChoices):
        OPEN = "open"
        CAPTURED = "captured"
        RELEASED = "released"

    job = models.OneToOneField("images.Job", on_delete=models.PROTECT, related_name="hold")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="holds")
    api_key = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="holds")
    amount = models.BigIntegerField()  # credits reserved
    captured = models.BigIntegerField(default=0)  # credits finally charged
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN, db_index=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    settled_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"hold of {self.amount} for job {self.job_id} ({self.status})"


class Price(models.Model):
    """Credits per image for a model, job kind, size and quality ('' matches any)."""

    model = models.ForeignKey("images.ImageModel", on_delete=models.CASCADE, related_name="prices")
    kind = models.CharField(max_length=16, default="", blank=True)  # generate|edit|variation|'' = any
    size = models.CharField(max_length=16, default="", blank=True)  # e.g. 1024x1024, '' = any
    quality = models.CharField(max_length=16, default="", blank=True)  # resolved quality, '' = any
    credits_per_image = models.PositiveBigIntegerField()  # credits

    class Meta:
        constraints = [models.UniqueConstraint(fields=["model", "kind", "size", "quality"], name="price_unique")]

    def __str__(self) -> str:
        return f"{self.model_id} {self.kind or '*'} {self.size or '*'} {self.quality or '*'}: {self.credits_per_image}"


class UsageRecord(models.Model):
    """One row per request, whatever its outcome; feeds /v1/usage and the dashboards."""

    class Outcome(models.TextChoices):
        PENDING = "pending"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"
        REFUSED = "refused"  # 402 and other refusals before a job existed
        BLOCKED = "blocked"  # moderation

    class OutputAction(models.TextChoices):
        NONE = "", "none"
        BLOCKED = "blocked"
        BLURRED = "blurred"
        FLAGGED = "flagged"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="usage")
    api_key = models.ForeignKey(APIKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="usage")
    job = models.OneToOneField("images.Job", null=True, blank=True, on_delete=models.SET_NULL, related_name="usage")
    model = models.CharField(max_length=100)
    endpoint = models.CharField(max_length=100)
    n = models.PositiveIntegerField(default=1)
    images = models.PositiveIntegerField(default=0)  # images delivered
    size = models.CharField(max_length=16, blank=True, default="")
    pixels = models.PositiveBigIntegerField(default=0)  # delivered images x width x height
    quality = models.CharField(max_length=16, blank=True, default="")
    steps = models.PositiveIntegerField(default=0)
    credits_charged = models.BigIntegerField(default=0)  # credits
    queue_wait_ms = models.PositiveIntegerField(null=True, blank=True)
    gpu_ms = models.PositiveIntegerField(null=True, blank=True)
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    outcome = models.CharField(max_length=16, choices=Outcome.choices, default=Outcome.PENDING, db_index=True)
    error_code = models.CharField(max_length=64, blank=True, default="")
    # What the output classifier did to the request's images (issue 25;
    # images/services/output_moderation.py): '' when it found nothing or did not run.
    # "blocked": images withheld (`images_withheld` of them, never charged; every one
    # withheld makes the outcome `blocked`); "blurred" / "flagged": delivered so marked.
    output_action = models.CharField(max_length=16, choices=OutputAction.choices, blank=True, default="")
    output_categories = models.JSONField(default=list, blank=True)  # the unsafe labels found, sorted
    images_withheld = models.PositiveIntegerField(default=0)  # images the output check withheld
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.endpoint} {self.model} ({self.outcome})"


class CreditPack(models.Model):
    """What a customer can buy by card: `credits` for `price` (integer, the currency's
    minor unit: cents for usd, yen for jpy). Defined by the operator in the admin."""

    name = models.CharField(max_length=100)
    credits = models.PositiveBigIntegerField()  # credits granted
    price = models.PositiveIntegerField()  # minor units of `currency`
    # ISO 4217, lower case (Stripe's spelling): normalised on save, so "USD" is stored "usd".
    currency = models.CharField(max_length=3, default="usd", validators=[currency_validate])
    active = models.BooleanField(default=True)

    class Meta:
        ordering = ["price", "id"]

    def __str__(self) -> str:
        return f"{self.name}: {self.credits} credits for {self.price} {self.currency} (minor units)"

    def save(self, *args, **kwargs) -> None:
        self.currency = currency_normalise(self.currency)
        currency_validate(self.currency)
        super().save(*args, **kwargs)

    def clean_fields(self, exclude=None) -> None:
        """Field checks, then Stripe's minimum charge, reported on the price (or the
        currency) when the form edits it: a form that edits neither (the changelist's
        `active` toggle) can still switch off a pack that is too cheap."""
        from django.core.exceptions import ValidationError

        super().clean_fields(exclude=exclude)
        self.currency = currency_normalise(self.currency)
        field = next((name for name in ("price", "currency") if name not in (exclude or ())), None)
        problem = minimum_charge_problem(amount=self.price or 0, currency=self.currency)
        if field and problem:
            raise ValidationError({field: f"{problem} Stripe refuses smaller payments."})


class Payment(models.Model):
    """One payment at a provider (a Stripe PaymentIntent). Credits enter the ledger only
    from the provider's signed webhook, keyed `stripe:<external_id>`."""

    class Status(models.TextChoices):
        PENDING = "pending"  # created, not paid yet
        SUCCEEDED = "succeeded"  # paid and credited
        FAILED = "failed"
        REFUNDED = "refunded"  # wholly refunded, or a dispute lost
        PARTIALLY_REFUNDED = "partially_refunded"
        MISMATCH = "mismatch"  # paid, but not the amount or currency asked: not credited, see the operator

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="payments")
    pack = models.ForeignKey(CreditPack, null=True, blank=True, on_delete=models.SET_NULL, related_name="payments")
    provider = models.CharField(max_length=16, default="stripe")
    external_id = models.CharField(max_length=255, unique=True)  # the PaymentIntent id
    amount = models.PositiveIntegerField()  # minor units of `currency`
    currency = models.CharField(max_length=3, validators=[currency_validate])  # lower case, normalised on save
    credits = models.PositiveBigIntegerField()  # credits this payment grants
    status = models.CharField(max_length=24, choices=Status.choices, default=Status.PENDING, db_index=True)
    receipt_url = models.URLField(max_length=500, blank=True, default="")
    amount_refunded = models.PositiveIntegerField(default=0)  # minor units refunded (Stripe's running total)
    amount_disputed = models.PositiveIntegerField(default=0)  # minor units a dispute withdrew (and kept)
    # The charge's dispute as far as we know: "", withdrawn (funds taken by Stripe), won
    # (reinstated) or lost. Only moves forward in that order, so a late event is ignored.
    dispute_status = models.CharField(max_length=16, blank=True, default="")
    credits_reversed = models.BigIntegerField(default=0)  # credits taken back through the ledger (all of them)
    # Credits a reversal recorded by an earlier version left out of the ledger (it took at
    # most the available balance). Now always 0 after an event: the next event for the
    # payment takes them back; billing_reconcile lists the payments that still have some.
    credits_unrecovered = models.BigIntegerField(default=0)
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"{self.provider} {self.external_id} ({self.status})"

    def save(self, *args, **kwargs) -> None:
        self.currency = currency_normalise(self.currency)
        super().save(*args, **kwargs)


class VoucherBatch(models.Model):
    """Codes generated together in the admin or by `vouchers_create`."""

    note = models.CharField(max_length=200, blank=True, default="")
    credits = models.PositiveBigIntegerField()  # credits per redemption
    max_uses = models.PositiveIntegerField(default=1)  # per code
    expires_at = models.DateTimeField(null=True, blank=True)
    count = models.PositiveIntegerField()
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "voucher batches"

    def __str__(self) -> str:
        return f"batch {self.pk}: {self.count} x {self.credits} credits {self.note}".strip()


class Voucher(models.Model):
    """A redeemable code, stored like an API key: a prefix to find it and a SHA-256 of
    the secret part (the codes are random, 160 bits: a slow hash would add nothing)."""

    batch = models.ForeignKey(VoucherBatch, on_delete=models.PROTECT, related_name="vouchers")
    prefix = models.CharField(max_length=16, unique=True)
    code_hash = models.CharField(max_length=64)
    credits = models.PositiveBigIntegerField()  # credits per redemption
    max_uses = models.PositiveIntegerField(default=1)
    uses = models.PositiveIntegerField(default=0)
    expires_at = models.DateTimeField(null=True, blank=True)
    note = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        constraints = [models.CheckConstraint(condition=Q(uses__lte=F("max_uses")), name="voucher_uses_within_max")]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.uses}/{self.max_uses})"


class VoucherRedemption(models.Model):
    voucher = models.ForeignKey(Voucher, on_delete=models.PROTECT, related_name="redemptions")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="voucher_redemptions")
    credits = models.PositiveBigIntegerField()  # credits granted
    redeemed_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [models.UniqueConstraint(fields=["voucher", "tenant"], name="voucher_once_per_tenant")]

    def __str__(self) -> str:
        return f"voucher {self.voucher_id} by tenant {self.tenant_id}"


class BalanceAlert(models.Model):
    """A tenant's low-balance alert: one email each time the available balance falls
    below `threshold` (credits); `armed` is cleared when it fires and set again once the
    available balance is back at or above the threshold."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, primary_key=True, related_name="balance_alert")
    threshold = models.PositiveBigIntegerField(default=0)  # credits; 0 = off
    armed = models.BooleanField(default=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)  # when it last fell below
    last_sent_at = models.DateTimeField(null=True, blank=True)  # the firing last emailed (= last_fired_at once sent)

    def __str__(self) -> str:
        return f"alert below {self.threshold} for tenant {self.tenant_id}"
