"""OpenAPI pieces that belong to no view: the bearer scheme, the tags and the order of
operations. Every ViewSet (images, vendors, keys, billing, webhooks) carries its own
`extend_schema` annotations beside its actions; shared error pieces are in
core/schema.py. `urls.py` imports this module before serving /v1/openapi.json.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension

# /docs/ lists the OpenAI-compatible endpoints first, the platform's own extensions next
# and the vendor-shaped endpoints last: Swagger UI groups operations by tag in the order
# of the document's root `tags` (set from this list by `tags_ordered`), and
# `operation_order` sorts the paths the same way for readers of the JSON.
TAGS = [
    {"name": "images", "description": "OpenAI Images API: generations, edits, variations (and signed image links)."},
    {"name": "models", "description": "OpenAI Models API; each model carries its `pricing` (extension)."},
    {"name": "tasks", "description": "Extension: asynchronous jobs (`Prefer: respond-async`), polled or cancelled."},
    {"name": "billing", "description": "Extension: balance, usage and vouchers, in integer credits."},
    {"name": "keys", "description": "Extension: API keys made by admin keys."},
    {"name": "webhooks", "description": "Extension: the tenant's webhook endpoints and deliveries."},
    {"name": "vendors", "description": "Vendor-shaped endpoints (the shapes of other image APIs)."},
]
OPENAI_PATHS = ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations", "/v1/models")
VENDOR_PATHS = ("/api/", "/v1/vision/")


def operation_order(endpoint: tuple) -> tuple:
    """drf-spectacular's SORT_OPERATIONS key: OpenAI's paths, then the other /v1 paths,
    then the vendor shapes; alphabetical (drf-spectacular's own order) within each."""
    from drf_spectacular.plumbing import alpha_operation_sorter

    path = endpoint[0]
    group = 0 if path.startswith(OPENAI_PATHS) else 2 if path.startswith(VENDOR_PATHS) else 1
    return (group, alpha_operation_sorter(endpoint))


def tags_ordered(result: dict, generator, request, public) -> dict:
    """drf-spectacular postprocessing hook: the document's root `tags` in TAGS' order
    (tags no operation uses are left out; one missing from TAGS goes last)."""
    used = {tag for item in result.get("paths", {}).values() for op in item.values() for tag in op.get("tags", [])}
    known = [tag for tag in TAGS if tag["name"] in used]
    names = {tag["name"] for tag in known}
    result["tags"] = known + [{"name": name} for name in sorted(used - names)]
    return result


class APIKeyScheme(OpenApiAuthenticationExtension):
    """`Authorization: Bearer <key>`, as the OpenAI clients send it."""

    target_class = "accounts.authentication.APIKeyAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A tenant API key: `Authorization: Bearer sk-...`"}
