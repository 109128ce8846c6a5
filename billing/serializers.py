"""The billing endpoints' request and response shapes (billing/api.py), in integer
credits; the OpenAPI schema documents exactly these."""

from __future__ import annotations

from rest_framework import serializers


class BalanceSerializer(serializers.Serializer):
    object = serializers.CharField(default="balance")
    balance = serializers.IntegerField(help_text="credits")
    held = serializers.IntegerField(help_text="credits reserved by jobs in flight")
    available = serializers.IntegerField(help_text="credits")
    currency = serializers.CharField(default="credits")


class UsageColumnsSerializer(serializers.Serializer):
    """billing.selectors.USAGE_COLUMNS (docs/api.md, "Usage"): counts of requests and
    images, pixels, and integer credits."""

    requests = serializers.IntegerField()
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    refused = serializers.IntegerField(
        help_text="refused (402, 429), or blocked by moderation (prompt, or every output image)"
    )
    images = serializers.IntegerField()
    pixels = serializers.IntegerField()
    credits = serializers.IntegerField(help_text="credits_succeeded + credits_cancelled")
    cancelled = serializers.IntegerField()
    pending = serializers.IntegerField(help_text="queued or running when read")
    credits_succeeded = serializers.IntegerField()
    credits_cancelled = serializers.IntegerField()
    images_withheld = serializers.IntegerField(help_text="images the output safety check withheld (never charged)")
    output_blurred = serializers.IntegerField(help_text="requests whose images the output check delivered blurred")
    output_flagged = serializers.IntegerField(help_text="requests whose images the output check delivered flagged")


class UsageRowSerializer(UsageColumnsSerializer):
    day = serializers.CharField(required=False, help_text="when group_by=day")
    model = serializers.CharField(required=False, help_text="when group_by=model")
    key = serializers.CharField(required=False, allow_null=True, help_text="when group_by=key")


class UsageSerializer(serializers.Serializer):
    object = serializers.CharField(default="usage")
    start = serializers.DateField()
    end = serializers.DateField()
    group_by = serializers.ChoiceField(choices=["day", "model", "key"])
    currency = serializers.CharField(default="credits")
    totals = UsageColumnsSerializer(help_text="every column summed over `data`")
    data = UsageRowSerializer(many=True)


class RedeemRequest(serializers.Serializer):
    code = serializers.CharField(max_length=100, help_text="The voucher code, as printed (any case; dashes optional).")


class RedeemResponse(serializers.Serializer):
    object = serializers.CharField(default="credit_redemption")
    credits = serializers.IntegerField(help_text="Credits granted by this redemption.")
    balance = serializers.IntegerField(help_text="The balance after it, in credits.")
    available = serializers.IntegerField(help_text="Balance minus credits held by jobs in flight.")
    currency = serializers.CharField(default="credits")
