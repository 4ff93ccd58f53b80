"""Forward time per image (batch 1 and 8) of a deploy net on this machine: our engine (as written, and
with BatchNorm/Scale/ReLU folded into the convolutions as `scratchdet detect` / `test` run it) vs
OpenCV dnn on the same prototxt and caffemodel, and our interpreter vs the same layer modules called
directly.

    .venv/bin/python bench/bench_forward.py [--model models/VOC0712/voc07_rootres34/deploy.prototxt]
        [--iterations 5] [--batches 1,8] [--threads N] [--gpu cpu|0]

Weights are random (the prototxt's fillers, seed 0) with BatchNorm statistics calibrated on random
input (finite, so neither engine runs on inf/NaN), written with our caffemodel writer so both
engines read the same file. The engines run interleaved; the table gives medians and the number of
detections each kept. Prints a table; asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "models/VOC0712/voc07_rootres34/deploy.prototxt"


def direct_plan(net):
    """The net as a flat list of (layer, bottom slots, top slots) over a list of tensors: the same
    layer modules called with no name lookups, propagate_down handling or output checks."""
    slots: dict[str, int] = {}
    plan = []
    size = 0
    for layer in net.layers:
        bottoms = [slots[b] for b in layer.lp.bottom]
        tops = []
        for t in layer.lp.top:        # an in-place top gets a new slot, as the Net rebinds the name
            slots[t] = size
            tops.append(size)
            size += 1
        plan.append((layer, bottoms, tops))
    return plan, size


def run_direct(plan, size, feed: dict[int, torch.Tensor]):
    values: list = [None] * size
    for layer, bottoms, tops in plan:
        if not bottoms and tops[0] in feed:
            values[tops[0]] = feed[tops[0]]
            continue
        outs = layer(*[values[i] for i in bottoms])
        for i, v in zip(tops, outs):
            values[i] = v
    return values


def calibrate_batchnorm(net, x: torch.Tensor) -> None:
    """Finite BatchNorm statistics: each BatchNorm layer stores the mean and variance its input has
    on ``x`` (one TRAIN-mode pass from empty sums gives exactly those, with factor 1). Random
    weights with zero statistics (factor 0) would make both engines run on inf/NaN."""
    bns = [layer for layer in net.layers if layer.lp.type == "BatchNorm"]
    for layer in bns:
        layer.use_global_stats = False
    with torch.no_grad():
        net.forward({next(lp.top[0] for lp in net.param.layer if lp.type == "Input"): x})
    for layer in bns:
        layer.use_global_stats = True
        if not (torch.isfinite(layer.mean_sum).all() and torch.isfinite(layer.var_sum).all()):
            raise RuntimeError(f"layer {layer.name}: calibration gave non-finite statistics")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--batches", default="1,8", help="batch sizes to time")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu", default="cpu", help="device for our engine ('cpu' or an id); OpenCV runs on the CPU")
    args = parser.parse_args()

    import cv2

    sys.path.insert(0, str(ROOT / "python"))
    from scratchdet.caffe import io
    from scratchdet.caffe.netstate import TEST
    from scratchdet.engine.caffemodel import save_caffemodel
    from scratchdet.engine.fold import fold
    from scratchdet.engine.malloc import keep_freed_memory
    from scratchdet.engine.net import Net
    from scratchdet.engine.timing import device_of

    model = Path(args.model)
    if not model.is_file():
        print(f"{model}: not found (generate it first: scratchdet gen voc07_rootres34)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    keep_freed_memory()      # as `scratchdet test` / `detect` run
    device = device_of(args.gpu)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    net = Net(io.read_net(model), TEST, source=str(model), seed=0)
    data_layer = next(layer for layer in net.layers if layer.lp.type == "Input")
    chw = tuple(data_layer.shapes[0][1:])
    rng = np.random.default_rng(0)
    calibrate_batchnorm(net, torch.from_numpy(rng.uniform(-128, 128, (4,) + chw).astype(np.float32)))
    folded = fold(net)       # a new net: the unfolded one is timed too
    net.to(device)
    folded.to(device)
    name = data_layer.lp.top[0]
    plan, size = direct_plan(net)
    slot = next(tops[0] for layer, _, tops in plan if layer is data_layer)
    out_name = net.output_names[0]

    cv = None
    tmp = tempfile.TemporaryDirectory()
    if hasattr(cv2.dnn, "readNetFromCaffe"):
        weights = Path(tmp.name) / "random.caffemodel"
        save_caffemodel(net, weights)
        try:
            cv = cv2.dnn.readNetFromCaffe(str(model), str(weights))
            cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
            cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        except cv2.error as exc:
            print(f"OpenCV could not read the net: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
            cv = None

    print(f"model {model}  input {'x'.join(map(str, chw))}  device {device}  threads {args.threads}  "
          f"median of {args.iterations} interleaved runs after a warm-up; BatchNorm statistics calibrated")
    print(f"{'batch':>5} {'engine':<34} {'ms/image':>10} {'images/s':>10} {'detections':>10}")
    for batch in (int(b) for b in args.batches.split(",") if b.strip()):
        x = rng.uniform(-128, 128, (batch,) + chw).astype(np.float32)
        xt = torch.from_numpy(x).to(device)
        feed = {slot: xt}
        results: dict[str, list[float]] = {"ours": [], "folded": [], "chunked": [], "direct": [], "cv": []}
        counts: dict[str, int] = {}

        def ours():
            with torch.no_grad():
                out = net.forward({name: xt})[out_name]
            counts["ours"] = int((out.reshape(-1, 7)[:, 1] >= 0).sum())

        def ours_folded():
            with torch.no_grad():
                out = folded.forward({name: xt})[out_name]
            counts["folded"] = int((out.reshape(-1, 7)[:, 1] >= 0).sum())

        def ours_chunked():
            folded.set_micro_batch(1)
            with torch.no_grad():
                out = folded.forward({name: xt})[out_name]
            folded.set_micro_batch(None)
            counts["chunked"] = int((out.reshape(-1, 7)[:, 1] >= 0).sum())

        def direct():
            with torch.no_grad():
                run_direct(plan, size, feed)

        def cv_forward():
            cv.setInput(x)
            out = cv.forward()
            counts["cv"] = int((out.reshape(-1, 7)[:, 1] >= 0).sum())

        chunked = [("chunked", ours_chunked)] if batch > 1 and device.type == "cpu" else []
        engines = [("ours", ours), ("folded", ours_folded)] + chunked + [("direct", direct)] + ([("cv", cv_forward)] if cv is not None else [])
        for _, fn in engines:          # warm-up
            fn()
            sync()
        for _ in range(args.iterations):   # interleaved: machine load hits every engine alike
            for key, fn in engines:
                t0 = time.perf_counter()
                fn()
                sync()
                results[key].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) / batch for k, v in results.items() if v}
        labels = {"ours": "scratchdet Net.forward", "folded": "scratchdet, BN/Scale/ReLU folded",
                  "chunked": "folded, 1 image at a time (`test`)",
                  "direct": "same layers one by one, unfused",
                  "cv": f"OpenCV dnn {cv2.__version__} (CPU)"}
        for key in med:
            det = counts.get(key)
            print(f"{batch:>5} {labels[key]:<34} {med[key] * 1000:>10.1f} {1 / med[key]:>10.2f} "
                  f"{'' if det is None else det:>10}")
        if "cv" in med:
            print(f"{batch:>5} ratio ours / OpenCV: {med['ours'] / med['cv']:.2f}  "
                  f"folded / OpenCV: {med['folded'] / med['cv']:.2f}"
                  + (f"  folded 1 at a time / OpenCV: {med['chunked'] / med['cv']:.2f}" if "chunked" in med else ""))
        # Net.forward runs BatchNorm+Scale as one op and ReLUs in place; the direct calls run every
        # layer on its own, so this is those fusions net of the interpreter's bookkeeping
        print(f"{batch:>5} Net.forward (fused pairs, bookkeeping) vs the layers one by one: "
              f"{(med['ours'] - med['direct']) / med['direct'] * 100:+.1f}%")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
