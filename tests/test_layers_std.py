"""The standard Caffe layers against numpy re-computations of the spec's formulas
(caffe-ssd-spec §2.7, §2.8, §6): BatchNorm (train update of the three blobs with a scale factor
!= 1, global statistics, s == 0), pooling border rules, convolution with dilation/group,
Normalize, Eltwise, Permute/Flatten/Reshape, Scale/Bias, Softmax, InnerProduct, Dropout, losses."""
import math

import numpy as np
import pytest
import torch

from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine.net import Net
from scratchdet.errors import ScratchDetError

RNG = np.random.default_rng(1234)


def one_layer(layer_text: str, inputs: dict, phase=TEST, seed=0) -> Net:
    head = "".join(f'input: "{name}" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                   for name, shape in inputs.items())
    return Net(parse_text(head + layer_text, pb.NetParameter), phase, seed=seed)


def run(net: Net, **arrays):
    feed = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}
    return net.forward(feed)


def randn(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


# -- BatchNorm -----------------------------------------------------------------------------------------

BN = 'layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" %s }'


def _set_bn(net, mean_sum, var_sum, s):
    bn = net.layer("bn")
    with torch.no_grad():
        bn.blobs()[0].copy_(torch.from_numpy(mean_sum))
        bn.blobs()[1].copy_(torch.from_numpy(var_sum))
        bn.blobs()[2].fill_(s)
    return bn


def test_batchnorm_train_updates_all_three_blobs_with_scale_factor():
    n, c, h, w = 3, 4, 5, 6
    maf, eps = 0.9, 1e-3
    net = one_layer(BN % f"batch_norm_param {{ moving_average_fraction: {maf} eps: {eps} }}", {"x": (n, c, h, w)}, TRAIN)
    mean_sum, var_sum, s = randn(c), np.abs(randn(c)) + 0.5, 2.5
    bn = _set_bn(net, mean_sum, var_sum, s)
    x = randn(n, c, h, w) * 3 + 1
    y = run(net, x=x)["x"].detach().numpy()

    mu = x.mean(axis=(0, 2, 3))
    var = ((x - mu[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))        # biased, for normalising
    expect = (x - mu[None, :, None, None]) / np.sqrt(var[None, :, None, None] + eps)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-5)
    m = n * h * w
    got = [b.numpy() for b in bn.blobs()]
    np.testing.assert_allclose(got[2], [s * maf + 1], rtol=1e-6)
    np.testing.assert_allclose(got[0], mean_sum * maf + mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], var_sum * maf + m / (m - 1) * var, rtol=1e-5)   # unbiased accumulator


def test_batchnorm_statistics_follow_the_net_to_another_device_or_dtype():
    # Module.to replaces buffers with new tensors; the layer's names for its statistics must follow,
    # or a net moved to a GPU updates (and reads) statistics left behind on the CPU
    n, c = 4, 3
    net = one_layer(BN % "", {"x": (n, c, 2, 2)}, TRAIN).to(torch.float64)
    bn = net.layer("bn")
    assert all(b.dtype == torch.float64 for b in bn.blobs())
    assert bn.mean_sum is bn.blobs()[0] and bn.var_sum is bn.blobs()[1] and bn.factor is bn.blobs()[2]
    x = torch.from_numpy(randn(n, c, 2, 2)).double()
    net.forward({"x": x})
    np.testing.assert_allclose(bn.blobs()[0].numpy(), x.mean(dim=(0, 2, 3)).numpy(), rtol=1e-6, atol=1e-7)
    assert bn.blobs()[2].item() == 1.0


def test_batchnorm_global_stats_divide_by_scale_factor():
    c = 3
    net = one_layer(BN % "batch_norm_param { eps: 0.01 }", {"x": (2, c, 4, 4)}, TEST)
    mean_sum, var_sum, s = randn(c) * 4, np.abs(randn(c)) * 4 + 1, 4.0
    bn = _set_bn(net, mean_sum, var_sum, s)
    x = randn(2, c, 4, 4)
    y = run(net, x=x)["x"].detach().numpy()
    mean, var = mean_sum / s, var_sum / s
    np.testing.assert_allclose(y, (x - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 0.01),
                               rtol=1e-5, atol=1e-5)
    assert bn.blobs()[2].item() == s           # global statistics are not updated


