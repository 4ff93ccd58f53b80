"""The ``onnxruntime`` backend: score or run a model that ``scratchdet export`` wrote, the way a
caffemodel is scored or run. onnxruntime (CPU) computes the exported layers, from the input blob
to DetectionOutput's inputs; the engine does the rest (the test net's AnnotatedData layer,
DetectionOutput with Caffe's semantics, DetectionEvaluate and the solver's mAP)."""
from __future__ import annotations

import sys

import numpy as np
import torch

from ..caffe import io
from ..caffe.netstate import TEST, filter_net
from ..caffe.shapes import infer
from ..caffe.upgrade import upgrade_inputs
from ..engine.net import Net
from ..errors import ScratchDetError
from .export import OnnxRunner


def covered_layers(param, input_blob: str, outputs) -> list[int]:
    """Indices of the layers of ``param`` that compute ``outputs`` from ``input_blob``: what an
    export of the same net holds."""
    needed = set(outputs)
    keep = []
    for i in range(len(param.layer) - 1, -1, -1):
        lp = param.layer[i]
        if any(t in needed for t in lp.top):
            if not lp.bottom:
                if input_blob in lp.top:
                    needed.discard(input_blob)
                    continue
                raise ScratchDetError(f"layer {lp.name!r} produces {list(lp.top)} that the exported model "
                                      f"computes from {input_blob!r} but is not its input")
            keep.append(i)
            needed.difference_update(t for t in lp.top if t not in lp.bottom)
            needed.update(lp.bottom)
    needed.discard(input_blob)
    if needed:
        raise ScratchDetError(f"the net does not produce {sorted(needed)} that the exported part reads")
    return sorted(keep)


class OnnxTestNet(Net):
    """A TEST net whose layers from the data blob to DetectionOutput's inputs are replaced by an
    exported ONNX model: an Input layer named ``onnxruntime`` stands where the last of them was
    and takes the model's outputs at every forward."""

    LAYER = "onnxruntime"

    def __init__(self, model: str, runner: OnnxRunner, *, seed: int = 0):
        param = upgrade_inputs(filter_net(io.read_net(model), TEST, 0, ()))
        meta = runner.meta
        self.onnx_input = meta.get("input") or runner.input_name
        self.onnx_outputs = list(runner.output_names)
        shapes = infer(param, None, model).blobs
        covered = covered_layers(param, self.onnx_input, self.onnx_outputs)
        if not covered:
            raise ScratchDetError(f"{model}: no layer of the net computes {self.onnx_outputs}")
        want = tuple(shapes[self.onnx_input])
        have = tuple(runner.input_shape)
        dynamic = bool(meta.get("dynamic_batch"))
        if (want[1:] != have[1:]) or (not dynamic and want[0] != have[0]):
            raise ScratchDetError(f"{model}: blob {self.onnx_input!r} is {list(want)}, the exported model takes "
                                  f"{list(have)}{' (any batch)' if dynamic else ''}; export with --input-size "
                                  "and --batch (or --dynamic-batch) to match")
        removed = set(covered)
        produced_inside = {t for i in covered for t in param.layer[i].top} - set(self.onnx_outputs)
        hybrid = param.__class__()
        hybrid.CopyFrom(param)
        del hybrid.layer[:]
        for i, lp in enumerate(param.layer):
            if i == covered[-1]:
                stand_in = hybrid.layer.add(name=self.LAYER, type="Input")
                stand_in.top.extend(self.onnx_outputs)
                for name in self.onnx_outputs:
                    stand_in.input_param.shape.add().dim.extend(shapes[name])
            if i in removed:
                continue
            inside = [b for b in lp.bottom if b in produced_inside or (i < covered[-1] and b in self.onnx_outputs)]
            if inside:
                raise ScratchDetError(f"{model}: layer {lp.name!r} reads {inside[0]!r}, a blob inside the "
                                      "exported part")
            hybrid.layer.add().CopyFrom(lp)
        super().__init__(hybrid, TEST, source=model, seed=seed)
        self.output_names = self._outputs(param)       # the data blob is read by the stand-in, not an output
        self.runner = runner

    def forward(self, inputs: dict | None = None, *, per_layer: dict | None = None) -> dict:
        blobs: dict[str, torch.Tensor] = {}
        feed = dict(inputs or {})
        for i, layer in enumerate(self.layers):
            if layer.name == self.LAYER:
                x = blobs[self.onnx_input].detach().to("cpu", torch.float32).numpy()
                out = self.runner.forward(x)
                feed.update({n: torch.from_numpy(out[n]) for n in self.onnx_outputs})
            outs = self.forward_layer(i, blobs, feed)
            if per_layer is not None:
                per_layer[layer.name] = outs
        return blobs


def test(args) -> int:
    from ..caffe import glog
    from ..engine.caffemodel import load_caffemodel
    from ..engine.score import score_net
    runner = OnnxRunner(args.onnx)
    net = OnnxTestNet(args.model, runner)
    for path in [w for w in (args.weights or "").split(",") if w]:
        load_caffemodel(net, path)          # layers outside the export that carry blobs, if any
    with glog.Logger(args.log, quiet=getattr(args, "quiet", False)) as log:
        out = score_net(net, args.iterations, device="cpu", eval_type=args.eval_type, ap_version=args.ap_version,
                        log=log.log, workers=args.workers, show_per_class=args.per_class)
    for name, value in out.items():
        print(f"{name} = {glog.num(value)}")
    return 0


def train(args) -> int:
    raise ScratchDetError("the onnxruntime backend runs exported models; it cannot train (use --backend torch)")


def detector(args):
    """(detect_one, transform) for ``engine.detect.run_images`` from the .onnx file ``args.model``."""
    from ..engine.detect import Transform, preprocess
    runner = OnnxRunner(args.model)
    meta = runner.meta
    if not meta.get("detection_output"):
        raise ScratchDetError(f"{args.model}: no DetectionOutput in the export's metadata "
                              "(export a deploy net with scratchdet export)")
    transform = Transform(tuple(meta.get("mean") or Transform.mean), float(meta.get("scale", 1.0)), meta.get("labelmap"),
                          source=f"the metadata of {args.model}")
    n, _, h, w = runner.input_shape
    dynamic = bool(meta.get("dynamic_batch"))

    def detect_one(image, t):
        x = preprocess(image, h, w, t.mean, t.scale, t.swap_rb)
        if not dynamic and n != 1:          # a static batch: the image in every slot, rows of the first
            x = np.repeat(x, n, axis=0)
        rows = runner.detect(x)
        return rows[(rows[:, 0] == 0) & (rows[:, 1] >= 0)]
    return detect_one, transform


def detect(args) -> int:
    from ..engine.detect import run_images
    if args.weights:
        print("scratchdet detect: --weights is ignored with --backend onnxruntime (the .onnx holds them)",
              file=sys.stderr)
    detect_one, transform = detector(args)
    return run_images(args, detect_one, transform)
