# SPDX-License-Identifier: Apache-2.0
"""The package's shape: no import circle, and no module using another's underscore names.

Read from the source with ``ast``, so the rules hold for imports inside
functions too, and a new module is checked without being listed here.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("atrous_cl", "onnx_export")


def _modules() -> dict[str, ast.Module]:
    return {f"{package}.{path.stem}": ast.parse(path.read_text(), str(path))
            for package in PACKAGES for path in sorted((ROOT / package).glob("*.py"))}


MODULES = _modules()


def _imports(name: str, tree: ast.Module) -> dict[str, str]:
    """The package modules ``name`` imports, each with the local name it binds (or '')."""
    package = name.split(".")[0]
    found = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    found[alias.name] = alias.asname or ""
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = f"{package}.{node.module}" if node.level else node.module
            if module in PACKAGES:  # from atrous_cl import x: x may be a module
                for alias in node.names:
                    if f"{module}.{alias.name}" in MODULES:
                        found[f"{module}.{alias.name}"] = alias.asname or alias.name
            elif module in MODULES:
                found[module] = ""
    found.pop(name, None)
    return found


def test_modules_were_found():
    assert {"atrous_cl.ops", "atrous_cl.calls", "atrous_cl.launch", "onnx_export.cli"} <= set(MODULES)


def test_no_import_circle():
    """Package ``__init__`` modules excepted: importing a submodule runs them first anyway."""
    graph = {name: {m for m in _imports(name, tree) if not m.endswith(".__init__")}
             for name, tree in MODULES.items() if not name.endswith(".__init__")}

    def visit(node, path):
        if node in path:
            pytest.fail("import circle: " + " -> ".join(path[path.index(node):] + [node]))
        for nxt in sorted(graph.get(node, ())):
            visit(nxt, path + [node])

    for name in graph:
        visit(name, [])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_other_modules_underscore_names(name):
    tree = MODULES[name]
    imported = _imports(name, tree)
    local = {bound: module for module, bound in imported.items() if bound}
    used = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            if node.module in MODULES or node.module in PACKAGES:
                used += [f"{node.module}.{a.name}" for a in node.names
                         if a.name.startswith("_") and f"{node.module}.{a.name}" not in MODULES]
        elif (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
              and node.value.id in local and node.attr.startswith("_")
              and not node.attr.startswith("__")):
            used.append(f"{local[node.value.id]}.{node.attr}")
    assert not used, f"{name} uses underscore names of other modules: {sorted(set(used))}"


def test_the_checks_catch_what_they_look_for(monkeypatch):
    """A circle and an underscore name planted in copies of real modules are both found."""
    ops = ast.parse("from atrous_cl import calls\ncalls._secret()\n")
    calls = ast.parse("from atrous_cl import ops\n")
    monkeypatch.setitem(MODULES, "atrous_cl.ops", ops)
    monkeypatch.setitem(MODULES, "atrous_cl.calls", calls)
    with pytest.raises(pytest.fail.Exception, match="import circle"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match=r"atrous_cl\.calls\._secret"):
        test_no_other_modules_underscore_names("atrous_cl.ops")
