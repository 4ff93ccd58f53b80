"""``scratchdet gen``: write the prototxts, solver and train.sh of paper variants.

    scratchdet gen voc07_rootres34                 # models/VOC0712/voc07_rootres34/...
    scratchdet gen --all --out models              # every variant (what models/ holds)
    scratchdet gen --list [--json]                 # ids, tables, paper numbers, schedules
    scratchdet gen demo_rootres --set input_size=160 --set max_iter=600
"""
from __future__ import annotations

import ast
import json
import sys

from tqdm import tqdm

from ..errors import ScratchDetError


def add_arguments(p) -> None:
    p.add_argument("ids", nargs="*", metavar="ID", help="variant ids (see --list)")
    p.add_argument("--all", action="store_true", help="every variant")
    p.add_argument("--list", action="store_true", help="list the variants instead of writing files")
    p.add_argument("--json", action="store_true", help="with --list: one JSON array with every field")
    p.add_argument("--out", default="models", help="output root: files go to OUT/<dataset>/<id>/ (default models)")
    p.add_argument("--lmdb-dir", default=None, help="folder of the LMDBs the nets read (default data/lmdb)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a build setting, e.g. max_iter=600, batch=8, input_size=160 (demo nets); "
                        "repeatable")


def _overrides(pairs: list[str]) -> dict:
    from prototxt_gen.build import OVERRIDES
    out = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ScratchDetError(f"--set {pair!r}: expected KEY=VALUE")
        if key not in OVERRIDES:
            raise ScratchDetError(f"--set {key}: unknown setting (known: {', '.join(sorted(OVERRIDES))})")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text   # a path or a word
        out[key] = value
    return out


def _list(variants, as_json: bool) -> None:
    if as_json:
        print(json.dumps([v.describe() for v in variants], indent=1))
        return
    print(f"{'id':42s} {'table':15s} {'dataset':12s} {'paper':>8s} {'lr':>7s}  schedule")
    for v in variants:
        r = v.paper_result
        value = "-" if r is None else ("NAN" if r.is_nan else f"{r.value:g}")
        steps = "/".join(f"{s // 1000}k" if s % 1000 == 0 else str(s) for s in v.schedule.stepvalue)
        print(f"{v.id:42s} {v.table:15s} {v.dataset:12s} {value:>8s} {v.base_lr:7g}  "
              f"steps {steps}, {v.schedule.max_iter} iters, batch {v.batch}")


def main(args) -> int:
    from prototxt_gen import build, registry
    if args.list:
        variants = [registry.get(i) for i in args.ids] if args.ids else registry.all_variants()
        _list(variants, args.json)
        return 0
    if not args.ids and not args.all:
        raise ScratchDetError("name variant ids, or --all (see --list)")
    variants = registry.all_variants() if args.all else [registry.get(i) for i in args.ids]
    overrides = _overrides(args.set)
    if args.lmdb_dir:
        overrides["lmdb_dir"] = args.lmdb_dir
    quiet = len(variants) == 1 or not sys.stderr.isatty()
    # build everything first: a variant that fails leaves no file written
    rendered = [build.render_variant(v, args.out, **overrides)
                for v in tqdm(variants, desc="gen", unit="variant", disable=quiet)]
    folders = [build.write_rendered(folder, files) for folder, files in rendered]
    for folder in folders if len(folders) <= 4 else []:
        print(folder)
    if len(folders) > 4:
        print(f"{len(folders)} variants written under {args.out}/")
    return 0
