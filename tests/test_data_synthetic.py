"""The synthetic data set and `scratchdet data check` (issue 3)."""
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from scratchdet.caffe.schema import pb
from scratchdet.data import coco, synthetic
from scratchdet.data import convert as cv
from scratchdet.data import labelmap as lm
from scratchdet.data.check import check_db, format_report
from scratchdet.data.lmdb_io import AnnotatedLMDB, LMDBWriter, annotations, decode_image

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["circle", "square", "triangle", "cross"]


def tree_bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_and_images_independent_of_count(tmp_path):
    synthetic.generate(tmp_path / "a", images=10, seed=3, quiet=True)
    synthetic.generate(tmp_path / "b", images=10, seed=3, quiet=True)
    a, b = tree_bytes(tmp_path / "a"), tree_bytes(tmp_path / "b")
    assert a == b and len([k for k in a if k.endswith(".jpg")]) == 10
    # worker processes render the same bytes (the pool is used from 50 images on)
    synthetic.generate(tmp_path / "p1", images=50, seed=3, quiet=True, jobs=1)
    synthetic.generate(tmp_path / "p2", images=50, seed=3, quiet=True, jobs=2)
    p1 = tree_bytes(tmp_path / "p1")
    assert p1 == tree_bytes(tmp_path / "p2")
    assert all(p1[k] == a[k] for k in a if k.startswith("SYNTH/JPEG"))
    synthetic.generate(tmp_path / "c", images=5, seed=3, quiet=True)
    c = tree_bytes(tmp_path / "c")
    for i in range(5):
        for rel in (f"SYNTH/JPEGImages/{i:06d}.jpg", f"SYNTH/Annotations/{i:06d}.xml"):
            assert c[rel] == a[rel]
    synthetic.generate(tmp_path / "d", images=10, seed=4, quiet=True)
    d = tree_bytes(tmp_path / "d")
    assert sum(d[k] != a[k] for k in a if k.endswith(".jpg")) == 10
    # regenerating over an earlier set replaces it; a foreign folder is refused
    synthetic.generate(tmp_path / "a", images=4, seed=3, quiet=True)
    assert len(list((tmp_path / "a" / "SYNTH" / "JPEGImages").iterdir())) == 4
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(Exception, match="not a synthetic data folder"):
        synthetic.generate(tmp_path / "mine", images=4, seed=0, quiet=True)


def test_rendered_objects_follow_the_recipe():
    sizes, counts, per_class, areas = [], [], Counter(), []
    for i in range(60):
        img, objects = synthetic.render(0, i)
        h, w = img.shape[:2]
        sizes.append((h, w))
        counts.append(len(objects))
        assert img.dtype == np.uint8 and img.shape[2] == 3
        for o in objects:
            per_class[o.name] += 1
            assert 0 <= o.xmin <= o.xmax < w and 0 <= o.ymin <= o.ymax < h
            bw, bh = o.xmax - o.xmin + 1, o.ymax - o.ymin + 1
            assert o.difficult == (o.visible < 0.6 or max(bw, bh) < 14)
            assert o.visible >= 0.45 - 1e-9                     # moderate occlusion only
            areas.append(bw * bh)
    assert all(240 <= h <= 360 and 240 <= w <= 360 for h, w in sizes)
    assert sizes.count((300, 300)) > 10 and len(set(sizes)) > 10   # mostly 300x300, some variation
    assert set(counts) <= {1, 2, 3, 4} and 1.5 < np.mean(counts) < 3
    assert set(per_class) == set(CLASSES) and min(per_class.values()) >= 15
    areas = np.array(areas)
    small = (areas < 32 ** 2).mean()
    assert 0.05 < small < 0.3                                     # a minority of small objects
    assert (areas >= 96 ** 2).mean() > 0.15                       # and plenty of large ones


