"""Faults and hostile input on the data side (issue 12): a corpus built here, each case run through
the ``scratchdet`` command as a user would. Each asserts the exit code, one message line naming
the file, record or field, no traceback, no partial or leftover output, and the good records kept.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from google.protobuf import text_format

from scratchdet.caffe import io
from scratchdet.caffe.schema import pb
from scratchdet.data import labelmap as lm
from scratchdet.data.lmdb_io import AnnotatedLMDB, LMDBWriter, record_key
from scratchdet.errors import ScratchDetError

H, W = 40, 60


# -- helpers ------------------------------------------------------------------------------------------

def cli(*args, cwd=None, timeout=180):
    return subprocess.run([sys.executable, "-m", "scratchdet", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def no_traceback(r) -> None:
    assert "Traceback" not in r.stderr + r.stdout, r.stderr[-3000:]


def one_error(r, rc: int, *names: str) -> str:
    """The run ended with ``rc`` and exactly one error line, naming each of ``names``."""
    no_traceback(r)
    assert r.returncode == rc, (r.returncode, r.stderr[-2000:])
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, r.stderr
    for name in names:
        assert name in errors[0], (name, errors[0])
    return errors[0]


def hidden(folder: Path) -> list[str]:
    """Temporaries (``.NAME.*``) anywhere below ``folder``: a run must leave none."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")) if folder.exists() else []


def jpeg(h=H, w=W, seed=0, gray=False, noisy=False) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if not noisy:
        img = cv2.GaussianBlur(img, (0, 0), 3)
    if gray:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    return cv2.imencode(".jpg", img)[1].tobytes()


