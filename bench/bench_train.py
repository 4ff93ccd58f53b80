"""Training speed on this machine, as a table.

    python bench/bench_train.py [--variants demo_rootres,<ScratchDet300 id>] [--iters 6] [--workers 0,1,2]

1. The AnnotatedData layer alone: images/s with the SSD training augmentation (distort, expand,
   7 batch samplers, 300x300 WARP with the 5 interpolations, mirror) for several worker counts.
2. Training: images/s of ``scratchdet``'s solver loop (data layer, forward, MultiBoxLoss, backward,
   SGD update) for the small synthetic variant at its own batch and for ScratchDet300 at batch 2,
   against a plain PyTorch step over the same layers (nn.Conv2d/BatchNorm2d/... built from the
   prototxt, the same input tensor, a squared-output loss on the two head blobs, torch.optim.SGD;
   no data loading, no matching). The ratio is our time / plain time (1.0 = no overhead).

Runs in a temporary folder on a small synthetic LMDB; nothing is left behind.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from google.protobuf import text_format
from torch import nn

from scratchdet.caffe import io
from scratchdet.caffe.netstate import TRAIN, filter_net
from scratchdet.caffe.schema import pb

from prototxt_gen.data_layers import ssd_batch_samplers, train_transform
from prototxt_gen.netspec import assign

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VARIANTS = "demo_rootres,voc07_rootres34"


# -- a plain PyTorch model of the same layers --------------------------------------------------------

class PlainNet(nn.Module):
    """The prototxt's compute layers as ordinary torch modules; stops at the loss/prior layers."""

    SKIP = {"AnnotatedData", "Data", "Input", "PriorBox", "MultiBoxLoss", "DetectionOutput",
            "DetectionEvaluate", "Silence", "Softmax", "Dropout"}

    def __init__(self, net_param, channels: int = 3):
        super().__init__()
        self.steps = []
        self.mods = nn.ModuleDict()
        shapes = {}
        data_top = None
        for lp in net_param.layer:
            if lp.type in ("AnnotatedData", "Data", "Input"):
                data_top = lp.top[0]
                shapes[data_top] = channels
        self.data_top = data_top
        for lp in net_param.layer:
            if lp.type in self.SKIP or any(b not in shapes for b in lp.bottom):
                continue
            c_in = shapes[lp.bottom[0]]
            key = f"m{len(self.steps)}"
            t = lp.type
            if t == "Convolution":
                cp = lp.convolution_param
                k = cp.kernel_size[0] if cp.kernel_size else cp.kernel_h
                self.mods[key] = nn.Conv2d(c_in, cp.num_output, k, cp.stride[0] if cp.stride else 1,
                                           cp.pad[0] if cp.pad else 0, cp.dilation[0] if cp.dilation else 1,
                                           cp.group or 1, bias=cp.bias_term)
                c_out = cp.num_output
            elif t == "BatchNorm":
                self.mods[key] = nn.BatchNorm2d(c_in, eps=lp.batch_norm_param.eps, momentum=0.001, affine=False)
                c_out = c_in
            elif t == "Scale":
                self.mods[key] = _ChannelAffine(c_in, lp.scale_param.bias_term)
                c_out = c_in
            elif t == "Normalize":
                self.mods[key] = _ChannelAffine(c_in, False)
                c_out = c_in
            elif t in ("ReLU", "Pooling", "Eltwise", "Concat", "Permute", "Flatten", "Reshape"):
                c_out = sum(shapes[b] for b in lp.bottom) if t == "Concat" else c_in
            else:
                continue
            self.steps.append((key, lp))
            for top in lp.top:
                shapes[top] = c_out
        self.heads = [b for b in ("mbox_loc", "mbox_conf") if b in shapes]

    def forward(self, x):
        blobs = {self.data_top: x}
        for key, lp in self.steps:
            t = lp.type
            ins = [blobs[b] for b in lp.bottom]
            if key in self.mods:
                y = self.mods[key](ins[0])
                if t == "Normalize":
                    y = ins[0] / ins[0].pow(2).sum(1, keepdim=True).add(1e-10).sqrt() * self.mods[key].weight.view(1, -1, 1, 1)
            elif t == "ReLU":
                y = F.leaky_relu(ins[0], lp.relu_param.negative_slope) if lp.relu_param.negative_slope else F.relu(ins[0])
            elif t == "Pooling":
                pp = lp.pooling_param
                if pp.global_pooling:
                    y = ins[0].amax((2, 3), keepdim=True) if pp.pool == 0 else ins[0].mean((2, 3), keepdim=True)
                else:
                    k, s, p = pp.kernel_size or pp.kernel_h, pp.stride or 1, pp.pad
                    y = (F.max_pool2d(ins[0], k, s, p, ceil_mode=True) if pp.pool == 0
                         else F.avg_pool2d(ins[0], k, s, p, ceil_mode=True))
            elif t == "Eltwise":
                op = lp.eltwise_param.operation
                y = ins[0]
                for other in ins[1:]:
                    y = y * other if op == 0 else y + other if op == 1 else torch.maximum(y, other)
            elif t == "Concat":
                y = torch.cat(ins, lp.concat_param.axis if lp.concat_param.HasField("axis") else 1)
            elif t == "Permute":
                y = ins[0].permute(*lp.permute_param.order)
            elif t == "Flatten":
                y = ins[0].flatten(lp.flatten_param.axis if lp.flatten_param.HasField("axis") else 1)
            else:  # Reshape: keep the batch, flatten the rest
                y = ins[0].reshape(ins[0].shape[0], -1)
            blobs[lp.top[0]] = y
        return [blobs[h] for h in self.heads]


