"""The opt-in fast paths (engine/fast.py) against the faithful one, on the CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST
from scratchdet.engine.fast import FastPath
from scratchdet.engine.net import Net
from scratchdet.errors import ScratchDetError

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "models" / "synthetic" / "demo_rootres" / "deploy.prototxt"


def test_parse_and_describe():
    assert FastPath.parse("").faithful and FastPath.parse(None).faithful
    f = FastPath.parse("channels_last, amp,compile=aot_eager")
    assert (f.channels_last, f.amp, f.compile, f.tf32) == (True, True, "aot_eager", False)
    assert FastPath.parse("compile").compile == "inductor"
    assert f.describe() == "channels_last,amp,compile=aot_eager"
    with pytest.raises(ScratchDetError, match="unknown option 'fp16'"):
        FastPath.parse("fp16")


def test_moving_a_net_moves_the_buffers_its_layers_update():
    net = Net(io.read_net(DEPLOY), TEST, seed=0).to(torch.float64)
    bn = next(layer for layer in net.layers if layer.lp.type == "BatchNorm")
    assert bn.mean_sum is bn.blobs()[0] and bn.mean_sum.dtype == torch.float64


def _deploy(seed=0):
    net = Net(io.read_net(DEPLOY), TEST, seed=seed)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():          # finite, non-trivial statistics so the nets detect something
        for layer in net.layers:
            if layer.lp.type == "BatchNorm":
                layer.mean_sum.uniform_(-0.1, 0.1, generator=g)
                layer.var_sum.uniform_(0.5, 1.5, generator=g)
                layer.factor.fill_(1.0)
    return net


@pytest.mark.parametrize("spec", ["channels_last", "compile=eager", "channels_last,compile=aot_eager"])
def test_fast_paths_give_the_faithful_detections(spec):
    x = torch.rand(2, 3, 128, 128) * 255 - 120
    ref = _deploy()
    fast = _deploy()
    fast.set_fast(FastPath.parse(spec))
    with torch.no_grad():
        a = ref.forward({"data": x})
        b = fast.forward({"data": x})
    assert a.keys() >= b.keys() and set(ref.output_names) <= b.keys()
    for name in ref.output_names:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4)
    assert a[ref.output_names[0]].shape[2] > 2      # detections, not the empty marker rows
