"""Caffe's weight fillers (``filler.hpp``), drawn from a ``torch.Generator`` so that one seed gives
one set of weights on any device.

Fan sizes follow Caffe: fan_in = count / shape[0], fan_out = count / shape[1] (count for a blob
with fewer than two axes); xavier draws U(-sqrt(3/n), sqrt(3/n)) and msra N(0, sqrt(2/n)) with
n = fan_in, fan_out or their average (``variance_norm``).
"""
from __future__ import annotations

import math

import torch

from ..caffe.schema import pb
from ..errors import ScratchDetError

_NORM = pb.FillerParameter


def fan_in_out(shape) -> tuple[int, int]:
    count = math.prod(shape) if shape else 1
    num = shape[0] if len(shape) >= 1 else 1
    fan_in = count // num if num else 0
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _n(fp, shape, where: str) -> float:
    fan_in, fan_out = fan_in_out(shape)
    if fp.variance_norm == _NORM.AVERAGE:
        n = (fan_in + fan_out) / 2.0
    elif fp.variance_norm == _NORM.FAN_OUT:
        n = float(fan_out)
    else:
        n = float(fan_in)
    if n <= 0:
        raise ScratchDetError(f"{where}: {fp.type} filler on a blob of shape {list(shape)} has fan size 0")
    return n


def _uniform(shape, low, high, g):
    return torch.empty(shape, dtype=torch.float32).uniform_(float(low), float(high), generator=g)


def _gaussian(shape, mean, std, g):
    return torch.empty(shape, dtype=torch.float32).normal_(float(mean), float(std), generator=g)


def _bilinear(shape, where):
    # Caffe's upsampling kernel: f = ceil(k/2), c = (2f - 1 - f % 2) / (2f), value (1-|x/f-c|)(1-|y/f-c|)
    if len(shape) != 4 or shape[2] != shape[3]:
        raise ScratchDetError(f"{where}: bilinear filler needs a 4-D blob with square kernels, got {list(shape)}")
    k = shape[3]
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    axis = 1 - torch.abs(torch.arange(k, dtype=torch.float64) / f - c)
    kernel = (axis[:, None] * axis[None, :]).float()
    return kernel.expand(shape).clone()


def make(fp, shape, generator: torch.Generator, where: str = "filler") -> torch.Tensor:
    """Values for a blob of ``shape`` drawn as Caffe's filler ``fp`` (a ``FillerParameter``)."""
    shape = tuple(int(d) for d in shape)
    kind = fp.type
    if fp.sparse != -1 and kind != "gaussian":
        raise ScratchDetError(f"{where}: sparse is only supported by the gaussian filler, not {kind!r}")
    if kind == "constant":
        return torch.full(shape, float(fp.value), dtype=torch.float32)
    if kind == "uniform":
        return _uniform(shape, fp.min, fp.max, generator)
    if kind == "gaussian":
        values = _gaussian(shape, fp.mean, fp.std, generator)
        if fp.sparse >= 0:
            if not shape:
                raise ScratchDetError(f"{where}: sparse gaussian filler needs a blob with at least one axis")
            # each weight is kept with probability sparse / num_outputs (Caffe's bernoulli mask)
            keep = fp.sparse / shape[0]
            mask = torch.empty(shape, dtype=torch.float32).bernoulli_(keep, generator=generator)
            values = values * mask
        return values
    if kind == "positive_unitball":
        values = _uniform(shape, 0.0, 1.0, generator)
        num = shape[0] if shape else 1
        rows = values.reshape(num, -1)
        return (rows / rows.sum(dim=1, keepdim=True)).reshape(shape)
    if kind == "xavier":
        scale = math.sqrt(3.0 / _n(fp, shape, where))
        return _uniform(shape, -scale, scale, generator)
    if kind == "msra":
        std = math.sqrt(2.0 / _n(fp, shape, where))
        return _gaussian(shape, 0.0, std, generator)
    if kind == "bilinear":
        return _bilinear(shape, where)
    raise ScratchDetError(f"{where}: unknown filler type {kind!r}")


def constant(value: float) -> "pb.FillerParameter":
    return pb.FillerParameter(type="constant", value=value)


@torch.no_grad()
def fill_(tensor: torch.Tensor, fp, generator: torch.Generator, where: str = "filler") -> torch.Tensor:
    """Fill ``tensor`` in place (values drawn on the CPU, then copied to its device)."""
    tensor.copy_(make(fp, tuple(tensor.shape), generator, where).to(tensor.device))
    return tensor
