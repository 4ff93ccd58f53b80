""".caffemodel / .solverstate / BlobProto I/O: Caffe's wire format byte for byte, bit-exact round
trips, legacy V1 files with 4-D blob shapes, mismatches naming the layer, and clear one-line errors
for truncated or foreign files (no protobuf traceback, no partial output)."""
import struct

import numpy as np
import pytest
import torch

from scratchdet import cli
from scratchdet.caffe import io
from scratchdet.caffe.blobs import array_to_blob, blob_to_array, shape_matches
from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine.caffemodel import (load_caffemodel, read_caffemodel, read_solverstate, save_caffemodel,
                                          write_solverstate)
from scratchdet.engine.net import Net
from scratchdet.errors import ScratchDetError

NET = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } bias_filler { type: "gaussian" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true filler { type: "gaussian" } } }
layer { name: "norm" type: "Normalize" bottom: "conv1" top: "norm" norm_param { scale_filler { type: "constant" value: 20 } } }
layer { name: "fc" type: "InnerProduct" bottom: "norm" top: "fc" inner_product_param { num_output: 5 weight_filler { type: "msra" } } }
"""


def make_net(phase=TRAIN, seed=0, text=NET):
    return Net(parse_text(text, pb.NetParameter), phase, seed=seed)


def randomise_stats(net):
    with torch.no_grad():
        for i, t in enumerate(net.layer("bn1").blobs()):
            t.uniform_(0.5, 2.0)


# -- BlobProto ----------------------------------------------------------------------------------------

def test_blob_wire_bytes_match_caffe_field_layout():
    # BlobProto: data (5) packed float32, then shape (7) { dim (1) packed int64 }
    data = array_to_blob(np.array([[1.0, -2.5]], np.float32)).SerializeToString()
    expect = b"\x2a\x08" + struct.pack("<2f", 1.0, -2.5) + b"\x3a\x04\x0a\x02\x01\x02"
    assert data == expect
    # a 0-axis blob is written with no shape field and one value
    assert array_to_blob(np.float32(3.0)).SerializeToString() == b"\x2a\x04" + struct.pack("<f", 3.0)


def test_blob_reading_rules():
    legacy = pb.BlobProto(num=1, channels=1, height=2, width=3)
    legacy.double_data.extend([0.5, 1, 2, 3, 4, 5])          # double_data wins over data
    arr = blob_to_array(legacy)
    assert arr.shape == (1, 1, 2, 3) and arr.dtype == np.float32 and arr[0, 0, 0, 0] == 0.5
    assert shape_matches(legacy, (2, 3)) and shape_matches(legacy, (1, 2, 3)) and not shape_matches(legacy, (3, 2))
    assert blob_to_array(pb.BlobProto(data=[7.0])).shape == ()
    with pytest.raises(ScratchDetError, match="holds 2 values.*needs 3"):
        blob_to_array(parse_text("shape { dim: 3 } data: 1 data: 2", pb.BlobProto), "layer 'x' blob 0")


# -- caffemodel ---------------------------------------------------------------------------------------

def test_caffemodel_round_trip_is_bit_exact(tmp_path):
    net = make_net(seed=1)
    randomise_stats(net)
    path = tmp_path / "a.caffemodel"
    save_caffemodel(net, path)
    other = make_net(TEST, seed=2)
    assert load_caffemodel(other, path) == []
    for a, b in zip(net.params(), other.params()):
        assert a.tensor.dtype == b.tensor.dtype and torch.equal(a.tensor.detach(), b.tensor.detach())
    save_caffemodel(other, tmp_path / "b.caffemodel")
    # same weights, same configs except the phase each layer records
    ta, tb = read_caffemodel(path), read_caffemodel(tmp_path / "b.caffemodel")
    for la, lb in zip(ta.layer, tb.layer):
        assert la.phase == TRAIN and lb.phase == TEST
        la.ClearField("phase")
        lb.ClearField("phase")
    assert ta.SerializeToString() == tb.SerializeToString()
    norm = next(lp for lp in ta.layer if lp.name == "norm")
    assert not norm.blobs[0].HasField("shape") and list(norm.blobs[0].data) == [20.0]


def test_caffemodel_content_as_caffe_writes_it(tmp_path):
    net = make_net()
    path = tmp_path / "m.caffemodel"
    save_caffemodel(net, path)
    param = pb.NetParameter()
    param.ParseFromString(path.read_bytes())
    assert param.name == "small"
    assert [lp.name for lp in param.layer] == ["data", "conv1", "bn1", "scale1", "norm", "fc"]
    assert [len(lp.blobs) for lp in param.layer] == [0, 2, 3, 2, 1, 2]
    conv = param.layer[1]
    assert list(conv.blobs[0].shape.dim) == [4, 3, 3, 3] and list(conv.blobs[1].shape.dim) == [4]
    np.testing.assert_array_equal(np.asarray(conv.blobs[0].data, np.float32).reshape(4, 3, 3, 3),
                                  net.layer("conv1").blobs()[0].detach().numpy())
    assert [s.lr_mult for s in param.layer[2].param] == [0, 0, 0]


def test_loading_mismatched_shapes_names_the_layer(tmp_path):
    path = tmp_path / "m.caffemodel"
    save_caffemodel(make_net(), path)
    wider = make_net(text=NET.replace("num_output: 5", "num_output: 6"))
    with pytest.raises(ScratchDetError, match=r"m.caffemodel.*layer 'fc'.*\[5, 256\].*\[6, 256\]"):
        load_caffemodel(wider, path)
    renamed = make_net(text=NET.replace('"conv1"', '"convA"').replace('"bn1"', '"bnA"').replace('"scale1"', '"scaleA"')
                       .replace('"norm"', '"normA"').replace('"fc"', '"fcA"'))
    with pytest.raises(ScratchDetError, match="no layer with weights matches.*conv1.*convA"):
        load_caffemodel(renamed, path)


def test_legacy_v1_caffemodel_with_4d_blob_shapes(tmp_path):
    text = """layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 3 dim: 3 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip" inner_product_param { num_output: 3 } }"""
    net = make_net(TEST, text=text)
    v1 = pb.NetParameter(name="old")
    conv = v1.layers.add(name="conv", type=pb.V1LayerParameter.CONVOLUTION)
    w = np.arange(4, dtype=np.float32).reshape(2, 2, 1, 1)
    conv.blobs.add(num=2, channels=2, height=1, width=1, data=w.ravel().tolist())
    conv.blobs.add(num=1, channels=1, height=1, width=2, data=[0.5, -0.5])       # bias as 1x1x1xN
    ip = v1.layers.add(name="ip", type=pb.V1LayerParameter.INNER_PRODUCT)
    wi = np.linspace(-1, 1, 54, dtype=np.float32).reshape(3, 18)
    ip.blobs.add(num=1, channels=1, height=3, width=18, data=wi.ravel().tolist())
    ip.blobs.add(num=1, channels=1, height=1, width=3, data=[1, 2, 3])
    v1.layers.add(name="loss", type=pb.V1LayerParameter.SOFTMAX_LOSS)
    path = tmp_path / "v1.caffemodel"
    path.write_bytes(v1.SerializeToString())
    assert load_caffemodel(net, path) == ["loss"]
    np.testing.assert_array_equal(net.layer("conv").blobs()[0].detach().numpy(), w)
    np.testing.assert_array_equal(net.layer("conv").blobs()[1].detach().numpy(), [0.5, -0.5])
    np.testing.assert_array_equal(net.layer("ip").blobs()[0].detach().numpy(), wi)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "text"])
