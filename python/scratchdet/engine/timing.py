"""``scratchdet time``: forward and backward time per layer, printed as ``caffe time`` prints it
(caffe-ssd-spec §8).

As in Caffe, each layer is timed on its own: the forward runs layer by layer, and the backward
walks the layers in reverse, each one back-propagating only through itself (its bottoms are
fresh leaves), so that a layer's backward time is its own. Data layers are replaced by inputs of
their inferred shape (random images, and random ground-truth rows for a label top), so a train or
test prototxt can be timed without its LMDB; ``--data real`` keeps them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..caffe import glog
from ..caffe.netstate import filter_net
from ..caffe.schema import pb
from ..caffe.shapes import infer
from ..errors import ScratchDetError

TAG = "timing.py:1"
DATA_TYPES = ("AnnotatedData", "Data", "ImageData", "VideoData", "DummyData", "MemoryData", "WindowData", "HDF5Data")
BOXES_PER_IMAGE = 2


# -- preparing the net ----------------------------------------------------------------------------------

def device_of(gpu: str) -> torch.device:
    if gpu in ("cpu", "", None):
        return torch.device("cpu")
    try:
        index = int(gpu)
    except ValueError:
        raise ScratchDetError(f"--gpu must be 'cpu' or one device id, got {gpu!r}") from None
    if not torch.cuda.is_available() or index >= torch.cuda.device_count():
        raise ScratchDetError(f"--gpu {gpu}: no such CUDA device on this machine")
    return torch.device("cuda", index)


def num_classes(param) -> int:
    for lp in param.layer:
        for field_name in ("multibox_loss_param", "detection_output_param", "detection_evaluate_param"):
            if lp.HasField(field_name) and getattr(lp, field_name).HasField("num_classes"):
                return int(getattr(lp, field_name).num_classes)
    return 2


def replace_data_layers(param, phase: int, level: int = 0, stages=(), source: str = "net"):
    """``param`` filtered for the phase, with every data layer turned into an Input layer of the
    same name, tops and inferred shapes (a label top of [1, 1, G, 8] holds two boxes per image).
    Returns (new param, names of the label tops that need box rows)."""
    filtered = filter_net(param, phase, level, tuple(stages))
    shapes = infer(filtered, None, source)
    out = pb.NetParameter()
    out.CopyFrom(filtered)
    box_tops = []
    for lp, ls in zip(out.layer, shapes.layers):
        if lp.type not in DATA_TYPES:
            continue
        tops, top_shapes = list(lp.top), list(ls.top_shapes)
        if len(top_shapes) > 1 and len(top_shapes[1]) == 4 and top_shapes[1][-1] == 8:
            top_shapes[1] = (1, 1, BOXES_PER_IMAGE * top_shapes[0][0], 8)
            box_tops.append(tops[1])
        name = lp.name
        lp.Clear()
        lp.name, lp.type = name, "Input"
        lp.top.extend(tops)
        for s in top_shapes:
            lp.input_param.shape.add().dim.extend(s)
    return out, box_tops


def random_inputs(net, box_tops, num_classes: int, seed: int) -> dict[str, torch.Tensor]:
    """Random values for every Input top: mean-subtracted-image-like data, ground-truth rows
    (item, label, instance, xmin, ymin, xmax, ymax, difficult) for label tops, class ids for
    classification labels."""
    rng = np.random.default_rng(seed)
    values = {}
    for layer in net.layers:
        if layer.lp.type != "Input":
            continue
        for top, shape in zip(layer.lp.top, layer.shapes):
            if top in box_tops:
                g = shape[2]
                rows = np.zeros((g, 8), np.float32)
                rows[:, 0] = np.arange(g) // BOXES_PER_IMAGE
                rows[:, 1] = rng.integers(1, max(2, num_classes), g)
                lo = rng.uniform(0.0, 0.5, (g, 2))
                rows[:, 3:5] = lo
                rows[:, 5:7] = lo + rng.uniform(0.1, 0.5, (g, 2))
                values[top] = torch.from_numpy(rows.reshape(shape))
            elif len(shape) == 1:
                values[top] = torch.from_numpy(rng.integers(0, max(1, num_classes), shape).astype(np.float32))
            else:
                values[top] = torch.from_numpy(rng.uniform(-128, 128, shape).astype(np.float32))
    return values


# -- timing ---------------------------------------------------------------------------------------------

@dataclass
class Timing:
    names: list[str]
    iterations: int
    forward_ms: list[float] = field(default_factory=list)      # per layer, summed over iterations
    backward_ms: list[float] = field(default_factory=list)
    iteration_ms: list[float] = field(default_factory=list)
    total_ms: float = 0.0

    @property
    def average_forward(self) -> float:
        return sum(self.forward_ms) / self.iterations

    @property
    def average_backward(self) -> float:
        return sum(self.backward_ms) / self.iterations


class _Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()


def _forward(net, inputs, clock, forward_ms):
    """One forward, layer by layer, each on detached copies of its bottoms; returns the records
    the backward needs: per layer (original bottoms, leaf bottoms, tops)."""
    blobs: dict[str, torch.Tensor] = {}
    records = []
    for i, layer in enumerate(net.layers):
        lp = layer.lp
        t0 = clock()
        if not lp.bottom and lp.top and all(t in inputs for t in lp.top):
            originals, leaves = [], []
            outs = tuple(inputs[t] for t in lp.top)
        else:
            originals = [blobs[b] for b in lp.bottom]
            leaves = [b.detach().requires_grad_(b.requires_grad) for b in originals]
            outs = net.run_layer(i, leaves)
        forward_ms[i] += (clock() - t0) * 1000.0
        for t, v in zip(lp.top, outs):
            blobs[t] = v
        records.append((originals, leaves, outs))
    return blobs, records


def _backward(net, blobs, records, clock, backward_ms):
    grads: dict[int, torch.Tensor] = {}

    def add(t, g):
        key = id(t)
        grads[key] = g if key not in grads else grads[key] + g

    for _, weight, top in net.loss_outputs(blobs):
        if top.requires_grad:
            add(top, torch.full_like(top, weight))
    for i in range(len(net.layers) - 1, -1, -1):
        originals, leaves, outs = records[i]
        pairs = [(o, grads.pop(id(o))) for o in outs if id(o) in grads and o.requires_grad]
        t0 = clock()
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        backward_ms[i] += (clock() - t0) * 1000.0
        for orig, leaf in zip(originals, leaves):
            if leaf.grad is not None:
                add(orig, leaf.grad)
                leaf.grad = None


def benchmark(net, inputs: dict, iterations: int, device: torch.device, log=None) -> Timing:
    """``caffe time``'s loop: per iteration a forward then a backward, each layer timed alone."""
    if iterations < 1:
        raise ScratchDetError("--iterations must be at least 1")
    clock = _Clock(device)
    n = len(net.layers)
    result = Timing([layer.name for layer in net.layers], iterations, [0.0] * n, [0.0] * n)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    say = log or (lambda message: None)
    say(glog.TIME_FORWARD)
    scratch = [0.0] * n
    blobs, records = _forward(net, inputs, clock, scratch)
    say(glog.initial_loss_message(float(net.total_loss(blobs).detach())))
    say(glog.TIME_BACKWARD)
    _backward(net, blobs, records, clock, scratch)
    say(glog.BENCHMARK_BEGINS)
    say(glog.testing_for_message(iterations))
    start = clock()
    for j in range(iterations):
        t0 = clock()
        net.zero_grad(set_to_none=True)
        blobs, records = _forward(net, inputs, clock, result.forward_ms)
        _backward(net, blobs, records, clock, result.backward_ms)
        del blobs, records
        ms = (clock() - t0) * 1000.0
        result.iteration_ms.append(ms)
        say(glog.iteration_time_message(j + 1, ms))
    result.total_ms = (clock() - start) * 1000.0
    say(glog.AVERAGE_PER_LAYER)
    for name, f, b in zip(result.names, result.forward_ms, result.backward_ms):
        say(glog.layer_time_message(name, "forward", f / iterations))
        say(glog.layer_time_message(name, "backward", b / iterations))
    say(glog.average_time_message("Forward pass", result.average_forward))
    say(glog.average_time_message("Backward pass", result.average_backward))
    say(glog.average_time_message("Forward-Backward", result.total_ms / iterations))
    say(glog.total_time_message(result.total_ms))
    say(glog.BENCHMARK_ENDS)
    return result
