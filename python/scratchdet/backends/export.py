"""``scratchdet export``: a deploy net with its caffemodel as an ONNX graph or a TorchScript module.

What is exported is the TEST-phase net with BatchNorm/Scale folded into the convolutions
(``engine.fold``), from its input up to the inputs of DetectionOutput (``mbox_loc``,
``mbox_conf_flatten``, ``mbox_priorbox`` in SSD nets); a net without DetectionOutput is exported
whole. DetectionOutput itself stays a post-processing step, ``detection_rows``, which runs the
engine's own layer on the exported outputs. ONNX's NonMaxSuppression cannot express Caffe's
semantics exactly: Caffe keeps the ``top_k`` best candidates per class *before* NMS, shrinks the
IoU threshold by ``eta`` after each kept box, computes IoU in its own float arithmetic (0 for
non-overlapping boxes, normalized widths), and breaks ``keep_top_k`` ties across classes by its
stable sort; an ONNX NMS + TopK graph gives different boxes near those edges. Keeping the step in
the engine makes the detections of an exported model equal to the engine's.

ONNX graphs are written directly from the Caffe layers (no tracing): opset 17, IR version 8,
checked with ``onnx.checker``; ``--dynamic-batch`` makes the batch axis symbolic. PriorBox outputs
are constants of the export's input size. TorchScript modules are traced (``torch.jit.trace``) at
the export's batch size. Both files carry the metadata ``detection_rows`` needs (the
DetectionOutput parameters, the input's name and shape, the mean/scale/label map of the companion
``test.prototxt``) as JSON: ONNX ``metadata_props["scratchdet"]``, TorchScript extra file
``scratchdet.json``.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import torch
from google.protobuf import text_format

from ..caffe import io
from ..caffe.netstate import TEST
from ..caffe.schema import pb
from ..caffe.shapes import pool_geometry
from ..errors import ScratchDetError

OPSET = 17
IR_VERSION = 8
META_KEY = "scratchdet"
TS_EXTRA = "scratchdet.json"
FORMATS = ("onnx", "torchscript")


# -- the net to export ------------------------------------------------------------------------------

def resize_input(net_param, height: int | None = None, width: int | None = None, batch: int | None = None):
    """A copy of ``net_param`` (old-style ``input:`` fields upgraded to an Input layer) whose first
    Input top is [batch, C, height, width] (None keeps a value)."""
    from ..caffe.upgrade import upgrade_inputs
    out = upgrade_inputs(net_param)
    if out is net_param:
        out = pb.NetParameter()
        out.CopyFrom(net_param)
    for lp in out.layer:
        if lp.type == "Input":
            if not lp.input_param.shape:
                raise ScratchDetError(f"Input layer {lp.name!r} has no shape")
            dims = lp.input_param.shape[0].dim
            if len(dims) != 4:
                raise ScratchDetError(f"Input layer {lp.name!r}: shape {list(dims)} is not [N, C, H, W]")
            for k, v in ((0, batch), (2, height), (3, width)):
                if v is not None:
                    dims[k] = int(v)
            return out
    raise ScratchDetError("the net has no Input layer (give a deploy prototxt)")


def parse_size(text: str) -> tuple[int, int]:
    try:
        parts = [int(v) for v in text.lower().replace(",", "x").split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ScratchDetError(f"--input-size must be HxW (positive integers), got {text!r}")
    return parts[0], parts[1]


def load(model, weights=None, *, input_size: tuple[int, int] | None = None, batch: int | None = None,
         fold: bool = True):
    """The TEST-phase engine net of ``model`` with ``weights`` loaded, optionally resized, folded."""
    from ..engine.caffemodel import load_caffemodel
    from ..engine.fold import fold as fold_net
    from ..engine.net import Net
    param = io.read_net(model)
    if input_size is not None or batch is not None:
        h, w = input_size if input_size is not None else (None, None)
        param = resize_input(param, h, w, batch)
    net = Net(param, TEST, source=str(model), seed=0)
    if weights:
        load_caffemodel(net, weights)
    net.eval()
    return fold_net(net) if fold else net


def input_blob(net) -> tuple[str, tuple[int, ...]]:
    inputs = [layer for layer in net.layers if layer.lp.type == "Input"]
    if len(inputs) != 1 or len(inputs[0].lp.top) != 1:
        raise ScratchDetError(f"{net.source}: export needs exactly one Input layer with one top")
    return inputs[0].lp.top[0], tuple(int(d) for d in inputs[0].shapes[0])


def detection_output_param(net):
    """The LayerParameter of the net's DetectionOutput, or None."""
    found = [layer.lp for layer in net.layers if layer.lp.type == "DetectionOutput"]
    if len(found) > 1:
        raise ScratchDetError(f"{net.source}: export handles one DetectionOutput layer, found {len(found)}")
    return found[0] if found else None


