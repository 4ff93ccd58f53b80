"""``scratchdet run``: the whole pipeline of DESIGN.md §1 for one experiment, as shell commands.

Each experiment is a list of ``scratchdet`` commands a user could type (data -> LMDB, gen, train,
test, compare, plot). ``--dry-run`` prints them; otherwise they run in order and the first failure
stops the run. Missing raw data stops at once with the exact commands that prepare it.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EXIT_DIVERGED, ScratchDetError

LMDB_DIR = "data/lmdb"
VOC_URLS = (
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
)
COCO_URLS = (
    "http://images.cocodataset.org/zips/train2014.zip",
    "http://images.cocodataset.org/zips/val2014.zip",
    "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    # minival2014 / valminusminival2014 split files, as SSD's data/coco/README describes
    "https://dl.dropboxusercontent.com/s/o43o90bna78omob/instances_minival2014.json.zip",
    "https://dl.dropboxusercontent.com/s/s3tw5zcg7395368/instances_valminusminival2014.json.zip",
)


@dataclass
class DataSpec:
    """Where an experiment's LMDBs come from and how to make them."""
    dataset: str                     # folder name under models/ and runs/
    lmdbs: tuple[str, ...]           # LMDB folder names under the LMDB dir
    raw_env: str                     # variable naming the raw data folder
    raw_default: str
    raw_marker: str                  # a path inside the raw folder that must exist
    build: str                       # scratchdet command that converts raw -> LMDBs ({raw}, {lmdb})
    download: tuple[str, ...] = ()   # shell lines that fetch the raw data ({raw})

    def raw_folder(self, given: str | None = None) -> str:
        """The raw data folder: ``given``, else the environment variable, else the default."""
        return given or os.environ.get(self.raw_env) or self.raw_default


DATA = {
    "voc07": DataSpec(
        "VOC0712", ("VOC0712_trainval_lmdb", "VOC0712_test_lmdb"), "VOC_ROOT", "data/VOCdevkit",
        "VOC2007/Annotations", "scratchdet data voc --devkit {raw} --out {lmdb}",
        tuple(f"wget -c {u} -P {{parent}} && tar -xf {{parent}}/{u.rsplit('/', 1)[1]} -C {{parent}}"
              for u in VOC_URLS)),
    "voc12": DataSpec(
        "VOC0712Plus", ("VOC0712Plus_trainval_lmdb",), "VOC_ROOT", "data/VOCdevkit",
        "VOC2012/Annotations", "scratchdet data voc --devkit {raw} --voc12 --skip-existing --out {lmdb}",
        tuple(f"wget -c {u} -P {{parent}} && tar -xf {{parent}}/{u.rsplit('/', 1)[1]} -C {{parent}}"
              for u in VOC_URLS)
        + ("# optional, for the VOC2012 test LMDB (comp4 submissions): VOC2012test.tar from the PASCAL "
           "evaluation server (registration), extracted into {parent}",)),
    "coco": DataSpec(
        "coco", ("coco_trainval35k_lmdb", "coco_minival_lmdb"), "COCO_ROOT", "data/coco",
        "annotations", "scratchdet data coco --root {raw} --out {lmdb}",
        tuple(f"wget -c {u} -P {{raw}} && unzip -q -o {{raw}}/{u.rsplit('/', 1)[1]} -d {{raw}}"
              for u in COCO_URLS)),
    "synthetic": DataSpec(
        "synthetic", ("synthetic_trainval_lmdb", "synthetic_test_lmdb"), "SYNTH_ROOT", "data/synthetic",
        "SYNTH/ImageSets", "scratchdet data synthetic --out {raw} --images {images} --seed 0 --lmdb {lmdb}"),
}

# make target -> (data key, variant ids)
EXPERIMENTS = {
    "voc07_rootres34": ("voc07", ("voc07_rootres34",)),
    "voc07_rootres18": ("voc07", ("voc07_rootres18",)),
    "voc12_rootres34": ("voc12", ("voc12_rootres34",)),
    "coco_rootres34": ("coco", ("coco_rootres34",)),
}


def _table_variants(prefix: str) -> tuple[str, ...]:
    from prototxt_gen import registry
    return tuple(v.id for v in registry.all_variants() if v.id.startswith(prefix))


