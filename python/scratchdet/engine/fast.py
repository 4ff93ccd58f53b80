"""Opt-in faster paths of the engine (DESIGN §3: off unless asked for, each checked against the
faithful fp32 path, see ``bench/gpu_check.sh``).

- ``channels_last``: 4-D weights and the data blobs in NHWC memory layout (same values, other strides).
- ``amp``: the compute layers (convolutions, BatchNorm, ...) under ``torch.autocast`` in bfloat16;
  the SSD layers (PriorBox, MultiBoxLoss, DetectionOutput) stay in float32.
- ``tf32``: TF32 tensor-core matmuls and convolutions on CUDA. The faithful path turns TF32 off
  (cuDNN allows it by default), since Caffe computes in full float32.
- ``compile``: the compute layers between the data layers and the SSD layers as one
  ``torch.compile``d module (backend ``inductor`` unless another is named).

A spec string names them, comma-separated: ``channels_last,amp,compile[=aot_eager],tf32``.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ScratchDetError

# layers that are tensor expressions only (no numpy, no host decisions, no random draws): what
# autocast and the compiled segment may take
COMPUTE_TYPES = frozenset({
    "Convolution", "Deconvolution", "BatchNorm", "Scale", "Bias", "Normalize", "ReLU", "Sigmoid",
    "TanH", "AbsVal", "Softmax", "Pooling", "Eltwise", "Concat", "Slice", "Permute", "Flatten",
    "Reshape", "InnerProduct", "Split",
})
AMP_DTYPE = torch.bfloat16     # fp16 would need loss scaling, which Caffe's SGD has no place for


@dataclass(frozen=True)
class FastPath:
    channels_last: bool = False
    amp: bool = False
    compile: str | None = None      # a torch.compile backend, or None
    tf32: bool = False

    @property
    def faithful(self) -> bool:
        return self == FastPath()

    @classmethod
    def parse(cls, spec: str | None) -> "FastPath":
        """``channels_last,amp,compile[=backend],tf32``; empty or ``none``: the faithful path."""
        fields: dict = {}
        for item in (spec or "").split(","):
            item = item.strip().lower()
            if not item or item in ("none", "faithful", "fp32"):
                continue
            name, _, value = item.partition("=")
            if name == "channels_last":
                fields["channels_last"] = True
            elif name in ("amp", "bf16"):
                fields["amp"] = True
            elif name == "tf32":
                fields["tf32"] = True
            elif name == "compile":
                fields["compile"] = value or "inductor"
            else:
                raise ScratchDetError(f"--fast {spec!r}: unknown option {name!r} "
                                      "(channels_last, amp, compile[=backend], tf32)")
        return cls(**fields)

    def describe(self) -> str:
        parts = [n for n in ("channels_last", "amp", "tf32") if getattr(self, n)]
        if self.compile:
            parts.append("compile" if self.compile == "inductor" else f"compile={self.compile}")
        return ",".join(parts) or "faithful"

    def autocast(self, device: torch.device):
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=AMP_DTYPE)


def set_tf32(allowed: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions (process-wide torch flags)."""
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


class ComputeSegment(nn.Module):
    """The net's compute layers that depend only on layers without bottoms (data, Input) and on
    each other, run as one module so ``torch.compile`` sees one graph. ``forward`` takes the data
    blobs and returns every value a later layer or the caller reads, keyed ``name@layer``."""

    def __init__(self, net, steps, needed):
        super().__init__()
        self.net_layers = [net.layers[i] for i, _, _, _ in steps]   # plain list: no re-registration
        self.steps = steps          # (layer index, bottom keys, top names, propagate_down)
        self.needed = needed        # {(top name, layer index)}

    def forward(self, blobs: dict) -> dict:
        live = dict(blobs)
        out = {}
        for layer, (i, keys, tops, keep) in zip(self.net_layers, self.steps):
            bottoms = [live[k] for k in keys]
            if keep is not None:
                bottoms = [b if k else b.detach() for b, k in zip(bottoms, keep)]
            outs = layer(*bottoms)
            for t, v in zip(tops, outs):
                live[f"{t}@{i}"] = v
                if (t, i) in self.needed:
                    out[f"{t}@{i}"] = v
        return out