def test_voc_xml_coco_json_and_lists_agree_with_the_renderer(tmp_path):
    synthetic.generate(tmp_path / "s", images=10, seed=1, quiet=True)
    root = tmp_path / "s"
    tv = (root / "SYNTH/ImageSets/Main/trainval.txt").read_text().split()
    te = (root / "SYNTH/ImageSets/Main/test.txt").read_text().split()
    assert te == ["000004", "000009"] and tv == [f"{i:06d}" for i in range(10) if i % 5 != 4]
    cocos = {s: json.loads((root / f"annotations/instances_synthetic_{s}.json").read_text()) for s in ("trainval", "test")}
    assert [c["name"] for c in cocos["test"]["categories"]] == CLASSES
    coco_anns = Counter()
    for split in cocos.values():
        for a in split["annotations"]:
            coco_anns[a["image_id"]] += 1
    for i in range(10):
        img, objects = synthetic.render(1, i)
        tree = ET.parse(root / f"SYNTH/Annotations/{i:06d}.xml").getroot()
        assert (int(tree.findtext("size/width")), int(tree.findtext("size/height"))) == (img.shape[1], img.shape[0])
        xml_objs = [(o.findtext("name"), int(o.findtext("difficult")),
                     [int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]) for o in tree.iter("object")]
        assert xml_objs == [(o.name, int(o.difficult), [o.xmin + 1, o.ymin + 1, o.xmax + 1, o.ymax + 1]) for o in objects]
        split = cocos["test" if i % 5 == 4 else "trainval"]
        anns = [a for a in split["annotations"] if a["image_id"] == i]
        assert [(CLASSES[a["category_id"] - 1], a["bbox"], a["iscrowd"]) for a in anns] == \
            [(o.name, [o.xmin, o.ymin, o.xmax - o.xmin + 1, o.ymax - o.ymin + 1], int(o.difficult)) for o in objects]
        jpg = cv2.imread(str(root / f"SYNTH/JPEGImages/{i:06d}.jpg"))
        assert np.abs(jpg.astype(int) - img).mean() < 6          # the JPEG is the rendered picture (noise + JPEG)
        other = synthetic.render(2, i)[0]
        if other.shape == img.shape:
            assert np.abs(other.astype(int) - img).mean() > 20
    labelmap = lm.load(root / "labelmap_synthetic.prototxt")
    assert [(i.name, i.label) for i in labelmap.item] == [("none_of_the_above", 0)] + [(n, k + 1) for k, n in enumerate(CLASSES)]


