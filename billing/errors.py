from core.errors import APIError, InsufficientCredits


class KeyBudgetExceeded(InsufficientCredits):
    """402 `key_budget_exceeded`: a monthly budget on the key or on a key above it (one
    that created it, whose budget is a ceiling for its whole subtree) does not allow the
    request. Raised only by `billing.services.key_budget_check`. The error object carries
    its data beside the sentence: `budget_key` (the prefix of the key whose budget it
    is), `limit`, `spent` (captured or held this month by that key and the keys below
    it) and `required` (this request's price; null before it is priced)."""

    code = "key_budget_exceeded"
    offers_top_up = False  # a key's monthly budget: buying credits would not help

    def __init__(self, message: str, *, budget_key: str, limit: int, spent: int, required: int | None) -> None:
        # APIError's constructor, not InsufficientCredits': a budget's numbers and sentence, not the balance's.
        APIError.__init__(
            self, message, data={"budget_key": budget_key, "limit": limit, "spent": spent, "required": required}
        )


class InvalidVoucher(APIError):
    """Unknown code (or a wrong secret part): counts towards the failure limit."""

    code = "invalid_voucher"
    param = "code"


class VoucherNotRedeemable(APIError):
    """A real code that cannot be used (expired, used up, already redeemed by this
    tenant): 400, never 409 (a retry cannot succeed). `code` says which."""

    param = "code"


class InvalidAmount(APIError):
    code = "invalid_amount"


class PriceNotConfigured(APIError):
    """The model has no price row for this request and is not marked free: refused
    before any hold or job exists (fail closed: an unpriced model is never served for 0).

    400, `invalid_request_error`, code `model_not_priced`, param `model`. Not 402: the
    customer's balance is not the problem and topping it up would not help. Not a 5xx or
    429: the official SDKs retry those, and no retry succeeds until an operator adds a
    Price row (or ticks ImageModel.is_free); a 5xx would also page for what is a
    configuration gap. Not 404: the model exists and /v1/models lists it. The message
    names the model, kind, size and quality, so the customer can pick another model or
    size and the operator knows exactly which row to add.
    """

    status_code = 400
    code = "model_not_priced"
    param = "model"


__all__ = [
    "InsufficientCredits",
    "KeyBudgetExceeded",
    "InvalidAmount",
    "PriceNotConfigured",
    "InvalidVoucher",
    "VoucherNotRedeemable",
]