def test_batchnorm_zero_scale_factor_means_zero_statistics():
    net = one_layer(BN % "", {"x": (1, 2, 3, 3)}, TEST)
    _set_bn(net, np.array([5.0, -5.0], np.float32), np.array([9.0, 9.0], np.float32), 0.0)
    x = randn(1, 2, 3, 3)
    y = run(net, x=x)["x"].detach().numpy()
    np.testing.assert_allclose(y, x / np.sqrt(1e-5), rtol=1e-5)


def test_batchnorm_explicit_use_global_stats_overrides_phase():
    net = one_layer(BN % "batch_norm_param { use_global_stats: false }", {"x": (4, 2, 3, 3)}, TEST)
    x = randn(4, 2, 3, 3)
    y = run(net, x=x)["x"].detach().numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    net = one_layer(BN % "batch_norm_param { use_global_stats: true }", {"x": (4, 2, 3, 3)}, TRAIN)
    bn = _set_bn(net, np.zeros(2, np.float32), np.ones(2, np.float32), 1.0)
    y = run(net, x=x)["x"].detach().numpy()
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-5), rtol=1e-5)
    assert bn.blobs()[2].item() == 1.0


def test_batchnorm_backward_matches_caffe_formula():
    net = one_layer(BN % "", {"x": (2, 3, 4, 4)}, TRAIN)
    x = torch.from_numpy(randn(2, 3, 4, 4)).requires_grad_(True)
    dy = randn(2, 3, 4, 4)
    y = net.forward({"x": x})["x"]
    y.backward(torch.from_numpy(dy))
    yn = y.detach().numpy()
    var = x.detach().numpy().var(axis=(0, 2, 3))[None, :, None, None]
    mean = lambda a: a.mean(axis=(0, 2, 3), keepdims=True)  # noqa: E731
    expect = (dy - mean(dy) - yn * mean(dy * yn)) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(x.grad.numpy(), expect, rtol=1e-3, atol=1e-5)


def test_batchnorm_one_value_per_channel():
    # m = 1: the output is 0, the variance accumulator gets no m/(m-1) factor, no gradient flows
    net = one_layer(BN % "", {"x": (1, 3, 1, 1)}, TRAIN)
    x = torch.tensor([1.0, -2.0, 5.0]).reshape(1, 3, 1, 1).requires_grad_(True)
    y = net.forward({"x": x})["x"]
    assert not y.detach().any()
    y.backward(torch.ones_like(y))
    assert not x.grad.any()
    mean_sum, var_sum, s = net.layer("bn").blobs()
    assert mean_sum.tolist() == [1.0, -2.0, 5.0] and not var_sum.any() and s.item() == 1.0


def test_batchnorm_blobs_are_not_learnable_and_nonzero_lr_mult_is_rejected():
    net = one_layer(BN % "", {"x": (1, 2, 2, 2)})
    infos = net.params()
    assert [(p.learnable, p.lr_mult, tuple(p.tensor.shape)) for p in infos] == [(False, 0.0, (2,)), (False, 0.0, (2,)),
                                                                                (False, 0.0, (1,))]
    with pytest.raises(ScratchDetError, match="bn.*lr_mult"):
        one_layer(BN % "param { lr_mult: 1 }", {"x": (1, 2, 2, 2)})
    # old prototxts declare exactly three params: Caffe's upgrade clears them
    one_layer(BN % "param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 1 }", {"x": (1, 2, 2, 2)})


# -- Pooling ------------------------------------------------------------------------------------------

def caffe_pool(x, k, s, p, method):
    """Caffe's pooling loops, written out (spec §6)."""
    n, c, h, w = x.shape
    oh = int(math.ceil((h + 2 * p - k) / s)) + 1
    ow = int(math.ceil((w + 2 * p - k) / s)) + 1
    if p and (oh - 1) * s >= h + p:
        oh -= 1
    if p and (ow - 1) * s >= w + p:
        ow -= 1
    out = np.zeros((n, c, oh, ow), np.float32)
    for i in range(oh):
        for j in range(ow):
            hs, ws = i * s - p, j * s - p
            he, we = min(hs + k, h + p), min(ws + k, w + p)
            area = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            win = x[:, :, hs:he, ws:we]
            out[:, :, i, j] = win.max(axis=(2, 3)) if method == "MAX" else win.sum(axis=(2, 3)) / area
    return out


