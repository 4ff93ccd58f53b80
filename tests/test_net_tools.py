"""`scratchdet time` (caffe time's lines; the layer-by-layer backward gives the same gradients as
one autograd pass; data layers replaced by random inputs of their shape) and `scratchdet detect`
(preprocessing as the SSD test transform, rows drawn above the threshold with label-map names)."""
import re

import cv2
import numpy as np
import pytest
import torch

from scratchdet import cli
from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine import detect, timing
from scratchdet.engine.caffemodel import save_caffemodel
from scratchdet.engine.layers.base import REGISTRY, Layer
from scratchdet.engine.net import Net
from scratchdet.errors import ScratchDetError

TRAIN_NET = """name: "cls"
layer { name: "data" type: "Data" top: "data" top: "label" data_param { source: "no/such/lmdb" batch_size: 4 backend: LMDB }
  transform_param { crop_size: 12 mean_value: 104 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 stride: 2 weight_filler { type: "xavier" } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


def test_time_prints_caffe_time_lines_with_random_data(tmp_path, capsys):
    model = tmp_path / "train.prototxt"
    model.write_text(TRAIN_NET)
    assert cli.main(["time", "--model", str(model), "--iterations", "2"]) == 0
    out = capsys.readouterr().out
    lines = [re.sub(r"^I\d{4} [\d:.]+ +\d+ [\w.]+:\d+\] ", "", ln) for ln in out.splitlines()]
    assert len(lines) == len(out.splitlines()) and all(ln != raw for ln, raw in zip(lines, out.splitlines()))
    assert "*** Benchmark begins ***" in lines and "Testing for 2 iterations." in lines
    assert sum(1 for ln in lines if re.fullmatch(r"Iteration: \d forward-backward time: [\d.e+-]+ ms\.", ln)) == 2
    per_layer = {}
    for ln in lines:
        m = re.fullmatch(r" *(\S+)\t(forward|backward): ([\d.e+-]+) ms\.", ln)
        if m:
            per_layer[(m[1], m[2])] = float(m[3])
    names = ["data", "conv1", "bn1", "relu1", "pool1", "fc", "loss"]
    assert sorted(per_layer) == sorted((n, d) for n in names for d in ("forward", "backward"))
    assert per_layer[("conv1", "backward")] > 0 and per_layer[("fc", "forward")] > 0
    totals = {k: float(v) for k, v in re.findall(r"(Average Forward pass|Average Backward pass|Average Forward-Backward|Total Time): ([\d.e+-]+) ms\.", out)}
    assert set(totals) == {"Average Forward pass", "Average Backward pass", "Average Forward-Backward", "Total Time"}
    assert totals["Average Forward pass"] == pytest.approx(sum(v for (n, d), v in per_layer.items() if d == "forward"), rel=1e-3, abs=1e-3)
    assert totals["Average Forward-Backward"] == pytest.approx(totals["Total Time"] / 2, rel=1e-3)
    assert lines[-1] == "*** Benchmark ends ***"


def test_layer_by_layer_backward_gives_autograd_gradients():
    param, box_tops = timing.replace_data_layers(parse_text(TRAIN_NET, pb.NetParameter), TRAIN)
    assert box_tops == [] and param.layer[0].type == "Input"
    assert [list(s.dim) for s in param.layer[0].input_param.shape] == [[4, 3, 12, 12], [4]]
    net = Net(param, TRAIN, seed=3)
    inputs = timing.random_inputs(net, box_tops, 3, seed=1)
    assert set(inputs["label"].tolist()) <= {0.0, 1.0, 2.0}
    timing.benchmark(net, inputs, 1, torch.device("cpu"))
    ours = [p.tensor.grad.clone() for p in net.params() if p.learnable]
    net.zero_grad(set_to_none=True)
    net.total_loss(net.forward(inputs)).backward()
    for a, p in zip(ours, [p for p in net.params() if p.learnable]):
        torch.testing.assert_close(a, p.tensor.grad, rtol=1e-5, atol=1e-7)


def test_box_label_rows_for_annotated_data():
    text = """layer { name: "data" type: "AnnotatedData" top: "data" top: "label" data_param { source: "x" batch_size: 3 backend: LMDB }
  transform_param { resize_param { resize_mode: WARP height: 10 width: 12 } } }
