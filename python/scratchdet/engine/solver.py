"""Caffe's SGD solver: learning-rate policies, the update rule, and the solver state.

The update is ``SGDSolver::ApplyUpdate`` of the SSD fork (caffe-ssd-spec §5.2), step for step:
clip by the global L2 norm, divide by ``iter_size``, add ``weight_decay * decay_mult`` times the
weight (L2) or its sign (L1), ``history = momentum * history + lr * lr_mult * diff``,
``weight -= history``. Caffe keeps a history blob for every parameter blob of the net, BatchNorm's
statistics included (they have lr_mult 0 and are never changed by the solver); so do we, so our
``.solverstate`` files have Caffe's blob count and order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from ..caffe import glog
from ..caffe.schema import pb
from ..errors import ScratchDetError

LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid", "plateau")
# the deprecated solver_type enum, by value, as Caffe's UpgradeSolverType names it
_SOLVER_TYPE_NAMES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def f32(v: float) -> float:
    """``v`` rounded to float32, as Caffe's ``Dtype`` arithmetic holds it."""
    return float(np.float32(v))


def solver_type(sp) -> str:
    if sp.HasField("solver_type"):
        if sp.HasField("type") and sp.type != _SOLVER_TYPE_NAMES.get(sp.solver_type):
            raise ScratchDetError("solver: 'solver_type' (deprecated) and 'type' are both given and differ")
        return _SOLVER_TYPE_NAMES.get(sp.solver_type, str(sp.solver_type))
    return sp.type


def check_solver(sp, source: str = "solver") -> None:
    """Reject what Caffe would reject at start-up (or what this engine does not implement), with
    one clear line naming the field."""
    kind = solver_type(sp)
    if kind != "SGD":
        raise ScratchDetError(f"{source}: solver type {kind!r} is not supported by the torch engine (only SGD)")
    if not sp.HasField("lr_policy"):
        raise ScratchDetError(f"{source}: lr_policy is not set (one of {', '.join(LR_POLICIES)})")
    if sp.lr_policy not in LR_POLICIES:
        raise ScratchDetError(f"{source}: unknown lr_policy {sp.lr_policy!r} (one of {', '.join(LR_POLICIES)})")
    if sp.regularization_type not in ("L1", "L2"):
        raise ScratchDetError(f"{source}: unknown regularization_type {sp.regularization_type!r} (L1 or L2)")
    if sp.lr_policy == "step" and sp.stepsize <= 0:
        raise ScratchDetError(f"{source}: lr_policy 'step' needs stepsize > 0")
    if sp.lr_policy == "multistep":
        values = list(sp.stepvalue)
        if any(b <= a for a, b in zip(values, values[1:])):
            raise ScratchDetError(f"{source}: stepvalue must be increasing, got {values}")
    if sp.lr_policy == "poly" and sp.max_iter <= 0:
        raise ScratchDetError(f"{source}: lr_policy 'poly' needs max_iter > 0")
    if sp.iter_size < 1:
        raise ScratchDetError(f"{source}: iter_size must be >= 1, got {sp.iter_size}")
    if sp.average_loss < 1:
        raise ScratchDetError(f"{source}: average_loss must be >= 1, got {sp.average_loss}")
    if sp.snapshot > 0 and not sp.snapshot_prefix:
        raise ScratchDetError(f"{source}: snapshot > 0 needs snapshot_prefix")
    if sp.snapshot_format != pb.SolverParameter.BINARYPROTO:
        raise ScratchDetError(f"{source}: snapshot_format HDF5 is not supported (use BINARYPROTO)")


# -- learning rate ----------------------------------------------------------------------------------

class LearningRate:
    """``SGDSolver::GetLearningRate`` with the state it carries across iterations and snapshots:
    ``current_step`` (multistep, plateau), ``minimum_loss`` and ``iter_last_event`` (plateau)."""

    def __init__(self, sp):
        self.sp = sp
        self.current_step = 0
        self.minimum_loss = f32(1e38)
        self.iter_last_event = 0

    def rate(self, it: int, smoothed_loss: float | None = None, log: Callable[[str], None] | None = None) -> float:
        """The learning rate at iteration ``it`` (the index before the increment), as the float32
        Caffe uses. Multistep/plateau advance ``current_step`` at most once per call, as Caffe does,
        and report it through ``log``."""
        sp = self.sp
        base, gamma, power = float(sp.base_lr), float(sp.gamma), float(sp.power)
        policy = sp.lr_policy
        if policy == "fixed":
            rate = base
        elif policy == "step":
            self.current_step = it // sp.stepsize
            rate = base * gamma ** self.current_step
        elif policy == "exp":
            rate = base * gamma ** it
        elif policy == "inv":
            rate = base * (1.0 + gamma * it) ** (-power)
        elif policy == "multistep":
            if self.current_step < len(sp.stepvalue) and it >= sp.stepvalue[self.current_step]:
                self.current_step += 1
                if log:
                    log(glog.multistep_message(it, self.current_step))
            rate = base * gamma ** self.current_step
        elif policy == "poly":
            rate = base * (1.0 - it / float(sp.max_iter)) ** power
        elif policy == "sigmoid":
            rate = base * (1.0 / (1.0 + math.exp(-gamma * (it - sp.stepsize))))
        elif policy == "plateau":
            if smoothed_loss is not None and smoothed_loss < self.minimum_loss:
                self.minimum_loss = f32(smoothed_loss)
                self.iter_last_event = it
            if self.current_step < len(sp.plateau_winsize):
                if it >= self.iter_last_event + sp.plateau_winsize[self.current_step]:
                    self.current_step += 1
                    self.iter_last_event = it
                    if log:
                        log(glog.plateau_message(it, self.current_step))
            rate = base * gamma ** self.current_step
        else:
            raise ScratchDetError(f"solver: unknown lr_policy {policy!r}")
        return f32(rate)