class _ChannelAffine(nn.Module):
    def __init__(self, c, bias):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c)) if bias else None

    def forward(self, x):
        y = x * self.weight.view(1, -1, 1, 1)
        return y + self.bias.view(1, -1, 1, 1) if self.bias is not None else y


# -- measurements ------------------------------------------------------------------------------------

def make_lmdb(tmp: Path, images: int) -> Path:
    lmdb_dir = tmp / "lmdb"
    subprocess.run([sys.executable, "-m", "scratchdet", "data", "synthetic", "--out", str(tmp / "synthetic"),
                    "--images", str(images), "--lmdb", str(lmdb_dir), "--name-size", str(tmp / "name_size.txt"),
                    "--quiet"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return lmdb_dir / "synthetic_trainval_lmdb"


def bench_data_layer(db: Path, workers: int, batches: int, batch: int = 8) -> float:
    from scratchdet.engine.layers.annotated_data import AnnotatedDataLayer
    # SSD's train transform and batch samplers as the generator writes them into every train net
    lp = text_format.Parse(f'name: "data" type: "AnnotatedData" top: "data" top: "label" '
                           f'data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}', pb.LayerParameter())
    assign(lp, "transform_param", train_transform(300, 300))
    assign(lp.annotated_data_param, "batch_sampler", ssd_batch_samplers())
    layer = AnnotatedDataLayer(lp, TRAIN, [], [(batch, 3, 300, 300), (1, 1, 1, 8)])
    layer.configure(seed=0, workers=workers)
    layer.forward()                     # start-up (worker processes) not counted
    start = time.perf_counter()
    for _ in range(batches):
        layer.forward()
    seconds = time.perf_counter() - start
    layer.close()
    return batches * batch / seconds


def generate(variant: str, out: Path) -> Path:
    r = subprocess.run([sys.executable, "-m", "scratchdet", "gen", variant, "--out", str(out)], cwd=REPO,
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"scratchdet gen {variant}: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
    found = sorted(out.glob(f"*/{variant}/train.prototxt"))
    if not found:
        raise RuntimeError(f"scratchdet gen {variant}: no train.prototxt under {out}")
    return found[0]


def feed_from_memory(trainer, batches) -> None:
    """The train net's data layer hands out ``batches`` in turn instead of reading its LMDB."""
    import itertools
    from scratchdet.engine.score import data_layers
    for layer in data_layers(trainer.net):
        cycle = itertools.cycle(batches)
        layer.forward = lambda *bottoms, _c=cycle: next(_c)


def bench_training(train_prototxt: Path, db: Path, batch: int | None, iters: int, tmp: Path,
                   workers: int) -> tuple[float, float, float, int]:
    """(our images/s with the data layer, ours with batches from memory, plain images/s, batch) for
    ``iters`` iterations after one warm-up each. The data layer's loader lives across the solve()
    calls, so its workers start before the timed window."""
    from scratchdet.engine.train import Trainer
    net = io.read_net(train_prototxt)
    for lp in net.layer:
        if lp.type == "AnnotatedData":
            lp.data_param.source = str(db)
            if batch:
                lp.data_param.batch_size = batch
    batch = next(lp.data_param.batch_size for lp in filter_net(net, TRAIN).layer if lp.type == "AnnotatedData")
    net_path = tmp / f"{train_prototxt.parent.name}_bench_train.prototxt"
    net_path.write_text(text_format.MessageToString(net))
    sp = pb.SolverParameter(train_net=str(net_path), base_lr=0.001, lr_policy="fixed", momentum=0.9,
                            weight_decay=0.0005, max_iter=1, display=0, snapshot_after_train=False, random_seed=0)
    solver = tmp / "bench_solver.prototxt"
    solver.write_text(text_format.MessageToString(sp))
    trainer = Trainer(solver, quiet=True, workers=workers, log_path=tmp / "bench.log")
    trainer.solve()                                     # warm-up iteration (workers start here)
    trainer.sp.max_iter = 1 + iters
    start = time.perf_counter()
    trainer.solve()
    ours = iters * batch / (time.perf_counter() - start)
    from scratchdet.engine.score import data_layers
    batches = [data_layers(trainer.net)[0].forward() for _ in range(2)]
    trainer.close()

    trainer = Trainer(solver, quiet=True, workers=0, log_path=tmp / "bench.log")
    feed_from_memory(trainer, batches)
    trainer.solve()
    trainer.sp.max_iter = 1 + iters
    start = time.perf_counter()
    trainer.solve()
    in_memory = iters * batch / (time.perf_counter() - start)
    trainer.close()

    torch.manual_seed(0)
    h, w = next((lp.transform_param.resize_param.height, lp.transform_param.resize_param.width)
                for lp in filter_net(net, TRAIN).layer if lp.type == "AnnotatedData")
    plain = PlainNet(filter_net(net, TRAIN))
    opt = torch.optim.SGD(plain.parameters(), lr=0.001, momentum=0.9, weight_decay=0.0005)
    x = torch.randn(batch, 3, h, w)

    def step():
        opt.zero_grad()
        loss = sum((o ** 2).mean() for o in plain(x))
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    plain_rate = iters * batch / (time.perf_counter() - start)
    return ours, in_memory, plain_rate, batch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="variant ids; the first trains at its own batch, the others at batch 2")
    p.add_argument("--iters", type=int, default=8, help="timed iterations per variant")
    p.add_argument("--workers", default="0,1,2", help="data-layer worker counts to time")
    p.add_argument("--images", type=int, default=120, help="synthetic images in the LMDB")
    args = p.parse_args(argv)
    data_rows, train_rows = [], []
    with tempfile.TemporaryDirectory(prefix="bench_train.") as tmp:
        tmp = Path(tmp)
        db = make_lmdb(tmp, args.images)
        for workers in (int(w) for w in args.workers.split(",")):
            rate = bench_data_layer(db, workers, batches=6)
            data_rows.append((workers, rate))
        for i, variant in enumerate(v for v in args.variants.split(",") if v):
            try:
                prototxt = generate(variant, tmp / "models")
                ours, mem, plain, batch = bench_training(prototxt, db, None if i == 0 else 2, args.iters, tmp,
                                                         workers=min(1, os.cpu_count() or 1))
                train_rows.append((variant, batch, ours, mem, plain))
            except Exception as exc:  # a variant that cannot run is reported, the table goes on
                train_rows.append((variant, 0, float("nan"), float("nan"), float("nan")))
                print(f"{variant}: {exc}", file=sys.stderr)
    print(f"AnnotatedData layer, SSD300 training augmentation ({os.cpu_count()} CPUs, torch {torch.__version__})")
    print(f"{'workers':>7} {'images/s':>9} {'per worker':>10}")
    for workers, rate in data_rows:
        print(f"{workers:>7} {rate:>9.1f} {rate / max(workers, 1):>10.1f}")
    print()
    print(f"training step on the CPU, {args.iters} iterations after a warm-up; ours with the data layer "
          f"(1 worker) and with batches from memory; plain: no data, no matching")
    print(f"{'variant':<24} {'batch':>5} {'ours img/s':>10} {'in-memory':>10} {'plain img/s':>11} "
          f"{'ours/plain':>10} {'in-memory/plain':>15}  (time ratios)")
    for variant, batch, ours, mem, plain in train_rows:
        ratio = plain / ours if ours and np.isfinite(ours) else float("nan")
        ratio_mem = plain / mem if mem and np.isfinite(mem) else float("nan")
        print(f"{variant:<24} {batch:>5} {ours:>10.2f} {mem:>10.2f} {plain:>11.2f} {ratio:>10.2f} {ratio_mem:>15.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
