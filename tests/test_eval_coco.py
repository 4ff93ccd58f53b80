"""COCO evaluation: our numbers equal pycocotools' COCOeval run directly here on the same files;
per-category AP equals COCOeval restricted to that category; results JSON from per-image
detections; the test-dev writer; bad files give one-line errors."""
import contextlib
import io
import json

import numpy as np
import pytest

from scratchdet.errors import ScratchDetError
from scratchdet.eval import coco


def make_files(tmp_path, seed=0):
    rng = np.random.default_rng(seed)
    cats = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]
    images, anns, results = [], [], []
    for img_id in (139, 285, 632, 724, 776):
        images.append({"id": img_id, "width": 640, "height": 480, "file_name": f"{img_id:012d}.jpg"})
        for _ in range(int(rng.integers(1, 6))):
            w, h = (float(v) for v in rng.choice([12, 40, 150, 300], 2))       # small, medium and large
            x, y = float(rng.uniform(0, 640 - w)), float(rng.uniform(0, 480 - h))
            cat = int(rng.choice([1, 3, 18]))
            anns.append({"id": len(anns) + 1, "image_id": img_id, "category_id": cat, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            for _ in range(int(rng.integers(0, 3))):
                j = rng.normal(0, 0.1 * max(w, h), 4)
                results.append({"image_id": img_id, "category_id": cat, "score": float(rng.random()),
                                "bbox": [x + j[0], y + j[1], max(1.0, w + j[2]), max(1.0, h + j[3])]})
        results.append({"image_id": img_id, "category_id": 3, "score": 0.2, "bbox": [5.0, 5.0, 60.0, 60.0]})
    gt_path, dt_path = tmp_path / "instances.json", tmp_path / "results.json"
    gt_path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    dt_path.write_text(json.dumps(results))
    return gt_path, dt_path


def pycocotools_stats(gt_path, dt_path, cat_ids=None):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_path))
        dt = gt.loadRes(str(dt_path))
        e = COCOeval(gt, dt, "bbox")
        if cat_ids is not None:
            e.params.catIds = cat_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


@pytest.mark.parametrize("seed", [0, 1])
def test_numbers_equal_pycocotools_run_directly(tmp_path, seed):
    gt_path, dt_path = make_files(tmp_path, seed)
    result = coco.evaluate(coco.read_results(dt_path), gt_path)
    want = pycocotools_stats(gt_path, dt_path)
    np.testing.assert_array_equal([result.stats[k] for k in coco.STAT_NAMES], want)
    assert 0 < result.stats["AP"] < 1 and result.stats["AP50"] >= result.stats["AP75"]
    for name, cat_id in (("person", 1), ("car", 3), ("dog", 18)):
        assert result.per_class[name] == pytest.approx(pycocotools_stats(gt_path, dt_path, [cat_id])[0], abs=1e-12)


def test_cli_prints_the_same_numbers(tmp_path, capsys):
    from scratchdet import cli
    gt_path, dt_path = make_files(tmp_path)
    assert cli.main(["eval", "coco", "--dets", str(dt_path), "--gt", str(gt_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    want = pycocotools_stats(gt_path, dt_path)
    assert [out["stats"][k] for k in coco.STAT_NAMES] == pytest.approx(list(want), abs=0)
    assert cli.main(["eval", "coco", "--dets", str(dt_path), "--gt", str(gt_path)]) == 0
    text = capsys.readouterr().out
    assert f"AP={100 * want[0]:.1f}" in text and "Average Precision" in text and "person" in text


def test_results_from_per_image_detections_use_the_label_map_category_ids():
    from scratchdet.data import labelmap as lm
    labelmap = lm.make(["1", "3", "18"], ["person", "car", "dog"])
    ids = coco.category_ids(labelmap)
    assert ids == {1: 1, 2: 3, 3: 18}
    per_image = {"COCO_val2014_000000000139": ([3, 1], [0.9, 0.5], [[10, 20, 110, 70], [0, 0, 5, 5]])}
    res = coco.to_results(per_image, ids)
    assert res == [{"image_id": 139, "category_id": 18, "bbox": [10.0, 20.0, 100.0, 50.0], "score": 0.9},
                   {"image_id": 139, "category_id": 1, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.5}]
    with pytest.raises(ScratchDetError, match="numeric COCO category id"):
        coco.category_ids(lm.make(["person"]))


def test_testdev_file_is_named_rounded_and_checked(tmp_path):
    results = [{"image_id": 1, "category_id": 1, "bbox": [1.23456, 2.0, 3.0, 4.0], "score": 0.123456789}]
    path, warnings = coco.write_testdev(results, tmp_path, "ScratchDet300")
    assert path.name == "detections_test-dev2015_ScratchDet300_results.json"
    back = json.loads(path.read_text())
    assert back == [{"image_id": 1, "category_id": 1, "bbox": [1.23, 2.0, 3.0, 4.0], "score": 0.12346}]
    info = tmp_path / "image_info.json"
    info.write_text(json.dumps({"images": [{"id": 1}, {"id": 2}]}))
    _, warnings = coco.write_testdev(results, tmp_path, "x", info)
    assert warnings == ["1 test-dev image(s) have no detections"]
    info.write_text(json.dumps({"images": [{"id": 5}]}))
    with pytest.raises(ScratchDetError, match="image id 1, which is not in"):
        coco.write_testdev(results, tmp_path / "other", "x", info)
    assert not (tmp_path / "other").exists()


def test_bad_files_are_one_line_errors(tmp_path, capsys):
    from scratchdet import cli
    gt_path, dt_path = make_files(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text('[{"image_id": 139, "category_id": 1, "bbox": [1, 2, 3], "score": 0.5}]')
    with pytest.raises(ScratchDetError, match=r"bad.json: entry 0: bbox must be 4 finite numbers"):
        coco.read_results(bad)
    bad.write_text('[{"image_id": 139, ')
    with pytest.raises(ScratchDetError, match=r"bad.json: malformed JSON"):
        coco.read_results(bad)
    bad.write_text('[{"image_id": 99999, "category_id": 1, "bbox": [1, 2, 3, 4], "score": 0.5}]')
    rc = cli.main(["eval", "coco", "--dets", str(bad), "--gt", str(gt_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "image id 99999, which is not in the ground truth" in err and "Traceback" not in err
    with pytest.raises(ScratchDetError, match="needs 'images', 'annotations' and 'categories'"):
        coco.load_ground_truth(dt_path)
    empty = coco.evaluate([], gt_path)
    assert empty.stats["AP"] == 0.0 and "no detections" in empty.warnings[0]
