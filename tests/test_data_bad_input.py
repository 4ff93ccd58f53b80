"""Bad input to the converters (issue 3): each case has a message naming the file and a defined
outcome -- skipped and counted by default, the whole conversion failed with strict=True."""
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from scratchdet.caffe.schema import pb
from scratchdet.data import convert as cv
from scratchdet.data import labelmap as lm
from scratchdet.data.lmdb_io import AnnotatedLMDB, annotations, decode_image
from scratchdet.errors import ScratchDetError

REPO = Path(__file__).resolve().parents[1]
LABELS = {"cat": 1, "dog": 2}


def image(h=40, w=60, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content, so one JPEG re-encode changes pixels by little
    return cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 4)


def jpeg(img, **kw):
    return cv2.imencode(".jpg", img)[1].tobytes()


def xml(w=60, h=40, objects=(("cat", (5, 5, 30, 30)),), size=True):
    s = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if size else ""
    o = "".join(f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    return f"<annotation>{s}{o}</annotation>"


def entry(tmp, name, image_bytes=None, annotation=None, image_name=None):
    """One list entry; a good image and annotation unless overridden (None image_bytes = good)."""
    img_rel = image_name or f"img/{name}.jpg"
    img_path = tmp / img_rel
    img_path.parent.mkdir(parents=True, exist_ok=True)
    if image_bytes is not False:
        img_path.write_bytes(image_bytes if image_bytes is not None else jpeg(image()))
    ann_path = tmp / "ann" / f"{name}.xml"
    ann_path.parent.mkdir(parents=True, exist_ok=True)
    ann_path.write_text(annotation if annotation is not None else xml())
    return cv.Entry(img_rel, str(img_path), str(ann_path), "xml", name)


def run(tmp, entries, strict=False):
    return cv.convert(entries, tmp / "db", LABELS, strict=strict, quiet=True)


def only_record(tmp):
    db = AnnotatedLMDB(tmp / "db")
    assert len(db) == 1
    return db.get(0)


# -- skipped records: (case name, builder) -> expected summary bucket and message fragment ---------

def _missing_image(tmp):
    return entry(tmp, "a", image_bytes=False), "missing image", "img/a.jpg: image file not found"


def _unreadable_image(tmp):
    e = entry(tmp, "a", image_bytes=False)
    Path(e.image_path).mkdir()                 # a folder where the file should be: read fails
    return e, "unreadable image", "img/a.jpg: cannot read image"


def _corrupt_jpeg(tmp):
    data = bytearray(jpeg(image()))
    data[20:120] = bytes(100)                  # tables zeroed; start and end markers intact
    return entry(tmp, "a", bytes(data)), "corrupt image", "img/a.jpg: corrupt JPEG"


def _truncated_jpeg(tmp):
    data = jpeg(image(200, 300))
    return entry(tmp, "a", data[:len(data) // 2]), "corrupt image", "img/a.jpg: truncated JPEG"


def _garbage_file(tmp):
    return entry(tmp, "a", b"this is not an image at all"), "corrupt image", "img/a.jpg: corrupt or unsupported"


def _size_mismatch(tmp):
    return entry(tmp, "a", annotation=xml(w=61)), "size mismatch", "annotation size 61x40 disagrees with the image's 60x40"


def _unknown_class(tmp):
    return (entry(tmp, "a", annotation=xml(objects=[("cat", (1, 1, 9, 9)), ("unicorn", (2, 2, 8, 8))])),
            "unknown class", "unknown class name 'unicorn'")


def _empty_annotation(tmp):
    return entry(tmp, "a", annotation=""), "bad annotation", "a.xml: empty annotation file"


def _malformed_xml(tmp):
    return entry(tmp, "a", annotation="<annotation><object>"), "bad annotation", "a.xml: malformed XML"


def _missing_annotation(tmp):
    e = entry(tmp, "a")
    os.unlink(e.annotation)
    return e, "missing annotation", "a.xml: annotation file not found"


def _non_ascii_name(tmp):
    return entry(tmp, "a", image_name="img/caf\u00e9.jpg"), "bad file name", "non-ASCII file name"


def _path_too_long(tmp):
    return entry(tmp, "a", image_name="img/" + "d" * 200 + "/" + "e" * 200 + "/" + "x" * 120 + ".jpg"), "bad file name", "too long for an LMDB key"


SKIPS = [_path_too_long, _missing_image, _unreadable_image, _corrupt_jpeg, _truncated_jpeg, _garbage_file, _size_mismatch,
         _unknown_class, _empty_annotation, _malformed_xml, _missing_annotation, _non_ascii_name]


@pytest.mark.parametrize("case", SKIPS, ids=lambda f: f.__name__.strip("_"))
def test_bad_record_is_skipped_and_counted_or_fails_strict(tmp_path, case, capsys):
    bad, kind, fragment = case(tmp_path)
    good = entry(tmp_path, "good")
    summary = cv.convert([bad, good], tmp_path / "db", LABELS, quiet=False)
    assert summary.written == 1 and summary.skipped == {kind: 1}
    assert fragment in capsys.readouterr().err
    assert f"skipped 1 (1 {kind})" in summary.line()
    # the good record keeps its list index 1 in the key
    assert AnnotatedLMDB(tmp_path / "db").keys() == ["00000001_img/good.jpg"]
    with pytest.raises(ScratchDetError, match="no database written") as err:
        cv.convert([good, bad], tmp_path / "strict_db", LABELS, strict=True, quiet=True)
    assert fragment in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "strict_db").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".strict_db")]