layer { name: "s" type: "Silence" bottom: "data" bottom: "label" }"""
    param, box_tops = timing.replace_data_layers(parse_text(text, pb.NetParameter), TRAIN)
    net = Net(param, TRAIN, seed=0)
    values = timing.random_inputs(net, box_tops, 21, seed=0)
    rows = values["label"].numpy().reshape(-1, 8)
    assert values["data"].shape == (3, 3, 10, 12) and rows.shape == (6, 8)
    assert rows[:, 0].tolist() == [0, 0, 1, 1, 2, 2]
    assert np.all((rows[:, 1] >= 1) & (rows[:, 1] < 21))
    assert np.all(rows[:, 5] > rows[:, 3]) and np.all(rows[:, 6] > rows[:, 4]) and np.all(rows[:, 3:7] <= 1)


# -- detect -------------------------------------------------------------------------------------------

DEPLOY = """name: "det"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "priors" type: "Input" top: "prior" input_param { shape { dim: 1 dim: 2 dim: 4 } } }
layer { name: "loc" type: "Convolution" bottom: "data" top: "loc" convolution_param { num_output: 4 kernel_size: 8 } }
layer { name: "conf" type: "Convolution" bottom: "data" top: "conf" convolution_param { num_output: 2 kernel_size: 8 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc" top: "loc_flat" }
layer { name: "conf_flat" type: "Flatten" bottom: "conf" top: "conf_flat" }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_flat" bottom: "prior" top: "detection_out"
  detection_output_param { num_classes: 2 nms_param { nms_threshold: 0.45 } keep_top_k: 10 } }
"""

ROWS = np.array([[0, 1, 0.9, 0.25, 0.25, 0.75, 0.75],
                 [0, 1, 0.3, 0.05, 0.05, 0.15, 0.15],      # below the 0.5 threshold
                 [-1, -1, -1, -1, -1, -1, -1]], np.float32)


class FixedDetections(Layer):
    def forward(self, loc, conf, prior):
        return (torch.from_numpy(ROWS).reshape(1, 1, -1, 7),)


def test_preprocess_is_warp_resize_minus_mean():
    img = np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    data = detect.preprocess(img, 8, 10, (104, 117, 123), 0.5)
    expect = (cv2.resize(img, (10, 8), interpolation=cv2.INTER_LINEAR).astype(np.float32) - [104, 117, 123]) * 0.5
    assert data.shape == (1, 3, 8, 10)
    np.testing.assert_allclose(data[0].transpose(1, 2, 0), expect, rtol=1e-6)


def test_detect_draws_rows_above_threshold(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(REGISTRY, "DetectionOutput", FixedDetections)
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    # the companion test net's transform and label map
    (tmp_path / "labelmap.prototxt").write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                                                'item { name: "cat" label: 1 display_name: "Cat" }\n')
    (tmp_path / "test.prototxt").write_text(
        f'layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" data_param {{ source: "x" batch_size: 1 }} '
        f'transform_param {{ mean_value: 10 mean_value: 20 mean_value: 30 }} '
        f'annotated_data_param {{ label_map_file: "{tmp_path / "labelmap.prototxt"}" }} }}\n')
    net = Net(parse_text(DEPLOY, pb.NetParameter), TEST, seed=0)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    t = detect.companion_transform(tmp_path / "deploy.prototxt")
    assert t.mean == (10.0, 20.0, 30.0)
    img = np.full((101, 201, 3), 40, np.uint8)
    cv2.imwrite(str(tmp_path / "street.png"), img)
    assert cli.main(["detect", "--model", str(tmp_path / "deploy.prototxt"), "--weights", str(tmp_path / "w.caffemodel"),
                     "--out", str(tmp_path / "out"), str(tmp_path / "street.png")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split("\t")[1:] == ["Cat", "0.9000", "50 25 150 75"]
    assert len(lines) == 2 and "1 detection(s)" in lines[1]
    drawn = cv2.imread(str(tmp_path / "out" / "street.png"))
    assert drawn.shape == img.shape
    color = detect.color_for(1)
    np.testing.assert_array_equal(drawn[60, 50], color)            # left edge of the box
    np.testing.assert_array_equal(drawn[60, 150], color)           # right edge
    np.testing.assert_array_equal(drawn[12, 12], img[12, 12])      # the 0.3 box is not drawn
    assert cli.main(["detect", "--model", str(tmp_path / "deploy.prototxt"), "--weights", str(tmp_path / "w.caffemodel"),
                     "--out", str(tmp_path / "out"), str(tmp_path / "missing.jpg")]) == 2
    assert "missing.jpg: cannot read" in capsys.readouterr().err


MOBILENET_TRAIN_TEST = """name: "MobileNet-SSD"
layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.5 mean_value: 1 mean_value: 2 mean_value: 3 } data_param { source: "t" batch_size: 1 } }
layer { name: "data" type: "AnnotatedData" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.007843 mean_value: 127.5 mean_value: 127.5 mean_value: 127.5 } data_param { source: "v" batch_size: 1 } }
"""


def test_transform_sources_and_overrides(tmp_path):
    import argparse
    args = lambda **kw: argparse.Namespace(**{"mean": None, "scale": None, "swap_rb": False, "transform_from": None, **kw})
    model = tmp_path / "MobileNetSSD_deploy.prototxt"
    model.write_text(DEPLOY)
    t, line = detect.resolve_transform(args(), detect.companion_transform(model))     # no test.prototxt beside it: the defaults, said so
    assert (t.mean, t.scale, t.swap_rb) == ((104.0, 117.0, 123.0), 1.0, False)
    assert "from Caffe SSD's defaults (no test.prototxt beside" in line
    spec = tmp_path / "MobileNetSSD_test.prototxt"
    spec.write_text(MOBILENET_TRAIN_TEST)
    t, line = detect.resolve_transform(args(transform_from=str(spec)), detect.companion_transform(model))   # the TEST layer's values
    assert (t.mean, t.scale) == ((127.5,) * 3, pytest.approx(0.007843))
    assert line == f"transform: mean 127.5,127.5,127.5, scale 0.007843, BGR input; from {spec}"
    t, line = detect.resolve_transform(args(scale=0.25, swap_rb=True, mean="1,2,3"), detect.companion_transform(model))
    assert (t.mean, t.scale, t.swap_rb) == ((1.0, 2.0, 3.0), 0.25, True)
    assert line.endswith("overridden by --mean --scale --swap-rb") and "RGB input" in line
    for bad, message in ((args(scale=0.0), "--scale must be a positive number"),
                         (args(transform_from=str(tmp_path / "nope.prototxt")), "nope.prototxt: no such file")):
        with pytest.raises(ScratchDetError, match=message):
            detect.resolve_transform(bad, detect.companion_transform(model))
    # swap_rb feeds R,G,B: the mean is in that order too (as OpenCV's blobFromImage with swapRB)
    img = np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    data = detect.preprocess(img, 6, 8, (1, 2, 3), 0.5, swap_rb=True)
    expect = (cv2.resize(img, (8, 6), interpolation=cv2.INTER_LINEAR)[:, :, ::-1].astype(np.float32) - [1, 2, 3]) * 0.5
    np.testing.assert_allclose(data[0].transpose(1, 2, 0), expect, rtol=1e-6)


def test_detect_says_where_the_transform_came_from_and_warns_on_a_truncated_jpeg(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(REGISTRY, "DetectionOutput", FixedDetections)
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    (tmp_path / "spec.prototxt").write_text(MOBILENET_TRAIN_TEST)
    net = Net(parse_text(DEPLOY, pb.NetParameter), TEST, seed=0)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    img = np.full((64, 64, 3), (30, 120, 200), np.uint8)
    cv2.circle(img, (32, 32), 16, (255, 255, 255), -1)
    ok, jpg = cv2.imencode(".jpg", img)
    (tmp_path / "cut.jpg").write_bytes(jpg.tobytes()[: len(jpg) // 2])
    rc = cli.main(["detect", "--model", str(tmp_path / "deploy.prototxt"), "--weights", str(tmp_path / "w.caffemodel"),
                   "--transform-from", str(tmp_path / "spec.prototxt"), "--out", str(tmp_path / "out"),
                   str(tmp_path / "cut.jpg")])
    err = capsys.readouterr().err
    assert rc == 0 and (tmp_path / "out" / "cut.jpg").is_file()
    assert f"transform: mean 127.5,127.5,127.5, scale 0.007843, BGR input; from {tmp_path / 'spec.prototxt'}" in err
    assert f"warning: {tmp_path / 'cut.jpg'}: truncated JPEG (no end-of-image marker)" in err
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    rc = cli.main(["detect", "--model", str(tmp_path / "deploy.prototxt"), "--weights", str(tmp_path / "w.caffemodel"),
                   "--out", str(tmp_path / "out"), str(tmp_path / "garbage.jpg")])
    assert rc == 2 and f"{tmp_path / 'garbage.jpg'}: cannot decode the image" in capsys.readouterr().err
