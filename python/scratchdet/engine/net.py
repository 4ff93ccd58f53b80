"""The net interpreter: a ``NetParameter`` becomes a sequence of engine layers run in net order,
as Caffe's ``Net`` does.

Building follows ``Net::Init``: filter layers by NetState, upgrade the deprecated ``input:``
fields to an Input layer, infer every blob's shape with Caffe's rules, then build each layer
through the registry. Blobs are named; a layer whose top repeats a bottom works in place (the
name then refers to the new value). A blob read by several layers needs no Split: autograd sums
the gradients, which is what Caffe's Split does. ``propagate_down: false`` detaches a bottom;
loss layers weigh their first top by 1 unless ``loss_weight`` says otherwise.

Parameters are every blob of every layer in Caffe's learnable_params order (net order, blob order);
``to_proto`` gives the ``.caffemodel`` content (each layer's configuration as Caffe's set-up leaves
it, the auto-inserted Split layers included, plus blobs) and ``copy_from`` is
``CopyTrainedLayersFrom``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..caffe.blobs import array_to_blob, blob_shape, blob_to_array, shape_matches
from ..caffe.netstate import filter_net
from ..caffe.schema import pb
from ..caffe.shapes import infer
from ..errors import ScratchDetError
from .fast import COMPUTE_TYPES, FastPath, FastPlan
from .layers import build_layer

log = logging.getLogger(__name__)


@dataclass
class ParamInfo:
    """One parameter blob as the solver sees it."""
    layer: str
    index: int
    tensor: torch.Tensor
    lr_mult: float
    decay_mult: float
    learnable: bool


# -- upgrades of old formats (Caffe's upgrade_proto) ---------------------------------------------------

V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}


def upgrade_v1(net_param):
    """A copy of ``net_param`` with legacy V1 ``layers`` (field 2) turned into ``layer`` entries:
    name, type string, bottoms, tops, rules, ``blobs_lr``/``weight_decay`` as ParamSpecs, blobs.
    (Layer-specific V1 parameters are not kept; only weights are read from V1 files.)"""
    if not net_param.layers:
        return net_param
    if net_param.layer:
        raise ScratchDetError("net has both 'layer' and legacy 'layers' entries")
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layers[:]
    enum = pb.V1LayerParameter.LayerType
    for v1 in net_param.layers:
        lp = out.layer.add(name=v1.name, type=V1_TYPES.get(enum.Name(v1.type), enum.Name(v1.type)))
        lp.bottom.extend(v1.bottom)
        lp.top.extend(v1.top)
        lp.include.extend(v1.include)
        lp.exclude.extend(v1.exclude)
        for i in range(max(len(v1.blobs_lr), len(v1.weight_decay))):
            spec = lp.param.add()
            if i < len(v1.blobs_lr):
                spec.lr_mult = v1.blobs_lr[i]
            if i < len(v1.weight_decay):
                spec.decay_mult = v1.weight_decay[i]
        lp.blobs.extend(v1.blobs)
    return out


def upgrade_inputs(net_param):
    """The deprecated ``input`` + ``input_shape``/``input_dim`` fields as a leading Input layer
    named "input" (Caffe's UpgradeNetInput)."""
    if not net_param.input:
        return net_param
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:], out.input[:], out.input_shape[:], out.input_dim[:]
    layer = out.layer.add(name="input", type="Input")
    if net_param.input_shape and len(net_param.input_shape) != len(net_param.input):
        raise ScratchDetError(f"net has {len(net_param.input)} inputs and {len(net_param.input_shape)} input_shape entries")
    if not net_param.input_shape and len(net_param.input_dim) != 4 * len(net_param.input):
        raise ScratchDetError(f"net has {len(net_param.input)} inputs and {len(net_param.input_dim)} input_dim values "
                              "(need 4 per input)")
    for i, name in enumerate(net_param.input):
        layer.top.append(name)
        shape = layer.input_param.shape.add()
        if net_param.input_shape:
            shape.dim.extend(net_param.input_shape[i].dim)
        else:
            shape.dim.extend(net_param.input_dim[4 * i:4 * i + 4])
    out.layer.extend(net_param.layer)
    return out


# -- Caffe's InsertSplits, for writing caffemodels with the layers Caffe's net holds ---------------------

def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, k: int) -> str:
    return f"{blob}_{layer}_{top_index}_split_{k}"