def huge_jpeg() -> bytes:
    """A valid small JPEG whose frame header claims 60000x60000 (over OpenCV's pixel limit)."""
    data = bytearray(jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


def voc_xml(w=W, h=H, objects=(("cat", (5, 5, 30, 30), 0),)) -> str:
    objs = "".join(f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
                   f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>" for n, b, d in objects)
    return f"<annotation><size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>"


def devkit(root: Path, records: dict[str, tuple[bytes, str]], image_set="test") -> Path:
    """A VOC2007-layout devkit holding ``records`` (id -> (image bytes, xml)) in one image set."""
    voc = root / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    for rid, (image, xml) in records.items():
        (voc / "JPEGImages" / f"{rid}.jpg").write_bytes(image)
        (voc / "Annotations" / f"{rid}.xml").write_text(xml)
    (voc / "ImageSets" / "Main" / f"{image_set}.txt").write_text("".join(f"{r}\n" for r in records))
    return root


def labelmap_file(path: Path, names) -> Path:
    io.write_text(lm.make(list(names)), path)
    return path


def voc_cli(tmp: Path, dk: Path, out: Path, *extra):
    return cli("data", "voc", "--devkit", dk, "--out", out, "--sets", "test", "--years", "2007",
               "--labelmap", labelmap_file(tmp / "labelmap.prototxt", ["cat", "dog"]),
               "--name-size", out / "test_name_size.txt", *extra)


def keys(db: Path) -> list[str]:
    reader = AnnotatedLMDB(db)
    try:
        return reader.keys()
    finally:
        reader.close()


def box_record(box=(0.1, 0.1, 0.5, 0.5)) -> bytes:
    rec = pb.AnnotatedDatum(type=pb.AnnotatedDatum.BBOX)
    rec.datum.data, rec.datum.encoded = jpeg(16, 16), True
    rec.datum.channels, rec.datum.height, rec.datum.width, rec.datum.label = 3, 16, 16, -1
    a = rec.annotation_group.add(group_label=1).annotation.add(instance_id=0)
    a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = box
    return rec.SerializeToString()


def small_lmdb(path: Path, bad: dict[int, tuple] | None = None, n: int = 6) -> Path:
    with LMDBWriter(path) as w:
        for i in range(n):
            w.put(record_key(i, f"img/{i}.jpg"), box_record(*(((bad or {})[i],) if i in (bad or {}) else ())))
    return path


TINY_NET = """name: "tiny"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  data_param {{ source: "{db}" batch_size: 2 backend: LMDB }}
  transform_param {{ resize_param {{ resize_mode: WARP height: 16 width: 16 }} }} }}
layer {{ name: "a" type: "InnerProduct" bottom: "data" top: "a" inner_product_param {{ num_output: 2 weight_filler {{ type: "xavier" }} }} }}
layer {{ name: "b" type: "InnerProduct" bottom: "data" top: "b" inner_product_param {{ num_output: 2 }} }}
layer {{ name: "loss" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "loss" }}
layer {{ name: "silence" type: "Silence" bottom: "label" }}
"""


def tiny_solver(tmp: Path, db: Path, snapshot_prefix: Path | None = None, max_iter=2) -> Path:
    net = tmp / "net.prototxt"
    net.write_text(TINY_NET.format(db=db))
    sp = pb.SolverParameter(net=str(net), base_lr=0.01, lr_policy="fixed", max_iter=max_iter, display=1,
                            snapshot_prefix=str(snapshot_prefix or tmp / "snaps" / "tiny"),
                            snapshot_after_train=snapshot_prefix is not None, solver_mode=pb.SolverParameter.CPU)
    path = tmp / "solver.prototxt"
    path.write_text(text_format.MessageToString(sp))
    return path


def train_cli(solver: Path, tmp: Path):
    return cli("train", "--solver", solver, "--gpu", "cpu", "--log", tmp / "train.log", cwd=tmp)


# -- 1. one odd record never aborts a conversion ------------------------------------------------------

def test_voc_odd_records_are_skipped_named_and_the_good_ones_kept(tmp_path):
    good = {f"good{i}": (jpeg(seed=i), voc_xml()) for i in range(3)}
    bad = {
        "huge": (huge_jpeg(), voc_xml()),                                  # cv2.error: over the pixel limit
        "infwidth": (jpeg(), voc_xml(w="1e999")),                          # int(inf)
        "nanheight": (jpeg(), voc_xml(h="nan")),                           # int(nan)
        "bigsize": (jpeg(), voc_xml(w="99999999999999999999999")),         # overflows any int32 field
    }
    dk = devkit(tmp_path / "dk", {**dict(list(good.items())[:2]), **bad, "good2": good["good2"]})
    out = tmp_path / "out"
    r = voc_cli(tmp_path, dk, out)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    skipped = [ln for ln in r.stderr.splitlines() if ln.startswith("skipped:")]
    assert len(skipped) == len(bad), r.stderr
    for rid, field in (("huge.jpg", "OpenCV"), ("infwidth.xml", "size/width"), ("nanheight.xml", "size/height"),
                       ("bigsize.xml", "size/width")):
        assert any(rid in ln and field in ln for ln in skipped), (rid, r.stderr)
    assert "wrote 3 of 7 records" in r.stdout
    db = out / "VOC0712_test_lmdb"
    assert [k.split("/")[-1] for k in keys(db)] == ["good0.jpg", "good1.jpg", "good2.jpg"]
    assert [ln.split()[0] for ln in (out / "test_name_size.txt").read_text().splitlines()] == ["good0", "good1", "good2"]
    assert hidden(out) == [] and hidden(dk) == []


def test_any_exception_of_one_record_is_a_skipped_record(tmp_path, monkeypatch):
    """The per-record boundary itself: an exception no check foresaw (here injected into the image
    reader) skips that record only, named, in-process and in worker processes alike."""
    from scratchdet.data import convert, images
    real = images.load_image

    def flaky(path, *args, **kw):
        if "boom" in str(path):
            raise ZeroDivisionError("injected")
        return real(path, *args, **kw)

    monkeypatch.setattr(images, "load_image", flaky)
    entries = []
    for name in ("a", "boom", "b"):
        (tmp_path / f"{name}.jpg").write_bytes(jpeg())
        entries.append(convert.Entry(f"{name}.jpg", str(tmp_path / f"{name}.jpg"), None, "xml", name))
    for jobs in (1, 2):
        summary = convert.convert(entries, tmp_path / f"db{jobs}", {}, jobs=jobs, quiet=True)
        assert (summary.written, dict(summary.skipped)) == (2, {"bad record": 1})
        assert [k.split("_", 1)[1] for k in keys(tmp_path / f"db{jobs}")] == ["a.jpg", "b.jpg"]


def test_coco_bad_entries_are_named_and_skipped_or_warned(tmp_path):
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    (root / "train2017").mkdir()
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    images = [{"id": i, "file_name": f"{i}.jpg", "width": W, "height": H} for i in (1, 2, 3)]
    for i in (1, 2, 3, 13):
        (root / "val2017" / f"{i}.jpg").write_bytes(jpeg(seed=i))
    (tmp_path / "secret.jpg").write_bytes(jpeg())
    images += [
        {"id": 10, "width": W, "height": H},                                     # no file_name
        "not an image entry",                                                    # not an object
        {"id": 12, "file_name": "../../secret.jpg", "width": W, "height": H},   # leaves --root
        {"id": 13, "file_name": "13.jpg", "width": float("inf"), "height": H},  # Infinity in the JSON
    ]
    anns = [{"id": k, "image_id": k, "category_id": 1, "bbox": [5, 5, 20, 20], "iscrowd": 0} for k in (1, 2, 3)]
    anns += [{"id": 50, "image_id": 999, "category_id": 2, "bbox": [1, 1, 5, 5]}, 42]
    (root / "annotations" / "instances_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns, "categories": cats}))
    (root / "train2017" / "1.jpg").write_bytes(jpeg())
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "1.jpg", "width": W, "height": H}], "annotations": [], "categories": cats}))
    out = tmp_path / "out"
    r = cli("data", "coco", "--root", root, "--out", out, "--year", "2017", "--sets", "val2017",
            "--labelmap", labelmap_file(tmp_path / "lm.prototxt", ["1", "2"]), "--name-size-dir", out)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    err = r.stderr.splitlines()
    for needle in ("images[3] (id 10): no 'file_name'", "images[4]: not a JSON object",
                   "'../../secret.jpg' leaves the image folder", "not in 'images' (999)",
                   "annotations[4]"):
        assert sum(needle in ln for ln in err) == 1, (needle, r.stderr)
    assert "wrote 4 of 7 records" in r.stdout, r.stdout
    assert [k.split("/")[-1] for k in keys(out / "coco_val2017_lmdb")] == ["1.jpg", "2.jpg", "3.jpg", "13.jpg"]
    assert hidden(out) == []


