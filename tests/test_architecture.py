"""The layout keeps its promises (docs/architecture.md): what each folder may import, no import
circles, and ``model.py`` as thin glue. Read from the source with ``ast``, so function-level
(lazy) imports count too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "ncalr_backend"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict:
    mods = {_module_name(p): p for p in PKG.rglob("*.py")}
    mods["model"] = ROOT / "model.py"
    mods["_wsgi"] = ROOT / "_wsgi.py"
    return mods


MODULES = _modules()


def imports_of(name: str) -> set:
    """Every module ``name`` imports, anywhere in its body, as absolute dotted names. An import of
    ``pkg.x`` where ``x`` is a submodule resolves to the submodule."""
    path = MODULES[name]
    is_pkg = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            if mod == "__future__":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in MODULES else mod)
    return out


def _ours(mod: str) -> bool:
    return mod in MODULES


def test_the_module_list_is_what_the_tree_holds():
    # guards the checks below against silently checking nothing
    for m in ("ncalr_backend.engine", "ncalr_backend.engine.run", "ncalr_backend.engine.training.trainer",
              "ncalr_backend.service.cycle", "ncalr_backend.service.app", "ncalr_backend.bench.quality", "model"):
        assert m in MODULES, m
    assert "ncalr_backend.service" in imports_of("model") or any(
        i.startswith("ncalr_backend.service") for i in imports_of("model"))


ENGINE_MAY_NOT = ("flask", "werkzeug", "requests", "urllib3", "label_studio_ml", "rq", "redis", "lxml",
                  "ncalr_backend.service", "ncalr_backend.bench", "ncalr_backend.data", "model", "_wsgi")


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith("ncalr_backend.engine")))
def test_engine_imports_no_web_no_service(name):
    bad = sorted(i for i in imports_of(name) if any(i == p or i.startswith(p + ".") for p in ENGINE_MAY_NOT))
    assert not bad, f"{name} imports {bad}: the engine must run without the service"


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m.startswith(("ncalr_backend.service",
                                                                              "ncalr_backend.data"))))
def test_service_and_data_never_import_the_benchmarks_or_the_entry_points(name):
    bad = sorted(i for i in imports_of(name)
                 if i.startswith("ncalr_backend.bench") or i in ("model", "_wsgi"))
    assert not bad, f"{name} imports {bad}"


def test_data_and_atomic_are_leaves():
    """data/ (image decoding and cache, data sets) and atomic.py (atomic writes) import nothing of
    ours but themselves: everyone may use them."""
    for name in (m for m in MODULES if m.startswith("ncalr_backend.data")):
        bad = sorted(i for i in imports_of(name) if _ours(i) and not i.startswith("ncalr_backend.data")
                     and i != "ncalr_backend.atomic")
        assert not bad, f"{name} imports {bad}: data/ holds loaders only"
    assert not [i for i in imports_of("ncalr_backend.atomic") if _ours(i)]


def test_model_py_is_thin_glue():
    imps = imports_of("model")
    assert "_wsgi" not in imps
    assert not any(i.startswith("ncalr_backend.engine") for i in imps), "model.py must not hold engine code"
    assert len((ROOT / "model.py").read_text().splitlines()) < 80


def _cycles() -> list:
    graph = {m: {i for i in imports_of(m) if _ours(i) and i != m} for m in MODULES}
    seen, stack, on_stack, found = set(), [], set(), []

    def visit(m):
        seen.add(m)
        stack.append(m)
        on_stack.add(m)
        for n in sorted(graph[m]):
            if n in on_stack:
                found.append(stack[stack.index(n):] + [n])
            elif n not in seen:
                visit(n)
        stack.pop()
        on_stack.discard(m)

    for m in sorted(graph):
        if m not in seen:
            visit(m)
    return found


def test_no_import_circles():
    assert _cycles() == []


def test_the_cycle_detector_finds_a_circle(monkeypatch):
    # the check above must be able to fail: a fake circle between two real modules is reported
    real = imports_of
    fake = {"ncalr_backend.service.store": {"ncalr_backend.service.cycle"}}
    monkeypatch.setitem(globals(), "imports_of", lambda m: real(m) | fake.get(m, set()))
    assert any("ncalr_backend.service.store" in c for c in _cycles())


def test_every_import_of_our_names_resolves():
    """``from ncalr_backend.x import y`` anywhere in the package, the entry points, the tests and
    the scripts names something ``x`` has (a moved function breaks here, not in a benchmark run)."""
    import importlib

    files = [p for d in ("ncalr_backend", "tests", "scripts") for p in (ROOT / d).rglob("*.py")]
    files += [ROOT / "model.py", ROOT / "_wsgi.py"]
    missing = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                    and node.module.split(".")[0] in ("ncalr_backend", "model")):
                continue
            mod = importlib.import_module(node.module)
            for a in node.names:
                if not hasattr(mod, a.name) and f"{node.module}.{a.name}" not in MODULES:
                    missing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.module} has no {a.name}")
    assert missing == []
