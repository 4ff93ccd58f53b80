"""The engine's CPU training step against real SSD Caffe's on the same solver, as a ratio.

    python bench/bench_caffe.py [--caffe PATH] [--model models/synthetic/demo_rootres[:BATCH] ...]
        [--iters 10] [--rounds 2]

Both train the model's train net from a temporary copy of its solver (``solver_mode: CPU``, no test
net, no snapshots, display every iteration) on the same small synthetic LMDB, with their default
threads and data prefetching. By default the demo net at its own batch and ScratchDet300 (VOC07,
Root-ResNet-34) at batch 2, since its batch of 32 takes minutes an iteration on a CPU; ``:BATCH``
after a model folder sets the batch. The runs alternate (Caffe, ours, Caffe, ours, ...) so machine load
hits both alike. Seconds per iteration come from the log timestamps of the ``Iteration k, loss``
lines between iteration ``warm-up`` and ``warm-up + iters`` (start-up excluded); the table gives
the medians over rounds. Caffe comes from --caffe, else CAFFE_BIN, else ``caffe`` on the PATH; without
it the script says so and exits 0.
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import REPO, make_lmdb  # noqa: E402

from scratchdet.caffe import glog, io  # noqa: E402
from scratchdet.caffe.schema import pb  # noqa: E402


def iteration_times(log_text: str) -> dict[int, float]:
    """{iteration: seconds since midnight} of the ``Iteration k, loss = v`` lines (glog stamps)."""
    out = {}
    for line in log_text.splitlines():
        g = glog.GLOG_RE.match(line.strip())
        m = glog.LOSS_RE.match(g[6]) if g and g[1] == "I" and g[3] else None
        if m:
            h, mi, s = g[3].split(":")
            out.setdefault(int(m[1]), int(h) * 3600 + int(mi) * 60 + float(s))
    return out


def per_iteration(log_text: str, first: int, last: int, who: str) -> float:
    times = iteration_times(log_text)
    if first not in times or last not in times:
        tail = "\n".join(log_text.strip().splitlines()[-5:])
        raise RuntimeError(f"{who}: no 'Iteration {first}/{last}, loss' lines in its log; it ended with:\n{tail}")
    span = times[last] - times[first]
    if span < 0:                              # past midnight
        span += 86400
    return span / (last - first)


def write_solver(model: Path, db: Path, tmp: Path, max_iter: int, batch: int | None = None) -> Path:
    net = io.read_net(model / "train.prototxt")
    for lp in net.layer:
        if lp.type == "AnnotatedData":
            lp.data_param.source = str(db)
            if batch:
                lp.data_param.batch_size = batch
            adp = lp.annotated_data_param
            if adp.label_map_file and not Path(adp.label_map_file).is_absolute():
                adp.label_map_file = str(REPO / adp.label_map_file)
    (tmp / "train.prototxt").write_text(text_format.MessageToString(net))
    sp = io.read_solver(model / "solver.prototxt")
    sp.train_net = str(tmp / "train.prototxt")
    for name in ("test_net", "test_iter", "test_state"):
        sp.ClearField(name)
    sp.test_interval = 0
    sp.test_initialization = False
    sp.max_iter = max_iter
    sp.display = 1
    sp.average_loss = 1
    sp.snapshot = 0
    sp.snapshot_after_train = False
    sp.ClearField("snapshot_prefix")
    sp.solver_mode = pb.SolverParameter.CPU
    path = tmp / "solver.prototxt"
    path.write_text(text_format.MessageToString(sp))
    return path


def find_caffe(given: str | None) -> str | None:
    exe = given or os.environ.get("CAFFE_BIN") or shutil.which("caffe")
    return exe if exe and Path(exe).is_file() and os.access(exe, os.X_OK) else None


DEFAULT_MODELS = ("models/synthetic/demo_rootres", "models/VOC0712/voc07_rootres34:2")


def model_and_batch(spec: str) -> tuple[Path, int | None]:
    """``folder`` or ``folder:BATCH`` -> (absolute folder, batch or None for the net's own)."""
    folder, _, batch = spec.rpartition(":") if spec.rpartition(":")[2].isdigit() else (spec, "", "")
    path = (REPO / folder).resolve()
    if not (path / "train.prototxt").is_file() or not (path / "solver.prototxt").is_file():
        raise SystemExit(f"bench_caffe: {folder}: no train.prototxt and solver.prototxt there")
    return path, int(batch) if batch else None


def run_pair(caffe: str, solver: Path, tmp: Path, env: dict, first: int, last: int) -> tuple[float, float]:
    """(Caffe's, ours) seconds per iteration over iterations first..last, Caffe first."""
    r = subprocess.run([caffe, "train", f"--solver={solver}"], cwd=tmp, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"caffe train failed (exit {r.returncode}): {(r.stderr.strip().splitlines() or [''])[-1]}")
    caffe_s = per_iteration(r.stderr, first, last, "caffe")
    log = tmp / "ours.log"
    r = subprocess.run([sys.executable, "-m", "scratchdet", "train", "--solver", str(solver), "--gpu", "cpu",
                        "--log", str(log), "--quiet", "--seed", "1"], cwd=tmp, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"scratchdet train failed (exit {r.returncode}): {(r.stderr.strip().splitlines() or [''])[-1]}")
    return caffe_s, per_iteration(log.read_text(), first, last, "scratchdet")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--caffe", default=None, help="the SSD Caffe binary (default: CAFFE_BIN, else caffe on the PATH)")
    p.add_argument("--model", action="append", default=None, metavar="FOLDER[:BATCH]",
                   help="folder with train.prototxt and solver.prototxt, optionally :batch (repeatable; "
                        f"default {' and '.join(DEFAULT_MODELS)})")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per run")
    p.add_argument("--warmup", type=int, default=2, help="iterations before the timed ones")
    p.add_argument("--rounds", type=int, default=2, help="Caffe/ours pairs, alternating")
    p.add_argument("--images", type=int, default=80, help="synthetic images in the LMDB")
    args = p.parse_args(argv)
    caffe = find_caffe(args.caffe)
    if caffe is None:
        print("bench_caffe: no SSD Caffe binary (set CAFFE_BIN or --caffe); nothing measured")
        return 0
    models = [model_and_batch(spec) for spec in (args.model or DEFAULT_MODELS)]
    first, last = args.warmup, args.warmup + args.iters
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(REPO)] +
                                                      ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_caffe.") as tmp:
        tmp = Path(tmp)
        db = make_lmdb(tmp, args.images)
        for model, batch_override in models:
            solver = write_solver(model, db, tmp, last + 1, batch_override)
            batch = next(lp.data_param.batch_size for lp in io.read_net(tmp / "train.prototxt").layer
                         if lp.type == "AnnotatedData")
            times: dict[str, list[float]] = {"caffe": [], "ours": []}
            try:
                for _ in range(args.rounds):
                    c, o = run_pair(caffe, solver, tmp, env, first, last)
                    times["caffe"].append(c)
                    times["ours"].append(o)
            except RuntimeError as exc:
                print(f"bench_caffe: {model.relative_to(REPO)}: {exc}", file=sys.stderr)
                return 1
            rows.append((model.relative_to(REPO), batch, times))
    print(f"training step on the CPU: iterations {first}-{last}, median of {args.rounds} alternating runs each "
          f"({os.cpu_count()} CPUs, {datetime.date.today()}, Caffe {Path(caffe).name} and ours at default threads)")
    print(f"{'model':<34} {'batch':>5} {'Caffe s/iter':>12} {'ours s/iter':>11} {'ratio (time)':>12}   runs Caffe | ours")
    for model, batch, times in rows:
        caffe_s, ours_s = statistics.median(times["caffe"]), statistics.median(times["ours"])
        runs = " ".join(f"{v:.2f}" for v in times["caffe"]) + " | " + " ".join(f"{v:.2f}" for v in times["ours"])
        print(f"{str(model):<34} {batch:>5} {caffe_s:>12.3f} {ours_s:>11.3f} {ours_s / caffe_s:>12.2f}   {runs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
