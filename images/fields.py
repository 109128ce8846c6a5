"""Strict request fields shared by every request shape (OpenAI's and the vendors'):
DRF fields that refuse what DRF would coerce (a number for a string, "1" for an integer
in JSON, "yes" for a boolean), each refusal a 400 in the OpenAI envelope naming the
parameter (reference §5); the `webhook_url` rule (issue 24: a public https URL, the safe
fetcher's address rules), the `Cancel-After` header's durations and the `loras` list
(issue 23). The request serializers built from them are in images/validation.py.
"""

from __future__ import annotations

import re
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from core.errors import InvalidRequest

_TYPE_NAMES = {
    str: "a string",
    bool: "a boolean",
    int: "an integer",
    float: "a decimal number",
    list: "an array",
    dict: "an object",
    type(None): "null",
}


def quoted_list(values: tuple[str, ...]) -> str:
    """OpenAI's way of listing allowed values in a message: "'a', 'b', and 'c'"."""
    quoted = [f"'{v}'" for v in values]
    return ", ".join(quoted[:-1]) + ", and " + quoted[-1] if len(quoted) > 1 else quoted[0]


def _invalid_type(field: serializers.Field, expected: str, data: Any) -> InvalidRequest:
    """OpenAI's wording for a value of the wrong JSON type."""
    got = _TYPE_NAMES.get(type(data), "a value of another type")
    name = field.field_name
    return InvalidRequest(
        f"Invalid type for '{name}': expected {expected}, but got {got} instead.", param=name, code="invalid_type"
    )


def _form(field: serializers.Field) -> bool:
    """Multipart and form bodies carry every value as a string: types are coerced there."""
    return bool(field.root.context.get("form")) if field.root is not None else False


class StrictCharField(serializers.CharField):
    """A string, never a number or boolean stringified (JSON types are strict as OpenAI's are)."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise _invalid_type(self, "a string", data)
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer (no booleans, decimals or strings); in a form body, ASCII digits
    with an optional sign (not `٢` or `２`, which Python's int() would also read)."""

    def to_internal_value(self, data: Any) -> int:
        if _form(self) and isinstance(data, str):
            if not re.fullmatch(r"[+-]?[0-9]+", data.strip()):
                raise _invalid_type(self, "an integer", data)
            return super().to_internal_value(data)
        if isinstance(data, bool) or not isinstance(data, int):
            raise _invalid_type(self, "an integer", data)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """A JSON boolean; in a form body, DRF's true/false spellings."""

    def to_internal_value(self, data: Any) -> bool:
        if not _form(self) and not isinstance(data, bool):
            raise _invalid_type(self, "a boolean", data)
        return super().to_internal_value(data)


class StrictChoiceField(serializers.ChoiceField):
    """One of the listed strings; anything else is OpenAI's `invalid_value`."""

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise _invalid_type(self, "a string", data)
        if data not in self.choices:
            allowed = quoted_list(tuple(self.choices))
            raise InvalidRequest(
                f"Invalid value: '{data}'. Supported values are: {allowed}.",
                param=self.field_name,
                code="invalid_value",
            )
        return data


def choice_field(*values: str) -> serializers.ChoiceField:
    """An optional, nullable StrictChoiceField of `values` (null or absent: the default)."""
    return StrictChoiceField(choices=values, required=False, allow_null=True)


class StrictSerializer(serializers.Serializer):
    """Refuses fields it does not declare, as OpenAI does:
    400 `{"message": "Unknown parameter: 'qualty'.", "param": "qualty", "code": "unknown_parameter"}`
    (a misspelled field must never be charged at the defaults). `ignored_fields` are
    accepted and dropped (fields a vendor's clients send that mean nothing here)."""

    ignored_fields: tuple[str, ...] = ()

    def to_internal_value(self, data: Any) -> dict[str, Any]:
        if hasattr(data, "keys"):
            for name in data.keys():
                if name not in self.fields and name not in self.ignored_fields:
                    raise InvalidRequest(f"Unknown parameter: '{name}'.", param=str(name), code="unknown_parameter")
        return super().to_internal_value(data)


WEBHOOK_URL_MAX_LENGTH = 2000


def webhook_url_check(url: str, *, param: str = "webhook_url") -> str:
    """A webhook target as a request may give it (issue 24): an absolute http(s) URL with
    a host, no credentials, at most WEBHOOK_URL_MAX_LENGTH characters. An IP literal that
    is not public (any notation Python's ipaddress reads, IPv4-mapped IPv6 included) is
    refused here unless WEBHOOK_ALLOW_PRIVATE_TARGETS; names are resolved and checked at
    each delivery (core.http_fetch.http_post), where every notation is refused. 400
    `invalid_url` naming `param`."""
    import ipaddress
    from urllib.parse import urlsplit

    from django.conf import settings

    from core.http_fetch import address_connect_target

    def refuse(why: str) -> InvalidRequest:
        return InvalidRequest(f"'{param}' {why}", param=param, code="invalid_url")

    if len(url) > WEBHOOK_URL_MAX_LENGTH:
        raise refuse(f"must be at most {WEBHOOK_URL_MAX_LENGTH} characters.")
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018  (raises ValueError for a bad port)
    except ValueError:
        raise refuse("is not a valid URL.") from None
    if parts.scheme not in ("http", "https") or not host:
        raise refuse("must be an absolute http or https URL.")
    if parts.username or parts.password:
        raise refuse("must not carry credentials.")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise refuse("must not contain whitespace or control characters.")
    if not settings.WEBHOOK_ALLOW_PRIVATE_TARGETS:
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if host.rstrip(".").lower() == "localhost" or (literal is not None and address_connect_target(literal) is None):
            raise refuse("points at a private, loopback or otherwise non-public address, which is not allowed.")
    return url


