"""The shape of the code: product modules import each other without loops, and the core imports no WebUI.

The graph is read from the source (every import statement, including those inside functions, which are
dependencies too), not from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PRODUCT_PACKAGES = ("lib_magicnaming", "training")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PRODUCT_PACKAGES
        for path in sorted((REPO_ROOT / package).rglob("*.py"))
    }


def imported_modules(path: Path, name: str, known: set[str]) -> set[str]:
    """The product modules ``path`` (module ``name``) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:  # ``from package import module`` imports that module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    known = set(modules)
    return {name: imported_modules(path, name, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import loop as a list of modules (first == last), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_graph_is_read_from_the_source():
    graph = import_graph()
    assert "lib_magicnaming.towers" in graph["lib_magicnaming.factory"]
    assert "lib_magicnaming.model" in graph["lib_magicnaming.towers"]
    assert "lib_magicnaming.webui.store" in graph["lib_magicnaming.webui.conditioning"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_product_modules_import_each_other_without_loops():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import loop: " + " -> ".join(cycle)


def test_the_core_imports_no_webui():
    graph = import_graph()
    core = [name for name in graph if name.startswith("lib_magicnaming") and ".webui" not in name]
    for name in core:
        path = product_modules()[name]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = list(ast.walk(tree))
        imported = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module or "" for node in nodes if isinstance(node, ast.ImportFrom)}
        webui = sorted(m for m in imported if m.split(".")[0] in ("modules", "gradio") or ".webui" in m)
        assert not webui, f"{name} imports {webui}"


WEBUI_SPECIFIC = {
    "modules.sd_hijack", "modules.sd_models", "modules.textual_inversion", "backend",
    "sd_hijack", "sd_models", "model_hijack", "embedding_db", "cond_stage_model", "sd_model",
    "forge_model_reload", "text_processing_engine_l", "text_processing_engine_g",
    "last_extra_generation_params",
}
"""Where the WebUIs differ (module docstring of lib_magicnaming/webui/compat.py)."""


def test_only_the_compat_module_knows_where_the_webuis_differ():
    for name, path in product_modules().items():
        if not name.startswith("lib_magicnaming.webui") or name == "lib_magicnaming.webui.compat":
            continue
        used = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                used.add(node.module)
                used.update(f"{node.module}.{alias.name}" for alias in node.names)
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                used.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Attribute):
                used.add(node.attr)
        touched = {item for item in used if item in WEBUI_SPECIFIC or item.split(".")[0] == "backend"}
        assert not touched, f"{name} uses {sorted(touched)}: ask lib_magicnaming.webui.compat instead"
