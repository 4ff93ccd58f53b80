"""Inference-time folding: BatchNorm (global statistics) and the per-channel Scale after it become
part of the preceding Convolution's weights and bias; a ReLU that directly follows is applied by
the convolution itself.

With global statistics BatchNorm is the per-channel affine map ``(x - mean) / sqrt(var + eps)``
and Scale is ``x * g + b``, so a chain conv -> BN -> Scale is one convolution with weights
``W * a`` and bias ``bias * a + c`` (``a = g / sqrt(var + eps)``, ``c = b - mean * a``), computed
in float64. A BN(+Scale) that follows something else (a pre-activation block's Eltwise) becomes
one Scale layer with a bias. A layer is folded only when it is the sole reader of the value it
folds: a blob that another layer also reads keeps its unfolded value. BatchNorm in training mode
(batch statistics) is never folded.

``fold(net)`` returns a new ``Net`` with the folded layers removed; every other layer is the
unfolded net's own module (blobs and state shared), so outputs agree with the unfolded net to
float32 rounding. The folded net is for inference: its ``to_proto`` describes the folded layers,
not the original net.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..caffe.schema import pb


@dataclass
class Group:
    """One fold: ``head`` (a Convolution, or a BatchNorm turned into a Scale), the BatchNorm/Scale
    layers merged into it, and a directly following ReLU applied by the convolution."""
    head: int
    affine: list[int] = field(default_factory=list)
    relu: int | None = None


def _readers(param) -> dict[tuple[int, int], list[int]]:
    """For each value (producer layer, top index): the layers that read it, in net order."""
    current: dict[str, tuple[int, int]] = {}
    readers: dict[tuple[int, int], list[int]] = {}
    for i, lp in enumerate(param.layer):
        for b in lp.bottom:
            if b in current:
                readers.setdefault(current[b], []).append(i)
        for j, t in enumerate(lp.top):
            current[t] = (i, j)
            readers.setdefault((i, j), [])
    return readers


def _sole_reader(readers, value) -> int | None:
    r = readers.get(value, [])
    return r[0] if len(r) == 1 else None


def _is_global_bn(layer) -> bool:
    return layer.lp.type == "BatchNorm" and len(layer.lp.bottom) == 1 and len(layer.lp.top) == 1 \
        and bool(layer.use_global_stats) and len(layer.bottom_shapes[0]) >= 2


def _is_channel_scale(layer) -> bool:
    """A learned Scale over exactly the channel axis (what follows BatchNorm in Caffe nets)."""
    lp = layer.lp
    return lp.type == "Scale" and len(lp.bottom) == 1 and len(lp.top) == 1 and layer.axis == 1 \
        and layer.scale is not None and layer.scale.dim() == 1 and len(layer.bottom_shapes[0]) >= 2


def _is_plain_conv(layer) -> bool:
    lp = layer.lp
    return lp.type == "Convolution" and len(lp.bottom) == 1 and len(lp.top) == 1


def plan(net) -> list[Group]:
    """The folds ``fold`` would make in ``net``: a Convolution followed by BatchNorm and/or Scale
    and/or ReLU, or a BatchNorm (+Scale) after anything else; each layer in at most one group."""
    param = net.param
    readers = _readers(param)
    layers = net.layers
    used: set[int] = set()
    groups = []
    for i, layer in enumerate(layers):
        if i in used:
            continue
        conv = _is_plain_conv(layer)
        if conv:
            group = Group(i)
        elif _is_global_bn(layer):
            group = Group(i, [i])
        else:
            continue
        value = (i, 0)
        j = _sole_reader(readers, value)
        if conv and j is not None and _is_global_bn(layers[j]):
            group.affine.append(j)
            value = (j, 0)
            j = _sole_reader(readers, value)
        if j is not None and _is_channel_scale(layers[j]):
            group.affine.append(j)
            value = (j, 0)
            j = _sole_reader(readers, value)
        if conv and j is not None and param.layer[j].type == "ReLU" and len(param.layer[j].bottom) == 1:
            group.relu = j
        if group.affine or group.relu is not None:
            groups.append(group)
            used.update(group.affine)
            if group.relu is not None:
                used.add(group.relu)
    return groups


def _affine_of(layers, indices) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) in float64 with chain(x) = a * x + c per channel."""
    a = c = None
    for k in indices:
        layer = layers[k]
        if layer.lp.type == "BatchNorm":
            # the statistics exactly as the unfolded layer normalises with, then folded in float64
            mean, var = (t.detach().cpu().double().numpy() for t in layer.global_stats())
            ka = 1.0 / np.sqrt(var + np.float64(np.float32(layer.eps)))
            kc = -mean * ka
        else:
            ka = layer.scale.detach().cpu().double().numpy()
            kc = layer.bias.detach().cpu().double().numpy() if layer.bias is not None else np.zeros_like(ka)
        if a is None:
            a, c = ka, kc
        else:
            a, c = a * ka, c * ka + kc
    return a, c


