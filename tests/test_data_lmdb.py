"""LMDB writer and reader (issue 3): records exactly as the SSD fork's convert_annoset writes them."""
import multiprocessing
import pickle
import struct

import cv2
import lmdb
import numpy as np
import pytest

from scratchdet.caffe.schema import pb
from scratchdet.data import convert as cv
from scratchdet.data import labelmap as lm
from scratchdet.data.lmdb_io import (AnnotatedLMDB, LMDBWriter, annotation_boxes, annotations, decode_image,
                                     record_key)
from scratchdet.errors import ScratchDetError

LABELS = lm.name_to_label(lm.make(lm.VOC_CLASSES))


def write_jpeg(path, h, w, seed):
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".jpg", img)[1].tobytes())
    return img


def voc_xml(w, h, objects, size=True):
    size_xml = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if size else ""
    objs = "".join(
        f"<object><name>{n}</name><difficult>{int(d)}</difficult>"
        f"<bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for n, (x1, y1, x2, y2), d in objects)
    return f"<annotation><folder>VOC2007</folder>{size_xml}{objs}</annotation>"


# image id -> (height, width, objects as (name, (xmin, ymin, xmax, ymax) pixels, difficult))
SAMPLES = {
    "000005": (375, 500, [("chair", (263, 211, 324, 339), False), ("chair", (165, 264, 253, 372), False),
                          ("person", (5, 244, 67, 374), True), ("chair", (241, 194, 295, 299), True)]),
    "000007": (333, 500, [("car", (141, 50, 500, 330), False)]),
    "000009": (300, 241, [("horse", (69, 172, 241, 300), False), ("person", (150, 141, 229, 284), False),
                          ("person", (200, 10, 240, 60), True)]),
}


def make_voc(root, samples=SAMPLES):
    entries = []
    for i, (image_id, (h, w, objects)) in enumerate(samples.items()):
        write_jpeg(root / "VOC2007" / "JPEGImages" / f"{image_id}.jpg", h, w, i)
        ann = root / "VOC2007" / "Annotations" / f"{image_id}.xml"
        ann.parent.mkdir(parents=True, exist_ok=True)
        ann.write_text(voc_xml(w, h, objects))
        rel = f"VOC2007/JPEGImages/{image_id}.jpg"
        entries.append(cv.Entry(rel, str(root / rel), str(ann), "xml", image_id))
    return entries


@pytest.fixture
def voc_db(tmp_path):
    entries = make_voc(tmp_path / "devkit")
    summary = cv.convert(entries, tmp_path / "db", LABELS, quiet=True)
    return tmp_path, entries, summary


def test_round_trip_boxes_labels_and_image_bytes(voc_db):
    tmp_path, entries, summary = voc_db
    assert summary.written == 3 and summary.objects == 8 and not summary.skipped
    db = AnnotatedLMDB(tmp_path / "db")
    assert len(db) == 3
    items = list(db)
    assert [k for k, _ in items] == [f"{i:08d}_VOC2007/JPEGImages/{iid}.jpg" for i, iid in enumerate(SAMPLES)]
    for (key, record), entry, (h, w, objects) in zip(items, entries, SAMPLES.values()):
        # encoded original file bytes, size of the decoded image, label -1
        assert record.datum.data == open(entry.image_path, "rb").read()
        assert (record.datum.height, record.datum.width, record.datum.channels) == (h, w, 3)
        assert record.datum.encoded and record.datum.label == -1
        assert record.HasField("type") and record.type == pb.AnnotatedDatum.BBOX
        # groups in order of first appearance, instance ids counting within a group
        order = list(dict.fromkeys(LABELS[n] for n, _, _ in objects))
        assert [g.group_label for g in record.annotation_group] == order
        expected = sorted(((LABELS[n], i) for i, (n, _, _) in enumerate(objects)), key=lambda t: order.index(t[0]))
        labels, boxes, difficult, ids = annotations(record)
        assert labels.tolist() == [lbl for lbl, _ in expected]
        for row, (lbl, i) in enumerate(expected):
            name, (x1, y1, x2, y2), d = objects[i]
            np.testing.assert_allclose(boxes[row], [x1 / w, y1 / h, x2 / w, y2 / h], atol=1e-6)
            assert difficult[row] == d
        for lbl in order:
            assert ids[labels == lbl].tolist() == list(range(int((labels == lbl).sum())))
        # the Box list view carries the same numbers
        assert [(b.label, b.difficult, b.instance_id) for b in annotation_boxes(record)] == \
            list(zip(labels.tolist(), difficult.tolist(), ids.tolist()))
        # decoding equals OpenCV reading the original file
        np.testing.assert_array_equal(decode_image(record), cv2.imread(entry.image_path, cv2.IMREAD_COLOR))


def test_record_bytes_equal_hand_built_annotated_datum(voc_db):
    tmp_path, entries, _ = voc_db
    db = AnnotatedLMDB(tmp_path / "db")
    with lmdb.open(str(tmp_path / "db"), readonly=True, lock=False) as env, env.begin() as txn:
        stored = txn.get(b"00000002_VOC2007/JPEGImages/000009.jpg")
    # 000009: horse (69,172,241,300), person (150,141,229,284), person (200,10,240,60) difficult; 241x300
    expect = pb.AnnotatedDatum()
    expect.datum.channels = 3
    expect.datum.height = 300
    expect.datum.width = 241
    expect.datum.data = open(entries[2].image_path, "rb").read()
    expect.datum.label = -1
    expect.datum.encoded = True
    expect.type = pb.AnnotatedDatum.BBOX
    g = expect.annotation_group.add()
    g.group_label = 13                      # horse
    a = g.annotation.add()
    a.instance_id = 0
    a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = (np.float32(69) / np.float32(241), np.float32(172) / np.float32(300),
                                                          np.float32(241) / np.float32(241), np.float32(300) / np.float32(300))
    a.bbox.difficult = False
    g = expect.annotation_group.add()
    g.group_label = 15                      # person
    for iid, (x1, y1, x2, y2), d in ((0, (150, 141, 229, 284), False), (1, (200, 10, 240, 60), True)):
        a = g.annotation.add()
        a.instance_id = iid
        a.bbox.xmin = np.float32(x1) / np.float32(241)
        a.bbox.ymin = np.float32(y1) / np.float32(300)
        a.bbox.xmax = np.float32(x2) / np.float32(241)
        a.bbox.ymax = np.float32(y2) / np.float32(300)
        a.bbox.difficult = d
    assert stored == expect.SerializeToString()
    assert db.raw(2) == stored
    # wire-level facts the fork relies on: type present although 0 (tag 2 varint 0), label -1 as a
    # 10-byte varint, instance_id 0 present, and xmax = 1.0f exactly
    assert b"\x10\x00" in stored
    assert b"\x28" + b"\xff" * 9 + b"\x01" in stored
    assert b"\x08\x00\x12" in stored                         # Annotation{instance_id: 0, bbox: ...}
    assert b"\x1d" + struct.pack("<f", 1.0) in stored         # NormalizedBBox.xmax = 1.0


def test_reader_api_random_access_pickling_and_fork(voc_db):
    tmp_path, _, _ = voc_db
    db = AnnotatedLMDB(tmp_path / "db")
    keys = db.keys()
    assert keys == sorted(keys)
    assert db.key(1) == keys[1] and db[1].SerializeToString() == db.get(1).SerializeToString()
    key, rec = db.item(2)
    assert key.endswith("000009.jpg") and rec.datum.width == 241
    clone = pickle.loads(pickle.dumps(db))
    assert clone._env is None and len(clone) == 3 and clone.get(0).datum.height == 375
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:   # an env opened in the parent must not be reused in the child
        heights = pool.map(_child_height, [(db, i) for i in range(3)])
    assert heights == [375, 333, 300]


def _child_height(args):
    db, i = args
    return decode_image(db.get(i)).shape[0]


def test_reader_rejects_non_lmdb(tmp_path):
    with pytest.raises(ScratchDetError, match="does not exist"):
        AnnotatedLMDB(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScratchDetError, match="no data.mdb"):
        AnnotatedLMDB(tmp_path / "empty")


def test_decode_raw_chw_datum():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    d = pb.Datum(channels=3, height=2, width=3, data=img.transpose(2, 0, 1).tobytes(), encoded=False)
    np.testing.assert_array_equal(decode_image(d), img)
    gray = pb.Datum(channels=1, height=2, width=3, data=img[..., 0].tobytes())
    np.testing.assert_array_equal(decode_image(gray), np.repeat(img[..., :1], 3, axis=2))
    with pytest.raises(ScratchDetError, match="does not match"):
        decode_image(pb.Datum(channels=3, height=2, width=3, data=b"123"))


def test_writer_grows_map_and_commits_in_batches(tmp_path):
    payload = bytes(range(256)) * 40   # 10 KiB per record, 64 KiB initial map
    with LMDBWriter(tmp_path / "db", map_size=64 * 1024, commit_every=7) as w:
        for i in range(50):
            w.put(record_key(i, f"img{i}.jpg"), payload + bytes([i]))
    assert w.grown >= 3
    with lmdb.open(str(tmp_path / "db"), readonly=True, lock=False) as env, env.begin() as txn:
        assert env.stat()["entries"] == 50
        assert txn.get(b"00000049_img49.jpg") == payload + bytes([49])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]          # no temporary left