class DataMissing(Exception):
    """Raw data and LMDBs are absent: the message lists the commands that prepare them."""


@dataclass
class Plan:
    name: str
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)     # where the results are, printed at the end


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
        data_key, variants = "voc07", _table_variants("table1_")
    elif target == "table2":
        data_key, variants = "voc07", _table_variants("table2_") + _table_variants("fig3_")
    else:
        raise ScratchDetError(f"unknown experiment {target!r}; known: "
                              f"{', '.join(sorted(EXPERIMENTS) + ['table1', 'table2'])}")
    spec = DATA[data_key]
    plan = Plan(target)
    raw = spec.raw_folder(raw_root)
    missing = [d for d in spec.lmdbs if not (Path(lmdb_dir) / d / "data.mdb").exists()]
    if missing:
        if not (Path(raw) / spec.raw_marker).exists():
            lines = [line.format(raw=raw, parent=Path(raw).parent) for line in spec.download]
            lines.append(spec.build.format(raw=raw, lmdb=lmdb_dir))
            raise DataMissing(
                f"{target}: no LMDB {Path(lmdb_dir) / missing[0]} and no raw data at {raw}/{spec.raw_marker} "
                f"(or point {spec.raw_env}=DIR / LMDB_DIR=DIR at existing data).\n"
                "Prepare it with:\n  " + "\n  ".join(lines))
        plan.commands.append(spec.build.format(raw=raw, lmdb=lmdb_dir))
    gpu, note = gpu_flag(gpus)
    if note:
        plan.notes.append(note)
    lmdb_opt = "" if lmdb_dir == LMDB_DIR else f" --lmdb-dir {shlex.quote(lmdb_dir)}"
    for vid in variants:
        run_dir = f"runs/{spec.dataset}/{vid}"
        model_dir = f"models/{spec.dataset}/{vid}" if not lmdb_opt else f"{run_dir}/models/{spec.dataset}/{vid}"
        out = "models" if not lmdb_opt else f"{run_dir}/models"
        plan.commands.append(f"scratchdet gen {vid} --out {out}{lmdb_opt}")
        plan.commands.append(f"scratchdet train --solver {model_dir}/solver.prototxt --gpu {gpu} "
                             f"--log {run_dir}/train.log")
        plan.commands.append(f"scratchdet compare {run_dir}/train.log --variant {vid}")
    logs = " ".join(f"runs/{spec.dataset}/{v}/train.log" for v in variants)
    plan.commands.append(f"scratchdet plot {logs} --out runs/{spec.dataset}/{target}_plots")
    return plan


def _solver_outputs(solver_path: str) -> tuple[str, int]:
    """(snapshot prefix, max_iter) of a generated solver: where the final caffemodel will be."""
    from .caffe import io
    sp = io.read_solver(solver_path)
    return sp.snapshot_prefix, sp.max_iter


SAMPLE_IMAGES = "{sample_test_images}"   # expanded when the command runs (the data set exists by then)
DEMO_SAMPLES = 6
DEMO_IMAGES = 1500                         # the synthetic set the demo nets are generated for (300 held out)


def paper_config_difference(variant_id: str) -> str | None:
    """How a demo net departs from the paper configuration it imitates (BatchNorm in the head,
    base lr), in one sentence, or None. A newcomer's first run must not contradict the paper
    without saying so."""
    from prototxt_gen import registry
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
            f"`make {paper.id}` on real data; the paper's Table 1 and Figure 3 claims at CPU scale, "
            "over seeds, with the paper's configuration among the cells: `make mini-paper` (about an hour).")


