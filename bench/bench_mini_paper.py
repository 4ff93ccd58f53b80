"""How long ``make mini-paper`` takes on this machine: each net's seconds per iteration with
``--jobs`` runs side by side (as the target runs them), its test pass and start-up, and the
projected wall time of the default plan, printed as a table.

    python bench/bench_mini_paper.py [--iterations 100] [--images 2000] [--jobs 2]

Run it on idle cores: the target's time goal (60 minutes on 2 cores) is stated for idle ones.
Works in a temporary folder (its own synthetic sets and runs); nothing is left behind.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from scratchdet import mini_paper as mp
from scratchdet.caffe import glog

REPO = Path(__file__).resolve().parents[1]
SAMPLES = {"table1": ["bn-both/lr0.05"], "fig3": ["resnet18", "resnet18_a", "resnet18_b", "root_resnet18"]}


def loss_times(log: Path) -> dict[int, float]:
    """Iteration -> seconds of the day, from the log's loss lines."""
    out = {}
    for line in log.read_text().splitlines():
        m = glog.GLOG_RE.match(line)
        loss = m and glog.LOSS_RE.search(m.group(6))
        if loss and m.group(3):
            h, mi, s = m.group(3).split(":")
            out[int(loss.group(1))] = int(h) * 3600 + int(mi) * 60 + float(s)
    return out


def measure(run: mp.Run, warmup: int) -> tuple[float, float]:
    """(seconds per iteration after ``warmup`` iterations, seconds of the run outside that loop)."""
    _, rc, seconds = mp.execute(run)
    if rc != 0:
        raise SystemExit(f"bench_mini_paper: {run.variant} failed (exit {rc}); see {run.folder / 'commands.log'}")
    times = loss_times(run.log)
    last = max(times)
    per_iter = (times[last] - times[warmup]) / (last - warmup)
    return per_iter, seconds - per_iter * run.scale.iterations


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=100, help="iterations per sample run (display every 20)")
    p.add_argument("--images", type=int, default=mp.IMAGES, help="synthetic images per set (the plan's count)")
    p.add_argument("--jobs", type=int, default=2, help="runs side by side, one thread each, as the target")
    args = p.parse_args(argv)
    os.chdir(REPO)                       # the plan's label map path is relative to the repository
    default = mp.plan(mp.default_scales())
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_mini_paper.") as tmp:
        mp.OUT, mp.DATA = f"{tmp}/runs", f"{tmp}/data"
        scales = mp.default_scales(iterations=args.iterations, seeds=tuple(range(1, args.jobs + 1)), images=args.images)
        for cmd in mp.data_commands(scales, mp.PARTS):
            rc = subprocess.call(mp._argv(cmd), stdout=subprocess.DEVNULL)
            if rc != 0:
                raise SystemExit(f"bench_mini_paper: making the data failed: {mp.show(cmd)}")
        samples = mp.plan(scales)
        for part, cells in SAMPLES.items():
            for cell in cells:
                side_by_side = [r for r in samples if r.part == part and r.cell == cell]
                started = time.monotonic()
                with ThreadPoolExecutor(args.jobs) as pool:
                    results = list(pool.map(lambda r: measure(r, 20), side_by_side))
                wall = time.monotonic() - started
                per_iter = sum(r[0] for r in results) / len(results)
                overhead = sum(r[1] for r in results) / len(results)
                planned = [r for r in default if r.part == part and (part == "fig3" and r.cell == cell or part == "table1")]
                run_s = sum(per_iter * r.scale.iterations + overhead for r in planned)
                rows.append((f"{part} {cell}", per_iter, overhead, len(planned), run_s, wall))
    print(f"| net ({args.jobs} side by side, 1 thread each) | s/iteration | test pass + start-up, s | "
          "runs in the default plan | their run-minutes |")
    print("|---|---|---|---|---|")
    for name, per_iter, overhead, n, run_s, _ in rows:
        print(f"| {name} | {per_iter:.3f} | {overhead:.0f} | {n} | {run_s / 60:.1f} |")
    total = sum(r[4] for r in rows)
    # no-BN at lr 0.01 / 0.05 stops at its first non-finite loss (iteration 2-4 here); the upper bound counts them full
    nan_runs = [r for r in default if r.cell in ("bn-none/lr0.01", "bn-none/lr0.05")]
    t1 = next(r for r in rows if r[0].startswith("table1"))
    nan_s = len(nan_runs) * (t1[1] * nan_runs[0].scale.iterations) if nan_runs else 0.0
    print(f"\nprojected `make mini-paper` wall time, {args.jobs} jobs: {total / args.jobs / 60:.0f} min if every run "
          f"trains to the end; {(total - nan_s) / args.jobs / 60:.0f} min with the {len(nan_runs)} no-BatchNorm runs "
          "at lr 0.01 / 0.05 stopping at their first NAN")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