@pytest.mark.parametrize("size,k,s,p,expect_out", [
    (75, 2, 2, 0, 38),     # SSD300 pool3: ceil rounding
    (19, 3, 1, 1, 19),     # SSD300 pool5
    (13, 3, 2, 1, 7),      # padded last window half outside: AVE divisor counts the padded cell
    (6, 3, 2, 0, 3),       # last window runs past the image without padding
    (5, 2, 2, 1, 3),       # the "last window must start inside" rule drops a ceil output
    (7, 3, 2, 2, 5),       # pad above half the kernel (Caffe allows pad < kernel)
    (10, 4, 3, 3, 5),      # ... with the last window cut by the padded border
])
@pytest.mark.parametrize("method", ["MAX", "AVE"])
def test_pooling_matches_caffe_borders(size, k, s, p, expect_out, method):
    x = randn(2, 3, size, size) * 2 - 1.5      # mostly negative: a zero-padded max would show
    net = one_layer(f'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: {method} '
                    f'kernel_size: {k} stride: {s} pad: {p} }} }}', {"x": x.shape})
    y = run(net, x=x)["y"].detach().numpy()
    assert y.shape[2:] == (expect_out, expect_out)
    np.testing.assert_allclose(y, caffe_pool(x, k, s, p, method), rtol=1e-5, atol=1e-6)


def caffe_max_pool_backward(x, k, s, p, grad):
    """Caffe's MAX backward: each output's gradient goes to the first maximum of its window, in
    row-major window order (spec §6), the window clipped to the image as in caffe_pool."""
    n, c, h, w = x.shape
    gx = np.zeros_like(x)
    for i in range(grad.shape[2]):
        for j in range(grad.shape[3]):
            hs, ws = max(i * s - p, 0), max(j * s - p, 0)
            he, we = min(i * s - p + k, h), min(j * s - p + k, w)
            win = x[:, :, hs:he, ws:we].reshape(n, c, -1)
            first = win.argmax(axis=2)                       # numpy's argmax takes the first maximum
            dh, dw = np.divmod(first, we - ws)
            for a in range(n):
                for b in range(c):
                    gx[a, b, hs + dh[a, b], ws + dw[a, b]] += grad[a, b, i, j]
    return gx


@pytest.mark.parametrize("size,k,s,p", [(8, 2, 2, 0), (75, 2, 2, 0), (19, 3, 1, 1), (13, 3, 2, 1), (7, 3, 2, 2)])
def test_max_pooling_gradient_goes_to_the_first_maximum(size, k, s, p):
    """Values and gradients with many ties (ReLU zeros, whole numbers), on the CPU path that pools
    in channels-last memory: the gradient goes where Caffe sends it."""
    x = np.maximum(np.round(randn(2, 3, size, size) * 2), 0).astype(np.float32)
    net = one_layer(f'layer {{ name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param {{ pool: MAX '
                    f'kernel_size: {k} stride: {s} pad: {p} }} }}', {"x": x.shape})
    xt = torch.from_numpy(x).requires_grad_()
    y = net.forward({"x": xt})["y"]
    grad = randn(*y.shape)
    y.backward(torch.from_numpy(grad))
    np.testing.assert_array_equal(y.detach().numpy(), caffe_pool(x, k, s, p, "MAX"))
    np.testing.assert_array_equal(xt.grad.numpy(), caffe_max_pool_backward(x, k, s, p, grad))


def test_pooling_rectangular_and_global():
    x = randn(1, 2, 7, 10)
    net = one_layer('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: AVE '
                    'kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 } }', {"x": x.shape})
    y = run(net, x=x)["y"].detach().numpy()
    # rows: ceil((7+2-3)/2)+1 = 4; cols: ceil((10+2-2)/3)+1 = 5, (5-1)*3 = 12 >= 10+1 -> 4
    assert y.shape == (1, 2, 4, 4)
    hs, ws = np.arange(4) * 2 - 1, np.arange(4) * 3 - 1
    for i in range(4):
        for j in range(4):
            he, we = min(hs[i] + 3, 8), min(ws[j] + 2, 11)
            area = (he - hs[i]) * (we - ws[j])
            win = x[:, :, max(hs[i], 0):min(he, 7), max(ws[j], 0):min(we, 10)]
            np.testing.assert_allclose(y[:, :, i, j], win.sum(axis=(2, 3)) / area, rtol=1e-5, atol=1e-6)
    net = one_layer('layer { name: "pool" type: "Pooling" bottom: "x" top: "y" pooling_param { pool: MAX '
                    'global_pooling: true } }', {"x": x.shape})
    np.testing.assert_allclose(run(net, x=x)["y"].detach().numpy()[:, :, 0, 0], x.max(axis=(2, 3)))