def test_duplicate_ids_second_occurrence_skipped(tmp_path):
    e = entry(tmp_path, "a")
    summary = run(tmp_path, [e, entry(tmp_path, "b"), e])
    assert summary.written == 2 and summary.skipped == {"duplicate": 1}
    assert AnnotatedLMDB(tmp_path / "db").keys() == ["00000000_img/a.jpg", "00000001_img/b.jpg"]


def test_all_records_bad_writes_no_database(tmp_path):
    with pytest.raises(ScratchDetError, match="no record could be written"):
        run(tmp_path, [entry(tmp_path, "a", image_bytes=False)])
    assert not (tmp_path / "db").exists()


# -- fixed records: converted or repaired, and reported ----------------------------------------------

def test_grayscale_jpeg_reencoded_as_three_channels(tmp_path):
    gray = image()[..., 0]
    run(tmp_path, [entry(tmp_path, "a", jpeg(gray))])
    rec = only_record(tmp_path)
    decoded = decode_image(rec)
    assert rec.datum.channels == 3 and decoded.shape == (40, 60, 3)
    assert cv2.imdecode(np.frombuffer(rec.datum.data, np.uint8), cv2.IMREAD_UNCHANGED).ndim == 3
    ref = cv2.imread(str(tmp_path / "img/a.jpg"), cv2.IMREAD_GRAYSCALE).astype(int)
    assert np.abs(decoded.astype(int) - ref[..., None]).mean() < 2.0   # same picture after one re-encode


