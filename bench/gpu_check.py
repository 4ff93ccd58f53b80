"""GPU readiness check: one table, every row measured in one run (``bench/gpu_check.sh``).

    bench/gpu_check.sh            # ScratchDet300 at batch 32 on cuda:0, about 5-7 minutes on an H200
    bench/gpu_check.sh --dry      # the same code paths on the CPU: the demo net, batch 2, 2 iterations

Rows: training images/s of the faithful fp32 path and of each opt-in fast path (channels_last, amp,
tf32, compile; each with the relative difference of its losses to the faithful path's, from the same
weights on the same batches), the training step with the real data layer, the data layer alone with
N workers (against what the GPU consumes), host syncs per iteration (torch.cuda.set_sync_debug_mode),
peak GPU memory, a 1-GPU torchrun run of ``scratchdet train``, and inference images/s at batch 1 and
the training batch. Each row is its own try: a failed row prints FAILED and the reason, the rest go
on; no row starts after the time budget (--budget) is spent. Nothing is left behind.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST, TRAIN, filter_net
from scratchdet.caffe.schema import pb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forward import calibrate_batchnorm  # noqa: E402  (shared with the CPU benches)
from bench_train import feed_from_memory, make_lmdb  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FULL = dict(model="models/VOC0712/voc07_rootres34", batch=32, warmup=2, iters=10, images=96,
            workers="4,8,15", data_batches=8, compile_backend="inductor", budget=420.0)
DRY = dict(model="models/synthetic/demo_rootres", batch=2, warmup=1, iters=2, images=8,
           workers="0,1", data_batches=2, compile_backend="aot_eager", budget=100.0)
TRAIN_ROWS = [("fp32 (faithful)", ""), ("channels_last", "channels_last"), ("amp bf16", "amp"),
              ("tf32", "tf32"), ("compile", "compile")]


# -- set-up ------------------------------------------------------------------------------------------

def train_files(cfg: dict, tmp: Path, db: Path, *, average_loss: int = 1000, max_iter: int = 1,
                display: int = 0, name: str = "solver") -> Path:
    """The model's train net reading ``db`` at the check's batch, and a fixed-lr solver for it."""
    net = io.read_net(REPO / cfg["model"] / "train.prototxt")
    for lp in net.layer:
        if lp.type == "AnnotatedData":
            lp.data_param.source = str(db)
            lp.data_param.batch_size = cfg["batch"]
    net_path = tmp / "train.prototxt"
    net_path.write_text(text_format.MessageToString(net))
    sp = pb.SolverParameter(train_net=str(net_path), base_lr=0.001, lr_policy="fixed", momentum=0.9,
                            weight_decay=0.0005, max_iter=max_iter, display=display, average_loss=average_loss,
                            snapshot_after_train=False, random_seed=0)
    solver = tmp / f"{name}.prototxt"
    solver.write_text(text_format.MessageToString(sp))
    return solver


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 30


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def trainer_for(cfg, tmp, db, device, fast_spec: str, workers: int, quiet_log: str):
    from scratchdet.engine.fast import FastPath
    from scratchdet.engine.train import Trainer
    spec = fast_spec.replace("compile", f"compile={cfg['compile_backend']}") if fast_spec else ""
    solver = train_files(cfg, tmp, db)
    return Trainer(solver, quiet=True, workers=workers, log_path=tmp / quiet_log, device=str(device),
                   fast=FastPath.parse(spec))


def cached_batches(cfg, db, device, count: int = 2):
    """``count`` batches of the model's data layer (seed 0), on ``device``: the in-memory feed."""
    layer = data_layer(cfg, db, workers=0)
    # as the layer hands them to the net: the label blob stays on the host (see host_tops)
    out = [tuple(t if k in layer.host_tops else t.to(device) for k, t in enumerate(layer.forward()))
           for _ in range(count)]
    layer.close()
    return out


def data_layer(cfg, db, workers: int):
    """The model's TRAIN AnnotatedData layer (its augmentation) on ``db`` at the check's batch, seed 0."""
    from scratchdet.engine.layers.annotated_data import AnnotatedDataLayer
    net = io.read_net(REPO / cfg["model"] / "train.prototxt")
    lp = next(lp for lp in filter_net(net, TRAIN).layer if lp.type == "AnnotatedData")
    lp.data_param.source = str(db)
    lp.data_param.batch_size = cfg["batch"]
    h, w = lp.transform_param.resize_param.height, lp.transform_param.resize_param.width
    layer = AnnotatedDataLayer(lp, TRAIN, [], [(cfg["batch"], 3, h, w), (1, 1, 1, 8)])
    layer.configure(seed=0, workers=workers)
    return layer