def segment(net) -> tuple[list[int], list[str]]:
    """(indices of the layers to export, in net order; output blob names): the layers the
    DetectionOutput's bottoms depend on (or all but DetectionOutput when there is none)."""
    det = detection_output_param(net)
    outputs = list(det.bottom) if det is not None else [n for n in net.output_names]
    needed = set(outputs)
    keep = []
    for i in range(len(net.layers) - 1, -1, -1):
        lp = net.layers[i].lp
        if lp.type == "DetectionOutput":
            continue
        if any(t in needed for t in lp.top):
            keep.append(i)
            needed.difference_update(t for t in lp.top if t not in lp.bottom)
            needed.update(lp.bottom)
    keep.reverse()
    return keep, outputs


def metadata(net, model, fold_groups: int) -> dict:
    from ..engine.detect import companion_transform
    name, shape = input_blob(net)
    det = detection_output_param(net)
    transform = companion_transform(Path(model))
    return {
        "format": 1,
        "source": Path(model).name,
        "input": name,
        "input_shape": list(shape),
        "outputs": segment(net)[1],
        "detection_output": text_format.MessageToString(det) if det is not None else None,
        "mean": list(transform.mean),
        "scale": transform.scale,
        "labelmap": transform.labelmap,
        "folded_groups": fold_groups,
    }


# -- post-processing: the engine's DetectionOutput ------------------------------------------------------

def detection_layer(meta: dict):
    """The engine's DetectionOutput layer built from an export's metadata (None if it had none)."""
    from ..engine.layers import build_layer
    text = meta.get("detection_output")
    if not text:
        return None
    lp = io.parse_text(text, pb.LayerParameter, "export metadata")
    lp.detection_output_param.ClearField("save_output_param")    # detection never writes files
    return build_layer(lp, TEST, [[1]] * len(lp.bottom), [[1, 1, 1, 7]])


def detection_rows(outputs: dict, meta: dict, layer=None) -> np.ndarray:
    """DetectionOutput of the exported outputs with Caffe's exact semantics: rows
    [image, label, score, xmin, ymin, xmax, ymax] as ``[K, 7]`` float32 (the engine's layer,
    so the same rows as the engine's forward of the deploy net)."""
    layer = layer or detection_layer(meta)
    if layer is None:
        raise ScratchDetError("the exported model has no DetectionOutput to apply")
    bottoms = [torch.as_tensor(np.asarray(outputs[b], np.float32)) for b in layer.lp.bottom]
    with torch.no_grad():
        return layer(*bottoms)[0].numpy().reshape(-1, 7)


# -- ONNX -----------------------------------------------------------------------------------------------

class _Graph:
    """ONNX nodes, initializers and the Caffe blob -> ONNX value map, with SSA names."""

    def __init__(self, reserved: set[str]):
        self.nodes, self.inits = [], []
        self.current: dict[str, str] = {}
        self.used: set[str] = set(reserved)
        self.constant: set[str] = set()      # values that do not depend on the input

    def fresh(self, base: str) -> str:
        name, k = base, 1
        while name in self.used:
            k += 1
            name = f"{base}__{k}"
        self.used.add(name)
        return name

    def const(self, base: str, array) -> str:
        from onnx import numpy_helper
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        self.constant.add(name)
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs) -> str:
        from onnx import helper
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        if all(v in self.constant for v in inputs):
            self.constant.add(out)
        return out

    def multi(self, op: str, inputs: list[str], bases: list[str], **attrs) -> list[str]:
        from onnx import helper
        outs = [self.fresh(b) for b in bases]
        self.nodes.append(helper.make_node(op, inputs, outs, name=outs[0], **attrs))
        return outs

    def get(self, blob: str) -> str:
        return self.current[blob]

    def set(self, blob: str, value: str) -> None:
        self.current[blob] = value


