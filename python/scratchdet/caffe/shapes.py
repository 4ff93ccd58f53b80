"""Shape inference with Caffe's rules: per-layer output shapes, parameter blobs, priors and MACs.

Convolution rounds down, Pooling rounds up (the SSD fork has no rounding option), PriorBox
emits [1, 2, H*W*num_priors*4]. Blobs whose size depends on the data (the label blob, detection
outputs) get a placeholder row count of 1, as Caffe's setup does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ScratchDetError
from .netstate import filter_net
from .upgrade import upgrade_inputs


@dataclass
class LayerShape:
    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    bottom_shapes: list[tuple]
    top_shapes: list[tuple]
    param_shapes: list[tuple] = field(default_factory=list)   # Caffe blob order
    learnable: int = 0     # values updated by the solver (conv/IP weights and biases, Scale, Normalize)
    stats: int = 0         # BatchNorm's mean/variance/factor blobs
    macs: int = 0          # multiply-accumulates for the whole batch
    priors: int = 0        # PriorBox only


@dataclass
class NetShape:
    name: str
    layers: list[LayerShape]
    blobs: dict[str, tuple]
    batch: int

    @property
    def learnable(self) -> int:
        return sum(layer.learnable for layer in self.layers)

    @property
    def stats(self) -> int:
        return sum(layer.stats for layer in self.layers)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def priors(self) -> int:
        return sum(layer.priors for layer in self.layers)

    def count(self, layer_type: str) -> int:
        return sum(1 for layer in self.layers if layer.type == layer_type)

    def layer(self, name: str) -> LayerShape:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)


def _prod(shape) -> int:
    return math.prod(shape) if shape else 1


def _canon_axis(axis: int, ndim: int, where: str) -> int:
    if not -ndim <= axis < ndim:
        raise ScratchDetError(f"{where}: axis {axis} out of range for a {ndim}-D blob")
    return axis % ndim


def _expand(values, default: int, ndim: int = 2) -> list[int]:
    """A repeated kernel/stride/pad/dilation field: empty -> default, one value -> every dim."""
    values = list(values)
    if not values:
        return [default] * ndim
    return values * ndim if len(values) == 1 else values


def conv_geometry(cp, where: str = "convolution_param") -> tuple[list[int], list[int], list[int], list[int]]:
    """(kernel, stride, pad, dilation) of a ConvolutionParameter, honouring the _h/_w fields.
    A zero stride or dilation is rejected here (Caffe CHECKs both > 0), before any division by it."""
    k = [cp.kernel_h, cp.kernel_w] if cp.HasField("kernel_h") else _expand(cp.kernel_size, 0)
    s = [cp.stride_h, cp.stride_w] if cp.HasField("stride_h") else _expand(cp.stride, 1)
    p = [cp.pad_h, cp.pad_w] if (cp.HasField("pad_h") or cp.HasField("pad_w")) else _expand(cp.pad, 0)
    d = _expand(cp.dilation, 1)
    for field, values in (("stride", s), ("dilation", d)):
        if any(v <= 0 for v in values):
            raise ScratchDetError(f"{where}: convolution_param.{field} must be > 0, got {list(values)}")
    return k, s, p, d


def pool_geometry(pp, h: int, w: int, where: str = "pooling_param"):
    """(kh, kw, sh, sw, ph, pw, out_h, out_w) of Caffe's pooling: ceil rounding, then the rule
    that the last window must start inside the image (pad included)."""
    if pp.global_pooling:
        kh, kw, sh, sw, ph, pw = h, w, 1, 1, 0, 0
    else:
        kh, kw = (pp.kernel_h, pp.kernel_w) if pp.HasField("kernel_h") else (pp.kernel_size,) * 2
        sh, sw = (pp.stride_h, pp.stride_w) if pp.HasField("stride_h") else (pp.stride,) * 2
        ph, pw = (pp.pad_h, pp.pad_w) if (pp.HasField("pad_h") or pp.HasField("pad_w")) else (pp.pad,) * 2
    if sh <= 0 or sw <= 0:
        raise ScratchDetError(f"{where}: pooling_param.stride must be > 0, got {[sh, sw]}")
    oh = int(math.ceil((h + 2 * ph - kh) / sh)) + 1
    ow = int(math.ceil((w + 2 * pw - kw) / sw)) + 1
    if ph and (oh - 1) * sh >= h + ph:
        oh -= 1
    if pw and (ow - 1) * sw >= w + pw:
        ow -= 1
    return kh, kw, sh, sw, ph, pw, oh, ow


def prior_box_counts(pp) -> tuple[list[float], int]:
    """Aspect-ratio list and priors per cell, with the SSD fork's de-duplication and flip rule."""
    ars = [1.0]
    for r in pp.aspect_ratio:
        if any(abs(r - a) < 1e-6 for a in ars):
            continue
        ars.append(r)
        if pp.flip:
            ars.append(1.0 / r)
    return ars, len(ars) * len(pp.min_size) + len(pp.max_size)


