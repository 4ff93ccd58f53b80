"""The Net interpreter's Caffe semantics: NetState filtering, legacy inputs, in-place blobs, fan-out
gradients, propagate_down, loss weights, outputs, parameter order and multipliers, fillers and seeds,
the caffemodel layer configs (set-up changes, Split insertion) and CopyTrainedLayersFrom."""
import numpy as np
import pytest
import torch

from scratchdet.caffe import shapes
from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.caffe.upgrade import insert_splits
from scratchdet.engine import fillers
from scratchdet.engine.layers.base import REGISTRY, Layer
from scratchdet.engine.net import Net
from scratchdet.errors import ScratchDetError


def net_from(text, phase=TEST, **kw):
    return Net(parse_text(text, pb.NetParameter), phase, **kw)


INPUT = 'layer { name: "data" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }\n'
ZEROS = 'layer { name: "zeros" type: "Input" top: "zero" input_param { shape { dim: 2 dim: 3 } } }\n'


def test_legacy_input_fields_become_an_input_layer():
    for head in ('input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }',
                 'input: "x" input_dim: 2 input_dim: 3 input_dim: 4 input_dim: 5'):
        net = net_from(head + '\nlayer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
        assert [(layer.name, layer.lp.type) for layer in net.layers] == [("input", "Input"), ("r", "ReLU")]
        out = net.forward()
        assert tuple(out["x"].shape) == (2, 3, 4, 5) and not out["y"].any()   # zeros when nothing is fed


def test_shape_inference_and_the_net_share_the_strict_input_upgrade():
    # three input_dim values for one input: both callers refuse it, naming the source
    text = 'input: "x" input_dim: 2 input_dim: 3 input_dim: 4\nlayer { name: "r" type: "ReLU" bottom: "x" top: "y" }'
    param = parse_text(text, pb.NetParameter)
    for build in (lambda: shapes.infer(param, None, "old.prototxt"),
                  lambda: Net(param, TEST, source="old.prototxt")):
        with pytest.raises(ScratchDetError, match=r"^old\.prototxt: net has 1 inputs and 3 input_dim values"):
            build()


def test_netstate_filtering_by_phase_level_and_stage():
    text = INPUT + """
layer { name: "a" type: "ReLU" bottom: "x" top: "a" include { phase: TRAIN } }
layer { name: "b" type: "ReLU" bottom: "x" top: "b" include { phase: TEST stage: "deploy" } }
layer { name: "c" type: "ReLU" bottom: "x" top: "c" exclude { min_level: 2 } }
"""
    names = lambda net: [layer.name for layer in net.layers]  # noqa: E731
    assert names(net_from(text, TRAIN)) == ["data", "a", "c"]
    assert names(net_from(text, TEST)) == ["data", "c"]
    assert names(net_from(text, TEST, stages=("deploy",), level=3)) == ["data", "b"]


def test_in_place_blobs_and_per_layer_outputs():
    net = net_from(INPUT + """
layer { name: "scale" type: "Scale" bottom: "x" top: "x" scale_param { filler { type: "constant" value: -2 } } }
layer { name: "relu" type: "ReLU" bottom: "x" top: "x" }
""")
    x = torch.tensor([[1.0, -1.0, 2.0], [0.5, -3.0, 0.0]])
    per = {}
    out = net.forward({"x": x}, per_layer=per)
    np.testing.assert_array_equal(out["x"].detach().numpy(), np.maximum(-2 * x.numpy(), 0))
    np.testing.assert_array_equal(per["scale"][0].detach().numpy(), -2 * x.numpy())
    assert net.output_names == ["x"]


def test_fan_out_gradients_are_summed_and_propagate_down_detaches():
    # y = s1*x + s2*x (x read twice); z = s3 * y with propagate_down false: y gets no gradient
    net = net_from(INPUT + ZEROS + """
layer { name: "s1" type: "Scale" bottom: "x" top: "p" scale_param { filler { type: "constant" value: 2 } } }
layer { name: "s2" type: "Scale" bottom: "x" top: "q" scale_param { filler { type: "constant" value: 5 } } }
layer { name: "sum" type: "Eltwise" bottom: "p" bottom: "q" top: "y" }
layer { name: "loss" type: "EuclideanLoss" bottom: "y" bottom: "zero" top: "loss" }
layer { name: "s3" type: "Scale" bottom: "y" top: "z" propagate_down: false scale_param { filler { type: "constant" value: 3 } } }
layer { name: "loss2" type: "EuclideanLoss" bottom: "z" bottom: "zero" top: "loss2" loss_weight: 0.25 }
""")
    x = torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]], requires_grad=True)
    blobs = net.forward({"x": x})
    loss = net.total_loss(blobs)
    y = 7 * x.detach().numpy()
    expect = (y ** 2).sum() / 4 + 0.25 * ((3 * y) ** 2).sum() / 4
    assert loss.item() == pytest.approx(expect, rel=1e-6)
    loss.backward()
    # dloss/dx through both branches (2 + 5), the s3 branch stopped at y
    np.testing.assert_allclose(x.grad.numpy(), 7 * y / 2, rtol=1e-6)
    s3 = net.layer("s3").blobs()[0]
    np.testing.assert_allclose(s3.grad.numpy(), 0.25 * (3 * y * y).sum(axis=0) / 2, rtol=1e-5)   # per channel
    assert [(n, w) for n, w, _ in net.loss_outputs(blobs)] == [("loss", 1.0), ("loss2", 0.25)]
    assert net.output_names == ["loss", "loss2"]