def _np(t) -> np.ndarray:
    return t.detach().cpu().float().numpy()


def _channel_shape(shape, axis: int, ndim: int) -> tuple[int, ...]:
    return tuple(shape) + (1,) * (ndim - axis - len(shape))


def _emit(g: _Graph, net, i: int, dynamic: bool) -> None:  # noqa: C901 - one branch per Caffe layer type
    layer = net.layers[i]
    lp = layer.lp
    kind = lp.type
    name = lp.name
    bottoms = [g.get(b) for b in lp.bottom]
    shapes = layer.bottom_shapes
    tops = list(lp.top)

    def out(values):
        for t, v in zip(tops, values):
            g.set(t, v)

    if kind in ("Convolution", "Deconvolution"):
        w = g.const(f"{name}.weight", _np(layer.weight))
        ins = [w] + ([g.const(f"{name}.bias", _np(layer.bias))] if layer.bias is not None else [])
        attrs = dict(kernel_shape=list(layer.kernel), strides=list(layer.stride),
                     pads=list(layer.pad) * 2, dilations=list(layer.dilation), group=layer.group)
        op = "Conv" if kind == "Convolution" else "ConvTranspose"
        values = []
        for b, t in zip(bottoms, tops):
            v = g.node(op, [b] + ins, t, **attrs)
            slope = getattr(layer, "fused_relu", None)
            if slope is not None:
                v = g.node("LeakyRelu", [v], t, alpha=slope) if slope else g.node("Relu", [v], t)
            values.append(v)
        out(values)
    elif kind == "InnerProduct":
        if layer.axis != 1 and not (layer.axis == 0 and len(shapes[0]) == 1):
            raise ScratchDetError(f"layer {name!r} (InnerProduct): only axis 1 can be exported")
        x = g.node("Flatten", bottoms, f"{name}.flat", axis=1)
        w = g.const(f"{name}.weight", _np(layer.weight))
        ins = [x, w] + ([g.const(f"{name}.bias", _np(layer.bias))] if layer.bias is not None else [])
        out([g.node("Gemm", ins, tops[0], transB=0 if layer.transpose else 1)])
    elif kind in ("Scale", "Bias"):
        if len(bottoms) != 1:
            raise ScratchDetError(f"layer {name!r} ({kind}): only the one-bottom form can be exported")
        ndim = len(shapes[0])
        v = bottoms[0]
        if kind == "Scale":
            s = _np(layer.scale)
            v = g.node("Mul", [v, g.const(f"{name}.scale", s.reshape(_channel_shape(s.shape, layer.axis, ndim)))], tops[0])
        if layer.bias is not None:
            b = _np(layer.bias)
            v = g.node("Add", [v, g.const(f"{name}.bias", b.reshape(_channel_shape(b.shape, layer.axis, ndim)))], tops[0])
        out([v])
    elif kind == "BatchNorm":
        if not layer.use_global_stats:
            raise ScratchDetError(f"layer {name!r} (BatchNorm): batch statistics (use_global_stats: false) "
                                  "cannot be exported")
        mean, var = (_np(t) for t in layer.global_stats())
        c = shapes[0][1]
        scale = np.ones(c, np.float32)
        zero = np.zeros(c, np.float32)
        out([g.node("BatchNormalization", [bottoms[0], g.const(f"{name}.gamma", scale), g.const(f"{name}.beta", zero),
                                            g.const(f"{name}.mean", mean), g.const(f"{name}.var", var)],
                    tops[0], epsilon=layer.eps)])
    elif kind == "ReLU":
        slope = layer.negative_slope
        out([g.node("LeakyRelu", bottoms, tops[0], alpha=slope) if slope else g.node("Relu", bottoms, tops[0])])
    elif kind in ("Sigmoid", "TanH", "AbsVal"):
        out([g.node({"Sigmoid": "Sigmoid", "TanH": "Tanh", "AbsVal": "Abs"}[kind], bottoms, tops[0])])
    elif kind == "Softmax":
        out([g.node("Softmax", bottoms, tops[0], axis=layer.axis)])
    elif kind == "Pooling":
        out([_pooling(g, layer, bottoms[0], tops[0])])
    elif kind == "Eltwise":
        from ..engine.layers.shape_ops import MAX, PROD
        if layer.op == PROD:
            v = bottoms[0]
            for b in bottoms[1:]:
                v = g.node("Mul", [v, b], tops[0])
        elif layer.op == MAX:
            v = g.node("Max", bottoms, tops[0])
        else:
            terms = [b if c == 1.0 else g.node("Mul", [b, g.const(f"{name}.coeff", np.float32(c))], f"{name}.term")
                     for b, c in zip(bottoms, layer.coeff)]
            v = terms[0]
            for b in terms[1:]:
                v = g.node("Add", [v, b], tops[0])
        out([v])
    elif kind == "Concat":
        out([bottoms[0] if len(bottoms) == 1 else g.node("Concat", bottoms, tops[0], axis=layer.axis)])
    elif kind == "Slice":
        size = shapes[0][layer.axis]
        n = len(tops)
        bounds = [0] + layer.points + [size] if layer.points else [k * size // n for k in range(n + 1)]
        split = g.const(f"{name}.split", np.asarray([b - a for a, b in zip(bounds, bounds[1:])], np.int64))
        out(g.multi("Split", [bottoms[0], split], tops, axis=layer.axis))
    elif kind == "Permute":
        out([g.node("Transpose", bottoms, tops[0], perm=list(layer.order))])
    elif kind == "Flatten":
        ndim = len(shapes[0])
        if layer.start == 1 and layer.end == ndim - 1:
            out([g.node("Flatten", bottoms, tops[0], axis=1)])
        else:
            target = [0] * layer.start + [-1] + [int(d) for d in shapes[0][layer.end + 1:]]
            if dynamic and layer.start == 0:
                raise ScratchDetError(f"layer {name!r} (Flatten): flattens the batch axis; export with a static batch")
            out([g.node("Reshape", [bottoms[0], g.const(f"{name}.shape", np.asarray(target, np.int64))], tops[0])])
    elif kind == "Reshape":
        ndim = len(shapes[0])
        start = layer.axis if layer.axis >= 0 else ndim + layer.axis + 1
        end = ndim if layer.num_axes == -1 else start + layer.num_axes
        target = [0] * start + list(layer.dims) + [int(d) for d in shapes[0][end:]]
        if dynamic and target[0] != 0:
            raise ScratchDetError(f"layer {name!r} (Reshape): changes the batch axis; export with a static batch")
        out([g.node("Reshape", [bottoms[0], g.const(f"{name}.shape", np.asarray(target, np.int64))], tops[0])])
    elif kind == "Normalize":
        axes = list(range(1, len(shapes[0]))) if layer.across_spatial else [1]
        ss = g.node("ReduceSumSquare", bottoms, f"{name}.sumsq", axes=axes, keepdims=1)
        norm = g.node("Sqrt", [g.node("Add", [ss, g.const(f"{name}.eps", np.float32(layer.eps))], f"{name}.sumsq_eps")],
                      f"{name}.norm")
        v = g.node("Div", [bottoms[0], norm], f"{name}.unit")
        s = _np(layer.scale)
        s = s.reshape(()) if layer.channel_shared else s.reshape(_channel_shape(s.shape, 1, len(shapes[0])))
        out([g.node("Mul", [v, g.const(f"{name}.scale", s)], tops[0])])
    elif kind == "PriorBox":
        feature, image = shapes[0], shapes[1]
        priors = layer.compute(int(feature[2]), int(feature[3]), int(image[2]), int(image[3])).astype(np.float32)
        out([g.const(tops[0], priors)])
    elif kind in ("Dropout", "Split"):
        out([bottoms[0]] * len(tops))
    elif kind == "Silence":
        pass
    else:
        raise ScratchDetError(f"layer {name!r}: type {kind} cannot be exported to ONNX")


def _pooling(g: _Graph, layer, x: str, top: str) -> str:
    """Caffe's pooling geometry with ONNX pooling: the windows' explicit extent as pads (a crop
    when the last window stops short of the image), MAX ignoring pads, AVE with Caffe's divisor
    (the window clipped to the padded image) as a constant correction."""
    from ..engine.layers.pooling import MAX
    name = layer.lp.name
    pp = layer.lp.pooling_param
    _, _, h, w = layer.bottom_shapes[0]
    if pp.global_pooling:
        return g.node("GlobalMaxPool" if layer.method == MAX else "GlobalAveragePool", [x], top)
    kh, kw, sh, sw, ph, pw, oh, ow = pool_geometry(pp, h, w, layer.where)
    bottom = (oh - 1) * sh + kh - h - ph
    right = (ow - 1) * sw + kw - w - pw
    if bottom < 0 or right < 0:
        ends = np.asarray([h + min(bottom, 0), w + min(right, 0)], np.int64)
        x = g.node("Slice", [x, g.const(f"{name}.starts", np.zeros(2, np.int64)), g.const(f"{name}.ends", ends),
                             g.const(f"{name}.axes", np.asarray([2, 3], np.int64))], f"{name}.crop")
        bottom, right = max(bottom, 0), max(right, 0)
    attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], pads=[ph, pw, bottom, right])
    if layer.method == MAX:
        return g.node("MaxPool", [x], top, **attrs)
    v = g.node("AveragePool", [x], top, count_include_pad=1, **attrs)
    start_h = np.arange(oh) * sh - ph
    start_w = np.arange(ow) * sw - pw
    dh = np.minimum(start_h + kh, h + ph) - start_h
    dw = np.minimum(start_w + kw, w + pw) - start_w
    correction = (kh * kw) / np.outer(dh, dw)
    if np.all(correction == 1):
        return v
    return g.node("Mul", [v, g.const(f"{name}.divisor", correction.astype(np.float32))], top)