# -- 2. a truncated LMDB --------------------------------------------------------------------------------

@pytest.fixture
def truncated(tmp_path) -> Path:
    db = small_lmdb(tmp_path / "half_lmdb", n=40)
    data = db / "data.mdb"
    with open(data, "r+b") as fh:
        fh.truncate(data.stat().st_size // 2)
    return db


def test_truncated_lmdb_is_one_line_in_data_check_and_train(tmp_path, truncated):
    r = cli("data", "check", truncated)
    one_error(r, 2, str(truncated / "data.mdb"), "truncated")
    r = train_cli(tiny_solver(tmp_path, truncated), tmp_path)
    one_error(r, 2, str(truncated / "data.mdb"), "truncated")
    empty = tmp_path / "empty_lmdb"
    empty.mkdir()
    (empty / "data.mdb").write_bytes(b"")
    one_error(cli("data", "check", empty), 2, str(empty / "data.mdb"), "not an LMDB")


# -- 3. signals during a pooled conversion, and what a killed run left ---------------------------------

@pytest.fixture(scope="module")
def big_list(tmp_path_factory) -> tuple[Path, Path]:
    """600 PNGs (re-encoded, so slow enough to interrupt) in a convert_annoset list."""
    root = tmp_path_factory.mktemp("pool")
    rng = np.random.default_rng(0)
    img = cv2.resize(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), (640, 480))
    data = cv2.imencode(".png", img)[1].tobytes()
    (root / "img").mkdir()
    names = [f"img/{i:04d}.png" for i in range(600)]
    for name in names:
        (root / name).write_bytes(data)
    lst = root / "list.txt"
    lst.write_text("".join(f"{n}\n" for n in names))
    return root, lst


