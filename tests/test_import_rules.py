"""The project's import rules, read from the code by grimp (every import statement,
including those inside functions):

- the apps are layers, highest first: dashboard > images > billing > accounts > core;
  a module imports only from its own layer and those below (grimp's layer check,
  0 illegal imports; a lower layer reaches a higher one through a signal or a
  function the higher one registers, e.g. accounts.signals.tenant_signed_up and
  accounts.services.model_catalog_register);
- no import cycles among the project's modules;
- no app imports another app's views (HTTP adapters): each app's views are reached
  only through platform/urls.py and platform/api_router.py (the dashboard playground
  builds on images.charged, the charged flow every paid endpoint shares, which routes
  nothing itself);
- `core` depends on none of the project's apps;
- torch, diffusers and transformers are imported only under images/backends/local/
  (and by the tooling in tools/), so the web tier never pays for them.
"""

from __future__ import annotations

import grimp
import pytest

APPS = ("core", "accounts", "billing", "images", "dashboard")
PACKAGES = (*APPS, "tools")
# Highest first: each layer may import those below it, never those above.
LAYERS = ["dashboard", "images", "billing", "accounts", "core"]
# HTTP adapters per app (DRF ViewSets, API views, dashboard pages).
VIEWS = {
    "accounts.api",
    "billing.api",
    "images.api",
    "images.tasks_api",
    "images.vendors",
    "images.stability",
    "images.midjourney",
    "images.loras_api",
    "images.webhooks_api",
    "dashboard.views",
    "dashboard.webhooks",
    "dashboard.overview",
    "dashboard.playground",
}
# (importer, imported) view imports allowed across apps, each with its reason above.
VIEW_IMPORTS_ALLOWED: set[tuple[str, str]] = set()
GPU_PACKAGES = ("torch", "diffusers", "transformers", "accelerate")


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph(*PACKAGES, include_external_packages=True)


def _project_edges(graph) -> dict[str, set[str]]:
    modules = {m for m in graph.modules if m.split(".")[0] in PACKAGES}
    return {m: set(graph.find_modules_directly_imported_by(m)) & modules for m in modules}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _illegal_layer_imports(graph) -> list[str]:
    """Every import chain that goes up the layers, as "head -> ... -> tail" (grimp gives
    the direct upward imports, and chains through other modules between them)."""
    return sorted(
        " -> ".join([head, *route.middle, tail])
        for dependency in graph.find_illegal_dependencies_for_layers(layers=LAYERS)
        for route in dependency.routes
        for head in route.heads
        for tail in route.tails
    )


def test_layer_check_finds_an_upward_import():
    fake = grimp.ImportGraph()
    for module in ("dashboard", "dashboard.views", "images", "images.api", "core", "core.errors"):
        fake.add_module(module)
    fake.add_import(importer="dashboard.views", imported="images.api")  # down: allowed
    fake.add_import(importer="core.errors", imported="dashboard.views")  # up: illegal
    assert _illegal_layer_imports(fake) == ["core.errors -> dashboard.views"]


def test_apps_import_only_downwards(graph):
    assert _illegal_layer_imports(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles(graph):
    assert _cycles(_project_edges(graph)) == []


def test_no_app_imports_another_apps_views(graph):
    offenders = []
    for module, imported in _project_edges(graph).items():
        app = module.split(".")[0]
        for target in imported & VIEWS:
            if target.split(".")[0] != app and (module, target) not in VIEW_IMPORTS_ALLOWED:
                offenders.append(f"{module} -> {target}")
    assert offenders == []


def test_core_depends_on_no_app(graph):
    offenders = [
        f"{m} -> {t}"
        for m, imported in _project_edges(graph).items()
        if m.split(".")[0] == "core"
        for t in imported
        if t.split(".")[0] != "core"
    ]
    assert offenders == []


def test_only_the_local_backend_imports_torch_and_diffusers(graph):
    offenders = []
    for module in graph.modules:
        if module.split(".")[0] not in APPS or module.startswith("images.backends.local"):
            continue
        for target in graph.find_modules_directly_imported_by(module):
            if target.split(".")[0] in GPU_PACKAGES:
                offenders.append(f"{module} -> {target}")
    assert offenders == []
