"""Inference time per image (batch 1) of a deploy net, from the input to DetectionOutput's inputs:
the engine unfolded and with BatchNorm/Scale folded, the exported ONNX model in onnxruntime (CPU),
the exported TorchScript module, and OpenCV dnn on the same prototxt and caffemodel; then
DetectionOutput (the engine's, shared by every row) once on its own.

    .venv/bin/python bench/bench_export.py [--model models/VOC0712/voc07_rootres34/deploy.prototxt]
        [--iterations 5] [--threads N]

Weights are random (the prototxt's fillers, seed 0, BatchNorm statistics mean 0 / variance 1 with
factor 1), written with our caffemodel writer so every engine reads the same file. Prints a table
with each row's largest difference from the unfolded engine (relative to each output's scale);
asserts nothing.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = "models/VOC0712/voc07_rootres34/deploy.prototxt"


def timed(fn, iterations: int) -> tuple[float, object]:
    """(median seconds of ``fn()`` over ``iterations`` runs after one warm-up run, its last result)."""
    out = fn()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    import cv2
    import onnxruntime as ort

    sys.path.insert(0, str(ROOT / "python"))
    from scratchdet.backends import export as E
    from scratchdet.caffe import io
    from scratchdet.caffe.netstate import TEST
    from scratchdet.engine.caffemodel import save_caffemodel
    from scratchdet.engine.fold import fold, plan
    from scratchdet.engine.net import Net

    model = Path(args.model)
    if not model.is_file():
        print(f"{model}: not found (generate it first: scratchdet gen voc07_rootres34)", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)

    net = Net(E.resize_input(io.read_net(model), batch=1), TEST, source=str(model), seed=0).eval()
    with torch.no_grad():
        for layer in net.layers:
            if layer.lp.type == "BatchNorm":
                layer.var_sum.fill_(1.0)
                layer.factor.fill_(1.0)
    name, shape = E.input_blob(net)
    x = np.random.default_rng(0).uniform(-128, 128, shape).astype(np.float32)
    xt = torch.from_numpy(x)
    folded = fold(net)
    meta = E.metadata(folded, model, len(plan(net)))
    outputs = meta["outputs"]
    unfolded_segment, folded_segment = E.Segment(net), E.Segment(folded)

    def engine(segment):
        with torch.no_grad():
            return {n: v.numpy() for n, v in zip(outputs, segment(xt))}

    rows = []
    base_time, reference = timed(lambda: engine(unfolded_segment), args.iterations)
    rows.append(("engine, unfolded", base_time, reference))
    t, out = timed(lambda: engine(folded_segment), args.iterations)
    rows.append((f"engine, folded ({meta['folded_groups']} folds)", t, out))

    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    session = ort.InferenceSession(E.to_onnx(folded, meta).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    t, out = timed(lambda: dict(zip(outputs, session.run(outputs, {name: x}))), args.iterations)
    rows.append((f"onnxruntime {ort.__version__} (CPU, opset {E.OPSET})", t, out))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import io as pyio
        scripted = torch.jit.load(pyio.BytesIO(E.export_bytes(fold(net), meta, "torchscript")))
    t, out = timed(lambda: engine(scripted), args.iterations)
    rows.append(("TorchScript (traced, folded)", t, out))

    with tempfile.TemporaryDirectory() as tmp:
        weights, deploy = Path(tmp) / "random.caffemodel", Path(tmp) / "deploy.prototxt"
        save_caffemodel(net, weights)
        io.write_text(net.param, deploy)
        cv = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
        cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)

        def cv_forward():
            cv.setInput(x)
            return dict(zip(outputs, cv.forward(outputs)))
        t, out = timed(cv_forward, args.iterations)
        rows.append((f"OpenCV dnn {cv2.__version__} (CPU)", t, out))

    det = E.detection_layer(meta)
    det_time, _ = timed(lambda: E.detection_rows(reference, meta, det), args.iterations)

    print(f"model {model}  input {'x'.join(map(str, shape))}  threads {args.threads}  median of {args.iterations}")
    print("network up to DetectionOutput's inputs (" + ", ".join(outputs) + ")")
    print(f"{'engine':<40} {'ms/image':>10} {'images/s':>10} {'vs unfolded':>12} {'max diff':>10}")
    for label, seconds, out in rows:
        diff = E.compare(reference, {n: np.asarray(v).reshape(reference[n].shape) for n, v in out.items()}, outputs)
        print(f"{label:<40} {seconds * 1000:>10.1f} {1 / seconds:>10.2f} {base_time / seconds:>11.2f}x {diff:>10.1e}")
    print(f"DetectionOutput (engine, Caffe semantics; after any row): {det_time * 1000:.1f} ms/image")
    return 0


if __name__ == "__main__":
    sys.exit(main())
