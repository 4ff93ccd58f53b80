"""Shared harness for the training-parity tests against the real SSD Caffe (issue 11).

A net from the project's generators is set up so that both engines see the same batches: the
train data layer loses its augmentation (no distort, expand or crop samplers, one interp_mode, no
mirror; the one empty ``batch_sampler`` left is the test layer's identity crop), the batch is
small, and a solver trains it from one initial ``.caffemodel`` that our engine wrote, snapshotting
every iteration. ``run_caffe`` / ``run_ours`` train it; ``losses`` reads the per-iteration losses
from the log and ``blobs_after`` / ``run_digests`` every blob (weights, BatchNorm's three blobs, the
solver's history) after a step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from scratchdet.caffe import io
from scratchdet.caffe.blobs import blob_to_array
from scratchdet.caffe.netstate import TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine.caffemodel import read_caffemodel, read_solverstate, save_caffemodel
from scratchdet.engine.net import Net

REPO = Path(__file__).resolve().parents[1]
BATCH = 2
ITERS = 5
# small enough that five steps stay in the smooth regime: at 0.01 (the demo's) batch-2 steps make
# the loss jump (9.9 -> 53 in four steps) and any float32 difference grows by orders of magnitude
BASE_LR = 1e-4
# 20x the generators' 5e-4: weight decay then moves a weight by about 1e-2 of its gradient step
# (at 5e-4 it is ~1e-3, below what a ReLU tie can do), so a wrong decay_mult shows
WEIGHT_DECAY = 1e-2
INIT_SEED = 11
# both engines single-threaded: the same machine, the least noise in their timing and no thread
# count changing Caffe's BLAS summation order between runs
THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "GLOG_logtostderr": "1"}


def make_data(root: Path, images: int = 20) -> None:
    """A tiny synthetic set (``images`` // 5 held out) and its LMDBs under ``root/data``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "data" / "labelmap_synthetic.prototxt", root / "data")
    run([sys.executable, "-m", "scratchdet", "data", "synthetic", "--out", "data/synthetic", "--images",
         str(images), "--seed", "0", "--lmdb", "data/lmdb", "--quiet"], root)


def run(argv, cwd, env=None, timeout=600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                       env=dict(os.environ, **THREAD_ENV, **(env or {})))
    if r.returncode != 0:
        raise AssertionError(f"{argv[0]} exited {r.returncode}:\n{r.stderr[-3000:]}")
    return r


# -- nets ---------------------------------------------------------------------------------------------

def reduced_rootres18():
    """Root-ResNet-18 (Table 2 row 8 / Figure 3d: three 3x3 stride-1 root convs, max-pool, two
    BasicBlocks per stage, SSD extra pairs with BatchNorm, BatchNorm head) with every width / 8, a
    64x64 input and two extra pairs (detection maps 8/4/2/1), on the synthetic classes."""
    from prototxt_gen import registry
    from prototxt_gen.backbones import resnet18
    base = registry.get("voc07_rootres18")
    spec = dataclasses.replace(resnet18(3, 3, False, True), root_channels=8,
                               stages=((2, 8, 1), (2, 16, 2), (2, 32, 2), (2, 64, 2)),
                               ssd_extras=((16, 32, 2, 1), (16, 32, 2, 1)))
    arch = dataclasses.replace(base.arch, resnet=spec, input_size=64, maps=None, steps=None,
                               aspect_ratios=((2,), (2, 3), (2,), (2,)))
    return dataclasses.replace(base, id="rootres18_reduced", data=registry.DATASETS["synthetic"], arch=arch,
                               random_seed=1)


def variant(name: str):
    """The nets of the parity tests by a short name."""
    from prototxt_gen import registry
    from prototxt_gen.build import resolve
    if name == "demo_rootres":
        return registry.get("demo_rootres")
    if name in ("table1_bn-none", "table1_bn-both"):
        # the demo Table 1 VGG at half width and 64x64 (maps 8/4/2/1)
        return resolve(registry.get(f"demo_table1_{name.split('_')[1]}_lr0.01"), input_size=64, width=0.5, sources=4)
    if name == "rootres18":
        return reduced_rootres18()
    raise KeyError(name)


def strip_augmentation(net: "pb.NetParameter") -> None:
    """The train data layer without augmentation: both engines then read the same pixels."""
    for lp in net.layer:
        if lp.type != "AnnotatedData":
            continue
        tp = lp.transform_param
        tp.ClearField("distort_param")
        tp.ClearField("expand_param")
        tp.mirror = False
        del tp.resize_param.interp_mode[:]
        tp.resize_param.interp_mode.append(pb.ResizeParameter.LINEAR)
        adp = lp.annotated_data_param
        del adp.batch_sampler[:]
        adp.batch_sampler.add()          # the identity crop, as the test layer has


def setup(root: Path, name: str, *, tag: str | None = None, solver_edit=None, net_edit=None) -> str:
    """Files for net ``name`` under ``root/<tag or name>``: train.prototxt, solver_caffe/ours.prototxt
    (CPU, base_lr ``BASE_LR``, weight_decay ``WEIGHT_DECAY``, ``ITERS`` iterations, loss and a snapshot every iteration) and
    init.caffemodel (our fillers, seed ``INIT_SEED``). Returns the folder's name."""
    from prototxt_gen.build import build_variant
    tag = tag or name
    folder = root / tag
    folder.mkdir(parents=True, exist_ok=True)
    files = build_variant(variant(name), batch=BATCH, model_dir=tag, lmdb_dir="data/lmdb")
    train = files["train.prototxt"]
    strip_augmentation(train)
    if net_edit:
        net_edit(train)
    io.write_text(train, folder / "train.prototxt")
    with contextlib.chdir(root):         # the data layer opens its LMDB relative to the run folder
        net = Net(train, TRAIN, source=str(folder / "train.prototxt"))
    net.fill(INIT_SEED)
    save_caffemodel(net, folder / "init.caffemodel")
    for who in ("caffe", "ours"):
        sp = pb.SolverParameter()
        sp.CopyFrom(files["solver.prototxt"])
        sp.train_net = f"{tag}/train.prototxt"
        sp.base_lr = BASE_LR
        sp.weight_decay = WEIGHT_DECAY
        for f in ("test_net", "test_iter", "test_interval", "test_initialization", "eval_type", "ap_version"):
            sp.ClearField(f)
        sp.max_iter = ITERS
        sp.display = 1
        sp.average_loss = 1
        sp.snapshot = 1
        sp.snapshot_after_train = False
        sp.snapshot_prefix = f"{tag}/{who}/snap"
        sp.solver_mode = pb.SolverParameter.CPU
        sp.random_seed = 1
        if solver_edit:
            solver_edit(sp)
        io.write_text(sp, folder / f"solver_{who}.prototxt")
        (folder / who).mkdir(exist_ok=True)
    return tag


def run_caffe(caffe_bin: str, root: Path, name: str) -> str:
    r = run([caffe_bin, "train", f"--solver={name}/solver_caffe.prototxt", f"--weights={name}/init.caffemodel"], root)
    (root / name / "caffe" / "train.log").write_text(r.stderr)
    return r.stderr


def run_ours(root: Path, name: str) -> str:
    """Our trainer on the same solver, in this process (no interpreter start-up per run) with the
    data read in the main process; returns its log."""
    return train_here(root, f"{name}/solver_ours.prototxt", f"{name}/init.caffemodel", root / name / "ours" / "train.log")


def train_here(root: Path, solver: str, weights: str, log: Path) -> str:
    from scratchdet.engine.train import Trainer
    with contextlib.chdir(root):
        trainer = Trainer(solver, weights=weights, log_path=log, quiet=True, workers=0)
        try:
            result = trainer.solve()
        finally:
            trainer.close()
    assert result.status == "done", result
    return log.read_text()


# -- results -----------------------------------------------------------------------------------------

_LOSS = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, loss = (\S+)")


def losses(log_text: str) -> list[float]:
    """The loss printed at each iteration (display 1, average_loss 1: that iteration's loss)."""
    out = {}
    for m in _LOSS.finditer(log_text):
        out[int(m.group(1))] = float(m.group(2))
    return [out[k] for k in sorted(out)]


def blobs_after(folder: Path, it: int) -> dict[str, np.ndarray]:
    """Every blob after ``it`` steps: ``layer/k`` for the weights and ``history/k`` for the solver."""
    out = {}
    model = read_caffemodel(folder / f"snap_iter_{it}.caffemodel")
    for lp in model.layer:
        for k, b in enumerate(lp.blobs):
            out[f"{lp.name}/{k}"] = blob_to_array(b).astype(np.float32).reshape(-1)
    state = read_solverstate(folder / f"snap_iter_{it}.solverstate")
    for k, b in enumerate(state.history):
        out[f"history/{k}"] = blob_to_array(b).astype(np.float32).reshape(-1)
    return out


def initial_blobs(root: Path, name: str) -> dict[str, np.ndarray]:
    model = read_caffemodel(root / name / "init.caffemodel")
    return {f"{lp.name}/{k}": blob_to_array(b).astype(np.float32).reshape(-1)
            for lp in model.layer for k, b in enumerate(lp.blobs)}


# -- digests: what the fixture keeps of each blob ------------------------------------------------------

PROJECTIONS = 4


def _signs(n: int, k: int) -> np.ndarray:
    """``k`` fixed random +-1/sqrt(n) vectors: a projection on them keeps a blob's L2 geometry
    (|p . (a - b)| is about ||a - b||) in a few numbers."""
    rng = np.random.default_rng(n)
    return (rng.integers(0, 2, size=(k, n)) * 2 - 1).astype(np.float64) / np.sqrt(n)


def digest(v: np.ndarray) -> list[float]:
    """[L2 norm, projections...] of a blob (or of a weight blob's change since the start)."""
    v = v.astype(np.float64).reshape(-1)
    return [float(np.linalg.norm(v))] + [float(x) for x in _signs(v.size, PROJECTIONS) @ v]


def run_digests(root: Path, name: str, who: str, its=(1, 2, ITERS)) -> dict:
    """{it: {blob: digest}}: weights as their change from init.caffemodel, BatchNorm's blobs and the
    history as they are."""
    init = initial_blobs(root, name)
    out = {}
    for it in its:
        blobs = blobs_after(root / name / who, it)
        out[str(it)] = {k: digest(v - init[k] if k in init and not is_statistic(k, root, name) else v)
                        for k, v in blobs.items()}
    return out


_STAT_LAYERS: dict = {}


def is_statistic(key: str, root: Path, name: str) -> bool:
    """A BatchNorm blob (mean sum, variance sum, factor): compared as values, not as a change."""
    if (root, name) not in _STAT_LAYERS:
        net = io.read_net(root / name / "train.prototxt")
        _STAT_LAYERS[(root, name)] = {lp.name for lp in net.layer if lp.type == "BatchNorm"}
    return key.split("/")[0] in _STAT_LAYERS[(root, name)]


def digest_distance(a: list[float], b: list[float]) -> float:
    """Largest difference of norm or projection, over the reference's norm."""
    scale = b[0]
    worst = max(abs(x - y) for x, y in zip(a, b))
    return worst / scale if scale > 0 else worst