class WebhookURLField(StrictCharField):
    """`webhook_url` (extension, issue 24): checked by webhook_url_check."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", not kwargs["required"])
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> str:
        return webhook_url_check(super().to_internal_value(data), param=self.field_name)


# Replicate's `Cancel-After` (Go duration style): "30s", "5m", "1h", "1m30s", "1h2m3s", "500ms".
_DURATION = re.compile(r"(?:(\d{1,6})h)?(?:(\d{1,6})m(?!s))?(?:(\d{1,7})s)?(?:(\d{1,9})ms)?")
CANCEL_AFTER_MIN_SECONDS = 1
CANCEL_AFTER_MAX_SECONDS = 7 * 24 * 3600


def cancel_after_parse(raw: str | None) -> float | None:
    """The `Cancel-After` header as seconds (None when absent): hours, minutes, seconds
    and milliseconds in that order, each optional, at least one ("30s", "5m", "1h",
    "1m30s", "1500ms"); from CANCEL_AFTER_MIN_SECONDS up to a week. 400
    `invalid_cancel_after` naming the header otherwise. The job's deadline becomes the
    earlier of this and JOB_DEADLINE_SECONDS (images.services.generation)."""
    if raw is None:
        return None
    value = raw.strip()
    match = _DURATION.fullmatch(value) if value.isascii() else None
    if not value or match is None or not any(match.groups()):
        raise InvalidRequest(
            "'Cancel-After' must be a duration such as '30s', '5m', '1h' or '1m30s'.",
            param="Cancel-After",
            code="invalid_cancel_after",
        )
    hours, minutes, seconds, millis = (int(g or 0) for g in match.groups())
    total = hours * 3600 + minutes * 60 + seconds + millis / 1000
    if not CANCEL_AFTER_MIN_SECONDS <= total <= CANCEL_AFTER_MAX_SECONDS:
        raise InvalidRequest(
            f"'Cancel-After' must be from {CANCEL_AFTER_MIN_SECONDS} second to 7 days.",
            param="Cancel-After",
            code="invalid_cancel_after",
        )
    return total


LORA_SCALE_MIN, LORA_SCALE_MAX = -2.0, 2.0


@extend_schema_field(
    {
        "type": "array",
        "maxItems": 3,
        "nullable": True,
        "description": "LoRA adapters over the model (extension; GET /v1/loras lists them; at most "
        "LORA_MAX_PER_REQUEST). Each adapter's surcharge is added to the price per image.",
        "items": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "scale": {"type": "number", "minimum": -2, "maximum": 2, "default": 1},
            },
        },
    }
)
class LoraListField(serializers.Field):
    """`loras` (extension, issue 23): `[{"name": str, "scale": number}, ...]`, at most
    LORA_MAX_PER_REQUEST entries, each name once; `scale` defaults to 1.0 and must be a
    finite number in [-2, 2] (0 = not applied). In a form body (multipart edits) the
    same array as a JSON string. Returns [{"name", "scale": float}]; 400 naming `loras`,
    `loras[i].name` or `loras[i].scale`. Which adapters exist and fit is checked later
    (images.services.loras.loras_resolve)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("required", False)
        kwargs.setdefault("allow_null", True)
        super().__init__(**kwargs)

    def to_representation(self, value: Any) -> Any:
        return value

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        import json
        import math

        from django.conf import settings

        if _form(self) and isinstance(data, str):
            try:
                data = json.loads(data) if data.strip() else []
            except ValueError:
                raise InvalidRequest(
                    '\'loras\' must be a JSON array of {"name", "scale"} objects.', param="loras", code="invalid_type"
                ) from None
        if not isinstance(data, list):
            raise _invalid_type(self, "an array", data)
        limit = settings.LORA_MAX_PER_REQUEST
        if len(data) > limit:
            raise InvalidRequest(
                f"At most {limit} LoRA adapters per request (got {len(data)}).", param="loras", code="invalid_value"
            )
        entries: list[dict[str, Any]] = []
        for index, item in enumerate(data):
            where = f"loras[{index}]"
            if not isinstance(item, dict):
                got = _TYPE_NAMES.get(type(item), "a value of another type")
                raise InvalidRequest(
                    f"Invalid type for '{where}': expected an object, but got {got} instead.",
                    param=where,
                    code="invalid_type",
                )
            for key in item:
                if key not in ("name", "scale"):
                    raise InvalidRequest(
                        f"Unknown parameter: '{where}.{key}'.", param=f"{where}.{key}", code="unknown_parameter"
                    )
            name = item.get("name")
            if not isinstance(name, str) or not name:
                raise InvalidRequest(
                    f"'{where}.name' must be the name of a LoRA adapter.", param=f"{where}.name", code="invalid_value"
                )
            if any(entry["name"] == name for entry in entries):
                raise InvalidRequest(
                    f"The LoRA adapter '{name}' is listed twice.", param=f"{where}.name", code="invalid_value"
                )
            scale = item.get("scale", 1.0)
            if (
                isinstance(scale, bool)
                or not isinstance(scale, (int, float))
                or not math.isfinite(scale)
                or not LORA_SCALE_MIN <= scale <= LORA_SCALE_MAX
            ):
                raise InvalidRequest(
                    f"'{where}.scale' must be a number from {LORA_SCALE_MIN:g} to {LORA_SCALE_MAX:g}.",
                    param=f"{where}.scale",
                    code="invalid_value",
                )
            entries.append({"name": name, "scale": float(scale)})
        return entries