class FastPlan:
    """How ``Net.forward`` runs with a compiled segment: phase A (layers without bottoms) eager,
    phase B (the ``ComputeSegment``) compiled, phase C (everything else: PriorBox, losses,
    DetectionOutput, and compute layers that read their outputs) eager in net order. Without a
    ``backend`` phase B runs eagerly, ``chunk`` images at a time (``micro_batch_plan``)."""

    def __init__(self, net, backend: str | None, chunk: int | None = None):
        layers = net.layers
        phase: dict[int, str] = {}
        producer: dict[str, int] = {}        # blob name -> index of the layer that wrote it last
        bottom_src: dict[int, list[tuple[str, int]]] = {}
        for i, layer in enumerate(layers):
            lp = layer.lp
            srcs = [(b, producer[b]) for b in lp.bottom]
            bottom_src[i] = srcs
            if not lp.bottom:
                phase[i] = "A"
            elif lp.type in COMPUTE_TYPES and all(phase[j] in ("A", "B") for _, j in srcs):
                phase[i] = "B"
            else:
                phase[i] = "C"
            for t in lp.top:
                producer[t] = i
        final = {name: producer[name] for name in net.output_names}
        needed = {(b, j) for i in phase if phase[i] == "C" for b, j in bottom_src[i] if phase[j] == "B"}
        needed |= {(n, j) for n, j in final.items() if phase[j] == "B"}
        steps = []
        for i in sorted(k for k in phase if phase[k] == "B"):
            keys = [f"{b}@{j}" for b, j in bottom_src[i]]
            steps.append((i, keys, list(layers[i].lp.top), net._propagate[i]))
        self.a = [i for i in sorted(phase) if phase[i] == "A"]
        self.c = [i for i in sorted(phase) if phase[i] == "C"]
        self.a_keys = sorted({k for _, keys, _, _ in steps for k in keys if phase[int(k.rsplit("@", 1)[1])] == "A"})
        self.bottom_src = bottom_src
        self.phase = phase
        self.final = final
        self.segment = ComputeSegment(net, steps, needed)
        self.chunk = chunk
        if not steps:
            self.run_segment = None
        else:
            self.run_segment = torch.compile(self.segment, backend=backend) if backend else self.segment

    def forward(self, net, inputs, cast_input) -> dict:
        values: dict[str, torch.Tensor] = {}          # "name@layer" -> tensor
        blobs: dict[str, torch.Tensor] = {}
        for i in self.a:
            outs = net.forward_layer(i, {}, inputs)
            for t, v in zip(net.layers[i].lp.top, outs):
                v = cast_input(v)
                values[f"{t}@{i}"] = v
                blobs[t] = v
        if self.run_segment is not None:
            with net.fast.autocast(net.device):
                values.update(self._run_segment({k: values[k] for k in self.a_keys}))
        for name, j in self.final.items():
            if self.phase[j] == "B":
                blobs[name] = values[f"{name}@{j}"]
        for i in self.c:
            bottoms = [values[f"{b}@{j}"] for b, j in self.bottom_src[i]]
            outs = net.run_layer(i, bottoms)
            for t, v in zip(net.layers[i].lp.top, outs):
                values[f"{t}@{i}"] = v
                blobs[t] = v
        return blobs

    def _run_segment(self, inputs: dict) -> dict:
        """The segment on the whole batch, or ``chunk`` images at a time, its outputs joined."""
        n = next(iter(inputs.values())).shape[0] if inputs else 0
        if not self.chunk or n <= self.chunk or any(v.shape[0] != n for v in inputs.values()):
            return self.run_segment(inputs)
        parts = [self.run_segment({k: v[i:i + self.chunk] for k, v in inputs.items()}) for i in range(0, n, self.chunk)]
        return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


# compute layers that treat each image of a batch on its own whatever their parameters; the others
# in batch_local() depend on an axis or a mode
_ALWAYS_LOCAL = frozenset({"Convolution", "Deconvolution", "ReLU", "Sigmoid", "TanH", "AbsVal", "Pooling",
                           "Eltwise", "Normalize", "Split"})


def batch_local(layer) -> bool:
    """Whether a compute layer computes each image of the batch from that image alone, so the batch
    may run a few images at a time with the same results."""
    t = layer.lp.type
    if t in _ALWAYS_LOCAL:
        return True
    if t == "BatchNorm":
        return bool(layer.use_global_stats)                 # batch statistics mix the images
    if t in ("Concat", "Slice", "Softmax", "InnerProduct", "Scale", "Bias"):
        return getattr(layer, "axis", 0) != 0
    if t == "Flatten":
        return layer.start != 0
    if t == "Permute":
        return layer.order[0] == 0
    if t == "Reshape":
        start = layer.axis if layer.axis >= 0 else len(layer.bottom_shapes[0]) + layer.axis + 1
        return start > 0 or (bool(layer.dims) and layer.dims[0] == 0)
    return False


def micro_batch_plan(net, chunk: int) -> "FastPlan | None":
    """An eager plan that runs the net's compute segment ``chunk`` images at a time, or None when
    a layer of the segment mixes images. Why: on a CPU a whole batch's early activations (8 images
    of ScratchDet300's full-resolution root: 180 MB a blob) leave the caches, and batch 8 ran 1.4x
    slower per image than batch 1; one image at a time keeps them warm."""
    plan = FastPlan(net, None, chunk=chunk)
    if plan.run_segment is None or not all(batch_local(net.layers[i]) for i, *_ in plan.segment.steps):
        return None
    return plan