# -- the update ------------------------------------------------------------------------------------

@dataclass
class UpdateInfo:
    grad_norm: float | None     # L2 norm of the accumulated learnable diffs, before clipping
    clip_scale: float | None    # factor the diffs were scaled by, when clipping happened
    messages: list[str] = field(default_factory=list)


class SGD:
    """History and update for ``params`` (``Net.params()``: objects with ``tensor``, ``lr_mult``,
    ``decay_mult``, ``learnable``), configured by a ``SolverParameter``."""

    def __init__(self, params: Sequence, sp):
        self.params = list(params)
        self.momentum = f32(sp.momentum)
        self.weight_decay = f32(sp.weight_decay)
        self.regularization = sp.regularization_type
        self.iter_size = int(sp.iter_size)
        self.clip = float(sp.clip_gradients)
        self.history = [torch.zeros_like(p.tensor, memory_format=torch.contiguous_format).detach() for p in self.params]

    # diffs of the parameters the solver updates (Caffe's learnable_params with lr_mult possibly 0)
    def _updated(self):
        for p, h in zip(self.params, self.history):
            if p.learnable:
                yield p, h

    @staticmethod
    def diff(p) -> torch.Tensor:
        t = p.tensor
        if t.grad is None:
            t.grad = torch.zeros_like(t)
        return t.grad

    def zero_diffs(self) -> None:
        """Caffe's ClearParamDiffs."""
        for p, _ in self._updated():
            if p.tensor.grad is not None:
                p.tensor.grad.zero_()

    @torch.no_grad()
    def grad_norm(self) -> float:
        """L2 norm of all learnable diffs (one device sync)."""
        norms = [p.tensor.grad.float().norm() for p, _ in self._updated() if p.tensor.grad is not None]
        if not norms:
            return 0.0
        return float(torch.stack(norms).double().norm())

    @torch.no_grad()
    def apply_update(self, rate: float, norm: float | None = None) -> UpdateInfo:
        """ClipGradients, Normalize, Regularize, ComputeUpdateValue and Net::Update for every
        learnable blob, in Caffe's order. ``rate`` is GetLearningRate's value; ``norm`` the diffs'
        L2 norm when the caller has it (computed here only when clipping needs it)."""
        if norm is None and self.clip >= 0:
            norm = self.grad_norm()
        info = UpdateInfo(norm, None)
        if self.clip >= 0 and norm > self.clip:
            scale = self.clip / norm
            info.clip_scale = scale
            info.messages.append(glog.clip_message(norm, self.clip, scale))
            for p, _ in self._updated():
                self.diff(p).mul_(scale)
        # the same operations on every blob, in Caffe's order per blob, as a few multi-tensor
        # (foreach) calls per (decay, rate) group instead of five small kernels per blob
        normalization = f32(1.0 / self.iter_size)
        ds, ws, hs = [], [], []
        by_decay: dict[float, list[int]] = {}
        by_rate: dict[float, list[int]] = {}
        for k, (p, history) in enumerate(self._updated()):
            ds.append(self.diff(p))
            ws.append(p.tensor.data)
            hs.append(history)
            by_decay.setdefault(f32(self.weight_decay * f32(p.decay_mult)), []).append(k)
            by_rate.setdefault(f32(rate * f32(p.lr_mult)), []).append(k)
        if not ds:
            return info
        if self.iter_size > 1:
            torch._foreach_mul_(ds, normalization)
        for local_decay, idx in by_decay.items():
            if local_decay:
                others = [ws[k] for k in idx] if self.regularization == "L2" else torch._foreach_sign([ws[k] for k in idx])
                torch._foreach_add_([ds[k] for k in idx], others, alpha=local_decay)
        torch._foreach_mul_(hs, self.momentum)
        for local_rate, idx in by_rate.items():
            torch._foreach_add_([hs[k] for k in idx], [ds[k] for k in idx], alpha=local_rate)
        torch._foreach_sub_(ws, hs)
        return info

    # -- solver state ----------------------------------------------------------------------------
    def state_proto(self, it: int, learned_net: str, lr: LearningRate) -> "pb.SolverState":
        from ..caffe.blobs import array_to_blob
        state = pb.SolverState(iter=it, learned_net=learned_net, current_step=lr.current_step,
                               minimum_loss=lr.minimum_loss, iter_last_event=lr.iter_last_event)
        for h in self.history:
            state.history.append(array_to_blob(h.detach().cpu().numpy()))
        return state

    @torch.no_grad()
    def restore(self, state, lr: LearningRate, source: str = "solverstate") -> None:
        """Load history blobs (shape checked) and the lr state from a ``SolverState``."""
        from ..caffe.blobs import blob_to_array
        if len(state.history) != len(self.history):
            raise ScratchDetError(f"{source}: {len(state.history)} history blobs, the net has "
                                  f"{len(self.history)} parameter blobs (Caffe: incorrect length of history blobs)")
        for i, (blob, h) in enumerate(zip(state.history, self.history)):
            arr = blob_to_array(blob)
            if arr.size != h.numel():
                p = self.params[i]
                where = f"layer {getattr(p, 'layer', '?')!r} blob {getattr(p, 'index', i)}"
                raise ScratchDetError(f"{source}: history blob {i} ({where}) has {arr.size} values, "
                                      f"the net's blob has shape {tuple(h.shape)}")
            h.copy_(torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).reshape(h.shape))
        lr.current_step = int(state.current_step)
        lr.minimum_loss = f32(state.minimum_loss)
        lr.iter_last_event = int(state.iter_last_event)
