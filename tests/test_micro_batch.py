"""Inference a few images at a time (engine.fast.micro_batch_plan, what `scratchdet test` uses on
the CPU for folded nets): the same detections and blobs as the whole batch, and refused for nets
whose compute layers mix the images of a batch."""
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchdet.caffe import io
from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine.fold import fold
from scratchdet.engine.net import Net

from export_nets import assert_same_detections  # noqa: E402  (tests/export_nets.py)

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "models" / "synthetic" / "demo_rootres" / "deploy.prototxt"


def _calibrated(net, x):
    """Finite BatchNorm statistics: one TRAIN-mode pass from empty sums stores the statistics of
    ``x`` (random weights with zero statistics would give inf/NaN)."""
    bns = [layer for layer in net.layers if layer.lp.type == "BatchNorm"]
    for layer in bns:
        layer.use_global_stats = False
    with torch.no_grad():
        net.forward({next(lp.top[0] for lp in net.param.layer if lp.type == "Input"): x})
    for layer in bns:
        layer.use_global_stats = True


@pytest.mark.parametrize("chunk", [1, 3])
def test_one_image_at_a_time_gives_the_whole_batchs_detections(chunk):
    net = Net(io.read_net(DEPLOY), TEST, source=str(DEPLOY), seed=0)
    data = next(layer for layer in net.layers if layer.lp.type == "Input")
    x = torch.from_numpy(np.random.default_rng(0).uniform(-100, 100, (5,) + tuple(data.shapes[0][1:])).astype(np.float32))
    _calibrated(net, x)
    folded = fold(net)
    feed = {data.lp.top[0]: x}
    with torch.no_grad():
        whole = folded.forward(feed)
        assert folded.set_micro_batch(chunk)
        parts = folded.forward(feed)
        folded.set_micro_batch(None)
    out = folded.output_names[0]
    a, b = whole[out].reshape(-1, 7), parts[out].reshape(-1, 7)
    assert a.shape == b.shape and len(a) > 5
    # in any order: two detections whose scores sit an ulp apart (seen: 0.26067844 and 0.26067838)
    # can swap places, batch-1 and batch-5 convolutions adding in different orders
    assert_same_detections(a.numpy(), b.numpy(), 1e-5)
    assert set(range(5)) <= set(a[:, 0].long().tolist())


HEAD = 'input: "x" input_shape { dim: 4 dim: 3 dim: 8 dim: 8 }\n'
CONV = 'layer { name: "c" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3 } }\n'


@pytest.mark.parametrize("layer,phase,local", [
    ('layer { name: "r" type: "ReLU" bottom: "c" top: "c" }', TEST, True),
    ('layer { name: "b" type: "BatchNorm" bottom: "c" top: "b" }', TEST, True),
    ('layer { name: "b" type: "BatchNorm" bottom: "c" top: "b" }', TRAIN, False),          # batch statistics
    ('layer { name: "k" type: "Concat" bottom: "c" bottom: "c" top: "k" concat_param { axis: 0 } }', TEST, False),
    ('layer { name: "k" type: "Concat" bottom: "c" bottom: "c" top: "k" }', TEST, True),
    ('layer { name: "f" type: "Flatten" bottom: "c" top: "f" flatten_param { axis: 0 } }', TEST, False),
    ('layer { name: "p" type: "Permute" bottom: "c" top: "p" permute_param { order: 1 order: 0 } }', TEST, False),
    ('layer { name: "p" type: "Permute" bottom: "c" top: "p" permute_param { order: 0 order: 2 order: 3 order: 1 } }', TEST, True),
    ('layer { name: "s" type: "Reshape" bottom: "c" top: "s" reshape_param { shape { dim: 0 dim: -1 } } }', TEST, True),
    ('layer { name: "s" type: "Reshape" bottom: "c" top: "s" reshape_param { shape { dim: 1 dim: -1 } } }', TEST, False),
])
def test_nets_that_mix_images_are_not_split(layer, phase, local):
    net = Net(parse_text(HEAD + CONV + layer, pb.NetParameter), phase, seed=0)
    assert net.set_micro_batch(1) is local
    if local:
        x = torch.randn(4, 3, 8, 8)
        with torch.no_grad():
            parts = net.forward({"x": x})
            net.set_micro_batch(None)
            whole = net.forward({"x": x})
        for name in net.output_names:
            torch.testing.assert_close(parts[name], whole[name], rtol=1e-6, atol=1e-6)
