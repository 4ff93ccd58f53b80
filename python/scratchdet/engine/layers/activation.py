"""Element-wise and per-position activations: ReLU (with negative_slope), Sigmoid, TanH, AbsVal,
Softmax (max-subtracted, any axis) and Dropout (TRAIN only, inverted scaling as Caffe does)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...caffe.netstate import TRAIN
from .base import Layer, register


@register("ReLU")
class ReLU(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        self.negative_slope = float(lp.relu_param.negative_slope)

    def forward(self, x):
        if self.negative_slope:
            return (F.leaky_relu(x, self.negative_slope),)
        return (F.relu(x),)

    def forward_inplace(self, x):
        """Caffe's in-place ReLU (top == bottom) on the bottom's own memory; the Net calls it only
        when nothing else reads the bottom and its producer's backward does not need it."""
        if self.negative_slope:
            return (F.leaky_relu_(x, self.negative_slope),)
        return (F.relu_(x),)


@register("Sigmoid")
class Sigmoid(Layer):
    def forward(self, x):
        return (torch.sigmoid(x),)


@register("TanH")
class TanH(Layer):
    def forward(self, x):
        return (torch.tanh(x),)


@register("AbsVal")
class AbsVal(Layer):
    def forward(self, x):
        return (torch.abs(x),)


@register("Softmax")
class Softmax(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        ndim = len(bottom_shapes[0])
        axis = lp.softmax_param.axis
        if not -ndim <= axis < ndim:
            raise self.error(f"axis {axis} out of range for a {ndim}-D bottom")
        self.axis = axis % ndim

    def forward(self, x):
        return (torch.softmax(x, dim=self.axis),)


@register("Dropout")
class Dropout(Layer):
    """TRAIN: y = x * mask / (1 - ratio) with mask ~ Bernoulli(1 - ratio); TEST: y = x."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        self.ratio = float(lp.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise self.error(f"dropout_ratio must be in [0, 1), got {self.ratio:g}")

    def forward(self, x):
        if self.phase != TRAIN or self.ratio == 0.0:
            return (x,)
        mask = torch.empty_like(x).bernoulli_(1.0 - self.ratio)
        return (x * mask * (1.0 / (1.0 - self.ratio)),)