def to_onnx(net, meta: dict, *, dynamic_batch: bool = False, opset: int = OPSET):
    """The ONNX ModelProto of ``net``'s exported segment (see the module docstring), checked."""
    import onnx
    from onnx import TensorProto, helper
    keep, outputs = segment(net)
    in_name, in_shape = input_blob(net)
    g = _Graph(set(outputs) | {in_name})
    g.set(in_name, in_name)
    for i in keep:
        if net.layers[i].lp.type == "Input":
            continue
        _emit(g, net, i, dynamic_batch)
    out_info = []
    for name in outputs:
        value = g.get(name)
        if value != name:
            g.nodes.append(helper.make_node("Identity", [value], [name], name=f"{name}.output"))
        shape = list(net.blob_shapes[name])
        if dynamic_batch and value not in g.constant:
            shape[0] = "batch"
        out_info.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    dims = (["batch"] if dynamic_batch else [in_shape[0]]) + list(in_shape[1:])
    graph = helper.make_graph(g.nodes, meta.get("source") or "net",
                              [helper.make_tensor_value_info(in_name, TensorProto.FLOAT, dims)],
                              out_info, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="scratchdet", ir_version=IR_VERSION)
    helper.set_model_props(model, {META_KEY: json.dumps(dict(meta, opset=opset, dynamic_batch=dynamic_batch))})
    onnx.checker.check_model(model, full_check=True)
    return model


