"""Standard loss layers: SoftmaxWithLoss, SmoothL1Loss (the SSD fork's, Fast R-CNN style) and
EuclideanLoss. Each returns a 0-axis loss as its first top; the Net applies ``loss_weight``."""
from __future__ import annotations

import math

import numpy as np
import torch

from ...caffe.schema import pb
from .base import Layer, register

_LOG_FLT_MIN = float(np.log(np.finfo(np.float32).tiny))


def clamped_log_prob(logp: torch.Tensor) -> torch.Tensor:
    """log(max(p, FLT_MIN)) as Caffe's softmax losses take it: the clamp changes the value only,
    the gradient stays that of log p (Caffe's backward is p - onehot whatever the clamp did)."""
    return logp + (logp.clamp_min(_LOG_FLT_MIN) - logp).detach()
_MODE = pb.LossParameter


def normalization_mode(loss_param) -> int:
    """LossParameter's mode; the deprecated ``normalize`` alone means VALID (true) or BATCH_SIZE."""
    if not loss_param.HasField("normalization") and loss_param.HasField("normalize"):
        return _MODE.VALID if loss_param.normalize else _MODE.BATCH_SIZE
    return loss_param.normalization


@register("SoftmaxWithLoss")
class SoftmaxWithLoss(Layer):
    """loss = -sum log(max(p_label, FLT_MIN)) / normalizer over the positions whose label is not
    ``ignore_label``; FULL: outer*inner, VALID: counted positions, BATCH_SIZE: outer, NONE: 1.
    The gradient is Caffe's (p - onehot) / normalizer, the FLT_MIN clamp affecting the value only."""

    is_loss = True

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        ndim = len(bottom_shapes[0])
        axis = lp.softmax_param.axis
        if not -ndim <= axis < ndim:
            raise self.error(f"axis {axis} out of range for a {ndim}-D bottom")
        self.axis = axis % ndim
        lp_ = lp.loss_param
        self.ignore = int(lp_.ignore_label) if lp_.HasField("ignore_label") else None
        self.mode = normalization_mode(lp_)
        if len(bottom_shapes) != 2:
            raise self.error("needs two bottoms (scores, labels)")

    def forward(self, scores, labels):
        outer = math.prod(scores.shape[:self.axis])
        inner = math.prod(scores.shape[self.axis + 1:])
        c = scores.shape[self.axis]
        if labels.numel() != outer * inner:
            raise self.error(f"{labels.numel()} labels for {outer * inner} predictions (outer {outer} x inner {inner})")
        logp = torch.log_softmax(scores, dim=self.axis)
        logp = logp.reshape(outer, c, inner).transpose(1, 2).reshape(-1, c)
        lab = labels.reshape(-1).long()
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore is None else lab != self.ignore
        if bool(((lab[valid] < 0) | (lab[valid] >= c)).any()):
            raise self.error(f"label outside [0, {c})")
        picked = logp.gather(1, torch.where(valid, lab, 0)[:, None])[:, 0]
        picked = clamped_log_prob(picked)
        loss = -(picked * valid).sum()
        if self.mode == _MODE.FULL:
            z = float(outer * inner)
        elif self.mode == _MODE.VALID:
            z = float(valid.sum()) if self.ignore is not None else float(outer * inner)
        elif self.mode == _MODE.BATCH_SIZE:
            z = float(outer)
        else:
            z = 1.0
        loss = loss / max(z, 1.0)
        if len(self.lp.top) > 1:
            return loss, torch.softmax(scores, dim=self.axis)
        return (loss,)


@register("SmoothL1Loss")
class SmoothL1Loss(Layer):
    """sum over elements of 0.5 d^2 (|d| < 1) or |d| - 0.5, d = (pred - target) [* weights], divided
    by the batch size (the first axis)."""

    is_loss = True

    def forward(self, pred, target, *weights):
        d = pred - target
        if weights:
            d = d * weights[0]
        a = d.abs()
        per = torch.where(a < 1, 0.5 * d * d, a - 0.5)
        return (per.sum() / pred.shape[0],)


@register("EuclideanLoss")
class EuclideanLoss(Layer):
    """sum (a - b)^2 / (2 N)."""

    is_loss = True

    def forward(self, a, b):
        d = a - b
        return ((d * d).sum() / a.shape[0] / 2.0,)