# -- Convolution --------------------------------------------------------------------------------------

def caffe_conv(x, w, b, stride, pad, dil, group):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    oh = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    xp = np.zeros((n, c, h + 2 * pad[0], wd + 2 * pad[1]), np.float64)
    xp[:, :, pad[0]:pad[0] + h, pad[1]:pad[1] + wd] = x
    out = np.zeros((n, o, oh, ow))
    per_group = o // group
    for oc in range(o):
        g = oc // per_group
        for ky in range(kh):
            for kx in range(kw):
                rows = xp[:, g * cg:(g + 1) * cg, ky * dil[0]: ky * dil[0] + stride[0] * (oh - 1) + 1: stride[0],
                          kx * dil[1]: kx * dil[1] + stride[1] * (ow - 1) + 1: stride[1]]
                out[:, oc] += np.einsum("nchw,c->nhw", rows, w[oc, :, ky, kx])
        out[:, oc] += b[oc]
    return out


def test_convolution_dilation_group_and_hw_fields():
    x = randn(2, 4, 11, 9)
    net = one_layer('layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 6 '
                    'kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 1 dilation: 2 group: 2 '
                    'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "uniform" min: -1 max: 1 } } }',
                    {"x": x.shape})
    w, b = (t.detach().numpy() for t in net.layer("conv").blobs())
    assert w.shape == (6, 2, 3, 2) and b.shape == (6,)
    y = run(net, x=x)["y"].detach().numpy()
    expect = caffe_conv(x, w, b, (2, 1), (2, 1), (2, 2), 2)
    assert y.shape == expect.shape == (2, 6, 6, 9)
    np.testing.assert_allclose(y, expect, rtol=1e-4, atol=1e-4)


def test_convolution_default_filler_is_zero_and_no_bias():
    net = one_layer('layer { name: "conv" type: "Convolution" bottom: "x" top: "y" convolution_param { num_output: 2 '
                    'kernel_size: 1 bias_term: false } }', {"x": (1, 3, 2, 2)})
    blobs = net.layer("conv").blobs()
    assert len(blobs) == 1 and not blobs[0].detach().any()


def test_deconvolution_is_the_transpose_of_convolution():
    x = randn(1, 3, 4, 5)
    net = one_layer('layer { name: "up" type: "Deconvolution" bottom: "x" top: "y" convolution_param { num_output: 2 '
                    'kernel_size: 4 stride: 2 pad: 1 bias_term: false weight_filler { type: "gaussian" } } }', {"x": x.shape})
    w = net.layer("up").blobs()[0].detach().numpy()
    assert w.shape == (3, 2, 4, 4)
    y = run(net, x=x)["y"].detach().numpy()
    assert y.shape == (1, 2, 8, 10)        # stride*(in-1) + k - 2*pad
    # scatter each input value through the kernel, then crop the padding
    full = np.zeros((1, 2, 2 * 3 + 4, 2 * 4 + 4))
    for c in range(3):
        for i in range(4):
            for j in range(5):
                full[0, :, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += x[0, c, i, j] * w[c]
    np.testing.assert_allclose(y, full[:, :, 1:-1, 1:-1], rtol=1e-4, atol=1e-5)


# -- Normalize ----------------------------------------------------------------------------------------

def test_normalize_per_pixel_per_channel_scale_and_backward():
    x = randn(2, 5, 3, 4)
    net = one_layer('layer { name: "norm" type: "Normalize" bottom: "x" top: "y" norm_param { across_spatial: false '
                    'channel_shared: false scale_filler { type: "constant" value: 20 } } }', {"x": x.shape})
    scale = net.layer("norm").blobs()[0]
    assert tuple(scale.shape) == (5,) and torch.all(scale == 20)
    with torch.no_grad():
        scale.copy_(torch.from_numpy(np.linspace(1, 3, 5).astype(np.float32)))
    s = np.linspace(1, 3, 5)[None, :, None, None]
    xt = torch.from_numpy(x).requires_grad_(True)
    y = net.forward({"x": xt})["y"]
    norm = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True) + 1e-10)
    np.testing.assert_allclose(y.detach().numpy(), x / norm * s, rtol=1e-5, atol=1e-6)
    dy = randn(*x.shape)
    y.backward(torch.from_numpy(dy))
    # spec §2.7 with the per-channel scale folded into the incoming gradient first
    dys = dy * s
    expect = (dys - x * (x * dys).sum(axis=1, keepdims=True) / norm ** 2) / norm
    np.testing.assert_allclose(xt.grad.numpy(), expect, rtol=1e-4, atol=1e-5)


