"""Convolution and Deconvolution (caffe-ssd-spec §6): blobs [weight, bias], out = floor((H + 2p -
(d(k-1)+1)) / s) + 1; a missing ``weight_filler`` means constant 0, as in Caffe. Several bottoms
are each convolved with the same weights (one top per bottom)."""
from __future__ import annotations

import torch.nn.functional as F

from ...caffe.shapes import conv_geometry
from .. import fillers
from .base import Layer, register


def _filler(cp, name: str):
    return getattr(cp, name) if cp.HasField(name) else fillers.constant(0.0)


class _ConvBase(Layer):
    transposed = False

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        cp = lp.convolution_param
        if cp.axis not in (1, -3):
            raise self.error("only channel axis 1 is supported")
        if not bottom_shapes or any(len(s) != 4 for s in bottom_shapes):
            raise self.error(f"needs 4-D bottoms (N, C, H, W), got {bottom_shapes}")
        if len(lp.top) != len(lp.bottom):
            raise self.error("needs one top per bottom")
        kernel, stride, pad, dilation = conv_geometry(cp, self.where)
        if len(kernel) != 2 or 0 in kernel:
            raise self.error("needs a 2-D kernel with sizes > 0")
        self.kernel, self.stride, self.pad, self.dilation = (tuple(int(v) for v in x) for x in (kernel, stride, pad, dilation))
        self.group = int(cp.group)
        channels = bottom_shapes[0][1]
        out = int(cp.num_output)
        if self.group < 1 or channels % self.group or out % self.group:
            raise self.error(f"channels {channels} and num_output {out} must be divisible by group {self.group}")
        if self.transposed:
            wshape = (channels, out // self.group) + self.kernel
        else:
            wshape = (out, channels // self.group) + self.kernel
        self.weight = self.add_blob(wshape)
        self.bias = self.add_blob((out,)) if cp.bias_term else None

    def fill(self, generator):
        cp = self.lp.convolution_param
        fillers.fill_(self.weight, _filler(cp, "weight_filler"), generator, f"layer {self.name!r} weight")
        if self.bias is not None:
            fillers.fill_(self.bias, _filler(cp, "bias_filler"), generator, f"layer {self.name!r} bias")


@register("Convolution")
class Convolution(_ConvBase):
    #: negative slope of a ReLU that ``engine.fold`` merged into this layer (None: no ReLU)
    fused_relu: float | None = None

    def forward(self, *bottoms):
        outs = tuple([F.conv2d(x, self.weight, self.bias, self.stride, self.pad, self.dilation, self.group)
                      for x in bottoms])
        if self.fused_relu is None:
            return outs
        if self.fused_relu:
            return tuple([F.leaky_relu(y, self.fused_relu) for y in outs])
        return tuple([F.relu(y) for y in outs])


@register("Deconvolution")
class Deconvolution(_ConvBase):
    transposed = True

    def forward(self, *bottoms):
        return tuple([F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.pad, 0, self.group,
                                         self.dilation) for x in bottoms])