def test_failed_or_interrupted_conversion_leaves_nothing_and_keeps_old_db(tmp_path, monkeypatch):
    entries = make_voc(tmp_path / "devkit")
    cv.convert(entries[:1], tmp_path / "db", LABELS, quiet=True)
    before = AnnotatedLMDB(tmp_path / "db").keys()

    calls = {"n": 0}
    real = cv.images.load_image

    def interrupt_on_third(path, *args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(path, *args, **kw)

    monkeypatch.setattr(cv.images, "load_image", interrupt_on_third)
    with pytest.raises(KeyboardInterrupt):
        cv.convert(entries, tmp_path / "db", LABELS, quiet=True)
    monkeypatch.undo()
    # strict failure on a bad record: same guarantee
    (tmp_path / "devkit" / "VOC2007" / "JPEGImages" / "000007.jpg").unlink()
    with pytest.raises(ScratchDetError, match="000007.jpg: image file not found"):
        cv.convert(entries, tmp_path / "db", LABELS, strict=True, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "devkit"]
    assert AnnotatedLMDB(tmp_path / "db").keys() == before
    # a successful rebuild replaces the old database, key indices counting the skipped line
    summary = cv.convert(entries, tmp_path / "db", LABELS, quiet=True)
    assert summary.written == 2 and summary.skipped == {"missing image": 1}
    assert [k[:9] for k in AnnotatedLMDB(tmp_path / "db").keys()] == ["00000000_", "00000002_"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db", "devkit"]


def test_parallel_conversion_writes_identical_database(tmp_path):
    entries = make_voc(tmp_path / "devkit")
    missing = cv.Entry("VOC2007/JPEGImages/nope.jpg", str(tmp_path / "nope.jpg"), None, "xml", "nope")
    entries = entries + [missing, entries[0]]          # a skip in a worker and a duplicate
    one = cv.convert(entries, tmp_path / "one", LABELS, quiet=True, jobs=1)
    two = cv.convert(entries, tmp_path / "two", LABELS, quiet=True, jobs=2)
    assert one.skipped == two.skipped == {"missing image": 1, "duplicate": 1}
    a, b = AnnotatedLMDB(tmp_path / "one"), AnnotatedLMDB(tmp_path / "two")
    assert len(a) == 3 and list(a.iter_raw()) == list(b.iter_raw())
