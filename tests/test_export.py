"""BatchNorm folding (engine.fold), ``scratchdet export`` to ONNX and TorchScript, and the
onnxruntime backend of ``detect`` / ``test``.

The nets: the demo deploy net, ScratchDet300 (Root-ResNet-34) at a reduced input size and a small
MobileNet-style SSD with depthwise convolutions written here, all with random weights, nonzero
BatchNorm statistics and Scale parameters, saved as caffemodels by the engine. The independent
checks: the fold against the unfolded engine and against a torch.nn.functional recomputation;
onnxruntime and a TorchScript module loaded in a fresh process against the engine; the exported
ONNX model's outputs and detections against OpenCV dnn's Caffe importer on the same caffemodel.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scratchdet.backends import export as E
from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.cli import main as cli_main
from scratchdet.engine.caffemodel import read_caffemodel, save_caffemodel
from scratchdet.engine.fold import fold, plan
from scratchdet.engine.net import Net

from export_nets import (assert_same_detections, conv_block, float64_copy,  # noqa: E402  (tests/export_nets.py)
                         mobilenet_prototxt, picture, randomise)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "models/synthetic/demo_rootres/deploy.prototxt"
ROOTRES34 = REPO / "models/VOC0712/voc07_rootres34/deploy.prototxt"
ROOTRES34_SIZE = 257         # the smallest input its 3x3 valid extra convolutions accept (300 in the paper)
OUTPUTS = ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]


# -- nets ------------------------------------------------------------------------------------------------

class Case:
    """A deploy prototxt (written to ``folder``, resized if asked) and a random caffemodel for it."""

    def __init__(self, folder: Path, name: str, text: str, size: int | None = None):
        param = io.parse_text(text, pb.NetParameter, name)
        if size is not None:
            param = E.resize_input(param, size, size, 1)
        self.deploy = folder / f"{name}.prototxt"
        io.write_text(param, self.deploy)
        self.net = Net(param, TEST, source=name, seed=1)
        randomise(self.net)
        self.weights = folder / f"{name}.caffemodel"
        save_caffemodel(self.net, self.weights)
        self.name = name
        _, shape = E.input_blob(self.net)
        self.x = picture(shape[2], shape[3])


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    return {
        "demo": Case(folder, "demo", DEMO.read_text()),
        "rootres34": Case(folder, "rootres34", ROOTRES34.read_text(), size=ROOTRES34_SIZE),
        "mobilenet": Case(folder, "mobilenet", mobilenet_prototxt()),
    }


NETS = ["demo", "rootres34", "mobilenet"]


def rel_diff(a, b) -> float:
    """Largest difference relative to the output's largest magnitude (at least 1): float32 sums of
    large terms that cancel make an elementwise relative error meaningless near zero."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape
    return float(np.abs(a - b).max() / max(1.0, np.abs(a).max()))


def forward(net, x) -> dict:
    with torch.no_grad():
        blobs = net.forward({E.input_blob(net)[0]: torch.from_numpy(x)})
    return {k: v.numpy() for k, v in blobs.items()}


def assert_same_rows(ours, theirs, tol=1e-4):
    """Same detections in the same order: images, labels and count equal, scores and box corners
    within ``tol`` (relative for corners beyond 1: random box regressions decode far outside)."""
    ours, theirs = np.asarray(ours).reshape(-1, 7), np.asarray(theirs).reshape(-1, 7)
    assert ours.shape == theirs.shape
    assert (ours[:, :2] == theirs[:, :2]).all()
    assert (np.abs(ours[:, 2:] - theirs[:, 2:]) <= tol * np.maximum(1.0, np.abs(theirs[:, 2:]))).all()


# -- folding ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", NETS)
def test_folded_net_computes_what_the_unfolded_net_computes(cases, name):
    case = cases[name]
    folded = fold(case.net)
    kinds = [layer.lp.type for layer in folded.layers]
    assert "BatchNorm" not in kinds
    assert len(folded.layers) < len(case.net.layers)
    before, after = forward(case.net, case.x), forward(folded, case.x)
    with torch.no_grad():
        exact = {k: v.numpy() for k, v in float64_copy(case.net).forward({"data": torch.from_numpy(case.x).double()}).items()}
    for out in OUTPUTS:
        # ~1e-5 of each other, and the folded net no further from the float64 result than the
        # unfolded net's own float32 rounding (1.3e-5 on the 34-layer net's softmax)
        assert rel_diff(before[out], after[out]) < 3e-5, out
        # (or within 2e-5 of it: the unfolded engine's fused BatchNorm+Scale can be the closer one)
        assert rel_diff(exact[out], after[out]) <= max(1.5 * rel_diff(exact[out], before[out]) + 1e-6, 2e-5), out
    assert len(before["detection_out"].reshape(-1, 7)) > 10
    assert_same_detections(after["detection_out"], before["detection_out"], 3e-5)


