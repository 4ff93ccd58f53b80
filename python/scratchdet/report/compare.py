"""``scratchdet compare``: a score card per training log, the paper's number against this run's.

For each log: the variant and its paper value (percent; the paper's "NAN" = did not converge), this
run's final and best test mAP (x100), final minus paper, how much of the schedule ran, and a verdict:

* ``NAN as expected``      the run diverged and the paper reports NAN
* ``unexpected NAN``       the run diverged and the paper reports a number (or none)
* ``no NAN yet (paper: NAN)``  the paper reports NAN, this run has not diverged but is not finished
* ``converged (paper: NAN)``   the paper reports NAN, this run finished without diverging
* ``crashed``              the log ends in a fatal error (glog ``F`` line such as ``Check failed: ...``,
                           glog's failure handler, the shell's ``Aborted``), not diverged
* ``no test yet``          no test output in the log
* ``no mAP output``        tests ran but report only losses (no DetectionEvaluate output)
* ``no paper value``       the variant has no paper number (e.g. the demo)
* ``not comparable``       the paper's metric is not the log's VOC-style mAP (COCO AP: use ``eval coco``)
* ``within tolerance`` / ``below`` / ``above``  |final - paper| <= tolerance (points), or which side

The *final* mAP is compared, as the paper reports the model at the end of its schedule; a run that
has not finished is marked ``partial``.

    scratchdet compare runs/VOC0712/*/train.log [--variant ID ...] [--paper-key KEY ...]
                       [--tolerance 1.0] [--markdown | --json] [--strict]
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from ..errors import ScratchDetError
from . import variants
from .logparse import RunRecord

WITHIN, BELOW, ABOVE = "within tolerance", "below", "above"
NAN_EXPECTED, NAN_UNEXPECTED = "NAN as expected", "unexpected NAN"
NAN_NOT_YET, CONVERGED_PAPER_NAN = "no NAN yet (paper: NAN)", "converged (paper: NAN)"
NO_TEST, NO_MAP, CRASHED = "no test yet", "no mAP output", "crashed"
NO_PAPER, NOT_COMPARABLE = "no paper value", "not comparable"
STRICT_FAILURES = (BELOW, NAN_UNEXPECTED, CONVERGED_PAPER_NAN, NO_TEST, NO_MAP, CRASHED)


@dataclass
class ScoreCard:
    log: str
    variant: str | None
    paper_key: str | None
    paper_source: str | None
    paper_metric: str | None
    paper_value: float | None          # percent; None with paper_nan False = no paper number
    paper_nan: bool
    final_map: float | None            # percent
    best_map: float | None             # percent
    best_iteration: int | None
    diff: float | None                 # final - paper, points
    iterations: int | None             # last iteration the log shows
    max_iter: int | None
    complete: bool
    status: str                        # the log's: done | diverged | crashed | running | empty
    diverged_at: int | None
    verdict: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def score(rec: RunRecord, variant: str | None = None, paper_key: str | None = None,
          tolerance: float = 1.0) -> ScoreCard:
    notes: list[str] = []
    variant = variant or variants.infer_variant(rec.source, rec)
    if paper_key is None and variant:
        paper_key = variants.paper_key_for(variant)
        if paper_key is None and variants.registry() is None:
            notes.append("no variant registry installed: give --paper-key to compare with the paper")
        elif paper_key is None and variants.registry_variant(variant) is None:
            notes.append(f"variant {variant!r} is not in the registry")
    try:
        result = variants.paper_result(paper_key)
    except ScratchDetError:   # a registry key that the paper's table lacks: report it, score on
        notes.append(f"paper key {paper_key!r} (from the registry) is not in scratchdet.paper")
        result = None
    final = rec.final_map
    best = rec.best_map
    max_iter = rec.max_iter
    last = rec.last_iteration
    complete = rec.done or (max_iter is not None and last is not None and last >= max_iter)
    card = ScoreCard(
        log=rec.source, variant=variant, paper_key=paper_key,
        paper_source=result.source if result else None, paper_metric=result.metric if result else None,
        paper_value=result.value if result else None, paper_nan=bool(result and result.is_nan),
        final_map=None if final is None else 100 * final,
        best_map=None if best is None else 100 * best[1], best_iteration=None if best is None else best[0],
        diff=None, iterations=last, max_iter=max_iter, complete=complete, status=rec.status,
        diverged_at=rec.diverged.iteration if rec.diverged else None, verdict="", notes=notes)
    if result is not None and result.secondary:
        notes.append("paper value from a secondary source")
    card.verdict = _verdict(card, rec, result, tolerance)
    if result is None and variant:
        _toy_verdict(card, rec, variant)
    if not complete and card.verdict not in (NAN_EXPECTED, NAN_UNEXPECTED, NAN_NOT_YET, CRASHED):
        notes.append("partial run" + (f": {last} of {max_iter} iterations" if last is not None and max_iter else ""))
    for w in rec.warnings[:3]:
        notes.append(w)
    return card


def _toy_verdict(card: ScoreCard, rec: RunRecord, variant: str) -> None:
    """A toy run (no paper number of its own) that imitates a paper cell: its mAP is not comparable,
    but whether it diverged is, as in Table 1's NAN cells."""
    key = variants.analogue_key_for(variant)
    try:
        cell = variants.paper_result(key) if key and key.startswith("table1/") else None
    except ScratchDetError:
        cell = None
    if cell is None:
        return
    card.notes.append(f"toy analogue of {cell.source}: {'NAN' if cell.is_nan else f'{cell.value:g}'} in the paper")
    if rec.diverged:
        card.verdict = NAN_EXPECTED if cell.is_nan else NAN_UNEXPECTED
    elif rec.crashed:
        pass
    elif cell.is_nan and card.complete:
        card.verdict = CONVERGED_PAPER_NAN