def test_output_names_are_sorted_like_caffes_set():
    net = net_from(INPUT + """
layer { name: "b" type: "ReLU" bottom: "x" top: "zeta" }
layer { name: "a" type: "ReLU" bottom: "x" top: "alpha" }
layer { name: "s" type: "Silence" bottom: "x" }
""")
    assert net.output_names == ["alpha", "zeta"]


def test_params_order_multipliers_and_lr_mult_zero():
    net = net_from(INPUT + """
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  inner_product_param { num_output: 4 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" }
layer { name: "frozen" type: "InnerProduct" bottom: "y" top: "z" param { lr_mult: 0 } inner_product_param { num_output: 2 bias_term: false } }
""", TRAIN)
    got = [(p.layer, p.index, tuple(p.tensor.shape), p.lr_mult, p.decay_mult, p.learnable) for p in net.params()]
    assert got == [("ip", 0, (4, 3), 1.0, 1.0, True), ("ip", 1, (4,), 2.0, 0.0, True),
                   ("bn", 0, (4,), 0.0, 0.0, False), ("bn", 1, (4,), 0.0, 0.0, False), ("bn", 2, (1,), 0.0, 0.0, False),
                   ("frozen", 0, (2, 4), 0.0, 1.0, True)]
    assert not net.params()[-1].tensor.requires_grad     # Caffe computes no diff for lr_mult 0


def test_fill_is_deterministic_per_seed():
    text = INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 5 weight_filler { type: "msra" } bias_filler { type: "gaussian" } } }'
    a, b, c = net_from(text, seed=7), net_from(text, seed=7), net_from(text, seed=8)
    for pa, pb_, pc in zip(a.params(), b.params(), c.params()):
        assert torch.equal(pa.tensor, pb_.tensor)
        assert not torch.equal(pa.tensor, pc.tensor)


def test_xavier_and_msra_bounds_and_fan_sizes():
    g = torch.Generator().manual_seed(0)
    shape = (64, 16, 3, 3)                  # fan_in 144, fan_out 576
    for norm, n in (("FAN_IN", 144), ("FAN_OUT", 576), ("AVERAGE", 360)):
        v = fillers.make(parse_text(f'type: "xavier" variance_norm: {norm}', pb.FillerParameter), shape, g).numpy()
        bound = np.sqrt(3.0 / n)
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.99 * bound
        assert v.var() == pytest.approx(bound ** 2 / 3, rel=0.05)
        v = fillers.make(parse_text(f'type: "msra" variance_norm: {norm}', pb.FillerParameter), shape, g).numpy()
        assert v.std() == pytest.approx(np.sqrt(2.0 / n), rel=0.05)
    # a 1-D blob: fan_in = count / shape[0] = 1, fan_out = count
    assert fillers.fan_in_out((10,)) == (1, 10)
    assert fillers.fan_in_out((6, 4)) == (4, 6)
    v = fillers.make(parse_text('type: "gaussian" std: 1 sparse: 2', pb.FillerParameter), (8, 500), g).numpy()
    assert (v != 0).mean() == pytest.approx(2 / 8, abs=0.02)
    v = fillers.make(parse_text('type: "positive_unitball"', pb.FillerParameter), (3, 4, 2), g).numpy()
    np.testing.assert_allclose(v.reshape(3, -1).sum(axis=1), 1, rtol=1e-5)
    k = fillers.make(parse_text('type: "bilinear"', pb.FillerParameter), (1, 1, 4, 4), g).numpy()[0, 0]
    np.testing.assert_allclose(k[0], [0.0625, 0.1875, 0.1875, 0.0625])
    with pytest.raises(ScratchDetError, match="unknown filler"):
        fillers.make(pb.FillerParameter(type="golden"), (2,), g)