def test_fold_against_a_functional_recomputation():
    text = ('input: "data" input_shape { dim: 2 dim: 3 dim: 9 dim: 9 }\n'
            + conv_block("c", "data", 5, k=3, s=2, p=1, bias=True)
            + 'layer { name: "c/leaky" type: "ReLU" bottom: "c" top: "out" relu_param { negative_slope: 0.1 } }\n')
    text = text.replace('layer { name: "c/relu" type: "ReLU" bottom: "c" top: "c" }\n', "")
    net = Net(io.parse_text(text, pb.NetParameter), TEST, seed=3)
    randomise(net, 4)
    groups = plan(net)
    assert len(groups) == 1 and len(groups[0].affine) == 2 and groups[0].relu is not None
    folded = fold(net)
    assert [layer.lp.type for layer in folded.layers] == ["Input", "Convolution"]
    conv, bn, scale = (net.layer(n) for n in ("c", "c/bn", "c/scale"))
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0)) * 10
    with torch.no_grad():
        s = bn.factor[0]
        y = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), 2, 1)
        y = (y - (bn.mean_sum / s).double().view(1, -1, 1, 1)) / torch.sqrt((bn.var_sum / s).double().view(1, -1, 1, 1) + 1e-5)
        y = y * scale.scale.double().view(1, -1, 1, 1) + scale.bias.double().view(1, -1, 1, 1)
        y = F.leaky_relu(y, 0.1)
        got = folded.forward({"data": x})["out"]
    assert torch.allclose(got.double(), y, rtol=1e-5, atol=1e-5)


def test_a_blob_read_twice_keeps_its_batchnorm_and_training_nets_fold_nothing():
    text = ('input: "data" input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'
            + conv_block("c", "data", 4, relu=False).replace('top: "c" }\nlayer { name: "c/scale"', 'top: "c_bn" }\nlayer { name: "c/scale"')
            .replace('bottom: "c" top: "c" scale_param', 'bottom: "c_bn" top: "c_bn" scale_param')
            + 'layer { name: "sum" type: "Eltwise" bottom: "c" bottom: "c_bn" top: "sum" }\n')
    param = io.parse_text(text, pb.NetParameter)
    net = Net(param, TEST, seed=0)
    randomise(net)
    groups = plan(net)
    # the conv output is read by BatchNorm and by the Eltwise: the BatchNorm becomes a Scale on its own
    assert [net.layers[g.head].lp.type for g in groups] == ["BatchNorm"]
    folded = fold(net)
    assert [layer.lp.type for layer in folded.layers] == ["Input", "Convolution", "Scale", "Eltwise"]
    x = np.random.default_rng(1).normal(0, 5, (1, 3, 8, 8)).astype(np.float32)
    assert rel_diff(forward(net, x)["sum"], forward(folded, x)["sum"]) < 1e-5
    # batch statistics cannot be folded
    assert plan(Net(param, TRAIN, seed=0)) == []


# -- ONNX ------------------------------------------------------------------------------------------------

def export(case, fmt="onnx", *extra, out=None) -> Path:
    out = out or case.deploy.with_suffix(".onnx" if fmt == "onnx" else ".pt")
    rc = cli_main(["export", "--model", str(case.deploy), "--weights", str(case.weights), "--format", fmt,
                   "--out", str(out), *extra])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def onnx_files(cases):
    return {name: export(case) for name, case in cases.items()}


@pytest.mark.parametrize("name", NETS)
def test_onnx_export_agrees_with_the_engine(cases, onnx_files, name):
    case = cases[name]
    model = onnx.load(str(onnx_files[name]))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == E.OPSET
    ops = {n.op_type for n in model.graph.node}
    assert "BatchNormalization" not in ops                      # folded
    meta = E.read_onnx_meta(model)
    assert meta["outputs"] == OUTPUTS and meta["input_shape"][0] == 1
    runner = E.OnnxRunner(onnx_files[name])
    got = runner.forward(case.x)
    ref = forward(case.net, case.x)
    for out in OUTPUTS:
        assert rel_diff(ref[out], got[out]) < 1e-4, out
    # the engine's DetectionOutput on onnxruntime's outputs: the engine's own detections (as a set:
    # the graph is folded and the unfolded engine's rounding can swap two near-equal scores)
    assert_same_detections(runner.detect(case.x), ref["detection_out"], 1e-4)


