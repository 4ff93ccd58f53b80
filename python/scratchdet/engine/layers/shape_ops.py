"""Layers that route, combine and reshape blobs without parameters: Input, Split, Silence, Concat,
Slice, Eltwise, Permute, Flatten, Reshape (caffe-ssd-spec §2.8 and §6). Shapes are recomputed from
the actual bottoms at every forward, as Caffe's Reshape does."""
from __future__ import annotations

import math

import torch

from ...caffe.schema import pb
from .base import Layer, register

PROD, SUM, MAX = pb.EltwiseParameter.PROD, pb.EltwiseParameter.SUM, pb.EltwiseParameter.MAX


def _axis(axis: int, ndim: int, layer: Layer) -> int:
    if not -ndim <= axis < ndim:
        raise layer.error(f"axis {axis} out of range for a {ndim}-D bottom")
    return axis % ndim


@register("Input")
class Input(Layer):
    """The net's inputs; the Net feeds the values given to ``forward`` (zeros of the declared shape
    when none is given)."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
        if len(shapes) not in (1, len(lp.top)):
            raise self.error(f"{len(shapes)} input shapes for {len(lp.top)} tops (give one, or one per top)")
        self.shapes = shapes * len(lp.top) if len(shapes) == 1 else shapes

    def forward(self):
        return tuple(torch.zeros(s, dtype=torch.float32) for s in self.shapes)


@register("Split")
class Split(Layer):
    def forward(self, x):
        return (x,) * len(self.lp.top)


@register("Silence")
class Silence(Layer):
    def forward(self, *bottoms):
        return ()


@register("Concat")
class Concat(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        cp = lp.concat_param
        self.axis = cp.concat_dim if cp.HasField("concat_dim") else _axis(cp.axis, len(bottom_shapes[0]), self)

    def forward(self, *bottoms):
        if len(bottoms) == 1:
            return (bottoms[0],)
        return (torch.cat(bottoms, dim=self.axis),)


@register("Slice")
class Slice(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        sp = lp.slice_param
        self.axis = sp.slice_dim if sp.HasField("slice_dim") else _axis(sp.axis, len(bottom_shapes[0]), self)
        self.points = list(sp.slice_point)
        if self.points and len(self.points) != len(lp.top) - 1:
            raise self.error(f"{len(self.points)} slice points for {len(lp.top)} tops (need tops - 1)")

    def forward(self, x):
        size = x.shape[self.axis]
        n = len(self.lp.top)
        if self.points:
            bounds = [0] + self.points + [size]
        else:
            if size % n:
                raise self.error(f"cannot slice {size} evenly into {n} tops")
            bounds = [i * size // n for i in range(n + 1)]
        if any(b <= a for a, b in zip(bounds, bounds[1:])) or bounds[-2] >= size:
            raise self.error(f"slice points {self.points} do not split an axis of size {size}")
        return tuple(x.narrow(self.axis, a, b - a) for a, b in zip(bounds, bounds[1:]))


@register("Eltwise")
class Eltwise(Layer):
    """SUM (y = sum coeff_i x_i), PROD, or MAX (ties go to the earlier bottom, as in Caffe)."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        ep = lp.eltwise_param
        self.op = ep.operation
        if len(bottom_shapes) < 2:
            raise self.error("needs at least two bottoms")
        if ep.coeff and self.op != SUM:
            raise self.error("coeff is only supported for the SUM operation")
        if ep.coeff and len(ep.coeff) != len(bottom_shapes):
            raise self.error(f"{len(ep.coeff)} coeffs for {len(bottom_shapes)} bottoms (need one per bottom)")
        self.coeff = [float(c) for c in ep.coeff] or [1.0] * len(bottom_shapes)

    def forward(self, *bottoms):
        first = bottoms[0]
        for b in bottoms[1:]:
            if b.shape != first.shape:
                raise self.error(f"bottoms differ in shape: {list(first.shape)} and {list(b.shape)}")
        if self.op == PROD:
            y = first
            for b in bottoms[1:]:
                y = y * b
        elif self.op == MAX:
            y = first
            for b in bottoms[1:]:
                y = torch.where(b > y, b, y)
        else:
            y = first * self.coeff[0] if self.coeff[0] != 1.0 else first
            for c, b in zip(self.coeff[1:], bottoms[1:]):
                y = y + (b * c if c != 1.0 else b)
        return (y,)


@register("Permute")
class Permute(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        ndim = len(bottom_shapes[0])
        order = []
        for o in lp.permute_param.order:
            if o >= ndim:
                raise self.error(f"order {o} must be less than the bottom's {ndim} axes")
            if o in order:
                raise self.error(f"order {o} appears twice")
            order.append(int(o))
        self.order = order + [i for i in range(ndim) if i not in order]

    def forward(self, x):
        return (x.permute(self.order).contiguous(),)


@register("Flatten")
class Flatten(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        ndim = len(bottom_shapes[0])
        fp = lp.flatten_param
        self.start = _axis(fp.axis, ndim, self)
        self.end = _axis(fp.end_axis, ndim, self)
        if self.end < self.start:
            raise self.error(f"end_axis {fp.end_axis} comes before axis {fp.axis}")

    def forward(self, x):
        return (torch.flatten(x, self.start, self.end),)


@register("Reshape")
class Reshape(Layer):
    """``shape.dim``: 0 copies the bottom's dim at that place, -1 (at most once) is inferred;
    ``axis``/``num_axes`` choose the bottom axes replaced."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        rp = lp.reshape_param
        self.dims = [int(d) for d in rp.shape.dim]
        if self.dims.count(-1) > 1:
            raise self.error("new shape contains multiple -1 dims")
        if any(d < -1 for d in self.dims):
            raise self.error(f"invalid dim in shape {self.dims}")
        if rp.num_axes < -1:
            raise self.error(f"num_axes must be >= -1, got {rp.num_axes}")
        self.axis, self.num_axes = int(rp.axis), int(rp.num_axes)
        self.top_shape(tuple(bottom_shapes[0]))     # validate at set-up

    def top_shape(self, shape: tuple) -> tuple:
        ndim = len(shape)
        start = self.axis if self.axis >= 0 else ndim + self.axis + 1
        if not 0 <= start <= ndim:
            raise self.error(f"axis {self.axis} out of range for a {ndim}-D bottom")
        end = ndim if self.num_axes == -1 else start + self.num_axes
        if end > ndim:
            raise self.error(f"axis {self.axis} + num_axes {self.num_axes} exceeds the bottom's {ndim} axes")
        out = list(shape[:start]) + self.dims + list(shape[end:])
        for i, d in enumerate(self.dims):
            if d == 0:
                if start + i >= ndim:
                    raise self.error(f"dim {i} copies bottom axis {start + i}, which does not exist")
                out[start + i] = shape[start + i]
        count = math.prod(shape)
        if -1 in self.dims:
            at = start + self.dims.index(-1)
            known = math.prod([d for j, d in enumerate(out) if j != at])
            if known == 0 or count % known:
                raise self.error(f"cannot reshape {list(shape)} to {self.dims}")
            out[at] = count // known
        if math.prod(out) != count:
            raise self.error(f"reshaping {list(shape)} to {out} changes the count")
        return tuple(out)

    def forward(self, x):
        return (x.reshape(self.top_shape(tuple(x.shape))),)
