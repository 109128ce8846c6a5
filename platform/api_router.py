"""The API's routes: DRF ViewSets on routers (no trailing slashes, as OpenAI's paths).

`v1_router` serves /v1/...; `api_router` serves the vendor shapes under /api/...
(seeds 002 and 003). Lookups accept any character but `/` (model ids contain dots:
`gpt-image-1.5`)."""

from __future__ import annotations

from rest_framework.routers import SimpleRouter

from accounts.api import KeyViewSet
from billing.api import BillingViewSet
from images.api import ImageFileViewSet, ImageModelViewSet, ImagesViewSet
from images.loras_api import LoraViewSet
from images.midjourney import MidjourneyImageViewSet, MidjourneySubmitViewSet, MidjourneyTaskViewSet
from images.tasks_api import TaskViewSet
from images.vendors import AigneViewSet, ResellerViewSet, VisionViewSet
from images.webhooks_api import WebhookViewSet

v1_router = SimpleRouter(trailing_slash=False)
v1_router.register("images/tasks", TaskViewSet, basename="task")
v1_router.register("images", ImagesViewSet, basename="images")
v1_router.register("models", ImageModelViewSet, basename="model")
v1_router.register("loras", LoraViewSet, basename="lora")
v1_router.register("files", ImageFileViewSet, basename="file")
v1_router.register("keys", KeyViewSet, basename="key")
# No prefix: its actions' url_paths are whole paths (balance, usage, credits/redeem).
v1_router.register("", BillingViewSet, basename="billing")
v1_router.register("webhooks", WebhookViewSet, basename="webhook")
v1_router.register("vision/generate", VisionViewSet, basename="vision")

api_router = SimpleRouter(trailing_slash=False)
api_router.register("images/generations", AigneViewSet, basename="aigne")
api_router.register("v1/image/generation", ResellerViewSet, basename="reseller")

# The Midjourney-proxy shape under /mj/... (issue 26 item 3; images/midjourney.py).
mj_router = SimpleRouter(trailing_slash=False)
mj_router.register("submit", MidjourneySubmitViewSet, basename="mj-submit")
mj_router.register("task", MidjourneyTaskViewSet, basename="mj-task")
mj_router.register("image", MidjourneyImageViewSet, basename="mj-image")