def plan_demo(variants: tuple[str, ...] = ("demo_rootres",), images: int = DEMO_IMAGES, detect: bool = True,
              name: str = "demo") -> Plan:
    """The main job at toy scale on the embedded synthetic data, on whatever hardware is here."""
    from .data.synthetic import TEST_EVERY
    spec = DATA["synthetic"]
    plan = Plan(name)
    if detect:   # the main demo (demo-table1 is itself a comparison of configurations)
        for vid in variants:
            difference = paper_config_difference(vid)
            if difference:
                plan.notes.append(difference)
    raw = spec.raw_folder()
    if any(not (Path(LMDB_DIR) / d / "data.mdb").exists() for d in spec.lmdbs):
        plan.commands.append(spec.build.format(raw=raw, lmdb=LMDB_DIR, images=images))
    elif images != DEMO_IMAGES:
        plan.notes.append(f"the synthetic LMDBs exist already and are used as they are (--images {images} "
                          "applies when they are made; `make clean-demo` removes them)")
    # the demo nets assume DEMO_IMAGES images; other counts get a matching test pass
    sets = "" if images == DEMO_IMAGES else f" --set num_test_image={images // TEST_EVERY}"
    gpu, _ = gpu_flag(1)
    logs = []
    for vid in variants:
        model_dir, run_dir = f"models/synthetic/{vid}", f"runs/synthetic/{vid}"
        plan.commands.append(f"scratchdet gen {vid} --out models{sets}")
        plan.commands.append(f"scratchdet train --solver {model_dir}/solver.prototxt --gpu {gpu} "
                             f"--log {run_dir}/train.log")
        logs.append(f"{run_dir}/train.log")
        if detect:
            prefix, max_iter = _solver_outputs(f"{model_dir}/solver.prototxt")
            weights = f"{prefix}_iter_{max_iter}.caffemodel"
            plan.commands.append(f"scratchdet test --model {model_dir}/test.prototxt --weights {weights} --gpu {gpu} "
                                 f"--per-class --log {run_dir}/test.log")
            plan.commands.append(
                f"scratchdet detect --model {model_dir}/deploy.prototxt --weights {weights} "
                f"--labelmap data/labelmap_synthetic.prototxt --threshold 0.3 --out {run_dir}/detections {SAMPLE_IMAGES}")
            plan.outputs += [f"training log: {run_dir}/train.log", f"weights: {weights}",
                             f"sample detections: {run_dir}/detections/"]
    plan.commands.append(f"scratchdet compare {' '.join(logs)}")
    plan.commands.append(f"scratchdet plot {' '.join(logs)} --out runs/synthetic/{name}_plots")
    plan.outputs.append(f"plots: runs/synthetic/{name}_plots/")
    return plan


def sample_test_images(raw: str, count: int = DEMO_SAMPLES) -> list[str]:
    """The first ``count`` held-out images of the synthetic set, as paths."""
    listing = Path(raw) / "SYNTH" / "ImageSets" / "Main" / "test.txt"
    if not listing.is_file():
        raise ScratchDetError(f"{listing}: no test list (make the synthetic data set first)")
    names = [line.split()[0] for line in listing.read_text().splitlines() if line.strip()][:count]
    return [str(Path(raw) / "SYNTH" / "JPEGImages" / f"{n}.jpg") for n in names]


def run_plan(plan: Plan, dry_run: bool) -> int:
    """Run the commands in order. A training run that diverges (exit 3) is a result, as in the
    paper's Table 1: it is reported, the rest of that variant is skipped, and the plan goes on to
    the score card and plots. Any other failure stops the plan."""
    for note in plan.notes:
        print(f"note: {note}", file=sys.stderr)
    exe = shutil.which("scratchdet") or f"{sys.executable} -m scratchdet"
    diverged: list[str] = []
    for cmd in plan.commands:
        if any(f"--model {d}/" in cmd for d in diverged):
            print(f"- skipped (its training diverged): {cmd}", flush=True)
            continue
        print(f"+ {cmd}", flush=True)
        if dry_run:
            continue
        argv = shlex.split(cmd)
        if SAMPLE_IMAGES in argv:
            i = argv.index(SAMPLE_IMAGES)
            argv[i:i + 1] = sample_test_images(DATA["synthetic"].raw_folder())
        argv = shlex.split(exe) + argv[1:] if argv[0] == "scratchdet" else argv
        rc = subprocess.call(argv)
        if rc == EXIT_DIVERGED and argv[len(shlex.split(exe))] == "train":
            solver = argv[argv.index("--solver") + 1]
            diverged.append(str(Path(solver).parent))
            print(f"scratchdet run: training diverged (recorded as NAN): {cmd}", file=sys.stderr)
            continue
        if rc != 0:
            print(f"scratchdet run: '{cmd}' failed (exit {rc}); stopping", file=sys.stderr)
            return rc
    if plan.outputs and not dry_run:
        print("\n".join([f"{plan.name}: done."] + [f"  {line}" for line in plan.outputs]
                         + [f"note: {note}" for note in plan.notes]), flush=True)
    return 0
