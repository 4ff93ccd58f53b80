"""The net interpreter: a ``NetParameter`` becomes a sequence of engine layers run in net order,
as Caffe's ``Net`` does.

Building follows ``Net::Init``: filter layers by NetState, upgrade the deprecated ``input:``
fields to an Input layer, infer every blob's shape with Caffe's rules, then build each layer
through the registry. Blobs are named; a layer whose top repeats a bottom works in place (the
name then refers to the new value). A blob read by several layers needs no Split: autograd sums
the gradients, which is what Caffe's Split does. ``propagate_down: false`` detaches a bottom;
loss layers weigh their first top by 1 unless ``loss_weight`` says otherwise.

Parameters are every blob of every layer in Caffe's learnable_params order (net order, blob order);
``to_proto`` (the ``.caffemodel`` content) and ``copy_from`` (``CopyTrainedLayersFrom``) are
implemented in ``engine/caffemodel.py``, the one home of the caffemodel format.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..caffe.netstate import filter_net
from ..caffe.shapes import infer
from ..caffe.upgrade import upgrade_inputs
from ..errors import ScratchDetError
from . import caffemodel
from .fast import COMPUTE_TYPES, FastPath, FastPlan, micro_batch_plan
from .layers import build_layer

@dataclass
class ParamInfo:
    """One parameter blob as the solver sees it."""
    layer: str
    index: int
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    learnable: bool


# -- the net --------------------------------------------------------------------------------------------

def _is_loss(layer) -> bool:
    return bool(getattr(layer, "is_loss", False)) or layer.lp.type.endswith("Loss")


def _loss_weights(layer) -> list[float]:
    lp = layer.lp
    if lp.loss_weight:
        if len(lp.loss_weight) != len(lp.top):
            raise ScratchDetError(f"layer {lp.name!r}: loss_weight must be unspecified or given once per top "
                                  f"({len(lp.loss_weight)} for {len(lp.top)} tops)")
        return [float(w) for w in lp.loss_weight]
    if _is_loss(layer) and lp.top:
        return [1.0] + [0.0] * (len(lp.top) - 1)
    return [0.0] * len(lp.top)


def _propagate_down(layer) -> list[bool] | None:
    lp = layer.lp
    if lp.propagate_down:
        if len(lp.propagate_down) != len(lp.bottom):
            raise ScratchDetError(f"layer {lp.name!r}: propagate_down must be unspecified or given once per bottom "
                                  f"({len(lp.propagate_down)} for {len(lp.bottom)} bottoms)")
        return [bool(v) for v in lp.propagate_down]
    default = getattr(layer, "default_propagate_down", None)
    return list(default) if default is not None else None


class Net(nn.Module):
    def __init__(self, net_param, phase: int, *, level: int = 0, stages=(), source: str = "net",
                 seed: int | None = None):
        super().__init__()
        if net_param.layers:
            raise ScratchDetError(f"{source}: legacy V1 'layers' entries are not supported in net prototxts "
                                  "(upgrade it to 'layer' entries with Caffe's upgrade_net_proto_text)")
        self.source = source
        self.phase = phase
        self.name = net_param.name
        param = upgrade_inputs(filter_net(net_param, phase, level, tuple(stages)), source)
        self.param = param
        self._check_names(param, source)
        shapes = infer(param, None, source)
        layers = []
        for lp, ls in zip(param.layer, shapes.layers):
            try:
                layers.append(build_layer(lp, phase, ls.bottom_shapes, ls.top_shapes))
            except ScratchDetError as exc:
                raise ScratchDetError(f"{source}: {exc}") from None
        self.layers = nn.ModuleList(layers)
        self.blob_shapes = dict(shapes.blobs)
        self._by_name = {layer.name: i for i, layer in enumerate(layers)}
        self._loss_weights = [_loss_weights(layer) for layer in layers]
        self._propagate = [_propagate_down(layer) for layer in layers]
        self.output_names = self._outputs(param)
        for layer in layers:
            for i, t in enumerate(layer.blobs()):
                if layer.blob_learnable(i) and layer.param_mults(i)[0] == 0:
                    t.requires_grad_(False)     # Caffe computes no diff for lr_mult 0 (param_need_backward)
        self.fill(seed if seed is not None else int(torch.randint(0, 2 ** 62, (1,)).item()))
        if any(lp.blobs for lp in param.layer):   # a LayerParameter carrying blobs starts from them
            self.copy_from(param, source)
        self.fast = FastPath()
        self._plan = None
        self._compute = [layer.lp.type in COMPUTE_TYPES for layer in layers]
        self._fused_scale, self._inplace = self._fusions()

    # producers whose backward never reads their own output: an in-place ReLU may overwrite it
    _INPLACE_SAFE = frozenset({"Convolution", "Deconvolution", "BatchNorm", "Scale", "Bias", "Eltwise",
                               "InnerProduct", "Concat", "Pooling"})

    def _fusions(self) -> tuple[dict[int, int], set[int]]:
        """Where Net.forward may run Caffe's pairs as one operation, with the same results:
        BatchNorm i then an in-place Scale i+1 on its top as one F.batch_norm ({i: i+1}), and
        in-place ReLUs as real in-place ops (the ReLU is the only reader of its bottom)."""
        layers = self.layers
        producer: dict[str, int] = {}
        readers: dict[tuple[str, int], int] = {}
        source: list[list[tuple[str, int]]] = []
        for i, layer in enumerate(layers):
            src = [(b, producer.get(b, -1)) for b in layer.lp.bottom]
            source.append(src)
            for key in src:
                readers[key] = readers.get(key, 0) + 1
            for t in layer.lp.top:
                producer[t] = i
        plain = [self._propagate[i] is None and not any(self._loss_weights[i]) for i in range(len(layers))]
        fused: dict[int, int] = {}
        for i in range(len(layers) - 1):
            bn, sc = layers[i], layers[i + 1]
            if (bn.lp.type == "BatchNorm" and sc.lp.type == "Scale" and plain[i] and plain[i + 1]
                    and len(bn.bottom_shapes[0]) >= 2 and len(sc.lp.bottom) == 1 and sc.scale is not None
                    and sc.axis == 1 and tuple(sc.scale.shape) == (bn.channels,)
                    and list(sc.lp.bottom) == [bn.lp.top[0]] and list(sc.lp.top) == [bn.lp.top[0]]
                    and readers.get((bn.lp.top[0], i), 0) == 1):
                fused[i] = i + 1
        inplace: set[int] = set()
        for i, layer in enumerate(layers):
            lp = layer.lp
            if (lp.type == "ReLU" and plain[i] and list(lp.top) == list(lp.bottom) and len(lp.bottom) == 1
                    and layer.negative_slope >= 0):
                name, p = source[i][0]
                if p >= 0 and layers[p].lp.type in self._INPLACE_SAFE and readers.get((name, p), 0) == 1:
                    inplace.add(i)
        return fused, inplace

    # -- opt-in faster paths (engine/fast.py); the default is the faithful one ----------------------
    def set_fast(self, fast: FastPath) -> None:
        """Use ``fast``'s options from now on (call after ``.to(device)``)."""
        self.fast = fast
        if fast.channels_last:
            self.to(memory_format=torch.channels_last)     # 4-D weights only; Parameters stay the same objects
        self._plan = FastPlan(self, fast.compile) if fast.compile else None

    def set_micro_batch(self, chunk: int | None) -> bool:
        """For inference: run the compute layers ``chunk`` images at a time (None: the whole batch).
        Only where every compute layer treats each image on its own (``fast.batch_local``) and no
        compiled segment is set; returns whether it is on."""
        if self._plan is not None and self._plan.chunk is None:
            return False                                   # a compiled segment has the net
        self._plan = micro_batch_plan(self, chunk) if chunk else None
        return self._plan is not None

    def _cast_input(self, value: torch.Tensor) -> torch.Tensor:
        if self.fast.channels_last and value.dim() == 4:
            return value.contiguous(memory_format=torch.channels_last)
        return value

    # -- construction checks ------------------------------------------------------------------------
    @staticmethod
    def _check_names(param, source: str) -> None:
        produced: set[str] = set()
        for lp in param.layer:
            for spec in lp.param:
                if spec.name:
                    raise ScratchDetError(f"{source}: layer {lp.name!r}: shared parameters (param name {spec.name!r}) "
                                          "are not supported")
            for t in lp.top:
                if t in produced and t not in lp.bottom:
                    raise ScratchDetError(f"{source}: layer {lp.name!r}: top blob {t!r} produced by multiple sources")
            produced.update(lp.top)

    @staticmethod
    def _outputs(param) -> list[str]:
        # Caffe's available_blobs: tops not consumed later; printed in std::set (sorted) order
        available: set[str] = set()
        for lp in param.layer:
            available.difference_update(lp.bottom)
            available.update(lp.top)
        return sorted(available)

    # -- lookup -------------------------------------------------------------------------------------
    def layer(self, name: str):
        try:
            return self.layers[self._by_name[name]]
        except KeyError:
            raise ScratchDetError(f"{self.source}: no layer named {name!r}") from None

    def loss_weights(self, name: str) -> list[float]:
        return list(self._loss_weights[self._by_name[name]])

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    # -- running ------------------------------------------------------------------------------------
    def _tensor(self, value, device) -> torch.Tensor:
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value, dtype=torch.float32)
        return value.to(device)

    def forward_layer(self, i: int, blobs: dict, inputs: dict | None = None) -> tuple:
        """Run layer ``i`` on the named ``blobs`` and store its tops there. A layer without
        bottoms whose tops are all in ``inputs`` (Input, or a data layer being replaced) is skipped
        and its tops take those values."""
        lp = self.layers[i].lp
        if not lp.bottom and inputs and lp.top and all(t in inputs for t in lp.top):
            outs = tuple(self._tensor(inputs[t], self.device) for t in lp.top)
        else:
            outs = self.run_layer(i, [blobs[b] for b in lp.bottom])
        if not lp.bottom and self.fast.channels_last:
            outs = tuple(self._cast_input(o) for o in outs)
        for t, v in zip(lp.top, outs):
            blobs[t] = v
        return outs

    def run_layer(self, i: int, bottoms: list) -> tuple:
        """Layer ``i`` on the given bottom tensors (propagate_down applied); its tops as a tuple."""
        layer = self.layers[i]
        lp = layer.lp
        keep = self._propagate[i]
        if keep is not None:
            bottoms = [b if k else b.detach() for b, k in zip(bottoms, keep)]
        if self.fast.amp and self._compute[i]:
            with self.fast.autocast(bottoms[0].device):
                outs = layer(*bottoms)
        else:
            outs = layer(*bottoms)
        if not isinstance(outs, tuple):
            outs = tuple(outs) if isinstance(outs, list) else (outs,)
        if not lp.bottom:
            device = self.device
            host = layer.host_tops
            outs = tuple(o.to(device) if o.device != device and k not in host else o for k, o in enumerate(outs))
        if len(outs) != len(lp.top):
            raise ScratchDetError(f"layer {lp.name!r} ({lp.type}) gave {len(outs)} outputs for {len(lp.top)} tops")
        return outs

    def forward(self, inputs: dict | None = None, *, per_layer: dict | None = None) -> dict:
        """Run the net; returns every blob by name (an in-place blob holds its last value).
        ``inputs`` maps blob names to values for Input/data layers; ``per_layer``, when given, is
        filled with each layer's own outputs by layer name. With a compiled segment (``set_fast``) the
        dict holds the net's outputs and the blobs of the layers outside the segment."""
        if inputs:
            unknown = [k for k in inputs if k not in self.blob_shapes]
            if unknown:
                raise ScratchDetError(f"{self.source}: no blob named {unknown[0]!r} to feed")
        if self._plan is not None and per_layer is None:
            return self._plan.forward(self, inputs, self._cast_input)
        blobs: dict[str, torch.Tensor] = {}
        if per_layer is not None:          # every layer's own output: no fused pairs, nothing in place
            for i in range(len(self.layers)):
                per_layer[self.layers[i].name] = self.forward_layer(i, blobs, inputs)
            return blobs
        i = 0
        while i < len(self.layers):
            if i in self._fused_scale:
                j = self._fused_scale[i]
                bn, sc = self.layers[i], self.layers[j]
                with self.fast.autocast(self.device):
                    y = bn.forward_with_scale(blobs[bn.lp.bottom[0]], sc.scale, sc.bias)
                if y is not None:
                    blobs[sc.lp.top[0]] = y
                    i = j + 1
                    continue
            elif i in self._inplace:
                lp = self.layers[i].lp
                blobs[lp.top[0]] = self.layers[i].forward_inplace(blobs[lp.bottom[0]])[0]
                i += 1
                continue
            self.forward_layer(i, blobs, inputs)
            i += 1
        return blobs

    def loss_outputs(self, blobs: dict) -> list[tuple[str, float, torch.Tensor]]:
        """(top name, loss weight, value) for every top with a nonzero loss weight, in net order."""
        out = []
        for layer, weights in zip(self.layers, self._loss_weights):
            for t, w in zip(layer.lp.top, weights):
                if w:
                    out.append((t, w, blobs[t]))
        return out

    def total_loss(self, blobs: dict) -> torch.Tensor:
        """Caffe's net loss: sum over loss tops of loss_weight x sum(top)."""
        total = None
        for _, w, t in self.loss_outputs(blobs):
            term = t.sum() * w
            total = term if total is None else total + term
        return total if total is not None else torch.zeros((), device=self.device)

    # -- parameters ---------------------------------------------------------------------------------
    def params(self) -> list[ParamInfo]:
        out = []
        for layer in self.layers:
            for i, t in enumerate(layer.blobs()):
                lr_mult, decay_mult = layer.param_mults(i)
                out.append(ParamInfo(layer.name, i, t, lr_mult, decay_mult, layer.blob_learnable(i)))
        return out

    def fill(self, seed: int) -> None:
        """Initialise every blob with its layer's fillers, from one generator seeded by ``seed``."""
        generator = torch.Generator().manual_seed(int(seed))
        with torch.no_grad():
            for layer in self.layers:
                layer.fill(generator)

    # -- caffemodel content (engine/caffemodel.py) ------------------------------------------------
    def layer_config(self, i: int):
        """Layer ``i``'s LayerParameter as Caffe's set-up leaves it (``caffemodel.layer_config``)."""
        return caffemodel.layer_config(self, i)

    def to_proto(self, write_diff: bool = False):
        """The NetParameter a ``.caffemodel`` holds (``caffemodel.net_to_proto``)."""
        return caffemodel.net_to_proto(self, write_diff)

    def copy_from(self, net_param, source: str = "caffemodel") -> list[str]:
        """CopyTrainedLayersFrom (``caffemodel.copy_trained_layers``); the ignored source layers."""
        return caffemodel.copy_trained_layers(self, net_param, source)
