"""The one-way stack of DESIGN.md §1, read from the code's own imports (every ``import`` and
``from ... import`` anywhere in a module, function bodies included, so a lazy import counts too):
a module may import its own layer or a lower one, never a higher one.

    paper, errors  <  caffe  <  boxes, ap  <  data  <  engine  <  backends  <  eval  <  report
                   <  prototxt_gen  <  pipeline, mini_paper  <  commands, cli, __main__

A back-edge that is known and not yet removed is listed in KNOWN with the reason; the test also
fails when a listed edge has gone, so the list only shrinks."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "python" / "scratchdet"
GENERATORS = REPO / "prototxt_gen"

RANK = {"paper": 0, "errors": 0, "caffe": 1, "boxes": 2, "ap": 2, "data": 3, "engine": 4, "backends": 5,
        "eval": 6, "report": 7, "prototxt_gen": 8, "pipeline": 9, "mini_paper": 9, "commands": 10, "cli": 10,
        "__main__": 10}

# (importing module, imported layer): why it is still there
KNOWN = {
    ("scratchdet.report.variants", "prototxt_gen"):
        "the score card looks up a variant's paper number in the registry (issue #14: move the lookup "
        "above prototxt_gen, or the numbers into scratchdet.paper)",
}


def module_name(path: Path) -> str:
    if path.is_relative_to(LIBRARY):
        parts = ("scratchdet",) + path.relative_to(LIBRARY).with_suffix("").parts
    else:
        parts = ("prototxt_gen",) + path.relative_to(GENERATORS).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "prototxt_gen":
        return "prototxt_gen"
    if parts[0] != "scratchdet" or len(parts) < 2:
        return None                     # the package itself: its __init__ imports nothing of ours
    return parts[1]


def imported_modules(path: Path, module: str) -> set[str]:
    """Every module ``path`` imports, ``from pkg import name`` counted as ``pkg.name`` (a submodule or
    a name in ``pkg``: either way the importer depends on that layer)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.update(f"{target}.{alias.name}" for alias in node.names)
    return out


def back_edges() -> set[tuple[str, str]]:
    edges = set()
    for path in sorted(LIBRARY.rglob("*.py")) + sorted(GENERATORS.rglob("*.py")):
        module = module_name(path)
        own = layer(module)
        if own is None:
            continue
        for target in imported_modules(path, module):
            theirs = layer(target)
            if theirs is None or theirs == own:
                continue
            assert own in RANK, f"{path}: layer {own!r} has no place in the stack (add it to RANK and DESIGN)"
            assert theirs in RANK, f"{module} imports {target}: layer {theirs!r} has no place in the stack"
            if RANK[theirs] > RANK[own]:
                edges.add((module, theirs))
    return edges


def test_no_module_imports_a_higher_layer():
    edges = back_edges()
    new = sorted(edges - KNOWN.keys())
    assert not new, "imports against the stack: " + "; ".join(f"{m} -> {t}" for m, t in new)
    gone = sorted(KNOWN.keys() - edges)
    assert not gone, "KNOWN lists back-edges that no longer exist (remove them): " + str(gone)


def test_the_walker_sees_relative_and_lazy_imports(tmp_path):
    # the walker itself: a relative import two levels up and one inside a function both count
    src = tmp_path / "m.py"
    src.write_text("from ..report import compare\n\ndef f():\n    from ..eval.voc import evaluate\n")
    got = imported_modules(src, "scratchdet.engine.m")
    assert {"scratchdet.report.compare", "scratchdet.eval.voc.evaluate"} <= got
    assert {layer(t) for t in got} == {"report", "eval"}
