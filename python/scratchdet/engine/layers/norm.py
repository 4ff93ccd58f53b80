"""Normalisation and per-channel affine layers: BatchNorm, Scale, Bias, Normalize
(caffe-ssd-spec §6 and §2.7)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...caffe.netstate import TEST
from .. import fillers
from .base import Layer, register


def _axis(axis: int, ndim: int, layer: Layer) -> int:
    if not -ndim <= axis < ndim:
        raise layer.error(f"axis {axis} out of range for a {ndim}-D bottom")
    return axis % ndim


def _broadcast_shape(shape, axis: int, ndim: int) -> tuple[int, ...]:
    """``shape`` placed at ``axis`` of an ``ndim``-D blob, 1 elsewhere (for broadcasting)."""
    return (1,) * axis + tuple(shape) + (1,) * (ndim - axis - len(shape))


@register("BatchNorm")
class BatchNorm(Layer):
    """Caffe's BatchNorm: no affine part; blobs (mean*s, var*s, s), all with lr_mult 0.

    TRAIN (not global): normalise with the batch mean and biased variance, and update
    s = maf*s + 1, mean_sum = maf*mean_sum + mean, var_sum = maf*var_sum + m/(m-1)*var (m values
    per channel). Global stats (TEST by default): mean = mean_sum/s, var = var_sum/s, 0 when s == 0.
    """

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        bp = lp.batch_norm_param
        # Caffe's upgrade clears exactly three old-style ParamSpecs; anything else must keep lr_mult 0
        if len(lp.param) != 3:
            for spec in lp.param:
                if spec.lr_mult != 0:
                    raise self.error("cannot configure batch normalization statistics as layer parameters "
                                     f"(param lr_mult {spec.lr_mult:g}; it must be 0)")
        shape = bottom_shapes[0]
        self.channels = shape[1] if len(shape) > 1 else 1
        self.use_global_stats = bp.use_global_stats if bp.HasField("use_global_stats") else phase == TEST
        self.maf = float(bp.moving_average_fraction)
        self.eps = float(bp.eps)
        self.mean_sum = self.add_blob((self.channels,), learnable=False)
        self.var_sum = self.add_blob((self.channels,), learnable=False)
        self.factor = self.add_blob((1,), learnable=False)

    def forward(self, x):
        # torch's batch_norm computes exactly Caffe's normalisation ((x - mean) / sqrt(var + eps),
        # biased batch variance when training) with a fused kernel; Caffe's accumulators differ from
        # torch's running averages, so they are updated here
        shape = x.shape
        if x.dim() == 1:
            x = x.reshape(-1, 1)
        if self.use_global_stats:
            mean, var = self.global_stats()
            return (F.batch_norm(x, mean, var, training=False, eps=self.eps).reshape(shape),)
        m = x.numel() // self.channels
        if m == 1:      # torch refuses one value per channel; Caffe normalises it to 0 (variance 0)
            with torch.no_grad():
                self.factor.mul_(self.maf).add_(1.0)
                self.mean_sum.mul_(self.maf).add_(x.detach().reshape(-1))
                self.var_sum.mul_(self.maf)
            dims = [0] + list(range(2, x.dim()))
            view = (1, -1) + (1,) * (x.dim() - 2)
            return (((x - x.mean(dim=dims).reshape(view)) / (self.eps ** 0.5)).reshape(shape),)
        # with momentum 1 torch's "running" buffers receive this batch's mean and its unbiased
        # variance (m / (m - 1) times the biased one), which is what Caffe adds to its sums: one
        # pass over x instead of a separate var_mean
        return (self._train_forward(x).reshape(shape),)

    def global_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The statistics a global-stats pass normalises with: mean_sum / s and var_sum / s, zero
        when s == 0, in the blobs' precision as Caffe's Dtype arithmetic (1/s, then the products).
        The forward, the fused BatchNorm+Scale, the TEST-time fold and the ONNX export all use it."""
        s = self.factor[0]
        inv = torch.where(s == 0, torch.zeros_like(s), 1.0 / s)
        return self.mean_sum * inv, self.var_sum * inv

    def _train_forward(self, x, weight=None, bias=None):
        # the statistics' dtype (float32, float64 after .double()), not x's: under autocast x may be bf16
        mean = torch.zeros(self.channels, dtype=self.mean_sum.dtype, device=x.device)
        var = torch.zeros(self.channels, dtype=self.mean_sum.dtype, device=x.device)
        y = F.batch_norm(x, mean, var, weight, bias, training=True, momentum=1.0, eps=self.eps)
        with torch.no_grad():
            self.factor.mul_(self.maf).add_(1.0)
            self.mean_sum.mul_(self.maf).add_(mean)
            self.var_sum.mul_(self.maf).add_(var)
        return y

    def forward_with_scale(self, x, scale, bias):
        """This layer then an in-place per-channel Scale (``scale``, optional ``bias``) as one
        ``F.batch_norm``: the same three blobs, the output up to float rounding. None when the
        batch has one value per channel (the unfused path handles that case)."""
        if x.dim() < 2:
            return None
        if self.use_global_stats:
            mean, var = self.global_stats()
            return F.batch_norm(x, mean, var, scale, bias, training=False, eps=self.eps)
        if x.numel() // self.channels == 1:
            return None
        return self._train_forward(x, scale, bias)