def _verdict(card: ScoreCard, rec: RunRecord, result, tolerance: float) -> str:
    if rec.diverged:
        return NAN_EXPECTED if result is not None and result.is_nan else NAN_UNEXPECTED
    if rec.crashed:     # its last mAP is not the schedule's end: no comparison
        where = "" if rec.crashed.iteration is None else f" after iteration {rec.crashed.iteration}"
        card.notes.append(f"crashed{where} (line {rec.crashed.line}): {rec.crashed.message[:160]}")
        return CRASHED
    if result is not None and result.is_nan:
        return CONVERGED_PAPER_NAN if card.complete else NAN_NOT_YET
    if card.final_map is None:
        if rec.tests:
            card.notes.append(f"the tests report no mAP output (outputs: {', '.join(rec.test_output_names())})")
            return NO_MAP
        return NO_TEST
    if result is None:
        return NO_PAPER
    if not result.metric.startswith("VOC"):
        card.notes.append(f"the paper reports {result.metric}; the log's test output is a VOC-style mAP "
                          "(use scratchdet eval coco on the detections)")
        return NOT_COMPARABLE
    if not math.isfinite(card.final_map):
        return NAN_UNEXPECTED
    card.diff = card.final_map - result.value
    if abs(card.diff) <= tolerance + 1e-9:
        return WITHIN
    return BELOW if card.diff < 0 else ABOVE


# -- output -----------------------------------------------------------------------------------------

def _fmt(v, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else "inf"
    return f"{v:.{digits}f}"


def _row(c: ScoreCard) -> list[str]:
    paper = "NAN" if c.paper_nan else _fmt(c.paper_value)
    best = "-" if c.best_map is None else f"{_fmt(c.best_map)} @{c.best_iteration}"
    diff = "-" if c.diff is None else f"{c.diff:+.1f}"
    iters = "-" if c.iterations is None else (f"{c.iterations}/{c.max_iter}" if c.max_iter else str(c.iterations))
    if c.diverged_at is not None:
        iters += f" (NAN at {c.diverged_at})"
    return [c.variant or "?", paper, _fmt(c.final_map), best, diff, iters, c.verdict]


HEADER = ["variant", "paper", "final", "best", "diff", "iterations", "verdict"]


def format_text(cards: list[ScoreCard]) -> str:
    rows = [HEADER] + [_row(c) for c in cards]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    for c in cards:
        extra = [f"log {c.log}"] + ([f"paper: {c.paper_source} ({c.paper_key})"] if c.paper_key else []) + c.notes
        lines.append(f"  {c.variant or '?'}: " + "; ".join(extra))
    return "\n".join(lines)


def format_markdown(cards: list[ScoreCard], tolerance: float) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join("---" for _ in HEADER) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in _row(c)) + " |" for c in cards]
    lines.append("")
    lines.append(f"mAP in percent (VOC07 test unless noted); diff = final - paper; tolerance {tolerance:g} points.")
    for c in cards:
        src = f"{c.paper_source} (`{c.paper_key}`)" if c.paper_key else "no paper value"
        lines.append(f"- **{c.variant or '?'}** ({c.log}): {src}" + ("; " + "; ".join(c.notes) if c.notes else ""))
    return "\n".join(lines)


def format_json(cards: list[ScoreCard]) -> str:
    return json.dumps([_json_safe(c.to_dict()) for c in cards], indent=1)


def _json_safe(v):
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v
