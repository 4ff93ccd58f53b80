"""InnerProduct: the bottom flattened from ``axis`` on, times weights [num_output, K] (or [K,
num_output] with ``transpose``), plus bias [num_output]; default fillers constant 0."""
from __future__ import annotations

import math

import torch

from .. import fillers
from .base import Layer, register


@register("InnerProduct")
class InnerProduct(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        ip = lp.inner_product_param
        b0 = bottom_shapes[0]
        if not -len(b0) <= ip.axis < len(b0):
            raise self.error(f"axis {ip.axis} out of range for a {len(b0)}-D bottom")
        self.axis = ip.axis % len(b0)
        self.k = math.prod(b0[self.axis:])
        n = int(ip.num_output)
        if n <= 0:
            raise self.error("inner_product_param.num_output must be > 0")
        self.transpose = ip.transpose
        self.weight = self.add_blob((self.k, n) if self.transpose else (n, self.k))
        self.bias = self.add_blob((n,)) if ip.bias_term else None

    def fill(self, generator):
        ip = self.lp.inner_product_param
        wf = ip.weight_filler if ip.HasField("weight_filler") else fillers.constant(0.0)
        fillers.fill_(self.weight, wf, generator, f"layer {self.name!r} weight")
        if self.bias is not None:
            bf = ip.bias_filler if ip.HasField("bias_filler") else fillers.constant(0.0)
            fillers.fill_(self.bias, bf, generator, f"layer {self.name!r} bias")

    def forward(self, x):
        flat = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        if flat.shape[-1] != self.k:
            raise self.error(f"bottom {list(x.shape)} has {flat.shape[-1]} values per item, the weights expect {self.k}")
        y = flat @ self.weight if self.transpose else flat @ self.weight.t()
        if self.bias is not None:
            y = y + self.bias
        return (y,)
