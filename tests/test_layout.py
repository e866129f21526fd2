"""The package's architecture, read from its imports: rooms by domain, imports that run downward only.

    core      errors, atomic, hashing, schema, layout, options, records, schedule (import nothing of the rooms)
    stats     curves, laws, noise, the break test, fits, trends   (no torch, no training side)
    data      sources, preparation, token shards
    train     sizes, model, optimizer, checkpoints, loop, launch  (may use data)
    analysis  evaluation, the loss dataset, ZSL, one-step, suites (may use data, train, stats)
    glue      config, cli, report                                 (may use everything)
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "scaledyn"
CORE = {"errors", "atomic", "hashing", "schema", "layout", "options", "records", "schedule"}
GLUE = {"config", "cli", "report", "__main__"}
ALLOWED = {  # room -> rooms it may import
    "core": {"core"},
    "stats": {"core", "stats"},
    "data": {"core", "data"},
    "train": {"core", "data", "train"},
    "analysis": {"core", "data", "train", "stats", "analysis"},
    "glue": {"core", "data", "train", "stats", "analysis", "glue"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def room(module: str) -> str:
    top = module.split(".")[0]
    if top in ("stats", "data", "train", "analysis"):
        return top
    return "core" if top in CORE or top == "__init__" else "glue"


def imports(path: Path) -> tuple[set[str], set[str]]:
    """(scaledyn modules, third-party top-level packages) that a module imports, anywhere in it."""
    module = module_name(path)
    package = module.split(".")[:-1] if path.name != "__init__.py" else module.split(".")
    package = [] if module == "__init__" else package
    ours, theirs = set(), set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for a in node.names:
                (ours.add(a.name[len("scaledyn."):]) if a.name.startswith("scaledyn.") else theirs.add(a.name.split(".")[0]))
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module == "scaledyn" or node.module.startswith("scaledyn."):
                    base = node.module[len("scaledyn."):] if "." in node.module else ""
                else:
                    theirs.add(node.module.split(".")[0])
                    continue
            else:
                up = package[: len(package) - (node.level - 1)]
                base = ".".join(up + ([node.module] if node.module else []))
            for a in node.names:  # `from . import x` names a module; `from .m import f` names m
                candidate = f"{base}.{a.name}" if base else a.name
                ours.add(candidate if _exists(candidate) else base or "__init__")
    return ours, theirs


def _exists(module: str) -> bool:
    p = PKG.joinpath(*module.split("."))
    return p.with_suffix(".py").exists() or (p / "__init__.py").exists()


@pytest.fixture(scope="module")
def graph() -> dict[str, tuple[set[str], set[str]]]:
    return {module_name(p): imports(p) for p in PKG.rglob("*.py")}


def test_imports_run_downward(graph):
    wrong = [f"{m} ({room(m)}) imports {d} ({room(d)})" for m, (ours, _) in graph.items() for d in ours
             if room(d) not in ALLOWED[room(m)]]
    assert not wrong, wrong


def test_no_import_circle(graph):
    edges = {m: {d for d in ours if d in graph and d != m and not m.startswith(d + ".")}
             for m, (ours, _) in graph.items()}
    state: dict[str, int] = {}

    def visit(m, path):
        state[m] = 1
        for d in sorted(edges[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(d):] + [d]))
            if d not in state:
                visit(d, path + [d])
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])


def test_stats_needs_no_training_stack(graph):
    heavy = {"torch", "transformers", "accelerate", "safetensors", "tokenizers", "datasets"}
    for m, (_, theirs) in graph.items():
        if room(m) == "stats":
            assert not theirs & heavy, f"{m} imports {theirs & heavy}"
    # and at run time: the public API loads no torch
    code = ("import sys, scaledyn.stats as s; s.fit_curve, s.read_curve_csv, s.ScalingTrend; "
            "print(sorted(k for k in sys.modules if k.split('.')[0] in {'torch', 'transformers', 'accelerate'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_checker_sees_a_wrong_arrow(tmp_path, monkeypatch):
    """The checks above can fail: a stats module that imports the training side is caught."""
    fake = tmp_path / "scaledyn"
    (fake / "stats").mkdir(parents=True)
    (fake / "train").mkdir()
    (fake / "stats" / "bad.py").write_text("import torch\nfrom ..train import loop\n")
    (fake / "train" / "loop.py").write_text("from ..stats import bad\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", fake)
    g = {module_name(p): imports(p) for p in fake.rglob("*.py")}
    assert g["stats.bad"] == ({"train.loop"}, {"torch"})
    with pytest.raises(AssertionError, match="stats.bad"):
        test_imports_run_downward(g)
    with pytest.raises(AssertionError, match="import circle"):
        test_no_import_circle(g)