def _final_top(param, group: Group) -> str:
    last = group.relu if group.relu is not None else (group.affine[-1] if group.affine else group.head)
    return param.layer[last].top[0]


def folded_param(net, groups: list[Group]):
    """The NetParameter of the folded net (layers merged into a group removed)."""
    param = net.param
    drop = {k for g in groups for k in g.affine if k != g.head} | {g.relu for g in groups if g.relu is not None}
    by_head = {g.head: g for g in groups}
    out = pb.NetParameter()
    out.CopyFrom(param)
    del out.layer[:]
    for i, lp in enumerate(param.layer):
        if i in drop:
            continue
        new = out.layer.add()
        new.CopyFrom(lp)
        g = by_head.get(i)
        if g is None:
            continue
        new.top[0] = _final_top(param, g)
        if lp.type == "Convolution" and g.affine:
            new.convolution_param.bias_term = True
        elif lp.type == "BatchNorm":
            new.type = "Scale"
            new.ClearField("batch_norm_param")
            del new.param[:]
            new.scale_param.axis = 1
            new.scale_param.num_axes = 1
            new.scale_param.bias_term = True
    return out


@torch.no_grad()
def fold(net):
    """A new ``Net`` (same phase, on the same device) computing what ``net`` computes with its
    BatchNorm/Scale layers folded; ``net`` itself is unchanged. A net with nothing to fold is
    returned as it is."""
    from .net import Net
    groups = plan(net)
    if not groups:
        return net
    param = folded_param(net, groups)
    device = net.device
    out = Net(param, net.phase, source=net.source, seed=0)
    by_head = {g.head: g for g in groups}
    names = {layer.name: k for k, layer in enumerate(net.layers)}
    for idx, new in enumerate(out.layers):
        k = names[new.name]
        old = net.layers[k]
        g = by_head.get(k)
        if g is None:           # the same module: its blobs and state (a data layer's stream) are shared
            out.layers[idx] = old
            continue
        a, c = _affine_of(net.layers, g.affine) if g.affine else (None, None)
        if old.lp.type == "Convolution":
            if a is not None:
                w = old.weight.detach().cpu().double().numpy()
                b = old.bias.detach().cpu().double().numpy() if old.bias is not None else np.zeros(w.shape[0])
                new.weight.copy_(torch.from_numpy(w * a.reshape(-1, 1, 1, 1)))
                new.bias.copy_(torch.from_numpy(b * a + c))
            else:
                for dst, src in zip(new.blobs(), old.blobs()):
                    dst.copy_(src)
            if g.relu is not None:
                new.fused_relu = float(net.layers[g.relu].negative_slope)
        else:                                   # a BatchNorm (+Scale) as one Scale with bias
            new.scale.copy_(torch.from_numpy(a))
            new.bias.copy_(torch.from_numpy(c))
    out.folded_from = net.source
    return out.to(device)