def timed_solve(trainer, warmup: int, iters: int, device) -> tuple[float, list[float]]:
    """(seconds of ``iters`` iterations after ``warmup``, every iteration's loss)."""
    trainer.sp.max_iter = warmup
    trainer.solve()
    losses = list(trainer._losses)
    sync(device)
    start = time.perf_counter()
    trainer.sp.max_iter = warmup + iters
    trainer.solve()
    sync(device)
    seconds = time.perf_counter() - start
    return seconds, losses + list(trainer._losses)


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


# -- rows -------------------------------------------------------------------------------------------

def row_train(cfg, tmp, db, device, fast_spec: str, batches) -> dict:
    reset_peak(device)
    trainer = trainer_for(cfg, tmp, db, device, fast_spec, 0, "train.log")
    try:
        feed_from_memory(trainer, batches)
        seconds, losses = timed_solve(trainer, cfg["warmup"], cfg["iters"], device)
    finally:
        trainer.close()
    return {"img_s": cfg["iters"] * cfg["batch"] / seconds, "peak_gib": peak_gib(device), "losses": losses}


def row_train_data(cfg, tmp, db, device, workers: int) -> dict:
    reset_peak(device)
    trainer = trainer_for(cfg, tmp, db, device, "", workers, "train_data.log")
    try:
        seconds, losses = timed_solve(trainer, cfg["warmup"], cfg["iters"], device)
    finally:
        trainer.close()
    return {"img_s": cfg["iters"] * cfg["batch"] / seconds, "peak_gib": peak_gib(device), "losses": losses}


def row_data(cfg, db, workers: int) -> dict:
    layer = data_layer(cfg, db, workers)
    try:
        layer.forward()                       # worker start-up not counted
        n = cfg["data_batches"]
        start = time.perf_counter()
        for _ in range(n):
            layer.forward()
        seconds = time.perf_counter() - start
    finally:
        layer.close()
    return {"img_s": n * cfg["batch"] / seconds}


def row_syncs(cfg, tmp, db, device, batches) -> dict:
    """Host syncs per training iteration and where they happen (file:line, per iteration)."""
    if device.type != "cuda":
        # the same loop runs, but only CUDA can report synchronisations
        trainer = trainer_for(cfg, tmp, db, device, "", 0, "syncs.log")
        try:
            feed_from_memory(trainer, batches)
            timed_solve(trainer, 1, 1, device)
        finally:
            trainer.close()
        return {"per_iter": None, "where": []}
    trainer = trainer_for(cfg, tmp, db, device, "", 0, "syncs.log")
    try:
        feed_from_memory(trainer, batches)
        trainer.sp.max_iter = 1
        trainer.solve()                       # warm-up outside the count
        n = cfg["iters"]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                trainer.sp.max_iter = 1 + n
                trainer.solve()
            finally:
                torch.cuda.set_sync_debug_mode("default")
    finally:
        trainer.close()
    syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
    where = collections.Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
    return {"per_iter": len(syncs) / n, "where": [(k, v / n) for k, v in where.most_common(8)]}


def row_infer(cfg, tmp, device, batch: int, images, fast_spec: str = "") -> dict:
    from scratchdet.engine.fast import FastPath, set_tf32
    from scratchdet.engine.net import Net
    net_param = io.read_net(REPO / cfg["model"] / "deploy.prototxt")
    for shape in net_param.input_shape:
        shape.dim[0] = batch
    for lp in net_param.layer:
        if lp.type == "Input":
            for shape in lp.input_param.shape:
                shape.dim[0] = batch
    net = Net(net_param, TEST, seed=0)
    calibrate_batchnorm(net, images[:4].float().cpu())   # finite statistics: real detections, not NaN
    net = net.to(device).eval()
    spec = fast_spec.replace("compile", f"compile={cfg['compile_backend']}") if fast_spec else ""
    fast = FastPath.parse(spec)
    if device.type == "cuda":
        set_tf32(fast.tf32)
    net.set_fast(fast)
    reps = int(np.ceil(batch / images.shape[0]))
    x = images.repeat(reps, 1, 1, 1)[:batch].contiguous()
    name = next(lp.top[0] for lp in net.param.layer if lp.type == "Input")
    reset_peak(device)
    with torch.no_grad():
        out = net.forward({name: x})          # warm-up
        sync(device)
        n = cfg["iters"]
        start = time.perf_counter()
        for _ in range(n):
            out = net.forward({name: x})
        sync(device)
        seconds = time.perf_counter() - start
    dets = next(v for k, v in out.items() if k in net.output_names)
    return {"img_s": n * batch / seconds, "peak_gib": peak_gib(device), "rows": int(dets.reshape(-1, 7).shape[0])}


