"""``scratchdet compare``: a score card per training log, the paper's number against this run's
(the verdicts are listed in ``report.compare``).

    scratchdet compare runs/VOC0712/*/train.log [--variant ID ...] [--paper-key KEY ...]
                       [--tolerance 1.0] [--markdown | --json] [--strict]
"""
from __future__ import annotations

import sys

from ..errors import ScratchDetError
from ..report import compare, variants
from ..report.logparse import parse_log


def add_arguments(p) -> None:
    p.add_argument("logs", nargs="+", metavar="LOG", help="training logs (Caffe SSD, BVLC Caffe or ours)")
    p.add_argument("--variant", action="append", default=None,
                   help="variant id per log, in order (default: from runs/<dataset>/<variant>/, the snapshot prefix or net name)")
    p.add_argument("--paper-key", action="append", default=None,
                   help="paper result key per log (e.g. table1/scratch_bn_both/lr0.05), overriding the registry's")
    p.add_argument("--tolerance", type=float, default=1.0, help="points of mAP counted as a match (default 1.0)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--markdown", action="store_true", help="print a Markdown table")
    fmt.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--strict", action="store_true",
                   help=f"exit 1 when a verdict is one of: {', '.join(compare.STRICT_FAILURES)}")


def _per_log(values, n: int, flag: str) -> list:
    if not values:
        return [None] * n
    if len(values) != n:
        raise ScratchDetError(f"{flag} given {len(values)} times for {n} logs: give it once per log, in order")
    return list(values)


def main(args) -> int:
    if args.tolerance < 0:
        raise ScratchDetError(f"--tolerance {args.tolerance}: must not be negative")
    n = len(args.logs)
    vids = _per_log(args.variant, n, "--variant")
    keys = _per_log(args.paper_key, n, "--paper-key")
    for key in keys:
        if key:
            variants.check_paper_key(key)
    cards = [compare.score(parse_log(log), vid, key, args.tolerance) for log, vid, key in zip(args.logs, vids, keys)]
    if args.json:
        print(compare.format_json(cards))
    elif args.markdown:
        print(compare.format_markdown(cards, args.tolerance))
    else:
        print(compare.format_text(cards))
    if args.strict and any(c.verdict in compare.STRICT_FAILURES for c in cards):
        print("scratchdet compare: some runs do not match the paper (see verdicts)", file=sys.stderr)
        return 1
    return 0