def test_normalize_across_spatial_channel_shared_is_zero_axis():
    x = randn(2, 3, 2, 2)
    net = one_layer('layer { name: "norm" type: "Normalize" bottom: "x" top: "y" norm_param { eps: 0.5 } }', {"x": x.shape})
    scale = net.layer("norm").blobs()[0]
    assert tuple(scale.shape) == () and scale.item() == 1.0
    y = run(net, x=x)["y"].detach().numpy()
    norm = np.sqrt((x ** 2).sum(axis=(1, 2, 3), keepdims=True) + 0.5)
    np.testing.assert_allclose(y, x / norm, rtol=1e-5)


# -- Eltwise, Concat, Slice ----------------------------------------------------------------------------

def test_eltwise_sum_with_coeffs_prod_and_max_ties():
    a, b, c = randn(2, 3, 4), randn(2, 3, 4), randn(2, 3, 4)
    shapes = {"a": a.shape, "b": b.shape, "c": c.shape}
    net = one_layer('layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                    'eltwise_param { coeff: 0.5 coeff: -2 coeff: 3 } }', shapes)
    np.testing.assert_allclose(run(net, a=a, b=b, c=c)["y"].detach().numpy(), 0.5 * a - 2 * b + 3 * c, rtol=1e-5, atol=1e-6)
    net = one_layer('layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                    'eltwise_param { operation: PROD } }', shapes)
    np.testing.assert_allclose(run(net, a=a, b=b, c=c)["y"].detach().numpy(), a * b * c, rtol=1e-5)
    net = one_layer('layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { operation: MAX } }',
                    {"a": a.shape, "b": b.shape})
    b2 = b.copy()
    b2[0] = a[0]                                # ties: Caffe's gradient goes to the first bottom
    at, bt = torch.from_numpy(a).requires_grad_(True), torch.from_numpy(b2).requires_grad_(True)
    y = net.forward({"a": at, "b": bt})["y"]
    np.testing.assert_allclose(y.detach().numpy(), np.maximum(a, b2))
    y.sum().backward()
    np.testing.assert_array_equal(at.grad.numpy(), (a >= b2).astype(np.float32))
    np.testing.assert_array_equal(bt.grad.numpy(), (b2 > a).astype(np.float32))
    with pytest.raises(ScratchDetError, match="coeff"):
        one_layer('layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "y" eltwise_param { coeff: 1 } }',
                  {"a": a.shape, "b": b.shape})


def test_concat_and_slice():
    a, b = randn(2, 3, 4), randn(2, 5, 4)
    net = one_layer('layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "y" }', {"a": a.shape, "b": b.shape})
    np.testing.assert_array_equal(run(net, a=a, b=b)["y"].numpy(), np.concatenate([a, b], axis=1))
    x = randn(2, 8, 3)
    net = one_layer('layer { name: "s" type: "Slice" bottom: "x" top: "p" top: "q" top: "r" '
                    'slice_param { axis: 1 slice_point: 1 slice_point: 6 } }', {"x": x.shape})
    out = run(net, x=x)
    for name, part in zip("pqr", np.split(x, [1, 6], axis=1)):
        np.testing.assert_array_equal(out[name].numpy(), part)


# -- Permute, Flatten, Reshape ------------------------------------------------------------------------