def row_ddp(cfg, tmp, db, device, timeout: float) -> dict:
    """``scratchdet train`` under ``torchrun --nproc_per_node=1`` for a few iterations."""
    iters = cfg["warmup"] + cfg["iters"] // 2
    solver = train_files(cfg, tmp, db, average_loss=1, max_iter=iters, display=1, name="ddp_solver")
    workers = max(int(w) for w in cfg["workers"].split(","))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
           "-m", "scratchdet", "train", "--solver", str(solver),
           "--gpu", "0" if device.type == "cuda" else "cpu", "--workers", str(workers), "--seed", "0"]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    start = time.perf_counter()
    r = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=timeout, env=env)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        tail = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        raise RuntimeError(f"torchrun exit {r.returncode}: {tail}")
    text = r.stderr                       # no snapshot_prefix: the log goes to stderr only
    speeds = [float(m) for m in re.findall(r"speed = \S+ iter/s, ([0-9.]+) images/s", text)]
    losses = re.findall(r"Iteration (\d+), loss = (\S+)", text)
    if not losses:
        raise RuntimeError("torchrun finished but the log has no loss line")
    return {"img_s": speeds[-1] if speeds else None, "seconds": seconds, "iters": iters,
            "last": f"iteration {losses[-1][0]} loss {losses[-1][1]}"}


def row_in_subprocess(args, row: str, timeout: float, tmp: Path) -> dict:
    """One row in a child process (a hung compile cannot stop the table)."""
    out = tmp / f"{row}.json"
    cmd = [sys.executable, __file__, "--row", row, "--row-out", str(out), "--tmp", str(tmp)]
    if args.dry:
        cmd.append("--dry")
    for name in ("batch", "iters", "budget"):
        if getattr(args, name) is not None:
            cmd += [f"--{name}", str(getattr(args, name))]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"did not finish within {timeout:.0f} s") from None
    if r.returncode != 0 or not out.is_file():
        tail = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
        raise RuntimeError(tail[-1] if tail else f"exit {r.returncode}")
    return json.loads(out.read_text())


# -- the table ----------------------------------------------------------------------------------------

def fmt(v, spec=".1f", none="n/a") -> str:
    return none if v is None else format(v, spec)


class Table:
    def __init__(self):
        self.lines = []

    def add(self, name: str, value: str, mem: str = "", check: str = "") -> None:
        line = f"{name:<36} {value:>12} {mem:>9}  {check}"
        self.lines.append(line)
        print(line, flush=True)


def config(args) -> dict:
    cfg = dict(DRY if args.dry else FULL)
    for name in ("batch", "iters", "budget"):
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
    if args.workers:
        cfg["workers"] = args.workers
    return cfg


def pick_device(args) -> torch.device:
    if args.device:
        return torch.device(args.device)
    if args.dry:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (torch %s, CUDA build %s); use --dry for the CPU run"
                         % (torch.__version__, torch.version.cuda))
    return torch.device("cuda:0")


