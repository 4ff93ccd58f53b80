"""Corpus of bad and foreign inputs for the logs / detect / report side (issue #12): each case builds
its files here, runs the ``scratchdet`` command in-process and checks the exit code, that what the
user reads names the file, record or field in one line, and that no traceback, numpy scalar repr or
numpy RuntimeWarning reaches the user.

Log excerpts: NVIDIA Caffe's display lines as an NVIDIA-Caffe log shows them and as issue #12 quotes
them, the Xilinx fork's ", remaining N hours" (issue #12), BVLC Caffe's 2014 CIFAR-10 tutorial
(``Test score #k``), and BVLC/caffe issue #5748's fatal ``Check failed: mdb_status == 0`` line.
"""
import json
import warnings

import cv2
import numpy as np
import pytest
import torch

from scratchdet import cli
from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST
from scratchdet.caffe.schema import pb
from scratchdet.data import labelmap as lm
from scratchdet.data.lmdb_io import LMDBWriter
from scratchdet.engine.caffemodel import save_caffemodel


def run(capsys, *argv):
    """``scratchdet ARGV`` in-process with numpy's RuntimeWarnings as errors (a leak fails the
    case); -> (exit code, stdout, stderr)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    for text in (out, err):
        assert "Traceback" not in text and "np.float" not in text and "RuntimeWarning" not in text, text
    return rc, out, err


def one_error_line(err: str, *fragments: str) -> str:
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


# -- logs ------------------------------------------------------------------------------------------

NVIDIA = """\
I0329 06:59:55.182549 1 solver.cpp:334] Iteration 100 (497.307 iter/s, 0.197061s/98 iter), loss = 2.18689
I0329 06:59:55.182579 1 solver.cpp:356]     Train net output #0: loss = 2.18689 (* 1 = 2.18689 loss)
I0329 06:59:55.182588 1 sgd_solver.cpp:161] Iteration 100, lr = 9.92565e-05, m = 0.9, wd = 0.0005, gs = 1
I0329 07:05:01.000000 1 solver.cpp:334] Iteration 900 (2.36675 iter/s, 21.126s/50 iter), loss = -nan
I0329 07:05:01.000010 1 solver.cpp:356]     Train net output #0: loss = -nan (* 1 = -nan loss)
"""
XILINX = """\
I0101 10:00:00.000000 77 solver.cpp:310] Iteration 850 (2.4 iter/s, 20.8s/50 iter), loss = 3.61, remaining 213 hours
I0101 10:00:00.000001 77 solver.cpp:329]     Train net output #0: mbox_loss = 3.5 (* 1 = 3.5 loss)
I0101 10:00:21.000000 77 solver.cpp:310] Iteration 900 (2.4 iter/s, 20.8s/50 iter), loss = 3.39, remaining 212 hours
"""
FATAL = """\
I0707 16:48:46.332346 16677 layer_factory.hpp:77] Creating layer data
F0707 16:48:46.336623 16692 db_lmdb.hpp:15] Check failed: mdb_status == 0 (2 vs. 0) No such file or directory
*** Check failure stack trace: ***
    @     0x7f4525702c90  caffe::db::LMDB::Open()