def _default_sigint():
    """A shell without job control starts background jobs with SIGINT ignored, and the child would
    inherit that (a CI script run with ``&``): give it a terminal's Ctrl-C, as the test means."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(big_list, out: Path, sig: int, group: bool):
    root, lst = big_list
    proc = subprocess.Popen([sys.executable, "-m", "scratchdet", "data", "convert", "--root", str(root), "--list",
                             str(lst), "--out", str(out / "big_lmdb"), "--label-type", "txt", "--jobs", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=_default_sigint)
    for _ in range(600):           # wait (at most ~60 s) until the pool is at work on the database
        if any(p.name.endswith(".tmp") for p in out.glob(".big_lmdb.*")) or proc.poll() is not None:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    assert proc.poll() is None, "the conversion ended before it could be interrupted"
    os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
    try:
        stdout, stderr = proc.communicate(timeout=60)      # a hang guard, not a speed goal
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the interrupted conversion hung")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


@pytest.mark.parametrize("sig, group, rc, word", [
    (signal.SIGINT, True, 130, "interrupted"),        # Ctrl-C in a terminal: the whole process group
    (signal.SIGINT, True, 130, "interrupted"),        # again: the hang was intermittent
    (signal.SIGTERM, True, 143, "terminated"),        # SLURM: every process
    (signal.SIGTERM, False, 143, "terminated"),       # timeout(1): the parent only
])
def test_signal_during_pooled_conversion_stops_cleanly(tmp_path, big_list, sig, group, rc, word):
    out = tmp_path / "out"
    out.mkdir()
    r = _interrupt(big_list, out, sig, group)
    no_traceback(r)
    assert r.returncode == rc, r.stderr[-2000:]
    assert [ln for ln in r.stderr.splitlines() if ln.strip()] == [f"scratchdet data: {word}" + (" (SIGTERM)" if rc == 143 else "")]
    assert list(out.iterdir()) == []          # neither a database nor its temporary


def test_stale_temporaries_of_a_killed_run_are_removed_next_time(tmp_path):
    dk = devkit(tmp_path / "dk", {"a": (jpeg(), voc_xml())})
    out = tmp_path / "out"
    stale = [out / ".VOC0712_test_lmdb.99999999.k2j3h4.tmp", out / ".VOC0712_test_lmdb.x8y7z6.tmp",
             out / ".VOC0712_test_lmdb.99999998.q1w2e3.old"]
    for s in stale:
        (s / "db" if s.suffix == ".old" else s).mkdir(parents=True)
        (s / "data.mdb").write_bytes(b"\0" * 4096)
    live = out / f".VOC0712_test_lmdb.{os.getpid()}.abcdef.tmp"        # a run still going (this process)
    live.mkdir()
    r = voc_cli(tmp_path, dk, out)
    no_traceback(r)
    assert r.returncode == 0, r.stderr
    notes = [ln for ln in r.stderr.splitlines() if "interrupted run" in ln]
    assert len(notes) == 1 and "removed 3 temporary" in notes[0], r.stderr
    assert not any(s.exists() for s in stale) and live.is_dir()
    assert len(keys(out / "VOC0712_test_lmdb")) == 1


# -- 4. full disks and impossible output paths ---------------------------------------------------------

@pytest.fixture
def tiny_disk(tmp_path):
    """A 1 MiB tmpfs where the system allows mounting one (root in a container), else skip."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a 1 MiB tmpfs (the simulated-ENOSPC tests cover this machine)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_disk_full_during_conversion_real_tmpfs(tmp_path, tiny_disk):
    dk = devkit(tmp_path / "dk", {f"r{i}": (jpeg(240, 320, seed=i, noisy=True), voc_xml(320, 240)) for i in range(40)})
    r = voc_cli(tmp_path, dk, tiny_disk / "out")
    one_error(r, 2, "no space left on device", str(tiny_disk), "VOC0712_test_lmdb")
    assert hidden(tiny_disk) == [] and not (tiny_disk / "out" / "VOC0712_test_lmdb").exists()


def test_disk_full_during_snapshot_real_tmpfs(tmp_path, tiny_disk):
    db = small_lmdb(tmp_path / "ok_lmdb")
    solver = tiny_solver(tmp_path, db, snapshot_prefix=tiny_disk / "snaps" / "tiny")
    (tiny_disk / "snaps").mkdir()
    filler = tiny_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)      # leave the snapshot no room at all
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    r = train_cli(solver, tmp_path)
    one_error(r, 2, "no space left on device", str(tiny_disk / "snaps" / "tiny_iter_2.caffemodel"))
    assert sorted(p.name for p in (tiny_disk / "snaps").iterdir()) == []


def test_disk_full_simulated_lmdb_commit_and_snapshot(tmp_path, monkeypatch):
    """Where no tmpfs can be mounted: LMDB's commit fails as it does on a full disk (a bare I/O
    error) on a file system with nothing left, and a snapshot's write fails with ENOSPC."""
    import lmdb

    from scratchdet.data import lmdb_io

    real_open = lmdb.open

    class FailingEnv:
        def __init__(self, env):
            self.env = env

        def __getattr__(self, name):
            return getattr(self.env, name)

        def begin(self, write=False):
            raise lmdb.Error("mdb_txn_commit: Input/output error")

    monkeypatch.setattr(lmdb_io.lmdb, "open", lambda *a, **k: FailingEnv(real_open(*a, **k)))
    monkeypatch.setattr(io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(1 << 30, 1 << 30, 0))
    with pytest.raises(ScratchDetError, match=r"no space left on device .*full_lmdb"):
        small_lmdb(tmp_path / "full_lmdb")
    assert sorted(os.listdir(tmp_path)) == []
    monkeypatch.undo()

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "replace", no_space)
    with pytest.raises(ScratchDetError, match=r"no space left on device .*model\.caffemodel"):
        io.atomic_write_bytes(tmp_path / "snaps" / "model.caffemodel", b"x" * 100)
    assert os.listdir(tmp_path / "snaps") == []