class _AffineBase(Layer):
    """Scale and Bias share the parameter geometry: one bottom -> a learned blob of shape
    bottom.shape[axis : axis + num_axes]; two bottoms -> the second bottom is the operand."""

    kind = ""

    def _geometry(self, param):
        b0 = self.bottom_shapes[0]
        axis = _axis(param.axis, len(b0), self)
        if len(self.bottom_shapes) == 2:
            shape = tuple(self.bottom_shapes[1])
        elif len(self.bottom_shapes) == 1:
            if param.num_axes < -1:
                raise self.error(f"num_axes must be >= -1, got {param.num_axes}")
            end = len(b0) if param.num_axes == -1 else axis + param.num_axes
            if end > len(b0):
                raise self.error(f"axis {axis} + num_axes {param.num_axes} exceeds the bottom's {len(b0)} axes")
            shape = tuple(b0[axis:end])
        else:
            raise self.error("needs one or two bottoms")
        if tuple(b0[axis:axis + len(shape)]) != shape:
            raise self.error(f"operand shape {list(shape)} does not match bottom {list(b0)} at axis {axis}")
        return axis, shape

    def _operand(self, t, ndim):
        return t.reshape(_broadcast_shape(t.shape, self.axis, ndim))


@register("Scale")
class Scale(_AffineBase):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        sp = lp.scale_param
        self.axis, shape = self._geometry(sp)
        self.scale = self.add_blob(shape) if len(bottom_shapes) == 1 else None
        self.bias = self.add_blob(shape) if sp.bias_term else None

    def fill(self, generator):
        sp = self.lp.scale_param
        if self.scale is not None:
            fp = sp.filler if sp.HasField("filler") else fillers.constant(1.0)
            fillers.fill_(self.scale, fp, generator, f"layer {self.name!r} scale")
        if self.bias is not None:
            fp = sp.bias_filler if sp.HasField("bias_filler") else fillers.constant(0.0)
            fillers.fill_(self.bias, fp, generator, f"layer {self.name!r} bias")

    def forward(self, x, *operand):
        scale = operand[0] if operand else self.scale
        y = x * self._operand(scale, x.dim())
        if self.bias is not None:
            y = y + self._operand(self.bias, x.dim())
        return (y,)


@register("Bias")
class Bias(_AffineBase):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        self.axis, shape = self._geometry(lp.bias_param)
        self.bias = self.add_blob(shape) if len(bottom_shapes) == 1 else None

    def fill(self, generator):
        bp = self.lp.bias_param
        if self.bias is not None:
            fp = bp.filler if bp.HasField("filler") else fillers.constant(0.0)
            fillers.fill_(self.bias, fp, generator, f"layer {self.name!r} bias")

    def forward(self, x, *operand):
        bias = operand[0] if operand else self.bias
        return (x + self._operand(bias, x.dim()),)


@register("Normalize")
class Normalize(Layer):
    """SSD's L2 normalisation: y = x / sqrt(sum x^2 + eps) * scale, the sum over channels at each
    pixel (across_spatial false) or over the whole image; the scale is per channel or one value
    (a 0-axis blob, as the fork stores it)."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        np_ = lp.norm_param
        if len(bottom_shapes[0]) < 2:
            raise self.error("needs a bottom with at least 2 axes")
        self.across_spatial = np_.across_spatial
        self.channel_shared = np_.channel_shared
        self.eps = float(np_.eps)
        self.scale = self.add_blob(() if self.channel_shared else (bottom_shapes[0][1],))

    def fill(self, generator):
        np_ = self.lp.norm_param
        fp = np_.scale_filler if np_.HasField("scale_filler") else fillers.constant(1.0)
        fillers.fill_(self.scale, fp, generator, f"layer {self.name!r} scale")

    def forward(self, x):
        dims = list(range(1, x.dim())) if self.across_spatial else [1]
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + self.eps)
        scale = self.scale if self.channel_shared else self.scale.reshape(_broadcast_shape(self.scale.shape, 1, x.dim()))
        return (x / norm * scale,)