Aborted (core dumped)
"""
ORPHAN_TEST = """\
I0609 03:17:00.000000 23885 solver.cpp:243] Iteration 340, loss = 7.1
I0609 03:17:01.000000 23885 solver.cpp:546]     Test net output #0: detection_eval = 0.7
"""
BVLC_2014 = """\
I0317 21:53:12.185698 2008298256 solver.cpp:65] Iteration 100, loss = 1.73643
I0317 21:54:41.150030 2008298256 solver.cpp:87] Iteration 500, Testing net
I0317 21:54:47.129461 2008298256 solver.cpp:114] Test score #0: 0.5504
I0317 21:54:47.129500 2008298256 solver.cpp:114] Test score #1: 1.27805
"""


def test_logs_of_other_forks_and_crashes(tmp_path, capsys):
    logs = {}
    for name, text in (("nvidia", NVIDIA), ("xilinx", XILINX), ("fatal", FATAL), ("orphan", ORPHAN_TEST),
                       ("bvlc2014", BVLC_2014)):
        logs[name] = tmp_path / f"{name}.log"
        logs[name].write_text(text)
    rc, out, err = run(capsys, "compare", *logs.values(), "--json")
    assert rc == 0
    cards = {c["log"]: c for c in json.loads(out)}
    nvidia, xilinx, fatal, orphan, bvlc = (cards[str(p)] for p in logs.values())
    assert nvidia["status"] == "diverged" and nvidia["diverged_at"] == 900          # "-nan" read
    assert xilinx["iterations"] == 900 and xilinx["status"] == "running"            # "remaining" form read
    assert fatal["verdict"] == "crashed" and any("Check failed: mdb_status == 0" in n for n in fatal["notes"])
    assert orphan["verdict"] == "no test yet"                                       # not booked at 340
    assert any(f"{logs['orphan']}:2: test output without its 'Testing net' line" in n for n in orphan["notes"])
    assert bvlc["final_map"] == pytest.approx(55.04)                               # "Test score #0"
    # --strict: a crashed run fails the score card, with a one-line message
    rc, out, err = run(capsys, "compare", logs["fatal"], "--strict")
    assert rc == 1 and "crashed" in out and "some runs do not match the paper" in err
    # the parser's numbers, per iteration
    rc, out, err = run(capsys, "plot", logs["nvidia"], logs["xilinx"], "--out", tmp_path / "plots")
    assert rc == 0 and (tmp_path / "plots" / "figure1.png").is_file()


def test_logs_sharing_a_name_get_their_paths_and_an_unreadable_log_is_one_line(tmp_path, capsys):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "train.log").write_text(XILINX)
    rc, out, err = run(capsys, "plot", tmp_path / "a" / "train.log", tmp_path / "b" / "train.log",
                       "--variant", "demo", "--variant", "demo", "--out", tmp_path / "p")
    assert rc == 0
    rc, out, err = run(capsys, "compare", tmp_path / "missing.log")
    one_error_line(err, "missing.log", "cannot read the log")
    assert rc == 2


# -- detect --------------------------------------------------------------------------------------

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "p" type: "Convolution" bottom: "data" top: "p" convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "loc" type: "Convolution" bottom: "p" top: "loc" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "conf" type: "Convolution" bottom: "p" top: "conf" convolution_param { num_output: 2 kernel_size: 3 pad: 1 } }
layer { name: "prior" type: "PriorBox" bottom: "p" bottom: "data" top: "prior"
  prior_box_param { min_size: 12 variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "conf_sig" type: "Sigmoid" bottom: "conf_flat" top: "conf_sig" }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_sig" bottom: "prior" top: "detection_out"
  detection_output_param { num_classes: 2 code_type: CENTER_SIZE nms_param { nms_threshold: 0.45 top_k: 20 }
    keep_top_k: 10 confidence_threshold: 0.01 clip: 1 } }
"""


@pytest.fixture()
def tiny_net(tmp_path):
    from scratchdet.engine.net import Net
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(NET)
    net = Net(io.parse_text(NET, pb.NetParameter), TEST, source=str(deploy), seed=0)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    return deploy, tmp_path / "w.caffemodel"


def test_detect_transform_flags_truncated_jpeg_and_clip_field(tmp_path, capsys, tiny_net):
    deploy, weights = tiny_net
    capsys.readouterr()
    img = np.full((40, 40, 3), (30, 120, 200), np.uint8)
    cv2.circle(img, (20, 20), 10, (255, 255, 255), -1)
    jpg = cv2.imencode(".jpg", img)[1].tobytes()
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 2])
    base = ["detect", "--model", deploy, "--weights", weights, "--out", tmp_path / "out"]
    # a truncated JPEG: drawn, with a warning naming it; the transform's source said in one line;
    # the newer forks' DetectionOutput field named in a warning
    rc, out, err = run(capsys, *base, "--scale", "0.007843", "--mean", "127.5", tmp_path / "cut.jpg")
    assert rc == 0 and (tmp_path / "out" / "cut.jpg").is_file()
    assert f"warning: {tmp_path / 'cut.jpg'}: truncated JPEG" in err
    assert "transform: mean 127.5,127.5,127.5, scale 0.007843, BGR input; from Caffe SSD's defaults" in err
    assert "overridden by --mean --scale" in err
    assert "detection_output_param.clip is not an SSD fork field" in err
    for extra, fragments in ((["--scale", "0"], ("--scale must be a positive number",)),
                             (["--transform-from", tmp_path / "nope.prototxt"], ("nope.prototxt", "no such file")),
                             (["--mean", "1,2"], ("--mean needs 1 or 3 values",))):
        rc, out, err = run(capsys, *base, *extra, tmp_path / "cut.jpg")
        assert rc == 2
        one_error_line(err, *fragments)
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff not really")
    rc, out, err = run(capsys, *base, tmp_path / "junk.jpg")
    assert rc == 2
    one_error_line(err, "junk.jpg", "cannot decode the image")


# -- data ----------------------------------------------------------------------------------------

def _jpeg(path, h=30, w=40):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".jpg", np.full((h, w, 3), 100, np.uint8))[1].tobytes())


def test_coco_sets_asked_for_only(tmp_path, capsys):
    root = tmp_path / "coco"
    _jpeg(root / "val2017" / "000000000020.jpg")
    doc = {"images": [{"id": 20, "file_name": "000000000020.jpg", "height": 30, "width": 40}],
           "annotations": [{"id": 1, "image_id": 20, "category_id": 18, "bbox": [1, 2, 10, 8], "iscrowd": 0}],
           "categories": [{"id": 18, "name": "dog"}]}
    (root / "annotations").mkdir()
    (root / "annotations" / "instances_val2017.json").write_text(json.dumps(doc))   # no train2017 JSON
    base = ["data", "coco", "--root", root, "--out", tmp_path / "lmdb", "--name-size-dir", tmp_path / "ns",
            "--jobs", "1", "--quiet"]
    rc, out, err = run(capsys, *base, "--sets", "val2017")
    assert rc == 0 and (tmp_path / "lmdb" / "coco_val2017_lmdb" / "data.mdb").is_file()
    rc, out, err = run(capsys, *base, "--sets", "val2071")
    assert rc == 2
    one_error_line(err, "--sets", "'val2071'", "val2017")


