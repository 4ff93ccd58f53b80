"""DetectionOutput's save_output_param: the VOC result files a test pass writes.

Hand cases for the fork's arithmetic (clip, scale, round to 1/100 pixel, truncate, max = min +
size) and its stream printing; the pass bookkeeping (names from the name-size file, a write every
``num_test_image`` images, filler rows skipped, empty files for classes without detections); and
the files of ``scratchdet test`` on the demo net against real Caffe's ``caffe test`` on the same
LMDB and weights: live with ``CAFFE_BIN`` (caffe_ref), and against the files recorded from it
(tests/fixtures/caffe_test_demo_results.json.gz says how they were made) everywhere else.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST
from scratchdet.caffe.schema import pb
from scratchdet.engine.layers.detection_save import DetectionSaver, cpp_float, scaled_box, voc_box

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "caffe_test_demo_results.json.gz"
RESULTS = Path("runs/synthetic/demo_rootres/results/Main")
# scores are printed with 6 significant digits; the two engines sum the convolutions in different
# float32 orders, which moves a score by a few 1e-7 and so sometimes flips the last printed digit
SCORE_TOLERANCE = 2e-6


# -- the fork's arithmetic ------------------------------------------------------------------------

def test_boxes_are_clipped_scaled_rounded_and_truncated():
    # 300 wide, 200 high: x by 300, y by 200
    assert voc_box(scaled_box([0.1, 0.2, 0.55, 0.9], 200, 300)) == (30, 40, 165, 180)
    # clipped to the image first
    assert voc_box(scaled_box([-0.2, -1.0, 1.5, 2.0], 200, 300)) == (0, 0, 300, 200)
    # truncation, not rounding: 10.4 -> 10, and xmax = 10 + int(9.9) = 19 although the corner is 20.3
    assert voc_box(np.float32([10.4, 5.0, 20.3, 7.0])) == (10, 5, 19, 7)
    # hundredths are rounded before truncating: 10.996 -> 11.00 -> 11
    assert voc_box(np.float32([10.996, 0.0, 12.0, 1.0]))[0] == 11


def _c_voc_box(box):
    """One box as the fork's C++ computes it, a float32 scalar at a time: round(v * 100) / 100
    (halves away from zero), static_cast<int>, xmax = xmin + int(size)."""
    def hundredths(v):
        scaled = np.float32(v) * np.float32(100)
        rounded = np.float32(np.floor(abs(scaled) + np.float32(0.5)))
        return np.float32((rounded if scaled >= 0 else -rounded) / np.float32(100))
    x0, y0, x1, y1 = (np.float32(v) for v in box)
    xmin, ymin = int(hundredths(x0)), int(hundredths(y0))
    return xmin, ymin, xmin + int(hundredths(np.float32(x1 - x0))), ymin + int(hundredths(np.float32(y1 - y0)))


def test_many_boxes_at_once_as_the_fork_does_each():
    """The writer rounds a pass's boxes in one array; each equals the fork's per-box arithmetic,
    half-hundredth ties and boxes past the image included."""
    from scratchdet.engine.layers.detection_save import scaled_boxes, voc_boxes
    rng = np.random.default_rng(4)
    norm = rng.random((4000, 4)).astype(np.float32) * 1.4 - 0.2
    norm[:1000] = np.round(norm[:1000] * 400) / 400            # many exact half-hundredths after scaling
    heights, widths = rng.integers(1, 900, 4000), rng.integers(1, 900, 4000)
    boxes = scaled_boxes(norm, heights, widths)
    expected = [_c_voc_box(b) for b in boxes]
    assert [tuple(r) for r in voc_boxes(boxes).tolist()] == expected
    assert all(voc_box(scaled_box(n, h, w)) == e for n, h, w, e in zip(norm[:200], heights, widths, expected))


def test_scores_print_as_a_cpp_stream():
    assert [cpp_float(v) for v in (0.6716341, 0.5, 1.0, 1.5e-05, 0.01, 0.123456789)] == \
        ["0.671634", "0.5", "1", "1.5e-05", "0.01", "0.123457"]


def _saver(tmp_path, num_test_image=None, names=3):
    labelmap = tmp_path / "labelmap.prototxt"
    labelmap.write_text('item { name: "bg" label: 0 }\nitem { name: "cat" label: 1 }\nitem { name: "dog" label: 2 }\n')
    name_size = tmp_path / "name_size.txt"
    name_size.write_text("".join(f"img{k} 100 200\n" for k in range(names)))
    dp = pb.DetectionOutputParameter(num_classes=3, background_label_id=0)
    sp = dp.save_output_param
    sp.output_directory = str(tmp_path / "out")
    sp.output_name_prefix = "comp4_"
    sp.output_format = "VOC"
    sp.label_map_file = str(labelmap)
    sp.name_size_file = str(name_size)
    if num_test_image:
        sp.num_test_image = num_test_image
    saver = DetectionSaver.from_param(dp, 3, "layer 'detection_out' (DetectionOutput)")
    saver.enable()
    return saver


def test_a_pass_is_written_after_num_test_image_images(tmp_path):
    saver = _saver(tmp_path, num_test_image=2)
    out = tmp_path / "out"
    # batch of 2: image 0 has a cat, image 1 nothing (the layer's filler row)
    assert saver.add([[0, 1, 0.9, 0.1, 0.1, 0.5, 0.5]], 1) == []
    assert not out.exists()                                  # nothing until the pass is complete
    written = saver.add([[0, -1, -1, -1, -1, -1, -1]], 1)
    assert sorted(p.name for p in written) == ["comp4_cat.txt", "comp4_dog.txt"]
    assert (out / "comp4_cat.txt").read_text() == "img0 0.9 20 10 100 50\n"
    assert (out / "comp4_dog.txt").read_text() == ""         # a class without detections: empty file
    # the next pass starts again at the first name and replaces the files
    saver.add([[0, 2, 0.25, 0, 0, 1, 1], [1, 2, 0.5, 0, 0, 0.5, 0.5]], 2)
    assert (out / "comp4_dog.txt").read_text() == "img0 0.25 0 0 200 100\nimg1 0.5 0 0 100 50\n"
    assert (out / "comp4_cat.txt").read_text() == ""
    assert not [p for p in out.iterdir() if p.name.startswith(".")]      # no temp files left


def test_coco_format_writes_one_json_with_hundredths(tmp_path):
    saver = _saver(tmp_path, num_test_image=1, names=1)
    saver.format, saver.prefix = "COCO", "dets"
    saver.add([[0, 2, 0.123456789, 0.1, 0.1, 0.50001, 0.5]], 1)
    dets = json.loads((tmp_path / "out" / "dets.json").read_text())
    assert dets == [{"image_id": "img0", "category_id": "dog", "bbox": [20.0, 10.0, 80.0, 40.0], "score": 0.123456791}]


def test_incomplete_parameters_save_nothing_and_bad_ones_name_the_field(tmp_path):
    dp = pb.DetectionOutputParameter(num_classes=3)
    dp.save_output_param.output_directory = str(tmp_path / "out")
    assert DetectionSaver.from_param(dp, 3, "here") is None                # no label map: the fork saves nothing
    saver = _saver(tmp_path)
    assert saver.num_test_image == 3                                        # default: every name
    with pytest.raises(Exception, match="num_test_image 5 must be in 1..3"):
        _saver(tmp_path, num_test_image=5)


# -- against real Caffe -------------------------------------------------------------------------

def _run(argv, cwd, **kw):
    r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=900, **kw)
    assert r.returncode == 0, (argv, r.stderr[-3000:])
    return r


def _read_results(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.glob("*.txt"))}


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """A 50-image synthetic set (10 test images), the demo net generated for it, weights from the
    engine's fillers (BatchNorm statistics set to mean 0 / variance 1, the prediction convs scaled
    by 0.2 so the scores spread), and our ``scratchdet test`` result files."""
    root = tmp_path_factory.mktemp("detsave")
    (root / "data").mkdir()
    shutil.copy(REPO / "data" / "labelmap_synthetic.prototxt", root / "data")
    scratchdet = [sys.executable, "-m", "scratchdet"]
    _run(scratchdet + ["data", "synthetic", "--out", "data/synthetic", "--images", "50", "--seed", "0",
                       "--lmdb", "data/lmdb", "--quiet"], root)
    _run(scratchdet + ["gen", "demo_rootres", "--out", "models", "--set", "num_test_image=10"], root)
    from scratchdet.engine.caffemodel import save_caffemodel
    from scratchdet.engine.net import Net
    net = Net(io.read_net(root / "models/synthetic/demo_rootres/deploy.prototxt"), TEST, source="deploy")
    net.fill(7)
    with torch.no_grad():
        for p in net.params():
            if net.layer(p.layer).lp.type == "BatchNorm":
                p.tensor.fill_((0.0, 1.0, 1.0)[p.index])
            elif "mbox" in p.layer:
                p.tensor.mul_(0.2)
    save_caffemodel(net, root / "init.caffemodel")
    test = ["--model", "models/synthetic/demo_rootres/test.prototxt", "--weights", "init.caffemodel",
            "--iterations", "1"]
    _run(scratchdet + ["test", *test, "--quiet"], root)
    return root, test, _read_results(root / RESULTS)


def assert_same_detections(ours: dict[str, str], theirs: dict[str, str]) -> int:
    """Same files, lines, image names and integer boxes; scores within SCORE_TOLERANCE. Returns the
    number of lines that differ in any way (only ever in a score's last digit)."""
    assert sorted(ours) == sorted(theirs)
    differing = 0
    for name in theirs:
        a, b = ours[name].splitlines(), theirs[name].splitlines()
        assert len(a) == len(b), f"{name}: {len(a)} lines, real Caffe {len(b)}"
        for k, (la, lb) in enumerate(zip(a, b)):
            fa, fb = la.split(), lb.split()
            assert fa[0] == fb[0] and fa[2:] == fb[2:], f"{name} line {k + 1}: {la!r} vs real Caffe {lb!r}"
            assert abs(float(fa[1]) - float(fb[1])) <= SCORE_TOLERANCE, f"{name} line {k + 1}: {la!r} vs {lb!r}"
            differing += la != lb
    return differing


def test_result_files_match_those_recorded_from_real_caffe(demo_run):
    _root, _test, ours = demo_run
    recorded = json.loads(gzip.decompress(FIXTURE.read_bytes()))
    assert sum(len(t.splitlines()) for t in recorded["files"].values()) == recorded["lines"] == 2000
    assert_same_detections(ours, recorded["files"])


@pytest.mark.caffe_ref
def test_result_files_match_real_caffe_test(demo_run, caffe_bin):
    root, test, ours = demo_run
    _run([caffe_bin, "test", *test], root, env=dict(os.environ, GLOG_logtostderr="1"))
    theirs = _read_results(root / RESULTS)
    assert sum(len(t.splitlines()) for t in theirs.values()) == 2000      # 10 images x keep_top_k 200
    assert_same_detections(ours, theirs)


def _coco_net(root: Path) -> Path:
    text = (root / "models/synthetic/demo_rootres/test.prototxt").read_text()
    coco = (text.replace('output_format: "VOC"', 'output_format: "COCO"')
            .replace('output_name_prefix: "comp4_det_test_"', 'output_name_prefix: "dets"')
            .replace("results/Main", "results/coco"))
    path = root / "coco_test.prototxt"
    path.write_text(coco)
    return path


@pytest.mark.caffe_ref
def test_coco_results_hold_real_caffes_values(demo_run, caffe_bin):
    import re
    root, test, _ = demo_run
    model = _coco_net(root)
    argv = ["--model", str(model), "--weights", "init.caffemodel", "--iterations", "1"]
    _run([sys.executable, "-m", "scratchdet", "test", *argv, "--quiet"], root)
    ours = json.loads((root / "runs/synthetic/demo_rootres/results/coco/dets.json").read_text())
    _run([caffe_bin, "test", *argv], root, env=dict(os.environ, GLOG_logtostderr="1"))
    text = (root / "runs/synthetic/demo_rootres/results/coco/dets.json").read_text()
    # the fork un-quotes digit strings, so the synthetic names come out as numbers with leading
    # zeros, which JSON forbids: quote them back to read the file
    theirs = json.loads(re.sub(r'"image_id": (\d+)', r'"image_id": "\1"', text))
    assert len(ours) == len(theirs) == 2000
    for a, b in zip(ours, theirs):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        # the same 1/100 pixel values, but for the float32 summation order moving a value across a
        # rounding edge now and then (one step, 0.01)
        assert a["bbox"] == pytest.approx(b["bbox"], abs=0.0101)
        assert a["score"] == pytest.approx(b["score"], abs=SCORE_TOLERANCE)
