"""VOC devkit and COCO JSON sources (issue 3): SSD's lists, sets, key order, name-size files."""
import argparse
import json

import cv2
import numpy as np
import pytest

from scratchdet.commands import data as data_cli
from scratchdet.data import coco
from scratchdet.data import labelmap as lm
from scratchdet.data.lmdb_io import AnnotatedLMDB, annotations
from scratchdet.errors import ScratchDetError


def run_cli(*argv):
    parser = argparse.ArgumentParser()
    data_cli.add_arguments(parser)
    return data_cli.main(parser.parse_args([str(a) for a in argv]))


def write_image(path, h, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), (h * 7) % 256, np.uint8)
    img[: h // 2] = 40
    path.write_bytes(cv2.imencode(".jpg", img)[1].tobytes())


# -- VOC -----------------------------------------------------------------------------------------------

VOC = {  # year -> image set -> ids
    "2007": {"trainval": ["000005", "000007", "000009", "000012", "000016"], "test": ["000001", "000004", "000002"]},
    "2012": {"trainval": ["2008_000002", "2008_000003", "2008_000007", "2008_000008"]},
}


def size_of(image_id):
    return 20 + len(image_id) + int(image_id[-1]), 30 + int(image_id[-2])     # (h, w), distinct per image


def make_devkit(root, years=("2007", "2012")):
    for year in years:
        base = root / f"VOC{year}"
        for image_set, ids in VOC[year].items():
            (base / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (base / "Annotations").mkdir(exist_ok=True)
            (base / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(ids) + "\n")
            for image_id in ids:
                h, w = size_of(image_id)
                write_image(base / "JPEGImages" / f"{image_id}.jpg", h, w)
                (base / "Annotations" / f"{image_id}.xml").write_text(
                    f"<annotation><size><width>{w}</width><height>{h}</height></size><object><name>dog</name>"
                    f"<difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>{w}</xmax><ymax>{h - 1}</ymax>"
                    f"</bndbox></object></annotation>")
    return root


def keys_of(db):
    return AnnotatedLMDB(db).keys()


def test_voc_sets_lists_order_and_name_size(tmp_path):
    devkit = make_devkit(tmp_path / "VOCdevkit")
    out, ns = tmp_path / "lmdb", tmp_path / "VOC0712" / "test_name_size.txt"
    assert run_cli("voc", "--devkit", devkit, "--out", out, "--name-size", ns, "--voc12", "--jobs", "1", "--quiet") == 0
    # test: VOC2007 test in ImageSets order, key = index + path as in the list
    assert keys_of(out / "VOC0712_test_lmdb") == [f"{i:08d}_VOC2007/JPEGImages/{iid}.jpg"
                                                  for i, iid in enumerate(VOC["2007"]["test"])]
    assert ns.read_text().splitlines() == [f"{iid} {size_of(iid)[0]} {size_of(iid)[1]}" for iid in VOC["2007"]["test"]]
    # trainval: 07 trainval + 12 trainval, shuffled; 07++12 adds 07 test
    tv = [k.split("_", 1)[1] for k in keys_of(out / "VOC0712_trainval_lmdb")]
    expect_tv = [f"VOC2007/JPEGImages/{i}.jpg" for i in VOC["2007"]["trainval"]] + \
                [f"VOC2012/JPEGImages/{i}.jpg" for i in VOC["2012"]["trainval"]]
    assert sorted(tv) == sorted(expect_tv) and tv != expect_tv
    plus = [k.split("_", 1)[1] for k in keys_of(out / "VOC0712Plus_trainval_lmdb")]
    assert sorted(plus) == sorted(expect_tv + [f"VOC2007/JPEGImages/{i}.jpg" for i in VOC["2007"]["test"]])
    # list files as create_list.sh writes them, in key order
    lines = (tmp_path / "VOC0712" / "trainval.txt").read_text().splitlines()
    assert [ln.split()[0] for ln in lines] == tv
    assert all(ln.split()[1] == ln.split()[0].replace("JPEGImages", "Annotations").replace(".jpg", ".xml") for ln in lines)
    # every record carries its box, normalized by its own size
    rec = AnnotatedLMDB(out / "VOC0712_test_lmdb").get(0)
    h, w = size_of("000001")
    labels, boxes, _, _ = annotations(rec)
    assert labels.tolist() == [12]                      # dog in the VOC label map
    np.testing.assert_allclose(boxes[0], [1 / w, 2 / h, 1.0, (h - 1) / h], atol=1e-7)
    # the shuffle is fixed by the seed
    run_cli("voc", "--devkit", devkit, "--out", tmp_path / "again", "--name-size", tmp_path / "ns2.txt",
            "--sets", "trainval", "--jobs", "1", "--quiet")
    assert [k.split("_", 1)[1] for k in keys_of(tmp_path / "again" / "VOC0712_trainval_lmdb")] == tv
    run_cli("voc", "--devkit", devkit, "--out", tmp_path / "seed1", "--name-size", tmp_path / "ns3.txt",
            "--sets", "trainval", "--seed", "1", "--jobs", "1", "--quiet")
    assert [k.split("_", 1)[1] for k in keys_of(tmp_path / "seed1" / "VOC0712_trainval_lmdb")] != tv


def test_voc_missing_year_is_a_clear_error_and_years_option(tmp_path):
    devkit = make_devkit(tmp_path / "VOCdevkit", years=("2007",))
    with pytest.raises(ScratchDetError, match="VOC2012/Annotations: not found"):
        run_cli("voc", "--devkit", devkit, "--out", tmp_path / "lmdb", "--name-size", tmp_path / "ns.txt")
    assert not (tmp_path / "lmdb").exists()
    run_cli("voc", "--devkit", devkit, "--out", tmp_path / "lmdb", "--name-size", tmp_path / "ns.txt",
            "--years", "2007", "--jobs", "1", "--quiet")
    assert len(AnnotatedLMDB(tmp_path / "lmdb" / "VOC0712_trainval_lmdb")) == 5
    with pytest.raises(ScratchDetError, match="VOCdevkit folder not found"):
        run_cli("voc", "--devkit", tmp_path / "nowhere", "--out", tmp_path / "x")


VOC2012_TEST = ["2008_000001", "2008_000004", "2008_000006"]     # ImageSets order, not sorted


def add_voc2012_test(devkit):
    """VOC2012test.tar's layout: test images and ImageSets/Main/test.txt in VOC2012/; only some test
    images have an XML (the layout/action tasks' person boxes), and those must not reach the LMDB."""
    base = devkit / "VOC2012"
    (base / "ImageSets" / "Main" / "test.txt").write_text("\n".join(VOC2012_TEST) + "\n")
    for image_id in VOC2012_TEST:
        h, w = size_of(image_id)
        write_image(base / "JPEGImages" / f"{image_id}.jpg", h, w)
    (base / "Annotations" / f"{VOC2012_TEST[0]}.xml").write_text(
        "<annotation><size><width>30</width><height>20</height></size><object><name>person</name>"
        "<bndbox><xmin>1</xmin><ymin>1</ymin><xmax>9</xmax><ymax>9</ymax></bndbox></object></annotation>")


def test_voc12_builds_the_test_lmdb_and_name_size_the_07plus12_nets_reference(tmp_path):
    from prototxt_gen import registry
    devkit = make_devkit(tmp_path / "VOCdevkit")
    add_voc2012_test(devkit)
    out = tmp_path / "lmdb"
    ns07, ns12 = tmp_path / "VOC0712" / "test_name_size.txt", tmp_path / "VOC0712Plus" / "test_name_size.txt"
    assert run_cli("voc", "--devkit", devkit, "--out", out, "--name-size", ns07, "--voc12-name-size", ns12,
                   "--voc12", "--jobs", "1", "--quiet") == 0
    # the names the generated VOC0712Plus test nets use
    spec = registry.DATASETS["voc12"]
    assert data_cli.VOC12_NAME_SIZE == spec.name_size and spec.test_lmdb == "VOC2012_test_lmdb"
    db = AnnotatedLMDB(out / spec.test_lmdb)
    assert db.keys() == [f"{i:08d}_VOC2012/JPEGImages/{iid}.jpg" for i, iid in enumerate(VOC2012_TEST)]
    for i, iid in enumerate(VOC2012_TEST):
        rec = db.get(i)
        assert len(rec.annotation_group) == 0 and rec.type == rec.BBOX       # no public annotations
        assert (rec.datum.height, rec.datum.width) == size_of(iid)
    assert ns12.read_text().splitlines() == [f"{iid} {size_of(iid)[0]} {size_of(iid)[1]}" for iid in VOC2012_TEST]
    assert (tmp_path / "VOC0712Plus" / "test.txt").read_text().splitlines() == \
        [f"VOC2012/JPEGImages/{iid}.jpg" for iid in VOC2012_TEST]
    # the VOC2007 test set and its files are untouched by the VOC2012 ones
    assert ns07.read_text().splitlines() == [f"{iid} {size_of(iid)[0]} {size_of(iid)[1]}" for iid in VOC["2007"]["test"]]
    assert [ln.split()[0] for ln in (tmp_path / "VOC0712" / "test.txt").read_text().splitlines()] == \
        [f"VOC2007/JPEGImages/{iid}.jpg" for iid in VOC["2007"]["test"]]
    assert len(AnnotatedLMDB(out / "VOC0712Plus_trainval_lmdb")) == 12


def test_voc12_without_the_voc2012_test_set(tmp_path, capsys):
    devkit = make_devkit(tmp_path / "VOCdevkit")
    ns12 = tmp_path / "VOC0712Plus" / "test_name_size.txt"
    assert run_cli("voc", "--devkit", devkit, "--out", tmp_path / "lmdb", "--name-size", tmp_path / "ns.txt",
                   "--voc12-name-size", ns12, "--voc12", "--jobs", "1", "--quiet") == 0
    assert "VOC2012test.tar" in capsys.readouterr().err
    assert (tmp_path / "lmdb" / "VOC0712Plus_trainval_lmdb").is_dir() and not (tmp_path / "lmdb" / "VOC2012_test_lmdb").exists()
    assert not ns12.exists()
    with pytest.raises(ScratchDetError, match="VOC2012/ImageSets/Main/test.txt: image set not found.*VOC2012test.tar"):
        run_cli("voc", "--devkit", devkit, "--out", tmp_path / "lmdb", "--voc12-name-size", ns12, "--sets", "test12")


# -- COCO ----------------------------------------------------------------------------------------------

CATS = [{"id": 1, "name": "person"}, {"id": 18, "name": "dog"}, {"id": 90, "name": "toothbrush"}]


def make_coco(root, year="2014"):
    """Three annotation files; non-contiguous category ids; float boxes; a crowd box; an empty image."""
    layout = {"2014": [("train2014", "train2014", [1, 2, 3]), ("valminusminival2014", "val2014", [10, 11]),
                       ("minival2014", "val2014", [20, 21, 22])],
              "2017": [("train2017", "train2017", [1, 2]), ("val2017", "val2017", [20, 21])]}[year]
    ann_id = 1
    for ann_set, folder, ids in layout:
        doc = {"images": [], "annotations": [], "categories": CATS}
        for k, image_id in enumerate(ids):
            h, w = 30 + image_id, 40 + 2 * image_id
            name = f"COCO_{folder}_{image_id:012d}.jpg"
            write_image(root / folder / name, h, w)
            doc["images"].append({"id": image_id, "file_name": name, "height": h, "width": w})
            if k == 1:
                continue                                  # an image without annotations
            for cat, bbox, crowd in ((18, [1.5, 2.25, 10.1, 7.7], 0), (90, [0.0, 0.0, 5.0, 5.0], 1),
                                     (18, [3.0, 4.0, 20.0, 9.9], 0)):
                doc["annotations"].append({"id": ann_id, "image_id": image_id, "category_id": cat,
                                           "bbox": bbox, "iscrowd": crowd, "area": bbox[2] * bbox[3]})
                ann_id += 1
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{ann_set}.json").write_text(json.dumps(doc))
    return root


def coco_labelmap(path):
    lm.write(lm.make(["1", "18", "90"], ["person", "dog", "toothbrush"]), path)
    return path


def test_coco_2014_sets_boxes_crowd_and_name_size(tmp_path):
    root = make_coco(tmp_path / "coco")
    lmap = coco_labelmap(tmp_path / "labelmap_coco.prototxt")
    run_cli("coco", "--root", root, "--out", tmp_path / "lmdb", "--labelmap", lmap,
            "--name-size-dir", tmp_path / "ns", "--jobs", "1", "--quiet")
    trainval = AnnotatedLMDB(tmp_path / "lmdb" / "coco_trainval35k_lmdb")
    paths = sorted(k.split("_", 1)[1] for k in trainval.keys())
    assert paths == sorted([f"train2014/COCO_train2014_{i:012d}.jpg" for i in (1, 2, 3)] +
                           [f"val2014/COCO_val2014_{i:012d}.jpg" for i in (10, 11)])
    minival = AnnotatedLMDB(tmp_path / "lmdb" / "coco_minival_lmdb")
    assert minival.keys() == [f"{i:08d}_val2014/COCO_val2014_{iid:012d}.jpg" for i, iid in enumerate((20, 21, 22))]
    assert (tmp_path / "ns" / "minival2014_name_size.txt").read_text().splitlines() == \
        [f"{i} {30 + i} {40 + 2 * i}" for i in (20, 21, 22)]
    # image 20: dog, toothbrush (crowd), dog -> groups [dog(2): ids 0,1], [toothbrush(3)]; float32 maths
    rec = minival.get(0)
    labels, boxes, difficult, ids = annotations(rec)
    assert labels.tolist() == [2, 2, 3] and ids.tolist() == [0, 1, 0] and difficult.tolist() == [False, False, True]
    f = np.float32
    h, w = f(50), f(80)
    want = [[f(1.5) / w, f(2.25) / h, (f(1.5) + f(10.1)) / w, (f(2.25) + f(7.7)) / h],
            [f(3.0) / w, f(4.0) / h, (f(3.0) + f(20.0)) / w, (f(4.0) + f(9.9)) / h],
            [0, 0, f(5.0) / w, f(5.0) / h]]
    np.testing.assert_array_equal(boxes, np.array(want, np.float32))
    assert len(minival.get(1).annotation_group) == 0           # no annotations: a negative record


def test_coco_unknown_category_skipped_and_labelmap_from_categories(tmp_path):
    root = make_coco(tmp_path / "coco")
    lmap = tmp_path / "lm.prototxt"
    lm.write(lm.make(["1", "18"]), lmap)                         # 90 missing
    run_cli("coco", "--root", root, "--out", tmp_path / "lmdb", "--labelmap", lmap, "--sets", "minival",
            "--name-size-dir", tmp_path / "ns", "--jobs", "1", "--quiet")
    assert [k[:8] for k in AnnotatedLMDB(tmp_path / "lmdb" / "coco_minival_lmdb").keys()] == ["00000001"]
    built = coco.labelmap_from_categories(list(reversed(CATS)))
    assert [(i.name, i.label, i.display_name) for i in built.item] == [
        ("none_of_the_above", 0, "background"), ("1", 1, "person"), ("18", 2, "dog"), ("90", 3, "toothbrush")]


def test_coco_2017_layout_detected(tmp_path):
    root = make_coco(tmp_path / "coco", "2017")
    assert coco.detect_year(root) == "2017"
    lmap = coco_labelmap(tmp_path / "lm.prototxt")
    run_cli("coco", "--root", root, "--out", tmp_path / "lmdb", "--labelmap", lmap,
            "--name-size-dir", tmp_path / "ns", "--jobs", "1", "--quiet")
    assert len(AnnotatedLMDB(tmp_path / "lmdb" / "coco_train2017_lmdb")) == 2
    assert (tmp_path / "ns" / "val2017_name_size.txt").read_text().split("\n")[0] == "20 50 80"
    with pytest.raises(ScratchDetError, match="is this a COCO root"):
        coco.detect_year(tmp_path)


def test_coco_bad_json_is_a_clear_error(tmp_path):
    root = make_coco(tmp_path / "coco")
    (root / "annotations" / "instances_minival2014.json").write_text('{"images": [')
    with pytest.raises(ScratchDetError, match="instances_minival2014.json: invalid JSON"):
        run_cli("coco", "--root", root, "--out", tmp_path / "lmdb", "--labelmap", coco_labelmap(tmp_path / "l"))


def test_coco_reads_only_the_sets_asked_for(tmp_path):
    root = make_coco(tmp_path / "coco", "2017")
    (root / "annotations" / "instances_train2017.json").unlink()       # only val2017 downloaded
    lmap = coco_labelmap(tmp_path / "lm.prototxt")
    run_cli("coco", "--root", root, "--out", tmp_path / "lmdb", "--labelmap", lmap, "--sets", "val2017",
            "--name-size-dir", tmp_path / "ns", "--jobs", "1", "--quiet")
    assert len(AnnotatedLMDB(tmp_path / "lmdb" / "coco_val2017_lmdb")) > 0
    assert not (tmp_path / "lmdb" / "coco_train2017_lmdb").exists()
    with pytest.raises(ScratchDetError, match=r"--sets: unknown COCO 2017 set 'minival'"):
        run_cli("coco", "--root", root, "--out", tmp_path / "lmdb", "--labelmap", lmap, "--sets", "minival")
    with pytest.raises(ScratchDetError, match=r"instances_train2017.json: not found"):   # asked for: still an error
        run_cli("coco", "--root", root, "--out", tmp_path / "lmdb", "--labelmap", lmap, "--sets", "train2017")
