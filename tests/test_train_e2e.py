"""End to end on the synthetic set, through the commands a user types: `scratchdet data synthetic`,
`scratchdet gen`, `scratchdet train` (CPU). The small ScratchDet variant (demo_rootres) must learn:
its displayed loss falls to at most 0.55 of the first, and its VOC07 mAP@0.5 (11-point, as the
solver reports it on the held-out images) reaches 0.3 (an untrained net scores near 0). The same
net without BatchNorm at lr 0.05 and no warm-up must blow up and be reported as NAN.

The bounds leave room for float rounding, which changes a run's path: at the demo's lr 0.005 seeds
1/2/3 gave 0.647 / 0.625 / 0.614 and a loss ratio of 0.38-0.40 on 2 CPU cores. (At lr 0.01, the
earlier default, ten runs spread from 0.07 to 0.64: README, "make demo".)

Both runs work in a temporary folder laid out like the repository root (data/, models/, runs/).
The demo run takes two to four minutes on a 2-core CPU (800 iterations at 128x128, batch 16); the
time is printed, not asserted (bench/bench_train.py reports training speed)."""
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRATCHDET = [sys.executable, "-m", "scratchdet"]
DEMO = "demo_rootres"
NO_BN = "demo_table1_bn-none_lr0.05"
MAP_TARGET = 0.3
LOSS_RATIO = 0.55


def run(args, cwd, timeout=3600):     # a hang guard only: runs are bounded by iterations
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run(SCRATCHDET + args, capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def _have_pieces() -> str | None:
    try:
        import prototxt_gen.build  # noqa: F401
    except ImportError:
        return "prototxt_gen (the generators) is not present yet"
    from scratchdet.engine.layers import REGISTRY
    missing = [t for t in ("PriorBox", "MultiBoxLoss", "DetectionOutput", "DetectionEvaluate") if t not in REGISTRY]
    if missing:
        return f"SSD layers not present yet: {', '.join(missing)}"
    return None


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    why = _have_pieces()
    if why:
        pytest.skip(why)
    root = tmp_path_factory.mktemp("e2e")
    r = run(["data", "synthetic", "--out", "data/synthetic", "--images", "1500", "--lmdb", "data/lmdb",
             "--name-size", "data/synthetic_test_name_size.txt", "--quiet"], root)
    assert r.returncode == 0, r.stderr[-2000:]
    labelmap = root / "data" / "labelmap_synthetic.prototxt"
    if not labelmap.exists():
        shutil.copy(root / "data" / "synthetic" / "labelmap_synthetic.prototxt", labelmap)
    return root


def generate(root, variant):
    r = run(["gen", variant, "--out", "models"], root)
    assert r.returncode == 0, r.stderr[-2000:]
    solver = root / "models" / "synthetic" / variant / "solver.prototxt"
    assert solver.is_file(), f"gen {variant} wrote no {solver}"
    return solver


def test_demo_variant_learns_on_held_out_images(root):
    solver = generate(root, DEMO)
    log = root / "runs" / "synthetic" / DEMO / "train.log"
    start = time.perf_counter()
    r = run(["train", "--solver", str(solver.relative_to(root)), "--gpu", "cpu", "--log", str(log.relative_to(root)),
             "--quiet"], root)
    minutes = (time.perf_counter() - start) / 60
    assert r.returncode == 0, r.stderr[-3000:]
    text = log.read_text()
    maps = [float(v) for v in re.findall(r"Test net output #0: detection_eval = (\S+)", text)]
    iters = re.findall(r"\] Iteration (\d+), loss = ", text)
    print(f"{DEMO}: {len(iters)} loss lines, last iteration {iters[-1] if iters else '?'}, "
          f"mAP per test {maps}, {minutes:.1f} min on this CPU")
    assert maps, "no test pass in the log"
    losses = [float(v) for v in re.findall(r"\] Iteration \d+, loss = (\S+)", text)]
    assert losses[-1] <= LOSS_RATIO * losses[0], f"loss {losses[0]:g} -> {losses[-1]:g}: it did not fall enough"
    assert maps[-1] >= MAP_TARGET, f"final mAP {maps[-1]:.3f} < {MAP_TARGET} (tests: {maps})"
    assert "Optimization Done." in text


def test_no_batchnorm_at_lr_005_is_reported_as_nan(root):
    solver = generate(root, NO_BN)
    log = root / "runs" / "synthetic" / NO_BN / "train.log"
    r = run(["train", "--solver", str(solver.relative_to(root)), "--gpu", "cpu", "--log", str(log.relative_to(root)),
             "--quiet"], root)
    assert r.returncode == 3, r.stderr[-3000:]
    assert "recorded as NAN" in r.stderr
    text = log.read_text()
    assert re.search(r"^E\d{4} .*\] Training diverged at iteration \d+: loss = (nan|inf)$", text, re.M)
    assert "Optimization Done." not in text