def _record(box, h=20, w=30):
    r = pb.AnnotatedDatum()
    r.type = pb.AnnotatedDatum.BBOX
    r.datum.channels, r.datum.height, r.datum.width, r.datum.encoded = 3, h, w, True
    r.datum.data = cv2.imencode(".jpg", np.full((h, w, 3), 128, np.uint8))[1].tobytes()
    a = r.annotation_group.add(group_label=12).annotation.add(instance_id=0)
    a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = box
    return r.SerializeToString()


def test_data_check_away_from_the_repo_and_plain_numbers(tmp_path, capsys, monkeypatch):
    for name in ("VOC0712_test_lmdb", "mine_lmdb"):
        with LMDBWriter(tmp_path / name) as w:
            w.put(b"00000000_a.jpg", _record((0.1, 0.1, 0.5, 0.5)))
            w.put(b"00000001_b.jpg", _record((0.1, 0.1, float("inf"), 0.5)))
    monkeypatch.chdir(tmp_path)                         # not the repository root
    rc, out, err = run(capsys, "data", "check", "VOC0712_test_lmdb")
    assert rc == 1                                      # the inf box is an invalid record
    row = next(ln for ln in out.splitlines() if ln.split()[:1] == ["12"])
    assert row.split()[1] == "dog"                      # the class name, not "?"
    assert "invalid: 00000001_b.jpg: label 12 box 0: non-finite coordinates (0.1, 0.1, inf, 0.5)" in out
    rc, out, err = run(capsys, "data", "check", "mine_lmdb")
    assert "none guessed from the name 'mine_lmdb'" in out and "give --labelmap" in out


def test_voc_box_warnings_and_eval_without_numpy_noise(tmp_path, capsys):
    voc = tmp_path / "dev" / "VOC2007"
    boxes = {"000001": (1, 2, 236.0, "nan"), "000002": (1, 2, 10, 12), "000003": (1, 2, 500.5, 20)}
    for image_id, (x1, y1, x2, y2) in boxes.items():
        _jpeg(voc / "JPEGImages" / f"{image_id}.jpg", 100, 236)
        (voc / "Annotations").mkdir(exist_ok=True)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><size><width>236</width><height>100</height></size><object><name>dog</name>"
            f"<difficult>0</difficult><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax>"
            f"</bndbox></object></annotation>")
    (voc / "ImageSets" / "Main").mkdir(parents=True)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("\n".join(boxes) + "\n")
    rc, out, err = run(capsys, "data", "voc", "--devkit", tmp_path / "dev", "--out", tmp_path / "lmdb", "--sets", "test",
                       "--years", "2007", "--name-size", tmp_path / "ns.txt", "--lists-dir", tmp_path, "--jobs", "1")
    assert rc == 0
    assert "000001.xml: object 0 (dog): non-finite box (1, 2, 236, nan); dropped" in err
    assert "000003.xml: object 0 (dog): box (1, 2, 500.5, 20) exceeds the 236x100 image" in err
    # eval: a ground-truth box with a non-finite coordinate is an error naming the file and object
    dets = tmp_path / "dets"
    dets.mkdir()
    (dets / "comp4_det_test_dog.txt").write_text("000002 0.9 1 2 10 12\n000003 0.5 -1e300 -1e300 1e300 1e300\n")
    base = ["eval", "voc", "--dets", dets, "--annotations", voc / "Annotations"]
    rc, out, err = run(capsys, *base, "--imageset", voc / "ImageSets" / "Main" / "test.txt")
    assert rc == 2
    one_error_line(err, "000001.xml", "object 0 (dog)", "non-finite box (1, 2, 236, nan)")
    # a detection box of 1e300 pixels: scored (no match), no overflow warning
    (tmp_path / "ids.txt").write_text("000002\n000003\n")
    rc, out, err = run(capsys, *base, "--imageset", tmp_path / "ids.txt")
    assert rc == 0
    dog = next(ln.split() for ln in out.splitlines() if ln.startswith("dog"))
    assert dog[1:4] == ["2", "2", "1"]                 # GT, detections, true positives


def test_labelmap_for_voc_name(tmp_path):
    # the conventional label map is found from anywhere (the check above relies on it)
    from scratchdet.data.files import conventional_file
    found = conventional_file("data/VOC0712/labelmap_voc.prototxt")
    assert found is not None and lm.load(found).item[12].name == "dog"
