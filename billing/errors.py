from core.errors import APIError, InsufficientCredits


class KeyBudgetExceeded(InsufficientCredits):
    code = "key_budget_exceeded"


class InvalidAmount(APIError):
    code = "invalid_amount"


__all__ = ["InsufficientCredits", "KeyBudgetExceeded", "InvalidAmount"]