def test_cmyk_jpeg_reencoded(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(image()[..., ::-1].copy()).convert("CMYK").save(path, quality=95)
    data = path.read_bytes()
    summary = run(tmp_path, [entry(tmp_path, "a", data)])
    assert summary.issues["re-encoded image"] == 1
    rec = only_record(tmp_path)
    assert rec.datum.data != data
    decoded = decode_image(rec)
    ref = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert decoded.shape == ref.shape == (40, 60, 3) and np.abs(decoded.astype(int) - ref).mean() < 3.0


def test_png_with_alpha_reencoded_as_jpeg(tmp_path):
    bgra = np.dstack([image(), np.full((40, 60), 7, np.uint8)])
    png = cv2.imencode(".png", bgra)[1].tobytes()
    summary = run(tmp_path, [entry(tmp_path, "a", png, image_name="img/a.png")])
    assert summary.issues["re-encoded image"] == 1
    rec = only_record(tmp_path)
    assert rec.datum.data[:3] == b"\xff\xd8\xff"            # JPEG now
    assert np.abs(decode_image(rec).astype(int) - bgra[..., :3]).mean() < 3.0   # alpha dropped, colour kept


def test_xml_without_size_uses_image_size(tmp_path):
    summary = run(tmp_path, [entry(tmp_path, "a", annotation=xml(size=False, objects=[("dog", (6, 4, 30, 20))]))])
    assert summary.issues["no size"] == 1
    labels, boxes, _, _ = annotations(only_record(tmp_path))
    np.testing.assert_allclose(boxes[0], [6 / 60, 4 / 40, 30 / 60, 20 / 40], atol=1e-7)
    with pytest.raises(ScratchDetError, match="no image size"):
        cv.convert([entry(tmp_path, "a", annotation=xml(size=False))], tmp_path / "s", LABELS, strict=True, quiet=True)


def test_box_outside_image_clipped_and_empty_or_inverted_boxes_dropped(tmp_path, capsys):
    objects = [("cat", (-5, 10, 70, 50)),      # exceeds on three sides: clipped to (0,10,60,40)
               ("dog", (10, 10, 10, 30)),      # zero width: dropped
               ("cat", (30, 20, 20, 35)),      # inverted: dropped
               ("dog", (70, 45, 90, 60)),      # entirely outside: dropped
               ("cat", (1, 2, 3, 4))]          # fine
    summary = cv.convert([entry(tmp_path, "a", annotation=xml(objects=objects))], tmp_path / "db", LABELS, quiet=False)
    err = capsys.readouterr().err
    assert summary.issues == {"clipped box": 1, "dropped box": 3}
    assert "exceeds the 60x40 image; clipped to (0, 10, 60, 40)" in err
    assert "zero-area box" in err and "inverted box" in err and "outside the image" in err and "a.xml" in err
    labels, boxes, _, ids = annotations(only_record(tmp_path))
    assert labels.tolist() == [1, 1] and ids.tolist() == [0, 1]
    np.testing.assert_allclose(boxes, [[0, 10 / 40, 1, 1], [1 / 60, 2 / 40, 3 / 60, 4 / 40]], atol=1e-7)
    with pytest.raises(ScratchDetError, match="clipped to"):
        cv.convert([entry(tmp_path, "a", annotation=xml(objects=objects[:1]))], tmp_path / "s", LABELS, strict=True, quiet=True)


def test_xml_with_encoding_declaration_and_float_coordinates(tmp_path):
    text = '<?xml version="1.0" encoding="ISO-8859-1"?>\n' + xml(objects=[("cat", ("4.5", 5, "30.25", 20))])
    e = entry(tmp_path, "a", annotation="")
    Path(e.annotation).write_bytes(text.encode("latin-1"))
    run(tmp_path, [e])
    _, boxes, _, _ = annotations(only_record(tmp_path))
    np.testing.assert_allclose(boxes[0], [4.5 / 60, 5 / 40, 30.25 / 60, 20 / 40], atol=1e-7)


def test_annotation_without_objects_is_a_negative_record(tmp_path):
    summary = run(tmp_path, [entry(tmp_path, "a", annotation=xml(objects=()))])
    assert summary.written == 1 and summary.issues["no objects"] == 1
    rec = only_record(tmp_path)
    assert len(rec.annotation_group) == 0 and rec.HasField("type")


def test_label_map_duplicates_rejected_with_check_label(tmp_path):
    dup = lm.make(["cat", "dog", "cat"])
    with pytest.raises(ScratchDetError, match="duplicate name 'cat'"):
        lm.name_to_label(dup, check_label=True)
    assert lm.name_to_label(dup)["cat"] == 3          # without the check the later item wins, as in the fork
    dup_label = lm.make(["cat", "dog"])
    dup_label.item[2].label = 1
    with pytest.raises(ScratchDetError, match="duplicate label 1"):
        lm.check(dup_label)


def test_cli_convert_reports_one_line_and_strict_exit_code(tmp_path):
    good = entry(tmp_path, "good")
    entry(tmp_path, "bad", annotation=xml(objects=[("zebra", (1, 1, 5, 5))]))
    (tmp_path / "list.txt").write_text("img/good.jpg ann/good.xml\nimg/bad.jpg ann/bad.xml\n")
    lmap = tmp_path / "labelmap.prototxt"
    lm.write(lm.make(["cat", "dog"]), lmap)
    base = [sys.executable, "-m", "scratchdet", "data", "convert", "--root", str(tmp_path), "--list",
            str(tmp_path / "list.txt"), "--labelmap", str(lmap), "--jobs", "1", "--check-label"]
    proc = subprocess.run(base + ["--out", str(tmp_path / "db"), "--name-size", str(tmp_path / "ns.txt")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 1 of 2 records (1 objects), skipped 1 (1 unknown class)" in proc.stdout
    assert "ann/bad.xml: unknown class name 'zebra'" in proc.stderr
    assert (tmp_path / "ns.txt").read_text() == "good 40 60\n"
    proc = subprocess.run(base + ["--out", str(tmp_path / "db2"), "--strict"], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    err_lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert err_lines[-1].startswith("scratchdet data: error:") and "zebra" in err_lines[-1]
    assert "Traceback" not in proc.stderr and not (tmp_path / "db2").exists()
    # a malformed list is an error for the whole file, naming the line
    (tmp_path / "list.txt").write_text("img/good.jpg ann/good.xml extra\n")
    proc = subprocess.run(base + ["--out", str(tmp_path / "db3")], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2 and "list.txt:1: expected '<image> <annotation>'" in proc.stderr
    assert good.list_path == "img/good.jpg"