def test_dynamic_batch_runs_any_batch_and_static_refuses_others(cases, onnx_files, tmp_path):
    case = cases["mobilenet"]
    path = export(case, "onnx", "--dynamic-batch", out=tmp_path / "dyn.onnx")
    model = onnx.load(str(path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    x = np.concatenate([case.x, picture(*case.x.shape[2:], seed=5), case.x[:, :, ::-1].copy()])
    got = E.OnnxRunner(path).forward(x)
    resized = Net(E.resize_input(case.net.param, batch=3), TEST, seed=0)
    resized.copy_from(read_caffemodel(case.weights))
    ref = forward(resized, x)
    for out in OUTPUTS:
        assert rel_diff(ref[out], got[out]) < 1e-4, out
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        E.OnnxRunner(onnx_files["mobilenet"]).forward(x)


# -- TorchScript -----------------------------------------------------------------------------------------

FRESH = """
import json, sys, numpy as np, torch
extra = {"scratchdet.json": ""}
module = torch.jit.load(sys.argv[1], _extra_files=extra)
meta = json.loads(extra["scratchdet.json"])
x = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    outs = module(x)
np.savez(sys.argv[3], **{n: o.numpy() for n, o in zip(meta["outputs"], outs)})
"""


@pytest.mark.parametrize("name", ["demo", "mobilenet"])
def test_torchscript_loads_in_a_fresh_process_and_agrees(cases, tmp_path, name):
    case = cases[name]
    path = export(case, "torchscript", out=tmp_path / f"{name}.pt")
    np.save(tmp_path / "x.npy", case.x)
    # a process that imports torch only: nothing of scratchdet is needed to run the module
    subprocess.run([sys.executable, "-c", FRESH, str(path), str(tmp_path / "x.npy"), str(tmp_path / "out.npz")],
                   check=True, capture_output=True, timeout=120, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    got = np.load(tmp_path / "out.npz")
    ref = forward(case.net, case.x)
    for out in OUTPUTS:
        assert rel_diff(ref[out], got[out]) < 1e-4, out
    meta = json.loads(json.dumps(E.metadata(fold(case.net), case.deploy, 0)))
    assert_same_rows(E.detection_rows({n: got[n] for n in OUTPUTS}, meta), ref["detection_out"])


# -- against OpenCV dnn on the same caffemodel -----------------------------------------------------------

@pytest.mark.parametrize("name", ["demo", "mobilenet", "rootres34"])
def test_round_trip_agrees_with_opencv_on_the_caffemodel(cases, onnx_files, name):
    cv2 = pytest.importorskip("cv2")
    case = cases[name]
    cv = cv2.dnn.readNetFromCaffe(str(case.deploy), str(case.weights))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setInput(case.x)
    theirs = dict(zip(OUTPUTS + ["detection_out"], cv.forward(OUTPUTS + ["detection_out"])))
    runner = E.OnnxRunner(onnx_files[name])
    ours = runner.forward(case.x)
    for out in OUTPUTS:
        assert rel_diff(theirs[out], ours[out].reshape(theirs[out].shape)) < 1e-4, out
    rows = runner.detect(case.x)
    cv_rows = theirs["detection_out"].reshape(-1, 7)
    cv_rows = cv_rows[cv_rows[:, 2] > 0]              # OpenCV pads to keep_top_k rows with zeros
    assert len(rows) > 10
    assert_same_detections(rows, cv_rows, 1e-4)


@pytest.mark.parametrize("name", ["demo", "mobilenet"])
def test_opencv_runs_the_exported_onnx_file(cases, onnx_files, name):
    """OpenCV's own ONNX importer reads the exported graph and computes the same loc and conf.
    (It folds the constant PriorBox subgraph away at import and then cannot return
    mbox_priorbox, so that output is not asked of it.)"""
    cv2 = pytest.importorskip("cv2")
    case = cases[name]
    cv = cv2.dnn.readNetFromONNX(str(onnx_files[name]))
    cv.setInput(case.x)
    ref = forward(case.net, case.x)
    for out, value in zip(OUTPUTS[:2], cv.forward(OUTPUTS[:2])):
        assert rel_diff(ref[out], value.reshape(ref[out].shape)) < 1e-4, out


# -- the command line: errors, detect and test with --backend onnxruntime -------------------------------

def test_bad_input_is_one_line_and_writes_nothing(cases, tmp_path, capsys):
    case = cases["mobilenet"]
    out = tmp_path / "x.onnx"
    base = ["export", "--model", str(case.deploy), "--weights", str(case.weights), "--out", str(out)]
    assert cli_main(base + ["--format", "onnx", "--input-size", "big"]) == 2
    assert cli_main(base + ["--format", "torchscript", "--dynamic-batch"]) == 2
    err = capsys.readouterr().err
    assert "--input-size must be HxW" in err and "--dynamic-batch applies to ONNX only" in err
    fixed_batch = tmp_path / "fixed_batch.prototxt"         # a Reshape that pins the batch to 1
    fixed_batch.write_text(mobilenet_prototxt().replace("shape { dim: 0 dim: -1 dim: 4 }", "shape { dim: 1 dim: -1 dim: 4 }"))
    assert cli_main(["export", "--model", str(fixed_batch), "--weights", str(case.weights), "--format", "onnx",
                     "--out", str(out), "--dynamic-batch"]) == 2
    err = capsys.readouterr().err
    assert "layer 'mbox_conf_reshape' (Reshape): changes the batch axis" in err and err.count("\n") == 1
    # the onnxruntime backend: a file that is no ONNX model, a test without --onnx
    assert cli_main(["detect", "--backend", "onnxruntime", "--model", str(case.weights), "--out", str(tmp_path / "d"),
                     str(case.deploy)]) == 2
    assert cli_main(["test", "--model", str(case.deploy), "--backend", "onnxruntime"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and "not an ONNX model" in err[0] and "needs --onnx" in err[1]
    assert not out.exists() and not list(tmp_path.glob(".x.onnx*"))


def test_detect_backends_print_the_same_detections(cases, onnx_files, tmp_path, capsys):
    import cv2
    case = cases["demo"]
    image = tmp_path / "img.png"
    cv2.imwrite(str(image), (case.x[0].transpose(1, 2, 0) + np.float32([104, 117, 123])).clip(0, 255).astype(np.uint8))
    common = ["--out", str(tmp_path / "drawn"), "--threshold", "0.2", str(image)]
    printed = []
    for argv in (["--model", str(case.deploy), "--weights", str(case.weights), "--no-fold"],
                 ["--model", str(case.deploy), "--weights", str(case.weights)],
                 ["--backend", "onnxruntime", "--model", str(onnx_files["demo"])]):
        assert cli_main(["detect", *argv, *common]) == 0
        printed.append(capsys.readouterr().out)
    assert printed[0].count("\n") > 5
    assert printed[0] == printed[1] == printed[2]


@pytest.fixture(scope="module")
def synthetic_test_set(tmp_path_factory):
    """A 40-image synthetic set (8 held out) and the demo nets generated for it."""
    root = tmp_path_factory.mktemp("score")
    (root / "data").mkdir()
    (root / "data" / "labelmap_synthetic.prototxt").write_text((REPO / "data/labelmap_synthetic.prototxt").read_text())
    run = lambda argv: subprocess.run([sys.executable, "-m", "scratchdet", *argv], cwd=root, check=True,  # noqa: E731
                                      capture_output=True, timeout=300)
    run(["data", "synthetic", "--out", "data/synthetic", "--images", "40", "--seed", "0", "--lmdb", "data/lmdb", "--quiet"])
    run(["gen", "demo_rootres", "--out", "models", "--set", "num_test_image=8"])
    return root


def test_test_backends_give_the_same_map(cases, synthetic_test_set, tmp_path, monkeypatch, capsys):
    root = synthetic_test_set
    monkeypatch.chdir(root)
    deploy = root / "models/synthetic/demo_rootres/deploy.prototxt"
    net = Net(io.read_net(deploy), TEST, seed=2)
    randomise(net, 2)
    with torch.no_grad():                 # scores that rank boxes: scale the heads down as training would
        for layer in net.layers:
            if "mbox" in layer.name and layer.lp.type == "Convolution":
                layer.weight.mul_(0.05)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    model = tmp_path / "demo.onnx"
    assert cli_main(["export", "--model", str(deploy), "--weights", str(tmp_path / "w.caffemodel"), "--format", "onnx",
                     "--out", str(model), "--batch", "10"]) == 0
    capsys.readouterr()
    test = ["test", "--model", "models/synthetic/demo_rootres/test.prototxt", "--quiet", "--iterations", "1",
            "--workers", "0"]
    results = []
    for argv in (["--weights", str(tmp_path / "w.caffemodel"), "--no-fold"], ["--weights", str(tmp_path / "w.caffemodel")],
                 ["--backend", "onnxruntime", "--onnx", str(model)]):
        assert cli_main(test + argv) == 0
        results.append(capsys.readouterr().out)
    assert "detection_eval = " in results[0]
    assert results[0] == results[1] == results[2]