def read_onnx_meta(model) -> dict:
    for prop in model.metadata_props:
        if prop.key == META_KEY:
            return json.loads(prop.value)
    return {}


# -- TorchScript ------------------------------------------------------------------------------------------

class Segment(torch.nn.Module):
    """The exported layers of an engine net as a module: input tensor -> tuple of outputs."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.keep, self.outputs = segment(net)
        self.input_name = input_blob(net)[0]

    def forward(self, x):
        blobs: dict = {}
        inputs = {self.input_name: x}
        for i in self.keep:
            self.net.forward_layer(i, blobs, inputs)
        return tuple(blobs[n] for n in self.outputs)


class _Frozen(torch.nn.Module):
    """``Segment`` with the net's blobs as constants of the trace (the engine's layers register
    each blob under two names, which traced modules refuse)."""

    def __init__(self, net):
        super().__init__()
        object.__setattr__(self, "_segment", Segment(net))

    def forward(self, x):
        return self._segment(x)


def to_torchscript(net, meta: dict):
    """A traced ScriptModule of ``net``'s exported segment, at the net's input shape (``net``'s
    blobs stop requiring gradients: give it a net used for inference only)."""
    _, shape = input_blob(net)
    net.requires_grad_(False)
    module = _Frozen(net).eval()
    example = torch.zeros(shape, device=net.device)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, (example,), check_trace=False)
    return traced


# -- running an export --------------------------------------------------------------------------------------

class OnnxRunner:
    """An exported .onnx file in onnxruntime (CPU): ``forward(x)`` gives the outputs by name,
    ``detect(x)`` the DetectionOutput rows after ``detection_rows``."""

    def __init__(self, path, threads: int | None = None):
        import onnx
        import onnxruntime as ort
        path = Path(path)
        if not path.is_file():
            raise ScratchDetError(f"{path}: no such file")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:            # a truncated or foreign file
            raise ScratchDetError(f"{path}: not an ONNX model ({str(exc).splitlines()[0][:120]})") from None
        if not model.graph.node:            # protobuf parses many foreign files as an empty model
            raise ScratchDetError(f"{path}: not an ONNX model (no graph in it)")
        self.meta = read_onnx_meta(model)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ScratchDetError(f"{path}: onnxruntime cannot load it ({str(exc).splitlines()[0][:160]})") from None
        first = self.session.get_inputs()[0]
        self.input_name = first.name
        self.input_shape = tuple(self.meta.get("input_shape") or [d if isinstance(d, int) else 1 for d in first.shape])
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.path = path
        self._det = detection_layer(self.meta)

    def forward(self, x) -> dict:
        x = np.ascontiguousarray(x, dtype=np.float32)
        values = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, values))

    def detect(self, x) -> np.ndarray:
        if self._det is None:
            raise ScratchDetError(f"{self.path}: the model has no DetectionOutput metadata (not a detection net)")
        return detection_rows(self.forward(x), self.meta, self._det)


def compare(a: dict, b: dict, names) -> float:
    """Largest max|a - b| / max(1, max|a|) over the named outputs: the difference relative to the
    output's scale (elementwise relative errors are meaningless where large terms cancel)."""
    worst = 0.0
    for n in names:
        x, y = np.asarray(a[n], np.float64), np.asarray(b[n], np.float64)
        if x.shape != y.shape:
            raise ScratchDetError(f"output {n!r}: shape {list(y.shape)} instead of {list(x.shape)}")
        if x.size:
            worst = max(worst, float(np.abs(x - y).max() / max(1.0, np.abs(x).max())))
    return worst