def _layer(lp, bottom_shapes, where):  # noqa: C901 - one branch per Caffe layer type
    t = lp.type
    ls = LayerShape(lp.name, t, list(lp.bottom), list(lp.top), bottom_shapes, [])
    b0 = bottom_shapes[0] if bottom_shapes else None
    tops: list[tuple]
    if t == "Input":
        shapes = [tuple(s.dim) for s in lp.input_param.shape]
        if len(shapes) == 1:
            shapes *= len(lp.top)
        tops = shapes
    elif t in ("AnnotatedData", "Data"):
        n = lp.data_param.batch_size
        tp = lp.transform_param
        h = w = 0
        if tp.HasField("resize_param"):
            h, w = tp.resize_param.height, tp.resize_param.width
        if tp.crop_size:
            h = w = tp.crop_size
        if not (n and h and w):
            raise ScratchDetError(f"{where}: data layer needs batch_size and resize_param height/width "
                                  "to know its output shape")
        tops = [(n, 3, h, w)]
        if len(lp.top) > 1:
            tops.append((1, 1, 1, 8) if t == "AnnotatedData" else (n,))
    elif t in ("Convolution", "Deconvolution"):
        cp = lp.convolution_param
        if not cp.HasField("num_output"):
            raise ScratchDetError(f"{where}: convolution_param.num_output is required")
        k, s, pd, d = conv_geometry(cp, where)
        if 0 in k:
            raise ScratchDetError(f"{where}: convolution kernel size must be set and > 0")
        n, c, h, w = b0
        g = cp.group
        if c % g or cp.num_output % g:
            raise ScratchDetError(f"{where}: channels {c} / num_output {cp.num_output} not divisible by group {g}")
        if t == "Convolution":
            oh = (h + 2 * pd[0] - (d[0] * (k[0] - 1) + 1)) // s[0] + 1
            ow = (w + 2 * pd[1] - (d[1] * (k[1] - 1) + 1)) // s[1] + 1
            wshape = (cp.num_output, c // g, k[0], k[1])
        else:
            oh = s[0] * (h - 1) + d[0] * (k[0] - 1) + 1 - 2 * pd[0]
            ow = s[1] * (w - 1) + d[1] * (k[1] - 1) + 1 - 2 * pd[1]
            wshape = (c, cp.num_output // g, k[0], k[1])
        if oh <= 0 or ow <= 0:
            raise ScratchDetError(f"{where}: output size {oh}x{ow} is not positive (input {h}x{w})")
        tops = [(n, cp.num_output, oh, ow)]
        ls.param_shapes = [wshape] + ([(cp.num_output,)] if cp.bias_term else [])
        ls.learnable = sum(_prod(p) for p in ls.param_shapes)
        per_out = (c // g) * k[0] * k[1]
        ls.macs = n * cp.num_output * oh * ow * per_out if t == "Convolution" else n * c * h * w * (cp.num_output // g) * k[0] * k[1]
    elif t == "Pooling":
        pp = lp.pooling_param
        n, c, h, w = b0
        if not pp.global_pooling and not (pp.kernel_size or pp.kernel_h):
            raise ScratchDetError(f"{where}: pooling kernel size must be set")
        oh, ow = pool_geometry(pp, h, w, where)[-2:]
        tops = [(n, c, oh, ow)]
    elif t == "BatchNorm":
        c = b0[1] if len(b0) > 1 else 1
        ls.param_shapes = [(c,), (c,), (1,)]
        ls.stats = 2 * c + 1
        tops = [b0]
    elif t in ("Scale", "Bias"):
        sp = lp.scale_param if t == "Scale" else lp.bias_param
        if len(bottom_shapes) == 1:
            axis = _canon_axis(sp.axis, len(b0), where)
            end = len(b0) if sp.num_axes == -1 else axis + sp.num_axes
            shape = tuple(b0[axis:end])
            ls.param_shapes = [shape]
            if t == "Scale" and sp.bias_term:
                ls.param_shapes.append(shape)
            ls.learnable = sum(_prod(p) for p in ls.param_shapes)
        tops = [b0]
    elif t == "Normalize":
        c = b0[1]
        # scale: [C], or a 0-axis scalar (one value) when channel_shared (spec §2.7)
        ls.param_shapes = [() if lp.norm_param.channel_shared else (c,)]
        ls.learnable = _prod(ls.param_shapes[0])
        tops = [b0]
    elif t in ("ReLU", "Dropout", "Sigmoid", "TanH", "Softmax", "Split", "AbsVal", "Power"):
        tops = [b0] * max(1, len(lp.top))
        if t == "Softmax":
            _canon_axis(lp.softmax_param.axis, len(b0), where)
    elif t == "Eltwise":
        if any(s != b0 for s in bottom_shapes):
            raise ScratchDetError(f"{where}: Eltwise bottoms differ in shape {bottom_shapes}")
        tops = [b0]
    elif t == "Concat":
        cp = lp.concat_param
        axis = _canon_axis(cp.axis if not cp.HasField("concat_dim") else cp.concat_dim, len(b0), where)
        for s in bottom_shapes:
            if len(s) != len(b0) or any(a != b for i, (a, b) in enumerate(zip(s, b0)) if i != axis):
                raise ScratchDetError(f"{where}: Concat bottoms {bottom_shapes} differ off axis {axis}")
        out = list(b0)
        out[axis] = sum(s[axis] for s in bottom_shapes)
        tops = [tuple(out)]
    elif t == "Slice":
        sp = lp.slice_param
        axis = _canon_axis(sp.axis if not sp.HasField("slice_dim") else sp.slice_dim, len(b0), where)
        points = [0] + list(sp.slice_point) + [b0[axis]]
        if not sp.slice_point:
            if b0[axis] % len(lp.top):
                raise ScratchDetError(f"{where}: cannot slice {b0[axis]} evenly into {len(lp.top)}")
            step = b0[axis] // len(lp.top)
            points = [i * step for i in range(len(lp.top) + 1)]
        tops = []
        for a, b in zip(points, points[1:]):
            s = list(b0)
            s[axis] = b - a
            tops.append(tuple(s))
    elif t == "Permute":
        order = list(lp.permute_param.order)
        for i in range(len(b0)):
            if i not in order:
                order.append(i)
        if sorted(order) != list(range(len(b0))):
            raise ScratchDetError(f"{where}: invalid permute order {list(lp.permute_param.order)}")
        tops = [tuple(b0[i] for i in order)]
    elif t == "Flatten":
        fp = lp.flatten_param
        a = _canon_axis(fp.axis, len(b0), where)
        e = _canon_axis(fp.end_axis, len(b0), where)
        tops = [tuple(b0[:a]) + (_prod(b0[a:e + 1]),) + tuple(b0[e + 1:])]
    elif t == "Reshape":
        rp = lp.reshape_param
        dims = list(rp.shape.dim)
        start = _canon_axis(rp.axis, len(b0) + 1, where) if rp.axis >= 0 else len(b0) + 1 + rp.axis
        end = len(b0) if rp.num_axes == -1 else start + rp.num_axes
        out = list(b0[:start])
        inferred = None
        for i, d in enumerate(dims):
            if d == 0:
                out.append(b0[start + i])
            elif d == -1:
                inferred = len(out)
                out.append(1)
            else:
                out.append(d)
        out += list(b0[end:])
        if inferred is not None:
            known = _prod(out)
            if _prod(b0) % known:
                raise ScratchDetError(f"{where}: cannot reshape {b0} to {dims}")
            out[inferred] = _prod(b0) // known
        if _prod(out) != _prod(b0):
            raise ScratchDetError(f"{where}: reshape {b0} to {tuple(out)} changes the count")
        tops = [tuple(out)]
    elif t == "InnerProduct":
        ip = lp.inner_product_param
        axis = _canon_axis(ip.axis, len(b0), where)
        k = _prod(b0[axis:])
        tops = [tuple(b0[:axis]) + (ip.num_output,)]
        ls.param_shapes = [(k, ip.num_output) if ip.transpose else (ip.num_output, k)]
        if ip.bias_term:
            ls.param_shapes.append((ip.num_output,))
        ls.learnable = sum(_prod(p) for p in ls.param_shapes)
        ls.macs = _prod(b0[:axis]) * k * ip.num_output
    elif t == "PriorBox":
        pp = lp.prior_box_param
        if not pp.min_size:
            raise ScratchDetError(f"{where}: prior_box_param.min_size is required")
        if pp.max_size and len(pp.max_size) != len(pp.min_size):
            raise ScratchDetError(f"{where}: max_size count must equal min_size count")
        for mn, mx in zip(pp.min_size, pp.max_size):
            if mx <= mn:
                raise ScratchDetError(f"{where}: max_size {mx} must be larger than min_size {mn}")
        if len(pp.variance) not in (0, 1, 4):
            raise ScratchDetError(f"{where}: prior_box_param needs 1 or 4 variance values, got {len(pp.variance)}")
        _, per_cell = prior_box_counts(pp)
        h, w = b0[2], b0[3]
        ls.priors = h * w * per_cell
        tops = [(1, 2, ls.priors * 4)]
    elif t == "MultiBoxLoss":
        if not lp.multibox_loss_param.HasField("num_classes"):
            raise ScratchDetError(f"{where}: multibox_loss_param.num_classes is required")
        loc, conf, prior = bottom_shapes[0], bottom_shapes[1], bottom_shapes[2]
        p = prior[2] // 4
        c = lp.multibox_loss_param.num_classes
        if conf[1] != p * c:
            raise ScratchDetError(f"{where}: conf has {conf[1]} values per image, expected priors {p} x classes {c}")
        loc_classes = 1 if lp.multibox_loss_param.share_location else c
        if loc[1] != p * 4 * loc_classes:
            raise ScratchDetError(f"{where}: loc has {loc[1]} values per image, expected {p * 4 * loc_classes}")
        tops = [()]
    elif t in ("SoftmaxWithLoss", "SmoothL1Loss", "EuclideanLoss", "SigmoidCrossEntropyLoss"):
        tops = [()]
    elif t == "DetectionOutput":
        dp = lp.detection_output_param
        if not dp.HasField("num_classes"):
            raise ScratchDetError(f"{where}: detection_output_param.num_classes is required")
        p = bottom_shapes[2][2] // 4
        if bottom_shapes[1][1] != p * dp.num_classes:
            raise ScratchDetError(f"{where}: conf has {bottom_shapes[1][1]} values per image, "
                                  f"expected priors {p} x classes {dp.num_classes}")
        tops = [(1, 1, 1, 7)]
    elif t == "DetectionEvaluate":
        dp = lp.detection_evaluate_param
        c = dp.num_classes - (1 if dp.background_label_id >= 0 else 0)
        tops = [(1, 1, c + 1, 5)]
    elif t == "Silence":
        tops = []
    else:
        raise ScratchDetError(f"{where}: layer type {t!r} is not supported")
    ls.top_shapes = [tuple(int(v) for v in s) for s in tops]
    return ls


def infer(net, phase: int | None = None, source: str = "net") -> NetShape:
    """Shapes for every layer of ``net`` (filtered by ``phase`` when given)."""
    if phase is not None:
        net = filter_net(net, phase)
    net = upgrade_inputs(net, source)
    blobs: dict[str, tuple] = {}
    layers = []
    for i, lp in enumerate(net.layer):
        where = f"{source}: layer {lp.name or i!r} ({lp.type})"
        missing = [b for b in lp.bottom if b not in blobs]
        if missing:
            raise ScratchDetError(f"{where}: bottom blob {missing[0]!r} is not produced by an earlier layer")
        ls = _layer(lp, [blobs[b] for b in lp.bottom], where)
        for top, shape in zip(lp.top, ls.top_shapes):
            blobs[top] = shape
        layers.append(ls)
    batch = 1
    for ls in layers:
        if ls.type in ("Input", "AnnotatedData", "Data") and ls.top_shapes and ls.top_shapes[0]:
            batch = ls.top_shapes[0][0]
            break
    return NetShape(net.name, layers, blobs, batch)