def test_permute_flatten_reshape():
    x = randn(2, 6, 3, 4)
    net = one_layer('layer { name: "p" type: "Permute" bottom: "x" top: "p" permute_param { order: 0 order: 2 order: 3 order: 1 } }\n'
                    'layer { name: "f" type: "Flatten" bottom: "p" top: "f" }\n'
                    'layer { name: "r" type: "Reshape" bottom: "f" top: "r" reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }\n'
                    'layer { name: "p2" type: "Permute" bottom: "x" top: "p2" permute_param { order: 2 } }\n'
                    'layer { name: "f2" type: "Flatten" bottom: "x" top: "f2" flatten_param { axis: 1 end_axis: 2 } }\n'
                    'layer { name: "r2" type: "Reshape" bottom: "x" top: "r2" reshape_param { axis: 1 num_axes: 1 '
                    'shape { dim: 2 dim: -1 } } }\n'
                    'layer { name: "r3" type: "Reshape" bottom: "x" top: "r3" reshape_param { axis: -1 shape { dim: 1 } } }',
                    {"x": x.shape})
    out = {k: v.numpy() for k, v in run(net, x=x).items()}
    perm = x.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(out["p"], perm)
    np.testing.assert_array_equal(out["f"], perm.reshape(2, -1))
    np.testing.assert_array_equal(out["r"], perm.reshape(2, 24, 3))
    np.testing.assert_array_equal(out["p2"], x.transpose(2, 0, 1, 3))      # unlisted axes appended in order
    np.testing.assert_array_equal(out["f2"], x.reshape(2, 18, 4))
    np.testing.assert_array_equal(out["r2"], x.reshape(2, 2, 3, 3, 4))
    assert out["r3"].shape == (2, 6, 3, 4, 1)


def test_reshape_rejects_count_changes():
    with pytest.raises(ScratchDetError, match="count|reshape"):
        one_layer('layer { name: "r" type: "Reshape" bottom: "x" top: "r" reshape_param { shape { dim: 5 dim: -1 } } }',
                  {"x": (2, 3)})


# -- Scale, Bias, activations, InnerProduct ------------------------------------------------------------

def test_scale_bias_axis_num_axes_and_two_bottoms():
    x = randn(2, 3, 4, 5)
    net = one_layer('layer { name: "sc" type: "Scale" bottom: "x" top: "y" scale_param { axis: 1 num_axes: 2 bias_term: true '
                    'filler { type: "gaussian" } bias_filler { type: "gaussian" } } }', {"x": x.shape})
    s, b = (t.detach().numpy() for t in net.layer("sc").blobs())
    assert s.shape == b.shape == (3, 4)
    np.testing.assert_allclose(run(net, x=x)["y"].detach().numpy(), x * s[None, :, :, None] + b[None, :, :, None], rtol=1e-5, atol=1e-6)
    net = one_layer('layer { name: "sc" type: "Scale" bottom: "x" top: "x" }', {"x": x.shape})
    assert torch.all(net.layer("sc").blobs()[0] == 1)                    # default filler: constant 1
    m = randn(4, 5)
    net = one_layer('layer { name: "sc" type: "Scale" bottom: "x" bottom: "m" top: "y" scale_param { axis: 2 } }\n'
                    'layer { name: "b" type: "Bias" bottom: "y" top: "z" bias_param { axis: -1 filler { type: "constant" value: 0.5 } } }',
                    {"x": x.shape, "m": m.shape})
    assert net.layer("sc").blobs() == [] and tuple(net.layer("b").blobs()[0].shape) == (5,)
    out = run(net, x=x, m=m)
    np.testing.assert_allclose(out["z"].detach().numpy(), x * m[None, None] + 0.5, rtol=1e-5, atol=1e-6)