def insert_splits(net_param):
    """A copy of ``net_param`` where every top read more than once (a nonzero explicit loss weight
    counts as a reader) feeds a Split layer placed right after its producer, each reader taking its
    own Split output: the layer list Caffe's ``Net`` builds."""
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    readers: dict[tuple[int, int], int] = {}
    loss_weight: dict[tuple[int, int], float] = {}
    for i, lp in enumerate(net_param.layer):
        for j, b in enumerate(lp.bottom):
            if b not in last_top:
                raise ScratchDetError(f"layer {lp.name!r}: unknown bottom blob {b!r}")
            source[(i, j)] = last_top[b]
            readers[last_top[b]] = readers.get(last_top[b], 0) + 1
        for j, t in enumerate(lp.top):
            last_top[t] = (i, j)
        for j in range(min(len(lp.loss_weight), len(lp.top))):
            idx = last_top[lp.top[j]]
            loss_weight[idx] = lp.loss_weight[j]
            if lp.loss_weight[j]:
                readers[idx] = readers.get(idx, 0) + 1
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    del out.layer[:]
    next_split: dict[tuple[int, int], int] = {}
    for i, lp in enumerate(net_param.layer):
        new = out.layer.add()
        new.CopyFrom(lp)
        for j, b in enumerate(lp.bottom):
            idx = source[(i, j)]
            if readers.get(idx, 0) > 1:
                producer = net_param.layer[idx[0]].name
                k = next_split.get(idx, 0)
                new.bottom[j] = split_blob_name(producer, b, idx[1], k)
                next_split[idx] = k + 1
        for j, t in enumerate(lp.top):
            idx = (i, j)
            count = readers.get(idx, 0)
            if count <= 1:
                continue
            weight = loss_weight.get(idx, 0.0)
            split = out.layer.add(name=split_layer_name(lp.name, t, j), type="Split")
            split.bottom.append(t)
            for k in range(count):
                split.top.append(split_blob_name(lp.name, t, j, k))
                if weight:
                    split.loss_weight.append(weight if k == 0 else 0.0)
            if weight:
                del new.loss_weight[:]
                next_split[idx] = 1     # the loss takes the first Split output
    return out


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
        param = upgrade_inputs(filter_net(net_param, phase, level, tuple(stages)))
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

    # -- caffemodel content -------------------------------------------------------------------------
    def layer_config(self, i: int):
        """Layer ``i``'s LayerParameter as Caffe's set-up leaves it: phase set, BatchNorm's three
        ``param {lr_mult: 0}``, a loss layer's ``loss_weight: 1``, a layer's default
        ``propagate_down`` (MultiBoxLoss: true, true, false, false)."""
        layer = self.layers[i]
        lp = pb.LayerParameter()
        lp.CopyFrom(layer.lp)
        del lp.blobs[:]
        if not lp.HasField("phase"):
            lp.phase = self.phase
        if lp.type == "BatchNorm":
            if len(lp.param) == 3:
                del lp.param[:]
            while len(lp.param) < 3:
                lp.param.add(lr_mult=0)
        if _is_loss(layer) and not lp.loss_weight and lp.top:
            lp.loss_weight.append(1.0)
        default = getattr(layer, "default_propagate_down", None)
        if default is not None and not lp.propagate_down:
            lp.propagate_down.extend(bool(v) for v in default)
        return lp

    def to_proto(self, write_diff: bool = False):
        """The NetParameter a ``.caffemodel`` holds: the net's name and one layer per layer of
        Caffe's net (Split layers included) with its blobs."""
        configured = pb.NetParameter(name=self.name)
        for i in range(len(self.layers)):
            configured.layer.append(self.layer_config(i))
        out = insert_splits(configured)
        j = 0
        for lp in out.layer:
            if j < len(self.layers) and lp.name == self.layers[j].name and lp.type == self.layers[j].lp.type:
                layer = self.layers[j]
                j += 1
            else:           # a Split that insert_splits added
                lp.phase = self.phase
                continue
            for t in layer.blobs():
                data = t.detach().cpu().numpy()
                diff = None
                if write_diff:
                    grad = t.grad
                    diff = grad.detach().cpu().numpy() if grad is not None else np.zeros_like(data)
                lp.blobs.append(array_to_blob(data, diff=diff))
        return out

    @torch.no_grad()
    def copy_from(self, net_param, source: str = "caffemodel") -> list[str]:
        """CopyTrainedLayersFrom: blobs of every source layer whose name is a layer of this net.
        Blob count and shapes must match (legacy 4-D shapes compare right-aligned); all layers are
        checked before anything is copied. Returns the names of source layers ignored."""
        param = upgrade_v1(net_param)
        ignored, plan = [], []
        for src in param.layer:
            index = self._by_name.get(src.name)
            if index is None:
                ignored.append(src.name)
                continue
            layer = self.layers[index]
            targets = layer.blobs()
            if len(src.blobs) != len(targets):
                raise ScratchDetError(f"{source}: layer {src.name!r}: incompatible number of blobs: the file has "
                                      f"{len(src.blobs)}, the net's {layer.lp.type} layer has {len(targets)}")
            for k, (blob, t) in enumerate(zip(src.blobs, targets)):
                if not shape_matches(blob, t.shape):
                    raise ScratchDetError(f"{source}: layer {src.name!r}: cannot copy param {k} weights; shape mismatch: "
                                          f"source {list(blob_shape(blob))}, target {list(t.shape)}")
                plan.append((t, blob_to_array(blob, f"{source}: layer {src.name!r} blob {k}")))
        for t, values in plan:
            t.copy_(torch.from_numpy(values).reshape(t.shape).to(t.device))
        for name in ignored:
            log.info("Ignoring source layer %s", name)
        return ignored
