"""The gateway's modules form a layered graph (README "Architecture"): no import cycle, the router
imported by nothing but the ASGI entry point, providers and translations never reaching up into
the lifecycle or the endpoints."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def module_imports() -> dict[str, set[str]]:
    """Each project module → the project modules it imports (anywhere in its body)."""
    paths = {}
    for package in ("usage", "billing", "openbili", "tickets"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            paths[name] = path
    graph: dict[str, set[str]] = {name: set() for name in paths}
    for name, path in paths.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {target for target in targets if target in paths and target != name}
    return graph


def cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    stack, on_path, done = [(start, iter(sorted(graph[start])))], [start], set()
    while stack:
        node, children = stack[-1]
        child = next(children, None)
        if child is None:
            stack.pop()
            on_path.pop()
            done.add(node)
        elif child in on_path:
            return [*on_path[on_path.index(child) :], child]
        elif child not in done:
            stack.append((child, iter(sorted(graph[child]))))
            on_path.append(child)
    return None


def test_the_gateway_has_no_import_cycle():
    graph = module_imports()
    gateway = {name: deps for name, deps in graph.items() if name.startswith("usage.gateway")}
    assert gateway, "the gateway's modules were not found"
    for name in gateway:
        assert cycle_from(graph, name) is None, cycle_from(graph, name)


def test_nothing_imports_the_router_but_the_asgi_entry_point():
    importers = {name for name, deps in module_imports().items() if "usage.gateway.app" in deps}
    assert importers == {"openbili.asgi"}


def test_providers_and_translations_never_reach_up_into_the_lifecycle_or_the_endpoints():
    upward = ("usage.gateway.lifecycle", "usage.gateway.endpoints", "usage.gateway.app", "usage.gateway.context")
    for name, deps in module_imports().items():
        if name.startswith(("usage.gateway.providers", "usage.gateway.translate")):
            assert not {dep for dep in deps if dep.startswith(upward)}, name
