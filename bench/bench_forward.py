"""Forward time per image (batch 1) of a deploy net on this machine: our engine vs OpenCV dnn on the
same prototxt and caffemodel, and our interpreter vs the same layer modules called directly.

    .venv/bin/python bench/bench_forward.py [--model models/VOC0712/voc07_rootres34/deploy.prototxt]
        [--iterations 5] [--threads N] [--gpu cpu|0]

Weights are random (the prototxt's fillers, seed 0), written with our caffemodel writer so both
engines read the same file. Prints a table; asserts nothing.
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


def timed(fn, iterations: int, sync=lambda: None) -> float:
    """Median seconds of ``fn()`` over ``iterations`` runs after one warm-up run."""
    fn()
    sync()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--gpu", default="cpu", help="device for our engine ('cpu' or an id); OpenCV runs on the CPU")
    args = parser.parse_args()

    import cv2

    sys.path.insert(0, str(ROOT / "python"))
    from scratchdet.caffe import io
    from scratchdet.caffe.netstate import TEST
    from scratchdet.engine.caffemodel import save_caffemodel
    from scratchdet.engine.net import Net
    from scratchdet.engine.timing import device_of

    model = Path(args.model)
    if not model.is_file():
        print(f"{model}: not found (generate it first: scratchdet gen voc07_rootres34)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    device = device_of(args.gpu)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    net = Net(io.read_net(model), TEST, source=str(model), seed=0).to(device)
    data_layer = next(layer for layer in net.layers if layer.lp.type == "Input")
    shape = (1,) + tuple(data_layer.shapes[0][1:])
    x = np.random.default_rng(0).uniform(-128, 128, shape).astype(np.float32)
    xt = torch.from_numpy(x).to(device)
    name = data_layer.lp.top[0]
    plan, size = direct_plan(net)
    slot = next(tops[0] for layer, _, tops in plan if layer is data_layer)
    feed = {slot: xt}

    rows = []
    with torch.no_grad():
        ours = timed(lambda: net.forward({name: xt}), args.iterations, sync)
        direct = timed(lambda: run_direct(plan, size, feed), args.iterations, sync)
    rows.append(("scratchdet Net.forward", ours))
    rows.append(("same layers, direct calls", direct))

    cv_time = None
    if hasattr(cv2.dnn, "readNetFromCaffe"):
        with tempfile.TemporaryDirectory() as tmp:
            weights = Path(tmp) / "random.caffemodel"
            save_caffemodel(net, weights)
            try:
                cv = cv2.dnn.readNetFromCaffe(str(model), str(weights))
                cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
                cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

                def cv_forward():
                    cv.setInput(x)
                    cv.forward()
                cv_time = timed(cv_forward, args.iterations)
                rows.append((f"OpenCV dnn {cv2.__version__} (CPU)", cv_time))
            except cv2.error as exc:
                print(f"OpenCV could not run the net: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)

    print(f"model {model}  input {'x'.join(map(str, shape))}  device {device}  threads {args.threads}  "
          f"median of {args.iterations}")
    print(f"{'engine':<34} {'ms/image':>10} {'images/s':>10}")
    for label, seconds in rows:
        print(f"{label:<34} {seconds * 1000:>10.1f} {1 / seconds:>10.2f}")
    if cv_time:
        print(f"ratio ours / OpenCV: {ours / cv_time:.2f}")
    print(f"interpreter overhead (Net.forward vs direct calls): {(ours - direct) / direct * 100:+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