def test_cli_builds_both_lmdbs_and_check_reports_them(tmp_path):
    out, lmdb_dir, ns = tmp_path / "synthetic", tmp_path / "lmdb", tmp_path / "synthetic_test_name_size.txt"
    proc = subprocess.run([sys.executable, "-m", "scratchdet", "data", "synthetic", "--out", str(out), "--images", "15",
                           "--seed", "0", "--lmdb", str(lmdb_dir), "--name-size", str(ns), "--jobs", "1"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert len(AnnotatedLMDB(lmdb_dir / "synthetic_trainval_lmdb")) == 12
    test_db = AnnotatedLMDB(lmdb_dir / "synthetic_test_lmdb")
    assert test_db.keys() == ["00000000_SYNTH/JPEGImages/000004.jpg", "00000001_SYNTH/JPEGImages/000009.jpg",
                              "00000002_SYNTH/JPEGImages/000014.jpg"]
    sizes = [cv2.imread(str(out / f"SYNTH/JPEGImages/{i}.jpg")).shape[:2] for i in ("000004", "000009", "000014")]
    assert ns.read_text().splitlines() == [f"{i} {h} {w}" for i, (h, w) in zip(("000004", "000009", "000014"), sizes)]
    assert (out / "test.txt").read_text().split("\n")[0] == "SYNTH/JPEGImages/000004.jpg SYNTH/Annotations/000004.xml"

    # expected check numbers, computed from the XML files directly
    per_class, diff, size_bins = Counter(), Counter(), Counter()
    for i in range(15):
        if i % 5 != 4:
            continue
        for o in ET.parse(out / f"SYNTH/Annotations/{i:06d}.xml").getroot().iter("object"):
            per_class[o.findtext("name")] += 1
            diff[o.findtext("name")] += int(o.findtext("difficult"))
            b = [int(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
            area = (b[2] - b[0]) * (b[3] - b[1])
            size_bins["small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"] += 1
    proc = subprocess.run([sys.executable, "-m", "scratchdet", "data", "check", str(lmdb_dir / "synthetic_test_lmdb"),
                           "--labelmap", str(out / "labelmap_synthetic.prototxt")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert f"synthetic_test_lmdb: 3 records" in text
    assert f"objects: {sum(per_class.values())} ({sum(diff.values())} difficult)" in text
    for label, name in enumerate(CLASSES, 1):
        if per_class[name]:
            row = next(ln for ln in text.splitlines() if ln.split()[:2] == [str(label), name])
            assert row.split()[2:4] == [str(per_class[name]), str(diff[name])]
    for k in ("small", "medium", "large"):
        assert f"{k} {size_bins[k]} " in text
    assert "invalid records: 0" in text

    # the COCO form converts to the same records up to VOC's 1-based xmin/ymin
    entries, cats = coco.entries_for(out, [("synthetic_test", "SYNTH/JPEGImages")])
    cv.convert(entries, tmp_path / "coco_db", lm.name_to_label(coco.labelmap_from_categories(cats)), quiet=True)
    for (_, voc_rec), (_, coco_rec) in zip(test_db, AnnotatedLMDB(tmp_path / "coco_db")):
        assert voc_rec.datum.data == coco_rec.datum.data
        lv, bv, dv, iv = annotations(voc_rec)
        lc, bc, dc, ic = annotations(coco_rec)
        w, h = voc_rec.datum.width, voc_rec.datum.height
        assert lv.tolist() == lc.tolist() and dv.tolist() == dc.tolist() and iv.tolist() == ic.tolist()
        np.testing.assert_allclose(bv[:, 2:], bc[:, 2:], atol=1e-7)
        np.testing.assert_allclose(bv[:, :2] - bc[:, :2], np.tile([1 / w, 1 / h], (len(bv), 1)), atol=1e-6)


def test_check_lists_every_invalid_record(tmp_path):
    good_img = cv2.imencode(".jpg", np.full((20, 30, 3), 128, np.uint8))[1].tobytes()
    gray_img = cv2.imencode(".jpg", np.full((20, 30), 128, np.uint8))[1].tobytes()

    def record(data=good_img, h=20, w=30, typed=True, groups=((1, (0.1, 0.1, 0.5, 0.5)),)):
        r = pb.AnnotatedDatum()
        r.datum.channels, r.datum.height, r.datum.width, r.datum.data, r.datum.encoded = 3, h, w, data, True
        if typed:
            r.type = pb.AnnotatedDatum.BBOX
        for label, box in groups:
            g = r.annotation_group.add(group_label=label)
            a = g.annotation.add(instance_id=0)
            a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = box
        return r.SerializeToString()

    bad = {
        b"00000001_untyped.jpg": (record(typed=False), "type not set"),
        b"00000002_corrupt.jpg": (record(data=b"\xff\xd8\xff garbage"), "cannot be decoded"),
        b"00000003_size.jpg": (record(h=21), "datum says 21x30"),
        b"00000004_gray.jpg": (record(data=gray_img), "1 channel(s), not 3"),
        b"00000005_outside.jpg": (record(groups=((2, (-0.2, 0.1, 0.5, 1.3)),)), "outside [0,1]"),
        b"00000006_inverted.jpg": (record(groups=((2, (0.6, 0.1, 0.5, 0.3)),)), "empty or inverted"),
        b"00000007_background.jpg": (record(groups=((0, (0.1, 0.1, 0.5, 0.5)),)), "0 is background"),
        b"00000008_unknown.jpg": (record(groups=((9, (0.1, 0.1, 0.5, 0.5)),)), "not in the label map"),
        b"no_index.jpg": (record(), "key is not of the form"),
        b"00000009_junk.jpg": (b"\xff\xff\xff\xff", "not a serialized AnnotatedDatum"),
    }
    with LMDBWriter(tmp_path / "db") as w:
        w.put(b"00000000_good.jpg", record())
        for key, (value, _) in bad.items():
            w.put(key, value)
    lmap = tmp_path / "lm.prototxt"
    lm.write(lm.make(["a", "b"]), lmap)
    report = check_db(tmp_path / "db", lmap, quiet=True)
    assert report.records == 11
    problems = dict(report.invalid)
    assert set(problems) == {k.decode() for k in bad}
    for key, (_, fragment) in bad.items():
        assert fragment in " | ".join(p for k, p in report.invalid if k == key.decode()), key
    text = format_report(report)
    assert "invalid records: 10" in text and "invalid: 00000005_outside.jpg: label 2 box 0: outside [0,1]" in text
    proc = subprocess.run([sys.executable, "-m", "scratchdet", "data", "check", str(tmp_path / "db"), "--labelmap", str(lmap)],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 1 and "invalid records: 10" in proc.stdout
    assert np.array_equal(decode_image(AnnotatedLMDB(tmp_path / "db").get(0)), np.full((20, 30, 3), 128, np.uint8))
