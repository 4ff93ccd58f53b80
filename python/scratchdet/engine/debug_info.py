"""Caffe's ``debug_info: true`` lines for a training forward/backward pass (caffe-ssd-spec §5.5).

Real Caffe (the SSD fork, checked against its output) logs, for every layer of the net it built
(Split layers included), the mean absolute value (asum / count) of each top blob and then of each
parameter blob after the layer's forward; in reverse order, for every layer that takes part in the
backward pass, the mean absolute diff of each bottom blob that receives one and of each parameter
blob after the layer's backward; then one line with the L1 and L2 norms of all parameter blobs'
data and diffs (at level E). It writes no line for the update itself (``Net::Update`` logs nothing
in this Caffe), so neither do we.

After Caffe's split insertion every blob has one reader, so a bottom's diff is the gradient through
that one layer; here each layer reads its own alias of each bottom tensor, whose gradient is that
diff, and a Split's bottom diff is the producer output's total gradient.
"""
from __future__ import annotations

import torch

from ..caffe import glog
from ..caffe.glog import BACKWARD_BOTTOM, BACKWARD_PARAM, FORWARD_PARAM, FORWARD_TOP, NORMS


def _mean_abs(t) -> float:
    if t is None or t.numel() == 0:
        return 0.0
    return float(t.detach().double().abs().sum() / t.numel())


class DebugPass:
    """One forward/backward with Caffe's debug lines: ``forward()`` runs the net and logs the
    forward lines; after ``loss.backward()``, ``backward()`` logs the backward lines."""

    def __init__(self, net, log):
        from ..caffe.upgrade import insert_splits
        self.net = net
        self.log = log
        # Caffe's layer list: ours with the Split layers it inserts; bottoms renamed as Caffe names them
        self.plan = []                     # ("layer", i, bottom names) | ("split", name, bottom, tops)
        j = 0
        for lp in insert_splits(net.param).layer:
            if j < len(net.layers) and lp.name == net.layers[j].name:
                self.plan.append(("layer", j, list(lp.bottom)))
                j += 1
            else:
                self.plan.append(("split", lp.name, lp.bottom[0], list(lp.top)))
        self.aliases: dict[int, list] = {}   # layer index -> the bottom tensors it read (None: no diff)
        self.outputs: dict[str, torch.Tensor] = {}
        self.split_sources: dict[str, torch.Tensor] = {}   # split layer -> the tensor it copies

    def _line(self, tag: str, message: str, level: str = "I") -> None:
        self.log(level, tag, message)

    def forward(self) -> dict:
        net = self.net
        blobs: dict[str, torch.Tensor] = {}
        for step in self.plan:
            if step[0] == "split":
                _, name, bottom, tops = step
                self.split_sources[name] = self.outputs[bottom]
                value = _mean_abs(self.outputs[bottom])
                for t in tops:
                    self._line(FORWARD_TOP, glog.forward_top_message(name, t, value))
                continue
            i = step[1]
            layer = net.layers[i]
            bottoms = []
            for b in layer.lp.bottom:
                t = blobs[b]
                if t.requires_grad:
                    t = t.view_as(t)
                    t.retain_grad()
                bottoms.append(t)
            self.aliases[i] = bottoms
            outs = net.run_layer(i, bottoms)
            for name, v in zip(layer.lp.top, outs):
                blobs[name] = v
                if v.requires_grad:
                    v.retain_grad()
                self.outputs[name] = v
                self._line(FORWARD_TOP, glog.forward_top_message(layer.name, name, _mean_abs(v)))
            for k, p in enumerate(layer.blobs()):
                self._line(FORWARD_PARAM, glog.forward_param_message(layer.name, k, _mean_abs(p)))
        return blobs

    def backward(self) -> None:
        net = self.net
        for step in reversed(self.plan):
            if step[0] == "split":
                _, name, bottom, _tops = step
                grad = self.split_sources[name].grad
                if grad is not None:
                    self._line(BACKWARD_BOTTOM, glog.backward_bottom_message(name, bottom, _mean_abs(grad)))
                continue
            _, i, names = step
            layer = net.layers[i]
            grads = [(n, t.grad) for n, t in zip(names, self.aliases.get(i, [])) if t.grad is not None]
            params = layer.blobs()
            takes_part = bool(grads) or any(p.grad is not None for p in params)
            if not takes_part:
                continue
            for n, g in grads:
                self._line(BACKWARD_BOTTOM, glog.backward_bottom_message(layer.name, n, _mean_abs(g)))
            for k, p in enumerate(params):
                self._line(BACKWARD_PARAM, glog.backward_param_message(layer.name, k, _mean_abs(p.grad)))
        l1_data = l1_diff = l2_data = l2_diff = 0.0
        for p in net.params():
            d = p.tensor.detach().double()
            l1_data += float(d.abs().sum())
            l2_data += float((d * d).sum())
            if p.tensor.grad is not None:
                g = p.tensor.grad.detach().double()
                l1_diff += float(g.abs().sum())
                l2_diff += float((g * g).sum())
        self._line(NORMS, glog.norms_message(l1_data, l1_diff, l2_data ** 0.5, l2_diff ** 0.5), level="E")