def child(args) -> int:
    """--row: one row in this process, its result as JSON in --row-out."""
    cfg = config(args)
    device = pick_device(args)
    tmp = Path(args.tmp)
    db = tmp / "lmdb" / "synthetic_trainval_lmdb"
    if args.row == "compile":
        batches = cached_batches(cfg, db, device)
        result = row_train(cfg, Path(tempfile.mkdtemp(dir=tmp)), db, device, "compile", batches)
        from torch._dynamo.utils import counters
        result["graphs"] = int(counters["stats"].get("unique_graphs", 0))
        result["breaks"] = int(sum(counters["graph_break"].values()))
    else:
        raise SystemExit(f"unknown row {args.row}")
    Path(args.row_out).write_text(json.dumps(result))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry", action="store_true", help="small CPU run of the same code paths (CI)")
    p.add_argument("--device", default=None, help="cuda:0 (default) or cpu")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--iters", type=int, default=None, help="timed iterations per training row")
    p.add_argument("--workers", default=None, help="data-layer worker counts, e.g. 4,8,15")
    p.add_argument("--budget", type=float, default=None, help="seconds after which no row starts")
    p.add_argument("--row", default=None, help=argparse.SUPPRESS)
    p.add_argument("--row-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.row:
        return child(args)
    cfg = config(args)
    device = pick_device(args)
    t0 = time.perf_counter()
    failed = 0

    def left() -> float:
        return cfg["budget"] - (time.perf_counter() - t0)

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check{' --dry' if args.dry else ''}: {cfg['model']} batch {cfg['batch']}, {cfg['warmup']} warm-up + "
          f"{cfg['iters']} timed iterations; {gpu}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"{os.cpu_count()} CPUs; budget {cfg['budget']:.0f} s", flush=True)
    table = Table()
    table.add("row", "value", "peak GiB", "check")
    notes = []
    with tempfile.TemporaryDirectory(prefix="gpu_check.") as tmp:
        tmp = Path(tmp)

        def run(name: str, fn, need: float = 5.0):
            nonlocal failed
            if left() < need:
                table.add(name, "SKIPPED", "", f"time budget ({cfg['budget']:.0f} s) spent")
                return None
            try:
                return fn()
            except Exception as exc:  # a failed row is reported, the table goes on
                failed += 1
                msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
                table.add(name, "FAILED", "", msg[:200])
                if os.environ.get("GPU_CHECK_TRACEBACK"):
                    traceback.print_exc()
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                return None

        db = make_lmdb(tmp, cfg["images"])
        batches = run("in-memory batches", lambda: cached_batches(cfg, db, device))
        b = cfg["batch"]
        faithful = None
        consumes = None

        def train_row(label, spec):
            nonlocal faithful, consumes
            name = f"train {label} b{b} img/s"
            if spec == "compile":
                return                        # last: it may take what is left of the budget
            if batches is not None:
                res = run(name, lambda: row_train(cfg, tmp, db, device, spec, batches))
            else:
                res = None
            if res is None:
                return
            check = ""
            if spec == "":
                faithful = res["losses"]
                consumes = res["img_s"]
                check = f"loss {faithful[0]:.5g} -> {faithful[-1]:.5g}"
            elif faithful:
                ls = res["losses"]
                check = (f"loss rel.diff vs fp32: step 1 {rel(ls[0], faithful[0]):.2e}, "
                         f"step {len(ls)} {rel(ls[-1], faithful[-1]):.2e}")
            table.add(name, fmt(res["img_s"]), fmt(res.get("peak_gib"), ".2f"), check)

        for label, spec in TRAIN_ROWS:
            train_row(label, spec)

        workers = [int(w) for w in cfg["workers"].split(",") if w.strip()]
        for w in workers:
            res = run(f"data layer {w} workers img/s", lambda: row_data(cfg, db, w))
            if res:
                versus = f"GPU consumes {consumes:.1f} (fp32): x{res['img_s'] / consumes:.2f}" if consumes else ""
                table.add(f"data layer {w} workers img/s", fmt(res["img_s"]), "", versus)
        wmax = max(workers) if workers else 0
        res = run(f"train fp32 + data layer ({wmax} workers)", lambda: row_train_data(cfg, tmp, db, device, wmax))
        if res:
            check = f"x{res['img_s'] / consumes:.2f} of in-memory" if consumes else ""
            table.add(f"train fp32 + data layer ({wmax} workers)", fmt(res["img_s"]), fmt(res.get("peak_gib"), ".2f"),
                      check)

        if batches is not None:
            res = run("host syncs / iteration", lambda: row_syncs(cfg, tmp, db, device, batches))
            if res:
                table.add("host syncs / iteration", fmt(res["per_iter"], ".1f", "n/a (CPU)"), "",
                          "set_sync_debug_mode('warn') warnings" if res["per_iter"] is not None else "")
                for where, per in res["where"]:
                    notes.append(f"  sync at {where}: {per:.1f} per iteration")
            images = batches[0][0]
            for bi in (1, b):
                res = run(f"inference b{bi} img/s", lambda: row_infer(cfg, tmp, device, bi, images))
                if res:
                    table.add(f"inference b{bi} img/s", fmt(res["img_s"]), fmt(res.get("peak_gib"), ".2f"),
                              f"{res['rows']} detection rows")
            res = run(f"inference b{b} channels_last+amp img/s",
                      lambda: row_infer(cfg, tmp, device, b, images, "channels_last,amp"))
            if res:
                table.add(f"inference b{b} channels_last+amp img/s", fmt(res["img_s"]), fmt(res.get("peak_gib"), ".2f"),
                          f"{res['rows']} detection rows")

        res = run("torchrun 1 process img/s", lambda: row_ddp(cfg, tmp, db, device, max(left(), 1)), need=20)
        if res:
            table.add("torchrun 1 process img/s", fmt(res["img_s"]), "",
                      f"{res['iters']} iterations in {res['seconds']:.0f} s, {res['last']}")

        # last, with what is left of the budget (a first compile of the net takes minutes)
        label, spec = TRAIN_ROWS[-1]
        res = run(f"train {label} b{b} img/s",
                  lambda: row_in_subprocess(args, "compile", max(left(), 1), tmp), need=30)
        if res is not None:
            ls = res["losses"]
            check = (f"loss rel.diff vs fp32: step 1 {rel(ls[0], faithful[0]):.2e}, "
                     f"step {len(ls)} {rel(ls[-1], faithful[-1]):.2e}" if faithful else "")
            check += f"; {res['graphs']} graph(s), {res['breaks']} graph break(s)"
            table.add(f"train {label} b{b} img/s", fmt(res["img_s"]), fmt(res.get("peak_gib"), ".2f"), check)
    for line in notes:
        print(line)
    print(f"gpu_check: {time.perf_counter() - t0:.0f} s, {failed} row(s) failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
