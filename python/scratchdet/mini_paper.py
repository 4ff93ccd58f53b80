"""``scratchdet mini-paper`` (``make mini-paper``): the paper's Table 1 and Table 2 / Figure 3 claims
at CPU scale, measured over seeds.

The plan: two synthetic sets (the default shapes for Table 1; the ``small`` profile, many small
objects, for Figure 3), then for every cell and seed the commands a user would type: ``scratchdet
gen`` (the ``mini_*`` variants of ``prototxt_gen/variants/mini_paper.py``, at the chosen scale) and
``scratchdet train``; for Figure 3 also ``scratchdet eval voc --by-size`` on the detection files
the final test pass wrote. ``jobs`` runs go at a time, each on one thread (``OMP_NUM_THREADS=1``),
so a result does not depend on how many ran beside it. A finished run is kept (its ``run.json``
records the settings it ran with): running the target again continues where it stopped.

Then the report (``runs/mini-paper/``): each cell's mAP per seed, mean and spread, or NAN with the
iteration; every claim marked reproduced / not reproduced / tie (a difference within twice its
standard error is a tie), ``scratchdet compare``'s score card, ``scratchdet plot``'s Figure 1
panels for the Table 1 cells, a PNG of AP by object size, and ``report.md`` with all of it.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prototxt_gen.variants import mini_paper as nets
from scratchdet.datasets import DATASETS


OUT = "runs/mini-paper"
DATA = "data/mini-paper"
LABELMAP = DATASETS["synthetic"].label_map
SIZE_SIDES = (32, 96)         # COCO's small/medium/large limits, on the ~300-px synthetic images (README)
SETS = {"table1": ("shapes", 1), "fig3": ("small", 2)}   # part -> (synthetic profile, its seed)
PARTS = tuple(SETS)
# The scale, chosen once to fit 60 minutes on 2 idle cores before the full plan ran (README,
# "make mini-paper"): Table 1's differences are large (NAN against trained, a few points against
# tens), so 2 seeds tell them apart; Figure 3's are a few points, so it gets 3 seeds and a shorter
# schedule. 2000 images: 1600 to train on (15 passes in 1500 iterations), 400 to test.
PART_ITERATIONS = {"table1": nets.MINI_ITER, "fig3": 1000}
PART_SEEDS = {"table1": (1, 2), "fig3": (1, 2, 3)}
IMAGES = 2000
# Seconds per iteration relative to the small VGG (measured on one thread): the longest runs
# go first, so the last minutes are not one long run beside an idle core
RELATIVE_COST = {"resnet18": 0.95, "resnet18_a": 1.1, "resnet18_b": 1.45, "root_resnet18": 2.9}


@dataclass(frozen=True)
class Scale:
    """The knobs that make the same plan larger (a GPU) or smaller (a quick look)."""
    input_size: int = nets.MINI_INPUT
    width: float = 1.0
    iterations: int = nets.MINI_ITER
    seeds: tuple = (1, 2, 3)
    images: int = IMAGES
    gpu: str = "cpu"          # train's --gpu: the one-thread CPU runs by default, a device id on a GPU

    def overrides(self) -> list[str]:
        return [f"input_size={self.input_size}", f"width={self.width:g}", f"max_iter={self.iterations}",
                f"test_interval={self.iterations}"]


@dataclass(frozen=True)
class Run:
    part: str                 # "table1" | "fig3"
    cell: str                 # "bn-both/lr0.05" | "root_resnet18"
    variant: str
    seed: int
    scale: Scale

    @property
    def folder(self) -> Path:
        return Path(OUT) / self.variant / f"seed{self.seed}"

    @property
    def log(self) -> Path:
        return self.folder / "train.log"

    @property
    def data(self) -> Path:
        return Path(DATA) / self.part

    def settings(self) -> dict:
        return {"variant": self.variant, "seed": self.seed, "scale": asdict(self.scale),
                "data": str(self.data)}

    def commands(self) -> list[tuple[list[str], Path | None]]:
        """(argv, file its standard output goes to, or None) in order."""
        f, data = self.folder, self.data
        gen = ["scratchdet", "gen", self.variant, "--out", str(f / "models"), "--lmdb-dir", str(data / "lmdb")]
        for o in self.scale.overrides() + [f"random_seed={self.seed}", f"run_dir={f}",
                                           f"name_size_file={data / 'test_name_size.txt'}",
                                           f"num_test_image={self.scale.images // 5}"]:
            gen += ["--set", o]
        solver = f / "models" / "synthetic" / self.variant / "solver.prototxt"
        cmds = [(gen, None), (["scratchdet", "train", "--solver", str(solver), "--gpu", self.scale.gpu, "--workers", "1",
                               "--quiet", "--log", str(self.log)], None)]
        if self.part == "fig3":
            cmds.append((["scratchdet", "eval", "voc", "--dets", str(f / "results" / "Main"),
                          "--annotations", str(data / "set" / "SYNTH" / "Annotations"),
                          "--imageset", str(data / "set" / "SYNTH" / "ImageSets" / "Main" / "test.txt"),
                          "--labelmap", LABELMAP, "--by-size", ",".join(map(str, SIZE_SIDES)), "--json",
                          "--quiet"], f / "by_size.json"))
        return cmds


def default_scales(input_size: int = nets.MINI_INPUT, width: float = 1.0, iterations: int | None = None,
                   seeds: tuple | None = None, images: int = IMAGES, gpu: str = "cpu") -> dict[str, Scale]:
    """Each part's scale: the given knobs, and the part's own iterations and seeds where not given."""
    return {part: Scale(input_size, width, iterations or PART_ITERATIONS[part], seeds or PART_SEEDS[part], images, gpu)
            for part in PARTS}


def plan(scales: dict[str, Scale], parts=PARTS) -> list[Run]:
    """Every run of the parts, the longest first (they are started in this order)."""
    runs = []
    if "table1" in parts:
        sc = scales["table1"]
        for name in nets.TABLE1_BN:
            for lr in nets.MINI_LRS:
                runs += [Run("table1", f"{name}/lr{lr:g}", f"mini_table1_{name}_lr{lr:g}", s, sc) for s in sc.seeds]
    if "fig3" in parts:
        sc = scales["fig3"]
        for name in nets.FIG3:
            runs += [Run("fig3", name, f"mini_fig3_{name}", s, sc) for s in sc.seeds]
    return sorted(runs, key=expected_cost, reverse=True)


def expected_cost(run: Run) -> float:
    """Rough seconds of one run, in small-VGG iterations (for the order only)."""
    size = (run.scale.input_size / nets.MINI_INPUT) ** 2 * run.scale.width ** 2
    return RELATIVE_COST.get(run.cell, 1.0) * run.scale.iterations * size


def data_commands(scales: dict[str, Scale], parts) -> list[list[str]]:
    """The synthetic sets the parts need, unless made already with these settings."""
    out = []
    for part in parts:
        scale = scales[part]
        profile, seed = SETS[part]
        root = Path(DATA) / part
        params = root / "set" / "params.json"
        want = {"images": scale.images, "seed": seed, "profile": profile}
        if params.is_file() and (root / "lmdb" / DATASETS["synthetic"].test_lmdb / "data.mdb").is_file():
            have = json.loads(params.read_text())
            if all(have.get(k, "shapes" if k == "profile" else None) == v for k, v in want.items()):
                continue
        out.append(["scratchdet", "data", "synthetic", "--out", str(root / "set"), "--images", str(scale.images),
                    "--seed", str(seed), "--profile", profile, "--lmdb", str(root / "lmdb"),
                    "--name-size", str(root / "test_name_size.txt")])
    return out


# -- running ------------------------------------------------------------------------------------------

def _argv(cmd: list[str]) -> list[str]:
    """``scratchdet ...`` as this interpreter runs it (the venv's console script, else ``-m``)."""
    if cmd[0] != "scratchdet":
        return cmd
    exe = shutil.which("scratchdet")
    return ([exe] if exe else [sys.executable, "-m", "scratchdet"]) + cmd[1:]


def show(cmd: list[str], stdout: Path | None = None) -> str:
    return shlex.join(cmd) + (f" > {shlex.quote(str(stdout))}" if stdout else "")


def finished(run: Run) -> bool:
    """The run completed with these settings earlier (its run.json is written last)."""
    marker = run.folder / "run.json"
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("settings") == json.loads(json.dumps(run.settings()))
    except (OSError, ValueError):
        return False


def execute(run: Run) -> tuple[Run, int, float]:
    """Run one cell/seed from scratch (its folder emptied first); (run, exit code, seconds).
    A training run that diverges (exit 3) is a result, as in Table 1, not a failure."""
    from .errors import EXIT_DIVERGED
    started = time.monotonic()
    if run.folder.exists():
        shutil.rmtree(run.folder)
    run.folder.mkdir(parents=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for cmd, stdout in run.commands():
        if stdout is None:
            with open(run.folder / "commands.log", "a") as out:
                out.write("+ " + show(cmd) + "\n")
                out.flush()
                rc = subprocess.call(_argv(cmd), env=env, stdout=out, stderr=subprocess.STDOUT)
        else:
            tmp = stdout.with_name(stdout.name + ".tmp")
            with open(tmp, "w") as out, open(run.folder / "commands.log", "a") as err:
                err.write("+ " + show(cmd, stdout) + "\n")
                err.flush()
                rc = subprocess.call(_argv(cmd), env=env, stdout=out, stderr=err)
            if rc == 0:
                os.replace(tmp, stdout)
        if rc == EXIT_DIVERGED and cmd[1] == "train":
            break                                   # NAN: nothing to evaluate
        if rc != 0:
            return run, rc, time.monotonic() - started
    seconds = time.monotonic() - started
    marker = run.folder / "run.json"
    tmp = marker.with_name("run.json.tmp")
    tmp.write_text(json.dumps({"settings": run.settings(), "seconds": round(seconds, 1)}, indent=1))
    os.replace(tmp, marker)
    return run, 0, seconds


def run_all(runs: list[Run], jobs: int) -> list[str]:
    """Every unfinished run, ``jobs`` at a time; returns the failures (one line each)."""
    todo = [r for r in runs if not finished(r)]
    done = len(runs) - len(todo)
    if done:
        print(f"mini-paper: {done} of {len(runs)} runs finished earlier, kept (delete {OUT} to start over)", flush=True)
    failures = []
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = [pool.submit(execute, r) for r in todo]
        for k, future in enumerate(as_completed(futures), start=1):
            run, rc, seconds = future.result()
            what = f"{run.part} {run.cell} seed {run.seed}"
            if rc != 0:
                failures.append(f"{what}: exit {rc} (see {run.folder / 'commands.log'})")
                result = f"FAILED (exit {rc})"
            else:
                result = describe(collect(run))
            elapsed = time.monotonic() - started
            eta = elapsed / k * (len(todo) - k)
            print(f"[{done + k}/{len(runs)}] {what}: {result} ({seconds:.0f} s; {elapsed / 60:.1f} min so far, "
                  f"about {eta / 60:.0f} min left)", flush=True)
    return failures


# -- results ------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    """One run: its final mAP (fraction), or the iteration it diverged at; AP by size (Figure 3)."""
    map: float | None = None
    nan_at: int | None = None
    by_size: dict = field(default_factory=dict)     # small/medium/large -> mAP (11-point), None = no objects
    missing: str | None = None                       # why there is no result


def collect(run: Run) -> Outcome:
    from .report.logparse import parse_log
    if not run.log.is_file():
        return Outcome(missing="not run")
    rec = parse_log(run.log)
    if rec.diverged:
        return Outcome(nan_at=rec.diverged.iteration)
    if rec.final_map is None:
        return Outcome(missing="no test output in the log")
    out = Outcome(map=float(rec.final_map))
    sizes = run.folder / "by_size.json"
    if run.part == "fig3" and sizes.is_file():
        data = json.loads(sizes.read_text()).get("by_size", {})
        out.by_size = {k: v.get("map_11point") for k, v in data.items()}
    return out


def describe(o: Outcome) -> str:
    if o.nan_at is not None:
        return f"NAN at iteration {o.nan_at}"
    if o.map is None:
        return o.missing or "no result"
    sizes = ", ".join(f"{k} {_pct(v)}" for k, v in o.by_size.items())
    return f"mAP {100 * o.map:.1f}" + (f" ({sizes})" if sizes else "")


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


@dataclass
class Cell:
    """A cell over its seeds: the mAPs of the runs that trained, and the NANs."""
    values: list = field(default_factory=list)      # fractions
    nans: list = field(default_factory=list)        # iterations
    missing: int = 0

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return sum(self.values) / self.n if self.n else None

    @property
    def sd(self) -> float:
        """Sample standard deviation (0 with one value)."""
        if self.n < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def all_nan(self) -> bool:
        return bool(self.nans) and not self.values and not self.missing

    def text(self) -> str:
        parts = []
        if self.n:
            parts.append(f"{100 * self.mean:.1f} ± {100 * self.sd:.1f}" if self.n > 1 else f"{100 * self.mean:.1f}")
        if self.nans:
            parts.append(f"NAN x{len(self.nans)} (it. {', '.join(map(str, self.nans))})" if len(self.nans) > 1
                         else f"NAN (it. {self.nans[0]})")
        if self.missing:
            parts.append(f"{self.missing} missing")
        return "; ".join(parts) or "-"


def cell_of(outcomes: list[Outcome], pick=lambda o: o.map) -> Cell:
    c = Cell()
    for o in outcomes:
        if o.nan_at is not None:
            c.nans.append(o.nan_at)
        elif o.map is None:
            c.missing += 1
        else:
            v = pick(o)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                c.missing += 1
            else:
                c.values.append(float(v))
    return c


# -- claims -------------------------------------------------------------------------------------------

REPRODUCED, NOT_REPRODUCED, TIE, NO_DATA = "reproduced", "not reproduced", "tie", "no data"
TIE_SE = 2.0        # a difference within this many standard errors is a tie


def compare_means(low: Cell, high: Cell) -> tuple[str, str]:
    """Whether ``high`` beats ``low``: (verdict, the numbers)."""
    if not low.n or not high.n:
        return NO_DATA, "a cell has no trained run"
    diff = high.mean - low.mean
    se = math.sqrt(low.sd ** 2 / low.n + high.sd ** 2 / high.n)
    numbers = f"{100 * high.mean:.1f} vs {100 * low.mean:.1f}: {100 * diff:+.1f} (2 SE {100 * TIE_SE * se:.1f})"
    if abs(diff) <= TIE_SE * se or (se == 0 and diff == 0):
        return TIE, numbers
    return (REPRODUCED if diff > 0 else NOT_REPRODUCED), numbers


@dataclass
class Claim:
    part: str
    text: str
    paper: str
    verdict: str
    numbers: str


def table1_cells(runs: list[Run]) -> dict[tuple[str, float], Cell]:
    cells = {}
    for name in nets.TABLE1_BN:
        for lr in nets.MINI_LRS:
            chosen = [r for r in runs if r.part == "table1" and r.cell == f"{name}/lr{lr:g}"]
            if chosen:
                cells[(name, lr)] = cell_of([collect(r) for r in chosen])
    return cells


def fig3_cells(runs: list[Run]) -> dict[str, dict[str, Cell]]:
    """name -> {"all": mAP cell, "small"/"medium"/"large": AP-by-size cells}."""
    out = {}
    for name in nets.FIG3:
        outcomes = [collect(r) for r in runs if r.part == "fig3" and r.cell == name]
        if outcomes:
            out[name] = {"all": cell_of(outcomes)}
            for size in ("small", "medium", "large"):
                out[name][size] = cell_of(outcomes, lambda o, s=size: o.by_size.get(s))
    return out


def _nan_claim(text: str, paper: str, cells: list[Cell], expect_nan: bool) -> Claim:
    nans = sum(len(c.nans) for c in cells)
    total = sum(len(c.nans) + c.n for c in cells)
    if total == 0:
        return Claim("Table 1", text, paper, NO_DATA, "no runs")
    hits = nans if expect_nan else total - nans
    numbers = f"{nans} of {total} runs NAN"
    verdict = REPRODUCED if hits == total else NOT_REPRODUCED if hits == 0 else f"partly ({hits} of {total} runs)"
    return Claim("Table 1", text, paper, verdict, numbers)


def table1_claims(cells: dict) -> list[Claim]:
    get = lambda name, lr: cells.get((name, lr), Cell())   # noqa: E731
    claims = [
        _nan_claim("without BatchNorm, lr 0.01 and 0.05 diverge", "NAN, NAN",
                   [get("bn-none", 0.01), get("bn-none", 0.05)], True),
        _nan_claim("without BatchNorm, lr 0.001 trains", "67.6", [get("bn-none", 0.001)], False),
        _nan_claim("BatchNorm in the head only still diverges at lr 0.05", "NAN", [get("bn-head", 0.05)], True),
        _nan_claim("BatchNorm in the backbone lets lr 0.05 train (backbone; backbone and head)", "78.0, 78.7",
                   [get("bn-backbone", 0.05), get("bn-both", 0.05)], False),
    ]
    for name, paper_text in (("bn-backbone", "72.8 -> 78.0"), ("bn-both", "71.8 -> 78.7")):
        verdict, numbers = compare_means(get(name, 0.001), get(name, 0.05))
        claims.append(Claim("Table 1", f"{name}: lr 0.05 beats lr 0.001", paper_text, verdict, numbers))
    best = get("bn-both", 0.05)
    others = {k: c for k, c in cells.items() if k != ("bn-both", 0.05) and c.n}
    if best.n and others:
        (name, lr), runner = max(others.items(), key=lambda kv: kv[1].mean)
        verdict, numbers = compare_means(runner, best)
        claims.append(Claim("Table 1", "BatchNorm in backbone and head at lr 0.05 is the best cell",
                            "78.7 (next: 78.0)", verdict, f"against the best other cell, {name} lr {lr:g}: {numbers}"))
    else:
        claims.append(Claim("Table 1", "BatchNorm in backbone and head at lr 0.05 is the best cell",
                            "78.7 (next: 78.0)", NO_DATA, "no trained run in that cell"))
    return claims


FIG3_ORDER = ("resnet18", "resnet18_a", "resnet18_b", "root_resnet18")
FIG3_PAPER = {"resnet18": 73.1, "resnet18_a": 75.3, "resnet18_b": 77.6, "root_resnet18": 78.5}


def fig3_claims(cells: dict) -> list[Claim]:
    claims = []
    for low, high in zip(FIG3_ORDER, FIG3_ORDER[1:]):
        if low in cells and high in cells:
            verdict, numbers = compare_means(cells[low]["all"], cells[high]["all"])
        else:
            verdict, numbers = NO_DATA, "not run"
        claims.append(Claim("Figure 3", f"mAP: {nets.FIG3_TITLES[high]} > {nets.FIG3_TITLES[low]}",
                            f"{FIG3_PAPER[high]} > {FIG3_PAPER[low]}", verdict, numbers))
    for high in ("resnet18_b", "root_resnet18"):
        claims.append(_small_gain_claim(cells, "resnet18", high))
    return claims


def _small_gain_claim(cells: dict, low: str, high: str) -> Claim:
    """The gain from ``low`` to ``high`` is larger on small objects than on large ones (the paper's
    "especially for small objects"): (gain small - gain large) beyond twice its standard error."""
    text = f"{nets.FIG3_TITLES[high]} over {nets.FIG3_TITLES[low]}: the gain is larger on small objects than on large"
    paper = "\"especially for small objects\" (§3.2, §4.2.2)"
    try:
        parts = [cells[high]["small"], cells[low]["small"], cells[high]["large"], cells[low]["large"]]
    except KeyError:
        return Claim("Figure 3", text, paper, NO_DATA, "not run")
    if any(not p.n for p in parts):
        return Claim("Figure 3", text, paper, NO_DATA, "no AP by size")
    gain_small = parts[0].mean - parts[1].mean
    gain_large = parts[2].mean - parts[3].mean
    diff = gain_small - gain_large
    se = math.sqrt(sum(p.sd ** 2 / p.n for p in parts))
    numbers = (f"gain small {100 * gain_small:+.1f}, large {100 * gain_large:+.1f}: difference "
               f"{100 * diff:+.1f} (2 SE {100 * TIE_SE * se:.1f})")
    if abs(diff) <= TIE_SE * se:
        return Claim("Figure 3", text, paper, TIE, numbers)
    return Claim("Figure 3", text, paper, REPRODUCED if diff > 0 else NOT_REPRODUCED, numbers)


# -- report -------------------------------------------------------------------------------------------

def _paper_cell(name: str, lr: float) -> str:
    from . import paper
    config = nets.TABLE1_BN[name][2]
    r = paper.lookup(paper.table1_key(config, lr))
    return "NAN" if r.is_nan else f"{r.value:g}"


def table1_markdown(cells: dict) -> str:
    lines = ["| BatchNorm | " + " | ".join(f"lr {lr:g}: here / paper" for lr in nets.MINI_LRS) + " |",
             "|---|" + "---|" * len(nets.MINI_LRS)]
    for name in nets.TABLE1_BN:
        row = [f"{cells[(name, lr)].text()} / {_paper_cell(name, lr)}" if (name, lr) in cells else "-"
               for lr in nets.MINI_LRS]
        lines.append(f"| {name} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def fig3_markdown(cells: dict) -> str:
    lines = ["| backbone | mAP here | paper | AP small | AP medium | AP large |", "|---|---|---|---|---|---|"]
    for name in FIG3_ORDER:
        if name in cells:
            c = cells[name]
            lines.append(f"| {nets.FIG3_TITLES[name]} | {c['all'].text()} | {FIG3_PAPER[name]} | "
                         f"{c['small'].text()} | {c['medium'].text()} | {c['large'].text()} |")
    return "\n".join(lines)


def claims_markdown(claims: list[Claim]) -> str:
    lines = ["| | claim | paper | here | verdict |", "|---|---|---|---|---|"]
    lines += [f"| {c.part} | {c.text} | {c.paper} | {c.numbers} | **{c.verdict}** |" for c in claims]
    return "\n".join(lines)


def _scale_text(part: str, scale: Scale) -> str:
    return (f"{part}: input {scale.input_size}x{scale.input_size}, width x{scale.width:g}, {scale.iterations} "
            f"iterations, batch {nets.MINI_BATCH}, seeds {', '.join(map(str, scale.seeds))}, {scale.images} "
            "synthetic images (every 5th held out)")


def report(runs: list[Run], scales: dict[str, Scale], wall_seconds: float | None, jobs: int) -> Path:
    """Tables, claims, score card and plots from the runs' files (rerunnable without training)."""
    from .data.files import write_atomic
    out = Path(OUT)
    t1 = table1_cells(runs)
    f3 = fig3_cells(runs)
    claims = table1_claims(t1) * bool(t1) + fig3_claims(f3) * bool(f3)
    run_seconds = 0.0
    for r in runs:
        try:
            run_seconds += json.loads((r.folder / "run.json").read_text())["seconds"]
        except (OSError, ValueError, KeyError):
            pass
    logs = [str(r.log) for r in runs if r.log.is_file()]
    card = _capture(["scratchdet", "compare", *logs, "--markdown"]) if logs else ""
    first_seed = scales["table1"].seeds[0]
    seed1 = [r for r in runs if r.part == "table1" and r.seed == first_seed and r.log.is_file()]
    if seed1:
        _capture(["scratchdet", "plot", *[str(r.log) for r in seed1], "--out", str(out / "table1_plots"),
                  *sum((["--variant", r.cell] for r in seed1), [])])
    if f3:
        from .report.plots import plot_grouped_bars
        groups = ["all", "small", "medium", "large"]
        series = {nets.FIG3_TITLES[n]: [(100 * c[g].mean, 100 * c[g].sd) if c[g].n else None for g in groups]
                  for n, c in f3.items()}
        plot_grouped_bars(groups, series, out / "fig3_ap_by_size.png",
                          f"Figure 3 at CPU scale: AP@0.5 by object size (mean ± sd over {len(scales['fig3'].seeds)} seeds)",
                          "AP (%)")
    timing = (f"{wall_seconds / 60:.1f} min wall clock for the runs made by this invocation" if wall_seconds
              else "no runs made by this invocation")
    text = "\n".join([
        "# The paper at CPU scale (`make mini-paper`)", "",
        "Scale: " + "; ".join(_scale_text(p, scales[p]) for p in sorted({r.part for r in runs})) + ". "
        f"Runs: {len(runs)}, {jobs} at a time on one thread each; {timing}; "
        f"{run_seconds / 60:.1f} run-minutes in all.", "",
        "mAP: VOC07 11-point at IoU 0.5 on the held-out images at the last iteration, in percent, "
        "mean ± sample standard deviation over the seeds that trained; NAN: the loss became non-finite "
        "(iteration given). A claim is a tie when the difference is within twice its standard error.", "",
        *(["## Table 1 (small VGG SSD on the shapes set)", "", table1_markdown(t1), ""] if t1 else []),
        *(["## Table 2 / Figure 3 (small ResNet-18 family on the small-objects set)", "",
           f"AP by object size: COCO's limits, box side {SIZE_SIDES[0]} and {SIZE_SIDES[1]} px, on the "
           "~300-px source images.", "", fig3_markdown(f3), "", "![AP by size](fig3_ap_by_size.png)", ""] if f3 else []),
        "## Claims", "", claims_markdown(claims), "",
        *(["## Score card (`scratchdet compare`)", "", card.strip(), ""] if card else []),
        *(["## Figure 1 panels, Table 1 cells (seed %d)" % first_seed, "",
           "![Figure 1](table1_plots/figure1.png)", ""] if seed1 else []),
    ])
    path = out / "report.md"
    write_atomic(path, text.encode())
    results = {"scales": {p: asdict(sc) for p, sc in scales.items()}, "jobs": jobs, "wall_seconds": wall_seconds, "run_seconds": run_seconds,
               "runs": [{**r.settings(), "cell": r.cell, "part": r.part, **asdict(collect(r))} for r in runs],
               "claims": [asdict(c) for c in claims]}
    write_atomic(out / "results.json", json.dumps(results, indent=1, default=str).encode())
    return path


def _capture(cmd: list[str]) -> str:
    proc = subprocess.run(_argv(cmd), capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        print(f"mini-paper: {show(cmd)} failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}", file=sys.stderr)
    return proc.stdout


# -- the whole experiment -----------------------------------------------------------------------------

def run_experiment(scales: dict[str, Scale], parts=PARTS, jobs: int = 1, dry_run: bool = False,
                   report_only: bool = False) -> int:
    """Make the data, train every run not yet finished (``jobs`` at a time) and write the report;
    ``dry_run`` prints the commands instead, ``report_only`` writes the report from the runs made so far."""
    runs = plan(scales, parts)
    if dry_run:
        for cmd in data_commands(scales, parts):
            print("+ " + show(cmd))
        for r in runs:
            for cmd, stdout in r.commands():
                print("+ " + show(cmd, stdout))
        print(f"# {len(runs)} runs, {jobs} at a time; then the report in {OUT}/report.md")
        return 0
    wall, failures = None, []
    if not report_only:
        for cmd in data_commands(scales, parts):
            print("+ " + show(cmd), flush=True)
            rc = subprocess.call(_argv(cmd))
            if rc != 0:
                print(f"scratchdet mini-paper: making the data failed (exit {rc})", file=sys.stderr)
                return rc
        started = time.monotonic()
        failures = run_all(runs, jobs)
        wall = time.monotonic() - started
        for line in failures:
            print(f"scratchdet mini-paper: {line}", file=sys.stderr)
    path = report(runs, scales, wall, jobs)
    print(path.read_text())
    print(f"mini-paper: report in {path}, plots in {OUT}/", flush=True)
    return 1 if not report_only and failures else 0