def test_bad_nets_give_one_line_errors():
    with pytest.raises(ScratchDetError, match="produced by multiple sources"):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }\nlayer { name: "b" type: "ReLU" bottom: "x" top: "y" }')
    with pytest.raises(ScratchDetError, match="'nope'"):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "nope" top: "y" }')
    with pytest.raises(ScratchDetError, match="Frobnicate"):
        net_from(INPUT + 'layer { name: "a" type: "Frobnicate" bottom: "x" top: "y" }')
    with pytest.raises(ScratchDetError, match="propagate_down"):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "y" propagate_down: true propagate_down: false }')
    with pytest.raises(ScratchDetError, match="no blob named"):
        net_from(INPUT + 'layer { name: "a" type: "ReLU" bottom: "x" top: "y" }').forward({"q": torch.zeros(1)})


def test_layer_configs_as_caffe_set_up_leaves_them(monkeypatch):
    class _Loss(Layer):           # a loss with Caffe's MultiBoxLoss-style default propagate_down
        is_loss = True
        default_propagate_down = (True, False)

        def forward(self, a, b):
            return ((a - b).pow(2).sum(),)

    monkeypatch.setitem(REGISTRY, "SmoothL1Loss", _Loss)

    net = net_from(INPUT + """
layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x" param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 } }
layer { name: "loss" type: "SmoothL1Loss" bottom: "x" bottom: "x" top: "loss" }
""", TRAIN)
    proto = net.to_proto()
    bn = next(lp for lp in proto.layer if lp.name == "bn")
    assert [(s.lr_mult, s.HasField("decay_mult")) for s in bn.param] == [(0.0, False)] * 3
    assert bn.phase == TRAIN and len(bn.blobs) == 3
    loss = next(lp for lp in proto.layer if lp.name == "loss")
    assert list(loss.loss_weight) == [1.0] and list(loss.propagate_down) == [True, False]
    # x (after the in-place bn) is read twice by the loss: Caffe inserts a Split after bn
    assert [lp.name for lp in proto.layer] == ["data", "bn", "x_bn_0_split", "loss"]
    assert list(loss.bottom) == ["x_bn_0_split_0", "x_bn_0_split_1"]


def test_insert_splits_names_and_loss_weight_readers():
    param = parse_text(INPUT + """
layer { name: "a" type: "ReLU" bottom: "x" top: "a" loss_weight: 2 }
layer { name: "b" type: "ReLU" bottom: "a" top: "b" }
layer { name: "c" type: "ReLU" bottom: "x" top: "c" }
""", pb.NetParameter)
    out = insert_splits(param)
    got = [(lp.name, list(lp.bottom), list(lp.top), list(lp.loss_weight)) for lp in out.layer]
    assert got == [
        ("data", [], ["x"], []),
        ("x_data_0_split", ["x"], ["x_data_0_split_0", "x_data_0_split_1"], []),
        ("a", ["x_data_0_split_0"], ["a"], []),
        ("a_a_0_split", ["a"], ["a_a_0_split_0", "a_a_0_split_1"], [2.0, 0.0]),
        ("b", ["a_a_0_split_1"], ["b"], []),
        ("c", ["x_data_0_split_1"], ["c"], []),
    ]


def test_copy_from_by_name_ignores_extra_layers_and_checks_shapes(caplog):
    text = INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 weight_filler { type: "gaussian" } } }'
    src, dst = net_from(text, TRAIN, seed=1), net_from(text, TEST, seed=2)
    proto = src.to_proto()
    extra = proto.layer.add(name="mbox_loss_only_in_train", type="ReLU")
    extra.blobs.add().data.append(1.0)
    with caplog.at_level("INFO"):
        ignored = dst.copy_from(proto, "src.caffemodel")
    assert ignored == ["mbox_loss_only_in_train"]
    assert "Ignoring source layer mbox_loss_only_in_train" in caplog.text
    assert all(torch.equal(a.tensor, b.tensor) for a, b in zip(src.params(), dst.params()))
    other = net_from(text.replace("num_output: 2", "num_output: 3"), seed=3)
    before = [p.tensor.clone() for p in other.params()]
    with pytest.raises(ScratchDetError, match=r"src.caffemodel.*'ip'.*\[2, 3\].*\[3, 3\]"):
        other.copy_from(proto, "src.caffemodel")
    assert all(torch.equal(a, b.tensor) for a, b in zip(before, other.params()))   # nothing copied
    nobias = net_from(text.replace("weight_filler", "bias_term: false weight_filler"))
    with pytest.raises(ScratchDetError, match="'ip'.*number of blobs.*2.*1"):
        nobias.copy_from(proto, "src.caffemodel")


def test_net_param_blobs_initialise_the_net():
    text = INPUT + 'layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 1 bias_term: false } }'
    param = parse_text(text, pb.NetParameter)
    blob = param.layer[1].blobs.add()
    blob.shape.dim.extend([1, 3])
    blob.data.extend([1.0, 2.0, 3.0])
    net = Net(param, TEST, seed=0)
    assert net.layer("ip").blobs()[0].tolist() == [[1.0, 2.0, 3.0]]
