"""EXIF-rotated JPEGs (issue 12): what real Caffe does with them, and what we store.

The finding, recorded from the real SSD build in tests/fixtures/caffe_exif_orientation.json (the
caffe_ref test below re-measures it): convert_annoset keeps the file's bytes, writes the *turned*
size into datum.height/width (its cv::imread applies the tag), warns "inconsistent image
height/width" when the annotation gives the stored size, and normalises the boxes by the
annotation's size; the AnnotatedData layer decodes with imdecode, which in the fork's OpenCV does
not turn the image, so Caffe trains on the stored pixels, for every orientation. Python's OpenCV
imdecode turns them, so the same bytes would give our data layer other pixels than Caffe's.

We keep what Caffe trains on (stored pixels, boxes in stored pixels), remove the tag so that no
decoder turns the image, store the stored size, and warn naming the file. Only an annotation whose
size is the displayed (turned) size makes us store the turned pixels.
"""
from __future__ import annotations

import base64
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from scratchdet.caffe import io
from scratchdet.caffe.schema import pb
from scratchdet.data import labelmap as lm
from scratchdet.data.lmdb_io import AnnotatedLMDB, decode_image

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "caffe_exif_orientation.json"
ORIENTATIONS = (1, 3, 6, 8)
SPLIT = 20          # the probe net slices the data blob's width here and sums |x| of both parts