def test_broken_caffemodel_gives_one_line_error(tmp_path, damage):
    good = tmp_path / "good.caffemodel"
    save_caffemodel(make_net(), good)
    data = good.read_bytes()
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes({"truncated": data[: len(data) // 2 + 7], "garbage": bytes(range(256)) * 4,
                     "empty": b"", "text": NET.encode()}[damage])
    with pytest.raises(ScratchDetError) as err:
        load_caffemodel(make_net(), bad)
    assert "bad.caffemodel" in str(err.value) and "\n" not in str(err.value)


def test_broken_files_through_the_cli_print_one_line(tmp_path, capsys):
    model = tmp_path / "deploy.prototxt"
    model.write_text(NET)
    weights = tmp_path / "w.caffemodel"
    weights.write_bytes(b"\x0a\xff\xff\xff\x0f" + b"x" * 10)          # a name field claiming 4 GB
    assert cli.main(["time", "--model", str(model), "--weights", str(weights), "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "w.caffemodel" in err[0] and "Traceback" not in err[0]
    model.write_text(NET[: len(NET) // 2])                             # truncated prototxt
    assert cli.main(["time", "--model", str(model), "--iterations", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "deploy.prototxt" in err[0]
    model.write_bytes((tmp_path / "w.caffemodel").read_bytes())       # binary given as prototxt
    assert cli.main(["time", "--model", str(model), "--iterations", "1"]) == 2
    assert "deploy.prototxt" in capsys.readouterr().err


# -- solverstate --------------------------------------------------------------------------------------

def test_solverstate_round_trip(tmp_path):
    history = [np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32), np.zeros((0,), np.float32),
               np.float32(2.0)]
    path = tmp_path / "s_iter_10.solverstate"
    write_solverstate(path, iter=10, learned_net="s_iter_10.caffemodel", history=history, current_step=2,
                      minimum_loss=3.5, iter_last_event=7)
    state = read_solverstate(path)
    assert (state.iter, state.learned_net, state.current_step, state.minimum_loss, state.iter_last_event) == \
        (10, "s_iter_10.caffemodel", 2, 3.5, 7)
    got = [blob_to_array(b) for b in state.history]
    for a, b in zip(history, got):
        assert a.shape == b.shape and np.array_equal(a, b)
    # defaults as the SSD fork's schema gives them
    write_solverstate(path, iter=0, learned_net="x")
    state = read_solverstate(path)
    assert state.iter == 0 and state.minimum_loss == pytest.approx(1e38, rel=1e-6) and state.iter_last_event == 0
    path.write_bytes(b"\x08")                                          # truncated varint
    with pytest.raises(ScratchDetError, match="s_iter_10.solverstate"):
        read_solverstate(path)
    assert not list(tmp_path.glob(".*tmp"))                            # no temporary files left behind


def test_snapshots_get_the_modes_a_plain_open_gives(tmp_path):
    import os
    import stat
    old = os.umask(0o022)
    try:
        save_caffemodel(make_net(), tmp_path / "m.caffemodel")
        write_solverstate(tmp_path / "m.solverstate", iter=1, learned_net="m.caffemodel")
    finally:
        os.umask(old)
    for name in ("m.caffemodel", "m.solverstate"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


# -- Normalize's scale: [C], or a 0-axis scalar when channel_shared (spec §2.7, §7) ------------------

@pytest.mark.parametrize("shared", [True, False])
def test_normalize_scale_shape_agrees_in_shapes_engine_and_caffemodel(tmp_path, shared):
    from scratchdet.caffe import shapes
    text = NET.replace("norm_param {", f"norm_param {{ channel_shared: {str(shared).lower()}")
    param = parse_text(text, pb.NetParameter)
    want = () if shared else (4,)
    inferred = shapes.infer(param, TRAIN).layer("norm")
    assert inferred.param_shapes == [want] and inferred.learnable == (1 if shared else 4)
    net = Net(param, TRAIN, seed=0)
    assert [tuple(t.shape) for t in net.layer("norm").blobs()] == [want]
    for ly in shapes.infer(param, TRAIN).layers:           # every layer: shapes.py == the engine
        if ly.param_shapes:
            assert [tuple(t.shape) for t in net.layer(ly.name).blobs()] == [tuple(s) for s in ly.param_shapes], ly.name
    save_caffemodel(net, tmp_path / "m.caffemodel")
    blob = next(lp for lp in read_caffemodel(tmp_path / "m.caffemodel").layer if lp.name == "norm").blobs[0]
    assert blob.HasField("shape") == (not shared)            # Blob::ToProto: no shape field for 0 axes
    assert list(blob.data) == [20.0] * (1 if shared else 4)
    assert blob_to_array(blob).shape == want
    other = Net(param, TRAIN, seed=1)
    load_caffemodel(other, tmp_path / "m.caffemodel")
    assert tuple(other.layer("norm").blobs()[0].shape) == want
