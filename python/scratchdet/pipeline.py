"""``scratchdet run``: the whole pipeline of DESIGN.md §1 for one experiment, as a plan of steps.

Each experiment is a list of ``Step``s, each a ``scratchdet`` command a user could type (data ->
LMDB, gen, train, test, detect, compare, plot) with what it is (``kind``), the variant it belongs to,
and what it writes. ``--dry-run`` prints them; otherwise they run in order and the first failure stops
the run. Missing raw data stops at once with the exact commands that prepare it. Which steps a
diverged training skips is decided on those fields, never by reading the command text back.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from prototxt_gen import build, registry

from .datasets import DATASETS, LMDB_DIR
from .errors import EXIT_DIVERGED, ScratchDetError

# make target -> (data key, variant ids)
EXPERIMENTS = {
    "voc07_rootres34": ("voc07", ("voc07_rootres34",)),
    "voc07_rootres18": ("voc07", ("voc07_rootres18",)),
    "voc12_rootres34": ("voc12", ("voc12_rootres34",)),
    "coco_rootres34": ("coco", ("coco_rootres34",)),
}

SAMPLE_IMAGES = "{sample_test_images}"   # shown in place of the images a detect step gets when it runs
NEEDS_WEIGHTS = ("test", "detect")       # step kinds that read a variant's trained weights


def table_variants(prefix: str) -> tuple[str, ...]:
    return tuple(v.id for v in registry.all_variants() if v.id.startswith(prefix))


class DataMissing(Exception):
    """Raw data and LMDBs are absent: the message lists the commands that prepare them."""


@dataclass(frozen=True)
class Step:
    """One command of a plan. ``argv`` is what runs (``argv[0]`` is ``scratchdet``); ``kind`` is the
    subcommand; ``variant`` the variant whose files it makes or reads (None: the data set, or several
    variants); ``produces`` the files and folders it writes. ``sample_images``: the synthetic set's
    held-out images are appended when it runs (the set exists only by then)."""
    argv: tuple[str, ...]
    kind: str
    variant: str | None = None
    produces: tuple[str, ...] = ()
    sample_images: bool = False

    def __str__(self) -> str:
        text = shlex.join(self.argv)
        return f"{text} {SAMPLE_IMAGES}" if self.sample_images else text

    @classmethod
    def typed(cls, command: str) -> "Step":
        """A step from a command line as a user would type it, for plans written by hand. The variant
        is the folder of the ``--solver`` (train) or ``--model`` (test, detect) file, as the runner
        lays models out (``models/<dataset>/<variant>/``)."""
        argv = shlex.split(command)
        sample = bool(argv) and argv[-1] == SAMPLE_IMAGES
        argv = argv[:-1] if sample else argv
        kind = argv[1] if len(argv) > 1 else ""
        flag = {"train": "--solver", "test": "--model", "detect": "--model"}.get(kind)
        variant = None
        if flag in argv and argv.index(flag) + 1 < len(argv):
            variant = Path(argv[argv.index(flag) + 1]).parent.as_posix()
        return cls(tuple(argv), kind, variant, sample_images=sample)


def _step(kind: str, *args, variant: str | None = None, produces: tuple[str, ...] = (),
          sample_images: bool = False) -> Step:
    return Step(("scratchdet", kind, *(str(a) for a in args)), kind, variant, produces, sample_images)


@dataclass
class Plan:
    name: str
    commands: list[Step] = field(default_factory=list)   # a command line given as text becomes Step.typed
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)     # where the results are, printed at the end

    def __post_init__(self):
        self.commands = [Step.typed(c) if isinstance(c, str) else c for c in self.commands]


def gpu_flag(requested: int) -> tuple[str, str]:
    """``--gpu`` value for the GPUs present, and a note when it differs from the request."""
    try:
        import torch
        present = torch.cuda.device_count()
    except Exception:  # torch missing or no driver: CPU
        present = 0
    if present == 0:
        return "cpu", (f"no GPU found: training on the CPU (the paper used {requested} GPUs; "
                       "full schedules take weeks on a CPU)")
    n = min(requested, present)
    note = ""
    if n < requested:
        note = (f"{present} GPU(s) present, {requested} requested: the per-GPU batch is kept and "
                "iter_size is raised so the effective batch stays as in the paper")
    return ",".join(str(i) for i in range(n)), note


def plan_experiment(target: str, lmdb_dir: str = LMDB_DIR, gpus: int = 4,
                    raw_root: str | None = None) -> Plan:
    if target in EXPERIMENTS:
        data_key, variants = EXPERIMENTS[target]
    elif target == "table1":
        data_key, variants = "voc07", table_variants("table1_")
    elif target == "table2":
        data_key, variants = "voc07", table_variants("table2_") + table_variants("fig3_")
    else:
        raise ScratchDetError(f"unknown experiment {target!r}; known: "
                              f"{', '.join(sorted(EXPERIMENTS) + ['table1', 'table2'])}")
    spec = DATASETS[data_key]
    plan = Plan(target)
    raw = spec.raw_folder(raw_root)
    missing = [d for d in spec.lmdbs if not (Path(lmdb_dir) / d / "data.mdb").exists()]
    if missing:
        if not (Path(raw) / spec.raw_marker).exists():
            lines = [line.format(raw=raw, parent=Path(raw).parent) for line in spec.download]
            lines.append(shlex.join(spec.build_argv(raw=raw, lmdb=lmdb_dir)))
            raise DataMissing(
                f"{target}: no LMDB {Path(lmdb_dir) / missing[0]} and no raw data at {raw}/{spec.raw_marker} "
                f"(or point {spec.raw_env}=DIR / LMDB_DIR=DIR at existing data).\n"
                "Prepare it with:\n  " + "\n  ".join(lines))
        plan.commands.append(Step(tuple(spec.build_argv(raw=raw, lmdb=lmdb_dir)), "data",
                                  produces=tuple(f"{lmdb_dir}/{d}" for d in spec.lmdbs)))
    gpu, note = gpu_flag(gpus)
    if note:
        plan.notes.append(note)
    own_lmdb_dir = lmdb_dir != LMDB_DIR   # the nets then point elsewhere: generate them under the run
    for vid in variants:
        run_dir = f"runs/{spec.folder}/{vid}"
        out = f"{run_dir}/models" if own_lmdb_dir else "models"
        model_dir = f"{out}/{spec.folder}/{vid}"
        lmdb_args = ("--lmdb-dir", lmdb_dir) if own_lmdb_dir else ()
        plan.commands.append(_step("gen", vid, "--out", out, *lmdb_args, variant=vid, produces=(model_dir,)))
        plan.commands.append(_step("train", "--solver", f"{model_dir}/solver.prototxt", "--gpu", gpu,
                                   "--log", f"{run_dir}/train.log", variant=vid, produces=(f"{run_dir}/train.log",)))
        plan.commands.append(_step("compare", f"{run_dir}/train.log", "--variant", vid, variant=vid))
    logs = [f"runs/{spec.folder}/{v}/train.log" for v in variants]
    plots = f"runs/{spec.folder}/{target}_plots"
    plan.commands.append(_step("plot", *logs, "--out", plots, produces=(plots,)))
    return plan


DEMO_SAMPLES = 6
DEMO_IMAGES = 1500                         # the synthetic set the demo nets are generated for (300 held out)


def paper_config_difference(variant_id: str) -> str | None:
    """How a demo net departs from the paper configuration it imitates (BatchNorm in the head,
    base lr), in one sentence, or None. A newcomer's first run must not contradict the paper
    without saying so."""
    demo = registry.get(variant_id)
    twins = [v for v in registry.all_variants()
             if demo.analogue and v.paper_key == demo.analogue and v.profile == "paper"]
    if not twins:
        return None
    paper = twins[0]
    diffs = []
    if demo.arch.bn_head != paper.arch.bn_head:
        diffs.append(f"{'BatchNorm' if demo.arch.bn_head else 'no BatchNorm'} in the head "
                     f"(paper: {'with' if paper.arch.bn_head else 'without'})")
    if demo.base_lr != paper.base_lr:
        diffs.append(f"base lr {demo.base_lr:g} (paper: {paper.base_lr:g})")
    if not diffs:
        return None
    return (f"{variant_id} is not the paper's {paper.id} configuration: {', '.join(diffs)}. Over a few "
            "hundred CPU iterations a BatchNorm head first shrinks its predictions and learns far slower, "
            "and without it lr 0.01 trains unevenly and 0.02 diverges (README, 'make demo'). The paper's configuration: "
            f"`make {paper.id}` on real data. `make mini-paper` measures it at CPU scale beside the other Table 1 "
            "cells, over seeds: there it does not learn in 1500 iterations (README, 'The paper at CPU scale').")


def plan_demo(variants: tuple[str, ...] = ("demo_rootres",), images: int = DEMO_IMAGES, detect: bool = True,
              name: str = "demo") -> Plan:
    """The main job at toy scale on the embedded synthetic data, on whatever hardware is here."""
    from .data.synthetic import TEST_EVERY
    spec = DATASETS["synthetic"]
    plan = Plan(name)
    if detect:   # the main demo (demo-table1 is itself a comparison of configurations)
        for vid in variants:
            difference = paper_config_difference(vid)
            if difference:
                plan.notes.append(difference)
    raw = spec.raw_folder()
    if any(not (Path(LMDB_DIR) / d / "data.mdb").exists() for d in spec.lmdbs):
        plan.commands.append(Step(tuple(spec.build_argv(raw=raw, lmdb=LMDB_DIR, images=images)), "data",
                                  produces=(raw,) + tuple(f"{LMDB_DIR}/{d}" for d in spec.lmdbs)))
    elif images != DEMO_IMAGES:
        plan.notes.append(f"the synthetic LMDBs exist already and are used as they are (--images {images} "
                          "applies when they are made; `make clean-demo` removes them)")
    # the demo nets assume DEMO_IMAGES images; other counts get a matching test pass
    overrides = {} if images == DEMO_IMAGES else {"num_test_image": images // TEST_EVERY}
    sets = [a for key, value in overrides.items() for a in ("--set", f"{key}={value}")]
    gpu, _ = gpu_flag(1)
    logs = []
    for vid in variants:
        model_dir, run_dir = f"models/{spec.folder}/{vid}", f"runs/{spec.folder}/{vid}"
        plan.commands.append(_step("gen", vid, "--out", "models", *sets, variant=vid, produces=(model_dir,)))
        plan.commands.append(_step("train", "--solver", f"{model_dir}/solver.prototxt", "--gpu", gpu,
                                   "--log", f"{run_dir}/train.log", variant=vid, produces=(f"{run_dir}/train.log",)))
        logs.append(f"{run_dir}/train.log")
        if detect:
            # the weights the training will write, from the solver the gen step will write
            solver = build.build_variant(vid, model_dir=model_dir, **overrides)["solver.prototxt"]
            weights = f"{solver.snapshot_prefix}_iter_{solver.max_iter}.caffemodel"
            plan.commands.append(_step("test", "--model", f"{model_dir}/test.prototxt", "--weights", weights,
                                       "--gpu", gpu, "--per-class", "--log", f"{run_dir}/test.log",
                                       variant=vid, produces=(f"{run_dir}/test.log",)))
            plan.commands.append(_step(
                "detect", "--model", f"{model_dir}/deploy.prototxt", "--weights", weights,
                "--labelmap", spec.label_map, "--threshold", "0.3", "--out", f"{run_dir}/detections",
                variant=vid, produces=(f"{run_dir}/detections",), sample_images=True))
            plan.outputs += [f"training log: {run_dir}/train.log", f"weights: {weights}",
                             f"sample detections: {run_dir}/detections/"]
    plan.commands.append(_step("compare", *logs))
    plots = f"runs/{spec.folder}/{name}_plots"
    plan.commands.append(_step("plot", *logs, "--out", plots, produces=(plots,)))
    plan.outputs.append(f"plots: {plots}/")
    return plan


def sample_test_images(raw: str, count: int = DEMO_SAMPLES) -> list[str]:
    """The first ``count`` held-out images of the synthetic set, as paths."""
    listing = Path(raw) / "SYNTH" / "ImageSets" / "Main" / "test.txt"
    if not listing.is_file():
        raise ScratchDetError(f"{listing}: no test list (make the synthetic data set first)")
    names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()][:count]
    return [str(Path(raw) / "SYNTH" / "JPEGImages" / f"{n}.jpg") for n in names]


def run_plan(plan: Plan, dry_run: bool) -> int:
    """Run the steps in order. A training run that diverges (exit 3) is a result, as in the
    paper's Table 1: it is reported, the steps that need its weights are skipped, and the plan goes
    on to the score card and plots. Any other failure stops the plan."""
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    installed = shutil.which("scratchdet")
    exe = [installed] if installed else [sys.executable, "-m", "scratchdet"]
    diverged: set[str] = set()
    for step in plan.commands:
        cmd = str(step)
        if step.kind in NEEDS_WEIGHTS and step.variant in diverged:
            print(f"- skipped (its training diverged): {cmd}", flush=True)
            continue
        print(f"+ {cmd}", flush=True)
        if dry_run:
            continue
        argv = list(step.argv)
        if step.sample_images:
            argv += sample_test_images(DATASETS["synthetic"].raw_folder())
        argv = exe + argv[1:] if argv[0] == "scratchdet" else argv
        rc = subprocess.call(argv)
        if rc == EXIT_DIVERGED and step.kind == "train":
            if step.variant is not None:
                diverged.add(step.variant)
            print(f"scratchdet run: training diverged (recorded as NAN): {cmd}", file=sys.stderr)
            continue
        if rc != 0:
            print(f"scratchdet run: '{cmd}' failed (exit {rc}); stopping", file=sys.stderr)
            return rc
    if plan.outputs and not dry_run:
        print("\n".join([f"{plan.name}: done."] + [f"  {line}" for line in plan.outputs]
                         + [f"note: {note}" for note in plan.notes]), flush=True)
    return 0