def exif_jpeg(base: bytes, orientation: int) -> bytes:
    """``base`` with an APP1 EXIF segment (little-endian TIFF, one IFD0 entry: Orientation)."""
    tiff = b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) \
        + struct.pack("<I", 0)
    payload = b"Exif\0\0" + tiff
    return base[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + base[2:]


def voc_xml(w: int, h: int) -> str:
    return (f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size><object><name>cat</name>"
            "<difficult>0</difficult><bndbox><xmin>40</xmin><ymin>8</ymin><xmax>56</xmax><ymax>16</ymax></bndbox>"
            "</object></annotation>")


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(FIXTURE.read_text())


def make_set(root: Path, spec: dict, sizes=None) -> Path:
    """One EXIF JPEG per orientation (annotation size: the stored size unless ``sizes`` says)."""
    base = base64.b64decode(spec["base_jpeg_b64"])
    (root / "img").mkdir(parents=True)
    (root / "ann").mkdir()
    h, w = spec["stored_hw"]
    lines = []
    for o in ORIENTATIONS:
        (root / "img" / f"o{o}.jpg").write_bytes(exif_jpeg(base, o))
        aw, ah = (sizes or {}).get(o, (w, h))
        (root / "ann" / f"o{o}.xml").write_text(voc_xml(aw, ah))
        lines.append(f"img/o{o}.jpg ann/o{o}.xml\n")
    (root / "list.txt").write_text("".join(lines))
    io.write_text(lm.make(["cat"]), root / "labelmap.prototxt")
    return root


def convert_ours(root: Path, out: Path):
    return subprocess.run([sys.executable, "-m", "scratchdet", "data", "convert", "--root", str(root), "--list",
                           str(root / "list.txt"), "--out", str(out), "--labelmap", str(root / "labelmap.prototxt")],
                          capture_output=True, text=True, timeout=300)


def boxes(rec) -> list[list[float]]:
    return [[a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax] for g in rec.annotation_group for a in g.annotation]


def test_exif_jpegs_give_our_data_layer_the_pixels_and_boxes_of_caffes(tmp_path, spec):
    root = make_set(tmp_path / "set", spec)
    r = convert_ours(root, tmp_path / "ours")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    warned = [ln for ln in r.stderr.splitlines() if "EXIF orientation" in ln]
    assert sorted(re.search(r"o(\d)\.jpg", ln).group(1) for ln in warned) == ["3", "6", "8"]
    assert all(ln.startswith("warning: ") and "ignored" in ln for ln in warned)
    db = AnnotatedLMDB(tmp_path / "ours")
    for i, o in enumerate(ORIENTATIONS):
        caffe = spec["orientations"][str(o)]
        rec = db.get(i)
        image = decode_image(rec).astype(np.int64)
        # the data blob Caffe's layer fed its net: same pixel sums either side of the split
        assert [int(image[:, :SPLIT].sum()), int(image[:, SPLIT:].sum())] == caffe["data_layer_abs_sums"], o
        assert list(image.shape[:2]) == caffe["data_layer_hw"]
        assert boxes(rec) == caffe["boxes"]
        # Explained difference: Caffe's datum header says the imread-turned size that its data layer
        # never uses; ours says the size of the pixels stored. Caffe keeps the tag; we drop it.
        assert [rec.datum.height, rec.datum.width] == spec["stored_hw"]
        assert cv2.imdecode(np.frombuffer(rec.datum.data, np.uint8), cv2.IMREAD_COLOR).shape[:2] == tuple(spec["stored_hw"])
    db.close()


def test_annotation_in_displayed_size_stores_the_turned_pixels(tmp_path, spec):
    h, w = spec["stored_hw"]
    root = make_set(tmp_path / "set", spec, sizes={6: (h, w), 8: (h, w)})   # width/height swapped: as displayed
    r = convert_ours(root, tmp_path / "ours")
    assert r.returncode == 0, r.stderr
    shown = [ln for ln in r.stderr.splitlines() if "displayed image's" in ln]
    assert len(shown) == 2 and all(("o6.jpg" in ln) != ("o8.jpg" in ln) for ln in shown)
    db = AnnotatedLMDB(tmp_path / "ours")
    base = cv2.imdecode(np.frombuffer(base64.b64decode(spec["base_jpeg_b64"]), np.uint8), cv2.IMREAD_COLOR)
    for i, o in enumerate(ORIENTATIONS):
        rec = db.get(i)
        image = decode_image(rec)
        if o in (6, 8):
            turned = cv2.rotate(base, cv2.ROTATE_90_CLOCKWISE if o == 6 else cv2.ROTATE_90_COUNTERCLOCKWISE)
            assert (rec.datum.height, rec.datum.width) == turned.shape[:2] == image.shape[:2]
            assert np.abs(image.astype(int) - turned).mean() < 3      # one JPEG re-encode
    db.close()


PROBE_NET = """name: "probe"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TEST }}
  data_param {{ source: "{db}" batch_size: 1 backend: LMDB }} }}
layer {{ name: "s" type: "Slice" bottom: "data" top: "left" top: "right" slice_param {{ axis: 3 slice_point: {split} }} }}
layer {{ name: "l" type: "Reduction" bottom: "left" top: "lsum" reduction_param {{ operation: ASUM }} }}
layer {{ name: "r" type: "Reduction" bottom: "right" top: "rsum" reduction_param {{ operation: ASUM }} }}
layer {{ name: "sl" type: "Silence" bottom: "label" }}
"""


def measure_caffe(root: Path, convert_annoset_bin: str, caffe_bin: str, work: Path) -> dict:
    """What real Caffe does with each file: convert_annoset's record and warnings, and the data
    blob its AnnotatedData layer produces (shape from the log, |x| sums of the probe net)."""
    env = dict(os.environ, GLOG_logtostderr="1")
    weights = work / "probe.caffemodel"
    io.write_binary(pb.NetParameter(name="probe", layer=[pb.LayerParameter(name="s", type="Slice")]), weights)
    found = {}
    for o in ORIENTATIONS:
        lst, db = work / f"l{o}.txt", work / f"db{o}"
        lst.write_text(f"img/o{o}.jpg ann/o{o}.xml\n")
        r = subprocess.run([convert_annoset_bin, "--anno_type=detection", "--label_type=xml",
                            f"--label_map_file={root / 'labelmap.prototxt'}", "--encode_type=jpg", "--encoded",
                            "--backend=lmdb", f"{root}/", str(lst), str(db)], capture_output=True, text=True, env=env,
                           timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        reader = AnnotatedLMDB(db)
        rec = reader.get(0)
        reader.close()
        net = work / f"probe{o}.prototxt"
        net.write_text(PROBE_NET.format(db=db, split=SPLIT))
        t = subprocess.run([caffe_bin, "test", f"--model={net}", f"--weights={weights}", "--iterations=1"],
                           capture_output=True, text=True, env=env, timeout=300)
        assert t.returncode == 0, t.stderr[-2000:]
        shape = [int(v) for v in re.findall(r"Top shape: (\d+) (\d+) (\d+) (\d+)", t.stderr)[0]]
        sums = [float(re.search(rf"\] {n} = ([-\d.e+]+)", t.stderr).group(1)) for n in ("lsum", "rsum")]
        found[str(o)] = {
            "convert_annoset_datum_hw": [rec.datum.height, rec.datum.width],
            "convert_annoset_keeps_file_bytes": rec.datum.data == (root / "img" / f"o{o}.jpg").read_bytes(),
            "convert_annoset_warns_inconsistent_size": "inconsistent image" in r.stderr,
            "boxes": boxes(rec),
            "data_layer_hw": shape[2:],
            "data_layer_abs_sums": [int(round(v)) for v in sums],
        }
    return found


@pytest.mark.caffe_ref
def test_fixture_is_what_real_caffe_does(tmp_path, spec, convert_annoset_bin, caffe_bin):
    root = make_set(tmp_path / "set", spec)
    work = tmp_path / "work"
    work.mkdir()
    found = measure_caffe(root, convert_annoset_bin, caffe_bin, work)
    if os.environ.get("SCRATCHDET_RECORD_FIXTURE") == "1":      # how the fixture was made
        FIXTURE.write_text(json.dumps({**spec, "orientations": found}, indent=1) + "\n")
    assert found == spec["orientations"]
