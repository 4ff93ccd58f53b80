"""Caffe's SGD: the update rule against values computed by hand here, lr policies against their
formulas, multistep state across a resume, solver checks."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from scratchdet.caffe import io
from scratchdet.caffe.schema import pb
from scratchdet.engine.solver import SGD, LearningRate, check_solver
from scratchdet.errors import ScratchDetError


def solver(text):
    return io.parse_text(text, pb.SolverParameter)


def param(values, lr_mult=1.0, decay_mult=1.0, learnable=True):
    t = torch.tensor(values, dtype=torch.float32)
    if learnable:
        t = torch.nn.Parameter(t)
    return SimpleNamespace(tensor=t, lr_mult=lr_mult, decay_mult=decay_mult, learnable=learnable,
                           layer="l", index=0)


def test_update_rule_three_steps_multistep_momentum_decay_lr_mult_iter_size():
    sp = solver('base_lr: 0.1 lr_policy: "multistep" stepvalue: 2 gamma: 0.5 momentum: 0.9 '
                'weight_decay: 0.01 iter_size: 2 max_iter: 3')
    w = param([1.0, -2.0])                                   # lr_mult 1, decay_mult 1
    b = param([0.5], lr_mult=2.0, decay_mult=0.0)            # biases as SSD sets them
    stats = param([3.0], learnable=False)                    # a BatchNorm statistic: never updated
    sgd, lr = SGD([w, b, stats], sp), LearningRate(sp)
    # accumulated diffs of two forward/backward passes per iteration (iter_size 2)
    grads = [([0.2, 0.4], [1.0]), ([-0.6, 0.2], [0.0]), ([0.0, 1.0], [-2.0])]
    messages = []
    for it, (gw, gb) in enumerate(grads):
        w.tensor.grad = torch.tensor(gw)
        b.tensor.grad = torch.tensor(gb)
        rate = lr.rate(it, log=messages.append)
        sgd.apply_update(rate)
    # by hand: lr 0.1, 0.1, 0.05 (stepvalue 2, gamma 0.5)
    # w: d = g/2 + 0.01*w ; v = 0.9 v + lr*d ; w -= v
    # it0: d=[0.1+0.01, 0.2-0.02]=[0.11, 0.18]; v=[0.011, 0.018]; w=[0.989, -2.018]
    # it1: d=[-0.3+0.00989, 0.1-0.02018]=[-0.29011, 0.07982]; v=[0.0099-0.029011, 0.0162+0.007982]
    #      = [-0.019111, 0.024182]; w=[1.008111, -2.042182]
    # it2: d=[0+0.01008111, 0.5-0.02042182]=[0.01008111, 0.47957818]; lr=0.05
    #      v=[-0.0171999+0.000504056, 0.0217638+0.023978909]=[-0.016695844, 0.045742709]
    #      w=[1.024806844, -2.087924709]
    np.testing.assert_allclose(w.tensor.detach().numpy(), [1.024806844, -2.087924709], rtol=1e-6)
    # b: lr_mult 2, no decay: it0 d=0.5 v=0.1 b=0.4; it1 d=0 v=0.09 b=0.31; it2 d=-1, v=0.081-0.1=-0.019 b=0.329
    np.testing.assert_allclose(b.tensor.detach().numpy(), [0.329], rtol=1e-6)
    assert stats.tensor.item() == 3.0
    np.testing.assert_allclose(sgd.history[0].numpy(), [-0.016695844, 0.045742709], rtol=1e-5)
    assert messages == ["MultiStep Status: Iteration 2, step = 1"]


def test_l1_regularization_and_gradient_clipping():
    sp = solver('base_lr: 1 lr_policy: "fixed" weight_decay: 0.1 regularization_type: "L1" clip_gradients: 1')
    w = param([2.0, -3.0])
    sgd = SGD([w], sp)
    w.tensor.grad = torch.tensor([3.0, 4.0])               # norm 5 -> scaled by 0.2 to [0.6, 0.8]
    info = sgd.apply_update(1.0)
    assert info.grad_norm == pytest.approx(5.0)
    assert info.clip_scale == pytest.approx(0.2)
    assert info.messages == ["Gradient clipping: scaling down gradients (L2 norm 5 > 1) by scale factor 0.2"]
    # d = [0.6 + 0.1*sign(2), 0.8 + 0.1*sign(-3)] = [0.7, 0.7]; momentum 0: w -= d
    np.testing.assert_allclose(w.tensor.detach().numpy(), [1.3, -3.7], rtol=1e-6)


def test_zero_diffs_clears_accumulation():
    sp = solver('base_lr: 1 lr_policy: "fixed"')
    w = param([1.0])
    sgd = SGD([w], sp)
    w.tensor.grad = torch.tensor([5.0])
    sgd.zero_diffs()
    sgd.apply_update(1.0)
    assert w.tensor.item() == 1.0


@pytest.mark.parametrize("text,formula", [
    ('lr_policy: "fixed"', lambda it: 0.01),
    ('lr_policy: "step" gamma: 0.1 stepsize: 7', lambda it: 0.01 * 0.1 ** (it // 7)),
    ('lr_policy: "exp" gamma: 0.99', lambda it: 0.01 * 0.99 ** it),
    ('lr_policy: "inv" gamma: 0.0001 power: 0.75', lambda it: 0.01 * (1 + 0.0001 * it) ** -0.75),
    ('lr_policy: "poly" power: 2 max_iter: 20', lambda it: 0.01 * (1 - it / 20) ** 2),
    ('lr_policy: "sigmoid" gamma: -0.5 stepsize: 10', lambda it: 0.01 / (1 + math.exp(0.5 * (it - 10)))),
    ('lr_policy: "multistep" gamma: 0.1 stepvalue: 5 stepvalue: 12',
     lambda it: 0.01 * (1 if it < 5 else 0.1 if it < 12 else 0.01)),
])
def test_lr_policies_match_formulas(text, formula):
    lr = LearningRate(solver("base_lr: 0.01 " + text))
    for it in range(20):
        assert lr.rate(it) == pytest.approx(formula(it), rel=1e-6), it


def test_multistep_current_step_survives_resume():
    sp = solver('base_lr: 1 lr_policy: "multistep" gamma: 0.1 stepvalue: 3 stepvalue: 5')
    full = LearningRate(sp)
    rates = [full.rate(it) for it in range(8)]
    first = LearningRate(sp)
    for it in range(4):
        first.rate(it)
    resumed = LearningRate(sp)
    resumed.current_step = first.current_step                # what the solverstate carries
    assert [resumed.rate(it) for it in range(4, 8)] == rates[4:]
    # Caffe advances one step per call: without the saved step a restart at 6 lags behind
    fresh = LearningRate(sp)
    assert fresh.rate(6) == pytest.approx(0.1) and rates[6] == pytest.approx(0.01)


def test_plateau_steps_after_window_without_improvement():
    lr = LearningRate(solver('base_lr: 1 lr_policy: "plateau" gamma: 0.5 plateau_winsize: 3 plateau_winsize: 2'))
    losses = [5, 4, 4, 4, 4, 4, 4, 4]
    rates = [lr.rate(it, losses[it]) for it in range(8)]
    # best loss at it 1; step at it 4 (1+3); next window from 4: step at 6
    assert rates == [1, 1, 1, 1, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("text,match", [
    ('base_lr: 0.1 lr_policy: "warmup"', "unknown lr_policy"),
    ('base_lr: 0.1', "lr_policy is not set"),
    ('base_lr: 0.1 lr_policy: "fixed" type: "Adam"', "Adam"),
    ('base_lr: 0.1 lr_policy: "fixed" regularization_type: "L3"', "regularization_type"),
    ('base_lr: 0.1 lr_policy: "fixed" snapshot: 10', "snapshot_prefix"),
    ('base_lr: 0.1 lr_policy: "multistep" stepvalue: 5 stepvalue: 3', "increasing"),
])
def test_bad_solver_settings(text, match):
    with pytest.raises(ScratchDetError, match=match):
        check_solver(solver(text))
