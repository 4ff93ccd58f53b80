"""The engine's CPU training step against real SSD Caffe's on the same solver, as a ratio.

    python bench/bench_caffe.py [--caffe PATH] [--model models/synthetic/demo_rootres] [--iters 10] [--rounds 2]

Both train the model's train net from a temporary copy of its solver (``solver_mode: CPU``, no test
net, no snapshots, display every iteration) on the same small synthetic LMDB, with their default
threads and data prefetching. The runs alternate (Caffe, ours, Caffe, ours, ...) so machine load
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


def write_solver(model: Path, db: Path, tmp: Path, max_iter: int) -> Path:
    net = io.read_net(model / "train.prototxt")
    for lp in net.layer:
        if lp.type == "AnnotatedData":
            lp.data_param.source = str(db)
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--caffe", default=None, help="the SSD Caffe binary (default: CAFFE_BIN, else caffe on the PATH)")
    p.add_argument("--model", default="models/synthetic/demo_rootres", help="folder with train.prototxt and solver.prototxt")
    p.add_argument("--iters", type=int, default=10, help="timed iterations per run")
    p.add_argument("--warmup", type=int, default=2, help="iterations before the timed ones")
    p.add_argument("--rounds", type=int, default=2, help="Caffe/ours pairs, alternating")
    p.add_argument("--images", type=int, default=80, help="synthetic images in the LMDB")
    args = p.parse_args(argv)
    caffe = find_caffe(args.caffe)
    if caffe is None:
        print("bench_caffe: no SSD Caffe binary (set CAFFE_BIN or --caffe); nothing measured")
        return 0
    model = (REPO / args.model).resolve()
    first, last = args.warmup, args.warmup + args.iters
    times: dict[str, list[float]] = {"caffe": [], "ours": []}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "python"), str(REPO)] +
                                                      ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else [])))
    with tempfile.TemporaryDirectory(prefix="bench_caffe.") as tmp:
        tmp = Path(tmp)
        db = make_lmdb(tmp, args.images)
        solver = write_solver(model, db, tmp, last + 1)
        batch = next(lp.data_param.batch_size for lp in io.read_net(tmp / "train.prototxt").layer
                     if lp.type == "AnnotatedData")
        for _ in range(args.rounds):
            r = subprocess.run([caffe, "train", f"--solver={solver}"], cwd=tmp, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(f"bench_caffe: caffe train failed (exit {r.returncode}): "
                      f"{(r.stderr.strip().splitlines() or [''])[-1]}", file=sys.stderr)
                return 1
            times["caffe"].append(per_iteration(r.stderr, first, last, "caffe"))
            log = tmp / "ours.log"
            r = subprocess.run([sys.executable, "-m", "scratchdet", "train", "--solver", str(solver), "--gpu", "cpu",
                                "--log", str(log), "--quiet", "--seed", "1"], cwd=tmp, capture_output=True, text=True, env=env)
            if r.returncode != 0:
                print(f"bench_caffe: scratchdet train failed (exit {r.returncode}): "
                      f"{(r.stderr.strip().splitlines() or [''])[-1]}", file=sys.stderr)
                return 1
            times["ours"].append(per_iteration(log.read_text(), first, last, "scratchdet"))
    caffe_s, ours_s = statistics.median(times["caffe"]), statistics.median(times["ours"])
    print(f"training step on the CPU, {model.relative_to(REPO)} at batch {batch}: iterations {first}-{last}, "
          f"median of {args.rounds} alternating runs each ({os.cpu_count()} CPUs, {datetime.date.today()})")
    print(f"{'engine':<28} {'s/iter':>8} {'images/s':>9}   runs (s/iter)")
    for name, label, value in (("caffe", f"SSD Caffe ({Path(caffe).name})", caffe_s), ("ours", "scratchdet torch engine", ours_s)):
        runs = " ".join(f"{v:.2f}" for v in times[name])
        print(f"{label:<28} {value:>8.3f} {batch / value:>9.1f}   {runs}")
    print(f"ratio ours / Caffe (time): {ours_s / caffe_s:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
