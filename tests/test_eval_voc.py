"""VOC evaluation as the devkit defines it: hand-made cases with known answers (perfect, duplicates,
difficult-only images, a class without detections counted as 0, the +1 pixel overlap), a random
set scored against a devkit-style loop written here, ground truth from XML and from an LMDB giving
the same numbers, result-file round trip and bad input."""
import json
import math

import cv2
import numpy as np
import pytest

from scratchdet.errors import ScratchDetError
from scratchdet.eval import detfiles, groundtruth, voc
from scratchdet.eval.detfiles import ClassDetections


def write_xml(folder, image_id, objects, size=(375, 500)):
    """objects: (name, xmin, ymin, xmax, ymax, difficult)"""
    objs = "".join(
        f"<object><name>{n}</name><pose>Unspecified</pose><truncated>0</truncated><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for n, x0, y0, x1, y1, d in objects)
    h, w = size
    (folder / f"{image_id}.xml").write_text(
        f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename>"
        f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def make_gt(tmp_path, images):
    """images: id -> objects; returns GroundTruth read back through the XML parser."""
    ann = tmp_path / "Annotations"
    ann.mkdir(exist_ok=True)
    for image_id, objects in images.items():
        write_xml(ann, image_id, objects)
    listing = tmp_path / "test.txt"
    listing.write_text("".join(f"{i}\n" for i in images))
    return groundtruth.from_voc_xml(ann, groundtruth.read_image_set(listing))


def dets(rows):
    """rows: (image, score, xmin, ymin, xmax, ymax)"""
    return ClassDetections([r[0] for r in rows], np.array([r[1] for r in rows]), np.array([r[2:] for r in rows]))


def test_perfect_detections_score_one(tmp_path):
    gt = make_gt(tmp_path, {"a": [("cat", 10, 10, 50, 60, False), ("dog", 100, 100, 200, 220, False)],
                            "b": [("cat", 5, 5, 40, 40, False)]})
    d = {"cat": dets([("a", 0.9, 10, 10, 50, 60), ("b", 0.8, 5, 5, 40, 40)]),
         "dog": dets([("a", 0.7, 100, 100, 200, 220)])}
    r = voc.evaluate(d, gt, ["cat", "dog"])
    assert r.map07 == pytest.approx(1.0) and r.map_all == pytest.approx(1.0)
    assert [(c.tp, c.fp, c.num_pos) for c in r.classes] == [(2, 0, 2), (1, 0, 1)]


def test_duplicate_detection_is_a_false_positive(tmp_path):
    gt = make_gt(tmp_path, {"a": [("cat", 10, 10, 50, 60, False), ("cat", 200, 200, 260, 280, False)]})
    d = {"cat": dets([("a", 0.9, 10, 10, 50, 60), ("a", 0.8, 11, 11, 50, 60), ("a", 0.7, 200, 200, 260, 280)])}
    c = voc.evaluate(d, gt, ["cat"]).classes[0]
    assert (c.tp, c.fp, c.ignored) == (2, 1, 0)
    # prec 1, 1/2, 2/3 at rec 1/2, 1/2, 1
    assert c.ap07 == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert c.ap_all == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_difficult_objects_are_ignored_not_counted(tmp_path):
    gt = make_gt(tmp_path, {"easy": [("cat", 10, 10, 50, 60, False)],
                            "hard": [("cat", 10, 10, 50, 60, True)]})      # an image with only a difficult cat
    d = {"cat": dets([("hard", 0.95, 10, 10, 50, 60),       # matches the difficult box: ignored
                      ("hard", 0.9, 300, 300, 340, 340),     # matches nothing: false positive
                      ("easy", 0.8, 10, 10, 50, 60)])}
    c = voc.evaluate(d, gt, ["cat"]).classes[0]
    assert (c.num_pos, c.tp, c.fp, c.ignored) == (1, 1, 1, 1)
    # ranked: ignored, fp, tp -> precision 1/2 at recall 1
    assert c.ap07 == pytest.approx(0.5) and c.ap_all == pytest.approx(0.5)
    # counting difficult objects makes the first detection a hit: 2 positives, tp fp tp
    c = voc.evaluate(d, gt, ["cat"], use_difficult=True).classes[0]
    assert (c.num_pos, c.tp, c.fp) == (2, 2, 1)
    assert c.ap_all == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_class_without_detections_counts_as_zero_in_the_mean(tmp_path):
    gt = make_gt(tmp_path, {"a": [("cat", 10, 10, 50, 60, False), ("dog", 100, 100, 200, 220, False)]})
    r = voc.evaluate({"cat": dets([("a", 0.9, 10, 10, 50, 60)])}, gt, ["cat", "dog"])
    assert r.by_name()["dog"].ap07 == 0.0 and r.by_name()["dog"].num_det == 0
    assert r.map07 == pytest.approx(0.5) and r.map_all == pytest.approx(0.5)
    assert any("'dog' has no detections" in w for w in r.warnings)


def test_overlap_uses_the_plus_one_pixel_convention(tmp_path):
    # gt spans 10 x 10 pixels, the detection its upper 10 x 5: IoU 50/100 = 0.5 with +1, 36/81 without
    gt = make_gt(tmp_path, {"a": [("cat", 1, 1, 10, 10, False)]})
    ov = voc.overlaps(np.array([[1, 1, 10, 5]]), np.array([[1, 1, 10, 10]]))
    assert ov[0, 0] == pytest.approx(0.5)
    c = voc.evaluate({"cat": dets([("a", 0.9, 1, 1, 10, 5)])}, gt, ["cat"]).classes[0]
    assert (c.tp, c.fp) == (1, 0)
    c = voc.evaluate({"cat": dets([("a", 0.9, 1, 1, 10, 4)])}, gt, ["cat"]).classes[0]   # 40/100
    assert (c.tp, c.fp) == (0, 1)


# -- a devkit-style reference, written from VOCevaldet's loop -----------------------------------------

def reference_area(b):
    return max(b[2] - b[0] + 1, 0) * max(b[3] - b[1] + 1, 0)


def reference_class(det_rows, gt_images, cls, area_range=None):
    """VOCevaldet's loop; with ``area_range``, COCO's size rule: ground truth of other sizes
    ignored as if difficult, unmatched detections of other sizes ignored."""
    lo, hi = area_range or (-math.inf, math.inf)
    ignored = {img: [o[5] or not lo <= reference_area(o[1:5]) < hi for o in objs] for img, objs in gt_images.items()}
    npos = sum(1 for img, objs in gt_images.items() for j, o in enumerate(objs) if o[0] == cls and not ignored[img][j])
    order = sorted(range(len(det_rows)), key=lambda k: -det_rows[k][1])      # Python's sort is stable
    detected = {img: [False] * len(objs) for img, objs in gt_images.items()}
    tp, fp = [], []
    for k in order:
        img, _score, *bb = det_rows[k]
        ovmax, jmax = -math.inf, None
        for j, (name, *g, diff) in enumerate(gt_images[img]):
            if name != cls:
                continue
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            if iw > 0 and ih > 0:
                ua = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - iw * ih
                if iw * ih / ua > ovmax:
                    ovmax, jmax = iw * ih / ua, j
        outside = not lo <= reference_area(bb) < hi
        if ovmax >= 0.5:
            if ignored[img][jmax]:
                tp.append(0), fp.append(0)
            elif not detected[img][jmax]:
                detected[img][jmax] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(0 if outside else 1)
        else:
            tp.append(0), fp.append(0 if outside else 1)
    ctp, cfp, rec, prec = 0, 0, [], []
    for t, f in zip(tp, fp):
        ctp, cfp = ctp + t, cfp + f
        rec.append(ctp / npos)
        prec.append(ctp / (ctp + cfp) if ctp + cfp else 0.0)
    ap07 = sum(max([p for p, r in zip(prec, rec) if r >= t / 10] or [0.0]) for t in range(11)) / 11
    mrec, mpre = [0.0] + rec + [1.0], [0.0] + prec + [0.0]
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    ap_all = sum((mrec[i] - mrec[i - 1]) * mpre[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
    return ap07, ap_all, sum(tp), sum(fp)


def random_set(seed, n_images=25, classes=("cat", "dog", "bird")):
    rng = np.random.default_rng(seed)
    gt_images, det_rows = {}, {c: [] for c in classes}
    for k in range(n_images):
        img = f"{k:06d}"
        objs = []
        for _ in range(int(rng.integers(0, 4))):
            x0, y0 = (int(v) for v in rng.integers(1, 300, 2))
            w, h = (int(v) for v in rng.integers(8, 150, 2))
            objs.append((str(rng.choice(classes)), x0, y0, x0 + w, y0 + h, bool(rng.random() < 0.2)))
        gt_images[img] = objs
        for name, x0, y0, x1, y1, _ in objs:
            for _ in range(int(rng.integers(0, 3))):     # 0-2 jittered detections per object (duplicates)
                j = rng.normal(0, 0.15 * (x1 - x0), 4)
                det_rows[name].append((img, round(float(rng.random()), 3), x0 + j[0], y0 + j[1], x1 + j[2], y1 + j[3]))
        for _ in range(int(rng.integers(0, 3))):         # clutter
            x0, y0 = (float(v) for v in rng.uniform(1, 300, 2))
            det_rows[str(rng.choice(classes))].append((img, round(float(rng.random()), 3), x0, y0, x0 + 40, y0 + 40))
    return gt_images, det_rows


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_set_matches_a_devkit_style_loop(tmp_path, seed):
    gt_images, det_rows = random_set(seed)
    gt = make_gt(tmp_path, gt_images)
    r = voc.evaluate({c: dets(rows) for c, rows in det_rows.items()}, gt, list(det_rows))
    for c in r.classes:
        ap07, ap_all, tp, fp = reference_class(det_rows[c.name], gt_images, c.name)
        assert (c.tp, c.fp) == (tp, fp), c.name
        assert c.ap07 == pytest.approx(ap07, abs=1e-12), c.name
        assert c.ap_all == pytest.approx(ap_all, abs=1e-12), c.name
    assert r.map07 == pytest.approx(np.mean([c.ap07 for c in r.classes]))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ap_by_size_matches_the_loop_with_cocos_size_rule(tmp_path, seed):
    gt_images, det_rows = random_set(seed, n_images=40)
    gt = make_gt(tmp_path, gt_images)
    by_size = voc.evaluate_by_size({c: dets(rows) for c, rows in det_rows.items()}, gt, list(det_rows), sides=(40, 90))
    assert [r.area_range for r in by_size.values()] == [(0, 1600), (1600, 8100), (8100, math.inf)]
    for r in by_size.values():
        scored = []
        for c in r.classes:
            ap07, ap_all, tp, fp = reference_class(det_rows[c.name], gt_images, c.name, r.area_range)
            assert (c.tp, c.fp) == (tp, fp), c.name
            if c.num_pos:
                assert c.ap07 == pytest.approx(ap07, abs=1e-12) and c.ap_all == pytest.approx(ap_all, abs=1e-12)
                scored.append(ap07)
            else:
                assert math.isnan(c.ap07)                   # no object of this size: out of the mean
        assert r.map07 == pytest.approx(np.mean(scored))
    # every counted object is in exactly one range
    whole = voc.evaluate({c: dets(rows) for c, rows in det_rows.items()}, gt, list(det_rows))
    assert sum(c.num_pos for r in by_size.values() for c in r.classes) == sum(c.num_pos for c in whole.classes)


def test_ap_by_size_hand_case(tmp_path):
    """A small and a large cat, both found, plus a large false alarm ranked first: the small
    range ignores the large boxes (AP 1), the large range charges the false alarm."""
    gt = make_gt(tmp_path, {"a": [("cat", 10, 10, 19, 19, False), ("cat", 100, 100, 299, 299, False)]})
    d = {"cat": dets([("a", 0.9, 0, 200, 150, 360), ("a", 0.8, 10, 10, 19, 19), ("a", 0.7, 100, 100, 299, 299)])}
    by_size = voc.evaluate_by_size(d, gt, ["cat"])
    small, medium, large = by_size["small"].classes[0], by_size["medium"].classes[0], by_size["large"].classes[0]
    assert (small.num_pos, small.tp, small.fp) == (1, 1, 0) and small.ap07 == pytest.approx(1.0)
    assert (large.num_pos, large.tp, large.fp) == (1, 1, 1)
    assert large.ap07 == pytest.approx(0.5)            # precision 1/2 at recall 1 at every 11-point step
    assert medium.num_pos == 0 and math.isnan(by_size["medium"].map07)
    assert "n/a" in voc.format_size_table(by_size).splitlines()[2]


def test_lmdb_ground_truth_gives_the_xml_numbers(tmp_path):
    from scratchdet.caffe.schema import pb
    from scratchdet.data.lmdb_io import LMDBWriter, record_key
    gt_images, det_rows = random_set(7, n_images=8)
    xml_gt = make_gt(tmp_path, gt_images)
    labels = {"cat": 1, "dog": 2, "bird": 3}
    h, w = 375, 500
    jpeg = cv2.imencode(".jpg", np.full((h, w, 3), 127, np.uint8))[1].tobytes()
    with LMDBWriter(tmp_path / "test_lmdb") as db:
        for k, (img, objs) in enumerate(gt_images.items()):
            rec = pb.AnnotatedDatum()
            rec.datum.encoded, rec.datum.data, rec.datum.channels = True, jpeg, 3
            for name, x0, y0, x1, y1, diff in objs:
                group = rec.annotation_group.add(group_label=labels[name])
                box = group.annotation.add(instance_id=len(group.annotation)).bbox
                box.xmin, box.ymin, box.xmax, box.ymax, box.difficult = x0 / w, y0 / h, x1 / w, y1 / h, diff
            db.put(record_key(k, f"VOC2007/JPEGImages/{img}.jpg"), rec.SerializeToString())
    names = {v: k for k, v in labels.items()}
    from_keys = groundtruth.from_lmdb(tmp_path / "test_lmdb", names)              # sizes from the images
    (tmp_path / "name_size.txt").write_text("".join(f"{img} {h} {w}\n" for img in gt_images))
    from_file = groundtruth.from_lmdb(tmp_path / "test_lmdb", names, tmp_path / "name_size.txt")
    d = {c: dets(rows) for c, rows in det_rows.items()}
    want = voc.evaluate(d, xml_gt, list(labels))
    for gt in (from_keys, from_file):
        assert list(gt.images) == list(gt_images)
        for img, truth in gt.images.items():
            np.testing.assert_array_equal(truth.boxes, xml_gt.images[img].boxes)
        got = voc.evaluate(d, gt, list(labels))
        assert [c.ap07 for c in got.classes] == [c.ap07 for c in want.classes]
        assert [c.ap_all for c in got.classes] == [c.ap_all for c in want.classes]
    (tmp_path / "short.txt").write_text("000000 375 500\n")
    with pytest.raises(ScratchDetError, match="1 lines but"):
        groundtruth.from_lmdb(tmp_path / "test_lmdb", names, tmp_path / "short.txt")


def test_result_files_round_trip_and_cli(tmp_path, capsys):
    from scratchdet import cli
    gt_images, det_rows = random_set(3, n_images=10)
    make_gt(tmp_path, gt_images)
    d = {c: dets(rows) for c, rows in det_rows.items()}
    paths = detfiles.write_det_files(tmp_path / "results", d)
    assert sorted(p.name for p in paths) == ["comp4_det_test_bird.txt", "comp4_det_test_cat.txt", "comp4_det_test_dog.txt"]
    back = detfiles.read_det_files([tmp_path / "results"], ["cat", "dog", "bird"])
    for c in d:
        assert back[c].images == d[c].images
        np.testing.assert_allclose(back[c].boxes, d[c].boxes, atol=0.05 + 1e-9)
        np.testing.assert_allclose(back[c].scores, d[c].scores, rtol=1e-5)
    labelmap = tmp_path / "labelmap.prototxt"
    labelmap.write_text('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                        + "".join(f'item {{ name: "{n}" label: {k} display_name: "{n}" }}\n'
                                  for k, n in enumerate(["cat", "dog", "bird"], start=1)))
    rc = cli.main(["eval", "voc", "--dets", str(tmp_path / "results"), "--annotations", str(tmp_path / "Annotations"),
                   "--imageset", str(tmp_path / "test.txt"), "--labelmap", str(labelmap), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    want = voc.evaluate(back, make_gt(tmp_path, gt_images), ["cat", "dog", "bird"])
    assert out["map_11point"] == pytest.approx(want.map07) and out["map_all_point"] == pytest.approx(want.map_all)
    assert [c["class"] for c in out["classes"]] == ["cat", "dog", "bird"]
    rc = cli.main(["eval", "voc", "--dets", str(tmp_path / "results"), "--annotations", str(tmp_path / "Annotations"),
                   "--imageset", str(tmp_path / "test.txt"), "--labelmap", str(labelmap)])
    text = capsys.readouterr().out
    assert rc == 0 and "mAP (VOC2007 11-point)" in text and f"{want.map07:.4f}" in text and "bird" in text
    rc = cli.main(["eval", "voc", "--dets", str(tmp_path / "results"), "--annotations", str(tmp_path / "Annotations"),
                   "--imageset", str(tmp_path / "test.txt"), "--labelmap", str(labelmap), "--by-size", "40,90", "--json"])
    out = json.loads(capsys.readouterr().out)
    sizes = voc.evaluate_by_size(back, make_gt(tmp_path, gt_images), ["cat", "dog", "bird"], sides=(40, 90))
    assert list(out["by_size"]) == ["small", "medium", "large"] and out["by_size"]["large"]["area_range"] == [8100, None]
    for name, r in sizes.items():
        assert out["by_size"][name]["map_11point"] == (None if math.isnan(r.map07) else pytest.approx(r.map07))
    rc = cli.main(["eval", "voc", "--dets", str(tmp_path / "results"), "--annotations", str(tmp_path / "Annotations"),
                   "--imageset", str(tmp_path / "test.txt"), "--by-size", "32"])
    assert rc == 2 and "--by-size wants two side limits" in capsys.readouterr().err


def test_bad_input_names_the_file_and_line(tmp_path, capsys):
    from scratchdet import cli
    make_gt(tmp_path, {"a": [("cat", 10, 10, 50, 60, False)]})
    bad = tmp_path / "comp4_det_test_cat.txt"
    bad.write_text("a 0.9 10 10 50 60\na 0.8 10 10 fifty 60\n")
    with pytest.raises(ScratchDetError, match=r"comp4_det_test_cat.txt:2: score and box must be numbers"):
        detfiles.read_class_file(bad)
    bad.write_text("a 0.9 10 10 50\n")
    with pytest.raises(ScratchDetError, match=r":1: expected 'image score xmin ymin xmax ymax'"):
        detfiles.read_class_file(bad)
    bad.write_text("zzz 0.9 10 10 50 60\n")
    rc = cli.main(["eval", "voc", "--dets", str(bad), "--annotations", str(tmp_path / "Annotations"),
                   "--imageset", str(tmp_path / "test.txt")])
    err = capsys.readouterr().err
    assert rc == 2 and "image 'zzz', which is not in the ground truth" in err and "Traceback" not in err
    (tmp_path / "test.txt").write_text("a\nmissing\n")
    with pytest.raises(ScratchDetError, match=r"missing.xml: annotation file not found"):
        groundtruth.from_voc_xml(tmp_path / "Annotations", groundtruth.read_image_set(tmp_path / "test.txt"))
    (tmp_path / "Annotations" / "broken.xml").write_text("<annotation><object>")
    with pytest.raises(ScratchDetError, match=r"broken.xml: malformed XML"):
        groundtruth.from_voc_xml(tmp_path / "Annotations", ["broken"])
    with pytest.raises(ScratchDetError, match="ends with no class"):
        detfiles.read_det_files([tmp_path / "test.txt"], ["cat"])


def test_detection_output_rows_become_pixel_detections():
    rows = [[0, 1, 0.9, 0.1, 0.2, 0.5, 0.6],
            [0, 2, 0.8, -0.1, 0.0, 1.2, 0.5],      # clipped to the image before scaling
            [1, -1, -1, -1, -1, -1, -1],           # the layer's filler row for an image without detections
            [2, 1, 0.7, 0.0, 0.0, 1.0, 1.0]]
    out = detfiles.from_detection_output(rows, ["a", "b", "c"], [(100, 200), (50, 50), (30, 40)], {1: "cat", 2: "dog"})
    assert out["cat"].images == ["a", "c"] and out["dog"].images == ["a"]
    np.testing.assert_allclose(out["cat"].boxes, [[20, 20, 100, 60], [0, 0, 40, 30]])
    np.testing.assert_allclose(out["dog"].boxes, [[0, 0, 200, 50]])
    np.testing.assert_allclose(out["cat"].scores, [0.9, 0.7])
    with pytest.raises(ScratchDetError, match="image index 5"):
        detfiles.from_detection_output([[5, 1, 0.9, 0, 0, 1, 1]], ["a"], [(1, 1)], {1: "cat"})
