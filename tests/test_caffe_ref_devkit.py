"""Converters against the real SSD Caffe's convert_annoset on a VOC-layout devkit built here (issue 11):
difficult boxes, odd sizes (1x1, 3x500, 500x3), an image without objects, a grayscale JPEG, and
colour, grayscale and RGBA PNGs.

``scratchdet data voc`` (the JPEG test set, through the list it writes) and ``scratchdet data
convert`` (every image, PNGs included) must give records byte-identical to convert_annoset's on the
same lists, except where a difference is explained here:

- a grayscale JPEG: convert_annoset stores the 1-channel file as is (its imread(color) gave 3
  channels, so it keeps the bytes) with ``channels: 3``; the fork's data layer decodes it natively
  (1 channel) unless ``force_color`` is set, and its transformer aborts on the channel mismatch. We
  store it re-encoded as a 3-channel JPEG: every other field is identical and the pixels are those
  of the file decoded as colour, to one JPEG re-encode.

The caffe_ref test asks the binary; the other test compares with digests recorded from it
(tests/fixtures/convert_annoset_devkit.json, made by the caffe_ref test with SCRATCHDET_RECORD_FIXTURE=1).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from scratchdet.caffe import io
from scratchdet.caffe.schema import pb
from scratchdet.data import labelmap as lm
from scratchdet.data.images import jpeg_components
from test_caffe_ref_convert import records  # noqa: E402  (tests/: the raw LMDB reader both referee tests use)

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "convert_annoset_devkit.json"
EXPLAINED = {"VOC2007/JPEGImages/000005.jpg": "grayscale JPEG stored as a 3-channel JPEG"}


def _smooth(rng, h, w, c=3):
    img = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    img = img[:, :, 0] if c == 1 else img
    return cv2.GaussianBlur(img, (0, 0), 2) if min(h, w) > 4 else img


def build_devkit(root: Path) -> Path:
    rng = np.random.default_rng(7)
    recs = {   # id: (kind, pixels, [(class, box, difficult)])
        "000001": ("jpg", _smooth(rng, 120, 160), [("cat", (10, 20, 80, 100), 0), ("dog", (50, 5, 150, 60), 1),
                                                   ("cat", (0, 0, 160, 120), 1)]),
        "000002": ("jpg", _smooth(rng, 1, 1), [("dog", (0, 0, 1, 1), 0)]),
        "000003": ("jpg", _smooth(rng, 3, 500), [("cat", (100, 0, 400, 3), 0), ("dog", (1, 1, 2, 2), 1)]),
        "000004": ("jpg", _smooth(rng, 500, 3), [("cat", (0, 100, 3, 400), 0)]),
        "000005": ("jpg", _smooth(rng, 90, 70, 1), [("dog", (5, 5, 60, 80), 0)]),
        "000006": ("jpg", _smooth(rng, 77, 131), []),
        "000007": ("png", _smooth(rng, 64, 48), [("cat", (3, 4, 40, 60), 1)]),
        "000008": ("png", _smooth(rng, 50, 40, 1), [("dog", (1, 2, 30, 45), 0)]),
        "000009": ("png", np.dstack([_smooth(rng, 30, 33), np.full((30, 33), 200, np.uint8)]), [("cat", (2, 2, 20, 25), 0)]),
    }
    voc = root / "VOC2007"
    for sub in ("JPEGImages", "PNGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    jpgs, lines = [], []
    for rid, (kind, img, objs) in recs.items():
        h, w = img.shape[:2]
        o = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                    f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objs)
        (voc / "Annotations" / f"{rid}.xml").write_text(
            f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{o}</annotation>")
        rel = f"VOC2007/{'JPEGImages' if kind == 'jpg' else 'PNGImages'}/{rid}.{kind}"
        (root / rel).write_bytes(cv2.imencode(f".{kind}", img)[1].tobytes())
        lines.append(f"{rel} VOC2007/Annotations/{rid}.xml\n")
        if kind == "jpg":
            jpgs.append(rid)
    (voc / "ImageSets" / "Main" / "test.txt").write_text("".join(f"{i}\n" for i in jpgs))
    (root / "all.txt").write_text("".join(lines))
    io.write_text(lm.make(["cat", "dog"]), root / "labelmap.prototxt")
    return root


def digests(recs, root: Path) -> list[list]:
    """Per record: key, sha256 of the record, of the record without datum.data, and whether the
    data are the image file's bytes."""
    out = []
    for key, value in recs:
        rec = pb.AnnotatedDatum()
        rec.ParseFromString(value)
        data = rec.datum.data
        rec.datum.data = b""
        path = root / key.decode().split("_", 1)[1]
        out.append([key.decode(), hashlib.sha256(value).hexdigest(), hashlib.sha256(rec.SerializeToString()).hexdigest(),
                    data == path.read_bytes()])
    return out


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict:
    """Our converters' records: ``data voc`` (test set, via the list it writes) and ``data convert``."""
    tmp = tmp_path_factory.mktemp("devkit")
    root = build_devkit(tmp / "dk")
    out = tmp / "out"
    r = subprocess.run([sys.executable, "-m", "scratchdet", "data", "voc", "--devkit", str(root), "--out", str(out),
                        "--sets", "test", "--years", "2007", "--labelmap", str(root / "labelmap.prototxt"),
                        "--name-size", str(out / "test_name_size.txt"), "--lists-dir", str(out / "lists"), "--quiet"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    r2 = subprocess.run([sys.executable, "-m", "scratchdet", "data", "convert", "--root", str(root), "--list",
                         str(root / "all.txt"), "--out", str(out / "all_lmdb"), "--labelmap", str(root / "labelmap.prototxt"),
                         "--check-label", "--quiet"], capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stderr
    return {"root": root, "lists": {"voc_test": out / "lists" / "test.txt", "all": root / "all.txt"},
            "voc_test": records(out / "VOC0712_test_lmdb"), "all": records(out / "all_lmdb")}


def check_against(ours_recs, theirs: list[list], root: Path) -> None:
    """Identical records, or the explained difference and nothing else."""
    mine = digests(ours_recs, root)
    assert [m[0] for m in mine] == [t[0] for t in theirs]
    for (key, full, nodata, _), (_, t_full, t_nodata, t_is_file), (_, value) in zip(mine, theirs, ours_recs):
        path = key.split("_", 1)[1]
        if full == t_full:
            continue
        assert path in EXPLAINED, f"{key}: differs from convert_annoset's record, unexplained"
        assert nodata == t_nodata, f"{key}: differs beyond the image data"
        assert t_is_file                                    # Caffe kept the 1-channel file
        rec = pb.AnnotatedDatum()
        rec.ParseFromString(value)
        file_bytes = (root / path).read_bytes()
        assert jpeg_components(file_bytes) == 1 and jpeg_components(rec.datum.data) == 3
        want = cv2.imdecode(np.frombuffer(file_bytes, np.uint8), cv2.IMREAD_COLOR).astype(int)
        got = cv2.imdecode(np.frombuffer(rec.datum.data, np.uint8), cv2.IMREAD_COLOR).astype(int)
        assert got.shape == want.shape and np.abs(got - want).mean() < 2


def test_converters_match_recorded_convert_annoset_digests(ours):
    fixture = json.loads(FIXTURE.read_text())
    for name in ("voc_test", "all"):
        check_against(ours[name], fixture[name], ours["root"])
    same = sum(d[1] == t[1] for name in ("voc_test", "all") for d, t in zip(digests(ours[name], ours["root"]), fixture[name]))
    assert same == len(fixture["voc_test"]) + len(fixture["all"]) - 2      # the grayscale JPEG, in both lists


@pytest.mark.caffe_ref
def test_converters_against_real_convert_annoset(ours, tmp_path, convert_annoset_bin):
    root = ours["root"]
    found = {}
    for name, lst in ours["lists"].items():
        ref = tmp_path / f"{name}_ref"
        r = subprocess.run([convert_annoset_bin, "--anno_type=detection", "--label_type=xml",
                            f"--label_map_file={root / 'labelmap.prototxt'}", "--check_label", "--encode_type=jpg",
                            "--encoded", "--backend=lmdb", f"{root}/", str(lst), str(ref)],
                           capture_output=True, text=True, timeout=300, env=dict(os.environ, GLOG_logtostderr="1"))
        assert r.returncode == 0, r.stderr[-2000:]
        found[name] = digests(records(ref), root)
        check_against(ours[name], found[name], root)
    if os.environ.get("SCRATCHDET_RECORD_FIXTURE") == "1":
        FIXTURE.write_text(json.dumps({"note": json.loads(FIXTURE.read_text())["note"], **found}, indent=1) + "\n")
    fixture = json.loads(FIXTURE.read_text())
    assert found == {k: fixture[k] for k in found}