def engine_outputs(net, x) -> dict:
    """The exported outputs as the engine computes them (the net's own forward)."""
    with torch.no_grad():
        values = Segment(net)(torch.as_tensor(np.asarray(x, np.float32), device=net.device))
    return {n: v.detach().cpu().numpy() for n, v in zip(segment(net)[1], values)}


def export_bytes(net, meta: dict, fmt: str, dynamic_batch: bool = False) -> bytes:
    if fmt == "onnx":
        return to_onnx(net, meta, dynamic_batch=dynamic_batch).SerializeToString()
    if dynamic_batch:
        raise ScratchDetError("--dynamic-batch applies to ONNX only (TorchScript is traced at one batch size)")
    import io as pyio
    buffer = pyio.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)      # torch.jit is deprecated in favour of torch.export
        torch.jit.save(to_torchscript(net, meta), buffer, _extra_files={TS_EXTRA: json.dumps(meta)})
    return buffer.getvalue()


def run_bytes(data: bytes, fmt: str, x: np.ndarray, outputs) -> dict:
    """Outputs of an exported model (its bytes) on ``x``: onnxruntime or torch.jit.load."""
    if fmt == "onnx":
        import onnxruntime as ort
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        return dict(zip(outputs, session.run(list(outputs), {session.get_inputs()[0].name: x})))
    import io as pyio
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(pyio.BytesIO(data), map_location="cpu")
    with torch.no_grad():
        return {n: v.numpy() for n, v in zip(outputs, loaded(torch.from_numpy(x)))}