def test_impossible_output_paths_are_one_line(tmp_path):
    dk = devkit(tmp_path / "dk", {"a": (jpeg(), voc_xml())})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    lst = tmp_path / "list.txt"
    lst.write_text("VOC2007/JPEGImages/a.jpg\n")
    r = cli("data", "convert", "--root", dk, "--list", lst, "--out", blocker / "db", "--label-type", "txt")
    one_error(r, 2, str(blocker))
    r = voc_cli(tmp_path, dk, tmp_path / "out", "--lists-dir", blocker / "lists")
    one_error(r, 2, str(blocker))
    r = voc_cli(tmp_path, dk, blocker / "out")
    one_error(r, 2, str(blocker))
    r = cli("detect", "--model", tmp_path / "deploy.prototxt", "--weights", tmp_path / "w.caffemodel",
            "--out", blocker / "drawn", dk / "VOC2007" / "JPEGImages" / "a.jpg")
    one_error(r, 2, str(blocker / "drawn"))
    assert hidden(tmp_path) == [] and not (tmp_path / "out" / "VOC0712_test_lmdb").exists()


# -- 5. non-finite boxes in an LMDB --------------------------------------------------------------------

def test_nan_box_in_an_lmdb_is_named_by_train_and_check(tmp_path):
    db = small_lmdb(tmp_path / "nan_lmdb", bad={3: (float("nan"), 0.1, 0.5, 0.5)})
    r = train_cli(tiny_solver(tmp_path, db), tmp_path)
    one_error(r, 2, str(db), "record 3", "00000003_img/3.jpg", "non-finite")
    r = cli("data", "check", db, "--no-decode")
    no_traceback(r)
    assert r.returncode == 1
    assert [ln for ln in r.stdout.splitlines() if "invalid:" in ln and "00000003_img/3.jpg" in ln and "non-finite" in ln]


# -- 7. a name-size file shorter than the test pass -----------------------------------------------------

def test_short_name_size_file_is_an_error_not_a_wrap_around(tmp_path):
    db = small_lmdb(tmp_path / "t_lmdb")
    sizes = tmp_path / "name_size.txt"
    sizes.write_text("".join(f"img{i} 16 16\n" for i in range(3)))
    net = tmp_path / "test.prototxt"
    net.write_text(f"""name: "t"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  data_param {{ source: "{db}" batch_size: 2 backend: LMDB }}
  transform_param {{ resize_param {{ resize_mode: WARP height: 16 width: 16 }} }} }}
layer {{ name: "split" type: "Slice" bottom: "label" top: "det" top: "rest" slice_param {{ axis: 3 slice_point: 7 }} }}
layer {{ name: "silence" type: "Silence" bottom: "rest" bottom: "data" }}
layer {{ name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "label" top: "eval"
  detection_evaluate_param {{ num_classes: 2 background_label_id: 0 overlap_threshold: 0.5 name_size_file: "{sizes}" }} }}
""")
    weights = tmp_path / "none.caffemodel"
    io.write_binary(pb.NetParameter(name="t", layer=[pb.LayerParameter(name="eval", type="DetectionEvaluate")]),
                    weights)                                      # the net has nothing to learn
    r = cli("test", "--model", net, "--weights", weights, "--iterations", 3, cwd=tmp_path)
    one_error(r, 2, str(sizes), "3 images", "6")


# -- 8. byte-reproducible LMDBs ----------------------------------------------------------------------------

def test_two_clean_conversions_give_the_same_bytes(tmp_path):
    dk = devkit(tmp_path / "dk", {f"r{i}": (jpeg(seed=i), voc_xml()) for i in range(30)})
    outs = []
    for k in range(2):
        r = voc_cli(tmp_path, dk, tmp_path / f"out{k}", "--quiet")
        assert r.returncode == 0, r.stderr
        outs.append((tmp_path / f"out{k}" / "VOC0712_test_lmdb" / "data.mdb").read_bytes())
    assert len(outs[0]) > 0 and outs[0] == outs[1]


def _die_on_five(i):
    if i == 5:
        os.kill(os.getpid(), signal.SIGKILL)     # as the OOM killer would
    return i * i


def test_a_worker_killed_mid_conversion_is_one_line_not_a_hang():
    from scratchdet.data.parallel import ordered_map
    assert list(ordered_map(lambda i: i * i, range(40), 3)) == [i * i for i in range(40)]
    with pytest.raises(ScratchDetError, match=r"worker process died \(signal 9\) on 0 \.\. 7"):
        list(ordered_map(_die_on_five, range(40), 3, describe=lambda c: f"{c[0]} .. {c[-1]}"))
