"""Net.forward's fused BatchNorm+Scale (one F.batch_norm) and real in-place ReLUs against the plain
layer-by-layer path: Caffe's three BatchNorm blobs exactly equal, outputs and gradients equal up to
float rounding, and no fusion where another layer reads the blob."""
import numpy as np
import torch

from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine.net import Net

NET = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1"
  scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 } bias_filler { type: "uniform" min: -0.2 max: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 6 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" }
layer { name: "sc2" type: "Scale" bottom: "bn2" top: "bn2" scale_param { filler { type: "uniform" min: 0.5 max: 1.5 } } }
layer { name: "relu2" type: "ReLU" bottom: "bn2" top: "bn2" relu_param { negative_slope: 0.1 } }
layer { name: "pool" type: "Pooling" bottom: "bn2" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 4 dim: 6 dim: 1 dim: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "pool" bottom: "target" top: "loss" }
"""


def make(phase=TRAIN, text=NET):
    return Net(parse_text(text, pb.NetParameter), phase, seed=3)


def plain(net):
    net._fused_scale, net._inplace = {}, set()
    return net


def test_fusions_found_where_caffe_pairs_them():
    net = make()
    names = [layer.name for layer in net.layers]
    assert {names[i]: names[j] for i, j in net._fused_scale.items()} == {"bn1": "sc1", "bn2": "sc2"}
    assert sorted(names[i] for i in net._inplace) == ["relu1", "relu2"]


def test_no_fusion_or_in_place_where_another_layer_reads_the_blob():
    # bn2's top is read by sc2 and by pool2; relu1's bottom (conv1 after sc1) is read by conv2b too
    text = NET.replace('layer { name: "pool"', 'layer { name: "pool2" type: "Pooling" bottom: "bn2" top: "p2" '
                                                'pooling_param { pool: MAX global_pooling: true } }\nlayer { name: "pool"')
    text = text.replace('layer { name: "sc2" type: "Scale" bottom: "bn2" top: "bn2"',
                        'layer { name: "sc2" type: "Scale" bottom: "bn2" top: "bn2s"')
    text = text.replace('layer { name: "relu2" type: "ReLU" bottom: "bn2" top: "bn2"',
                        'layer { name: "relu2" type: "ReLU" bottom: "bn2s" top: "bn2s"')
    text = text.replace('layer { name: "pool" type: "Pooling" bottom: "bn2"', 'layer { name: "pool" type: "Pooling" bottom: "bn2s"')
    text = text.replace('layer { name: "relu1"', 'layer { name: "conv2b" type: "Convolution" bottom: "conv1" top: "c2b" '
                        'convolution_param { num_output: 2 kernel_size: 1 } }\nlayer { name: "relu1"')
    net = make(text=text)
    names = [layer.name for layer in net.layers]
    assert [names[i] for i in net._fused_scale] == ["bn1"]
    assert sorted(names[i] for i in net._inplace) == ["relu2"]     # relu1: conv2b reads its bottom too


def test_fused_path_keeps_caffe_blobs_and_gradients():
    torch.manual_seed(0)
    fast, ref = make(), plain(make())
    for step in range(3):                      # statistics accumulate over passes (maf 0.999)
        x = torch.randn(4, 3, 9, 9) * 3 + 1
        t = torch.randn(4, 6, 1, 1)
        outs = []
        for net in (fast, ref):
            for p in net.parameters():
                p.grad = None
            blobs = net.forward({"data": x.clone(), "target": t})
            net.total_loss(blobs).backward()
            outs.append(blobs)
        a, b = outs
        torch.testing.assert_close(a["loss"], b["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a["bn2"], b["bn2"], rtol=1e-5, atol=1e-5)
        for la, lb in zip(fast.layers, ref.layers):
            if la.name == "bn1":                   # same input: the same statistics, bit for bit
                for u, v in zip(la.blobs(), lb.blobs()):
                    assert torch.equal(u, v), (la.name, step)
            for u, v in zip(la.blobs(), lb.blobs()):   # later layers see inputs that differ by rounding
                torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-6)
                if u.requires_grad:
                    torch.testing.assert_close(u.grad, v.grad, rtol=1e-4, atol=1e-6)
    assert fast.layer("bn1").factor.item() > 2                 # three passes accumulated


def test_fused_test_phase_uses_the_stored_statistics():
    train = make()
    train.forward({"data": torch.randn(4, 3, 9, 9), "target": torch.zeros(4, 6, 1, 1)})
    fast, ref = make(TEST), plain(make(TEST))
    for net in (fast, ref):
        for src, dst in zip(train.layers, net.layers):
            for u, v in zip(src.blobs(), dst.blobs()):
                v.data.copy_(u.data)
    x = torch.randn(4, 3, 9, 9)
    with torch.no_grad():
        a = fast.forward({"data": x, "target": torch.zeros(4, 6, 1, 1)})
        b = ref.forward({"data": x, "target": torch.zeros(4, 6, 1, 1)})
    torch.testing.assert_close(a["pool"], b["pool"], rtol=1e-5, atol=1e-6)
    assert np.isfinite(a["pool"].numpy()).all()


def test_one_batch_norm_call_gives_the_three_blobs_of_batchnorm_then_scale():
    net, ref = make(), plain(make())
    bn, sc = net.layer("bn1"), net.layer("sc1")
    rbn, rsc = ref.layer("bn1"), ref.layer("sc1")
    for k in range(3):
        x = torch.randn(4, 8, 5, 5) * (k + 1) + k
        y = bn.forward_with_scale(x, sc.scale, sc.bias)
        want = rsc(*rbn(x))[0]
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
        for u, v in zip(bn.blobs(), rbn.blobs()):
            assert torch.equal(u, v)
    assert bn.forward_with_scale(torch.randn(1, 8, 1, 1), sc.scale, sc.bias) is None   # one value per channel
