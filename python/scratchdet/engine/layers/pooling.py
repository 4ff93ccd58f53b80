"""Pooling with Caffe's geometry (caffe-ssd-spec §6): the output size rounds up, and the last
window must start inside the image. Torch's ``ceil_mode`` pooling gives the same result where it
accepts the geometry (pad at most half the kernel, same output size); elsewhere the input is padded
explicitly to exactly the extent the windows cover and torch pools with no padding of its own:

- MAX pads with -inf (padding never wins);
- AVE pads with zeros and divides each window's sum by Caffe's divisor: the window clipped to
  [-pad, H + pad) (padded cells count, cells past the padded image do not).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ...caffe.schema import pb
from ...caffe.shapes import pool_geometry
from .base import Layer, register

MAX, AVE = pb.PoolingParameter.MAX, pb.PoolingParameter.AVE


def _window_sizes(size: int, kernel: int, stride: int, pad: int, out: int) -> np.ndarray:
    start = np.arange(out) * stride - pad
    end = np.minimum(start + kernel, size + pad)
    return end - start


def _torch_ceil_size(size: int, kernel: int, stride: int, pad: int) -> int:
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if (out - 1) * stride >= size + pad:
        out -= 1
    return out


class _Geometry:
    def __init__(self, pp, h: int, w: int):
        self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, self.oh, self.ow = pool_geometry(pp, h, w)
        # extent the windows cover, measured from the first padded row/column
        self.extent_h = (self.oh - 1) * self.sh + self.kh
        self.extent_w = (self.ow - 1) * self.sw + self.kw
        self.h, self.w = h, w
        self._divisor: dict[torch.device, torch.Tensor] = {}
        dh = _window_sizes(h, self.kh, self.sh, self.ph, self.oh)
        dw = _window_sizes(w, self.kw, self.sw, self.pw, self.ow)
        self._divisor_cpu = torch.from_numpy(np.outer(dh, dw).astype(np.float32))
        # torch's own ceil-mode pooling has the same output size, window clipping and AVE divisor
        # whenever it accepts the padding (at most half the kernel) and agrees on the size (it
        # drops a last window starting past the image even without padding; Caffe does not)
        self.native = (self.ph <= self.kh // 2 and self.pw <= self.kw // 2
                       and (self.oh, self.ow) == (_torch_ceil_size(h, self.kh, self.sh, self.ph),
                                                  _torch_ceil_size(w, self.kw, self.sw, self.pw)))

    def pad_and_crop(self, x: torch.Tensor, value: float) -> torch.Tensor:
        right = self.extent_w - self.w - self.pw
        bottom = self.extent_h - self.h - self.ph
        if right < 0:
            x = x[..., :, : self.w + right]
            right = 0
        if bottom < 0:
            x = x[..., : self.h + bottom, :]
            bottom = 0
        if self.ph or self.pw or right or bottom:
            x = F.pad(x, (self.pw, right, self.ph, bottom), value=value)
        return x

    def divisor(self, device) -> torch.Tensor:
        d = self._divisor.get(device)
        if d is None:
            d = self._divisor[device] = self._divisor_cpu.to(device)
        return d


@register("Pooling")
class Pooling(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        pp = lp.pooling_param
        self.method = pp.pool
        if self.method not in (MAX, AVE):
            raise self.error("only MAX and AVE pooling are supported")
        if len(bottom_shapes[0]) != 4:
            raise self.error(f"needs a 4-D bottom, got {list(bottom_shapes[0])}")
        if pp.global_pooling:
            if pp.pad or pp.pad_h or pp.pad_w or pp.stride != 1 or pp.HasField("stride_h"):
                raise self.error("global pooling needs pad 0 and stride 1")
        else:
            kh, kw, _, _, ph, pw, _, _ = pool_geometry(pp, *bottom_shapes[0][2:], self.where)
            if ph >= kh or pw >= kw:
                raise self.error(f"pad ({ph}, {pw}) must be smaller than the kernel ({kh}, {kw})")
        self._geometry: dict[tuple[int, int], _Geometry] = {}
        self.geometry(*bottom_shapes[0][2:])      # forward reads no protobuf (torch.compile traces it)

    def geometry(self, h: int, w: int) -> _Geometry:
        g = self._geometry.get((h, w))
        if g is None:
            g = self._geometry[(h, w)] = _Geometry(self.lp.pooling_param, h, w)
        return g

    def forward(self, x):
        g = self.geometry(x.shape[2], x.shape[3])
        if g.native:
            if self.method == MAX:
                return (F.max_pool2d(x, (g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw), ceil_mode=True),)
            return (F.avg_pool2d(x, (g.kh, g.kw), (g.sh, g.sw), (g.ph, g.pw), ceil_mode=True, count_include_pad=True),)
        if self.method == MAX:
            padded = g.pad_and_crop(x, -math.inf)
            return (F.max_pool2d(padded, (g.kh, g.kw), (g.sh, g.sw)),)
        padded = g.pad_and_crop(x, 0.0)
        sums = F.avg_pool2d(padded, (g.kh, g.kw), (g.sh, g.sw), divisor_override=1)
        return (sums / g.divisor(x.device),)