def test_relu_softmax_dropout():
    x = randn(3, 4, 5)
    net = one_layer('layer { name: "r" type: "ReLU" bottom: "x" top: "r" relu_param { negative_slope: 0.1 } }\n'
                    'layer { name: "s" type: "Softmax" bottom: "x" top: "s" softmax_param { axis: 2 } }\n'
                    'layer { name: "d" type: "Dropout" bottom: "x" top: "d" dropout_param { dropout_ratio: 0.25 } }',
                    {"x": x.shape}, TEST)
    out = {k: v.detach().numpy() for k, v in run(net, x=x).items()}
    np.testing.assert_allclose(out["r"], np.where(x > 0, x, 0.1 * x), rtol=1e-6)
    e = np.exp(x - x.max(axis=2, keepdims=True))
    np.testing.assert_allclose(out["s"], e / e.sum(axis=2, keepdims=True), rtol=1e-5)
    np.testing.assert_array_equal(out["d"], x)                         # TEST: identity
    net = one_layer('layer { name: "d" type: "Dropout" bottom: "x" top: "d" dropout_param { dropout_ratio: 0.25 } }',
                    {"x": (200, 50)}, TRAIN)
    ones = np.ones((200, 50), np.float32)
    d = run(net, x=ones)["d"].numpy()
    assert set(np.unique(d).tolist()) <= {0.0, np.float32(1 / 0.75)}   # inverted scaling
    assert abs((d == 0).mean() - 0.25) < 0.02


def test_inner_product_axis_and_transpose():
    x = randn(2, 3, 4, 5)
    net = one_layer('layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 7 axis: 2 '
                    'weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } } }\n'
                    'layer { name: "ipt" type: "InnerProduct" bottom: "x" top: "t" inner_product_param { num_output: 3 transpose: true '
                    'weight_filler { type: "gaussian" } bias_term: false } }', {"x": x.shape})
    w, b = (t.detach().numpy() for t in net.layer("ip").blobs())
    wt = net.layer("ipt").blobs()[0].detach().numpy()
    assert w.shape == (7, 20) and wt.shape == (60, 3)
    out = run(net, x=x)
    np.testing.assert_allclose(out["y"].detach().numpy(), x.reshape(2, 3, 20) @ w.T + b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["t"].detach().numpy(), x.reshape(2, 60) @ wt, rtol=1e-4, atol=1e-5)


# -- losses -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm,ignore", [("VALID", 2), ("FULL", 2), ("BATCH_SIZE", None), ("NONE", None)])
def test_softmax_with_loss(norm, ignore):
    scores = randn(3, 4, 5)                       # softmax over axis 1: outer 3, inner 5
    labels = RNG.integers(0, 4, size=(3, 5)).astype(np.float32)
    lp = f"loss_param {{ normalization: {norm} {'ignore_label: %d' % ignore if ignore is not None else ''} }}"
    net = one_layer(f'layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "s" bottom: "l" top: "loss" {lp} }}',
                    {"s": scores.shape, "l": labels.shape})
    st = torch.from_numpy(scores).requires_grad_(True)
    blobs = net.forward({"s": st, "l": torch.from_numpy(labels)})
    p = np.exp(scores - scores.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    valid = np.ones_like(labels, bool) if ignore is None else labels != ignore
    picked = np.take_along_axis(p, labels.astype(int)[:, None], axis=1)[:, 0]
    z = {"VALID": valid.sum(), "FULL": 15, "BATCH_SIZE": 3, "NONE": 1}[norm]
    expect = -np.log(np.maximum(picked, np.finfo(np.float32).tiny))[valid].sum() / z
    assert net.total_loss(blobs).item() == pytest.approx(expect, rel=1e-5)
    net.total_loss(blobs).backward()
    onehot = np.eye(4, dtype=np.float32)[labels.astype(int)].transpose(0, 2, 1)
    np.testing.assert_allclose(st.grad.numpy(), (p - onehot) * valid[:, None] / z, rtol=1e-4, atol=1e-6)


def test_smooth_l1_and_euclidean_loss():
    a, b = randn(4, 6) * 2, randn(4, 6) * 2
    net = one_layer('layer { name: "l1" type: "SmoothL1Loss" bottom: "a" bottom: "b" top: "l1" }\n'
                    'layer { name: "l2" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l2" loss_weight: 0.5 }',
                    {"a": a.shape, "b": b.shape})
    out = run(net, a=a, b=b)
    d = a - b
    sl1 = np.where(np.abs(d) < 1, 0.5 * d * d, np.abs(d) - 0.5).sum() / 4
    assert out["l1"].item() == pytest.approx(sl1, rel=1e-5)
    assert out["l2"].item() == pytest.approx((d ** 2).sum() / 8, rel=1e-5)
    assert net.total_loss(out).item() == pytest.approx(sl1 + 0.5 * (d ** 2).sum() / 8, rel=1e-5)
