"""The one-way stack of DESIGN.md §1, read from the code's own imports.

Every ``import`` and ``from ... import`` in every module of ``python/scratchdet`` and
``prototxt_gen`` is walked with ``ast`` (module level and inside functions, relative and absolute;
``importlib.import_module("scratchdet...")`` with a literal name counts too), mapped to its layer,
and the test fails naming ``file:line importer -> imported`` when a module imports a layer above its
own. A module may import its own layer or any lower one. There is no allow-list. Imports inside
functions are allowed only downwards (they defer torch, matplotlib or the registry to the commands
that need them); no import of our own modules may sit in a ``try`` block, where a broken module would
turn into silent fallback behaviour. A lower layer that needs something from above is handed it by
the top layer (e.g. ``cli`` installs the variant registry into ``report.variants``).

The layers, bottom to top (same rank: may import each other):

    rank  layer                                  why there
    0     scratchdet.paper, scratchdet.errors    pure data: the paper's numbers; the error type, exit codes
    1     scratchdet.caffe                       Caffe's formats (proto, prototxt, upgrades, shapes)
    2     scratchdet.boxes, scratchdet.ap        box arithmetic; AP and the solver's detection mAP
    3     scratchdet.data, scratchdet.datasets   readers, LMDB, augmentation; the data-set catalog
    4     scratchdet.engine                      the PyTorch runtime (net, layers, solver, trainer)
    5     scratchdet.eval                        file-level VOC / COCO evaluation
    6     scratchdet.report                      log parsing, score card, plots
    7     prototxt_gen                           the generators and the variant registry
    8     scratchdet.backends                    drives our engine or a real Caffe binary, exports
    9     scratchdet.pipeline, scratchdet.mini_paper
                                                 experiment plans and the mini-paper runner
    10    scratchdet.commands                    one argparse front-end per subcommand
    11    scratchdet.cli, scratchdet.__main__    the entry point

``scratchdet`` itself (its ``__init__``) imports nothing of ours and sits outside the table.
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIBRARY = REPO / "python" / "scratchdet"
GENERATORS = REPO / "prototxt_gen"

RANK = {
    "scratchdet.paper": 0, "scratchdet.errors": 0,
    "scratchdet.caffe": 1,
    "scratchdet.boxes": 2, "scratchdet.ap": 2,
    "scratchdet.data": 3, "scratchdet.datasets": 3,
    "scratchdet.engine": 4,
    "scratchdet.eval": 5,
    "scratchdet.report": 6,
    "prototxt_gen": 7,
    "scratchdet.backends": 8,
    "scratchdet.pipeline": 9, "scratchdet.mini_paper": 9,
    "scratchdet.commands": 10,
    "scratchdet.cli": 11, "scratchdet.__main__": 11,
}


def module_name(path: Path) -> str:
    if path.is_relative_to(LIBRARY):
        parts = ("scratchdet",) + path.relative_to(LIBRARY).with_suffix("").parts
    else:
        parts = ("prototxt_gen",) + path.relative_to(GENERATORS).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> str | None:
    """The layer a dotted name belongs to (the longest prefix in RANK); None outside our code, or for
    the bare ``scratchdet`` package."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANK:
            return ".".join(parts[:n])
    if parts[0] in ("scratchdet", "prototxt_gen") and len(parts) > 1 and module != "scratchdet":
        return module                   # ours but unplaced: test_every_module_has_a_layer names it
    return None


def imports_of_node(node: ast.AST, module: str, path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) imported by one node; ``from pkg import name`` counts as ``pkg.name`` (a
    submodule or a name in ``pkg``: either way the importer depends on that layer)."""
    if isinstance(node, ast.Import):
        return [(node.lineno, alias.name) for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        return [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    if (isinstance(node, ast.Call) and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__")
            and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        return [(node.lineno, node.args[0].value)]
    return []


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every import in ``path``, at any depth (function bodies included)."""
    return [hit for node in ast.walk(ast.parse(path.read_text(), str(path)))
            for hit in imports_of_node(node, module, path)]


def sources() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py")) + sorted(GENERATORS.rglob("*.py"))


def back_edges() -> list[str]:
    found = []
    for path in sources():
        module = module_name(path)
        own = layer(module)
        if own is None or own not in RANK:
            continue
        for line, target in imports(path, module):
            theirs = layer(target)
            if theirs in RANK and RANK[theirs] > RANK[own]:
                found.append(f"{path.relative_to(REPO)}:{line} {module} -> {target}")
    return found


def test_every_module_has_a_layer():
    unplaced = sorted({layer(module_name(p)) for p in sources()} - set(RANK) - {None})
    assert not unplaced, f"modules with no place in the stack (add them to RANK and this docstring): {unplaced}"


def test_no_module_imports_a_higher_layer():
    found = back_edges()
    assert not found, "imports against the stack:\n" + "\n".join(found)


def test_no_import_of_ours_is_guarded():
    # a `try: import` around our own code turns a broken module into silent fallback behaviour
    found = []
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Try):
                for stmt in node.body:
                    for inner in ast.walk(stmt):
                        for line, target in imports_of_node(inner, module_name(path), path):
                            if layer(target) is not None:
                                found.append(f"{path.relative_to(REPO)}:{line} {target}")
    assert not found, "guarded imports of our own modules:\n" + "\n".join(found)


def test_the_walker_sees_relative_lazy_and_importlib_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from ..report import compare\n\ndef f():\n    from ..eval.voc import evaluate\n"
                   "    import prototxt_gen.registry\n    importlib.import_module('scratchdet.cli')\n")
    got = sorted(imports(src, "scratchdet.engine.m"))
    assert got == [(1, "scratchdet.report.compare"), (4, "scratchdet.eval.voc.evaluate"),
                   (5, "prototxt_gen.registry"), (6, "scratchdet.cli")]
    assert [layer(t) for _, t in got] == ["scratchdet.report", "scratchdet.eval", "prototxt_gen", "scratchdet.cli"]
    assert layer("scratchdet") is None and layer("numpy.linalg") is None
