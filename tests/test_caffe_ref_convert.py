"""Converter against the real SSD Caffe's convert_annoset (issue 11).

Both tools get the same synthetic VOC-layout set and list; the LMDBs must hold the same keys in the
same order with byte-identical AnnotatedDatum values. The caffe_ref test asks the binary itself; the
fixture test checks our converter against digests recorded from it, so machines without Caffe check
the same thing (tests/fixtures/convert_annoset_synthetic_seed3.json says how it was made).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from scratchdet.data import synthetic

REPO = Path(__file__).resolve().parents[1]
LABELMAP = REPO / "data" / "labelmap_synthetic.prototxt"
FIXTURE = REPO / "tests" / "fixtures" / "convert_annoset_synthetic_seed3.json"


def records(db: Path) -> list[tuple[bytes, bytes]]:
    """Every (key, value) of an LMDB in key order, read with the lmdb package alone (not our reader)."""
    env = lmdb.open(str(db), readonly=True, lock=False)
    try:
        with env.begin() as txn:
            return list(txn.cursor())
    finally:
        env.close()


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory) -> tuple[Path, Path]:
    spec = json.loads(FIXTURE.read_text())
    root = tmp_path_factory.mktemp("convert") / "syn"
    synthetic.generate(root, images=spec["images"], seed=spec["seed"], quiet=True)
    ids = (root / "SYNTH" / "ImageSets" / "Main" / "trainval.txt").read_text().split()
    lst = root / "list.txt"
    lst.write_text("".join(f"SYNTH/JPEGImages/{i}.jpg SYNTH/Annotations/{i}.xml\n" for i in ids))
    return root, lst


@pytest.fixture(scope="module")
def ours(synth_set, tmp_path_factory) -> list[tuple[bytes, bytes]]:
    """Our converter's records for the set, made once for both comparisons."""
    root, lst = synth_set
    out = tmp_path_factory.mktemp("ours") / "ours_lmdb"
    r = subprocess.run([sys.executable, "-m", "scratchdet", "data", "convert", "--root", str(root), "--list", str(lst),
                        "--out", str(out), "--labelmap", str(LABELMAP), "--check-label", "--quiet"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return records(out)


def test_converter_matches_recorded_convert_annoset_digests(ours):
    expected = json.loads(FIXTURE.read_text())["records"]
    got = [[k.decode(), hashlib.sha256(v).hexdigest()] for k, v in ours]
    assert len(got) == len(expected) == 24
    assert [k for k, _ in got] == [k for k, _ in expected]
    differing = [k for (k, a), (_, b) in zip(got, expected) if a != b]
    assert not differing, f"records differ from real convert_annoset: {differing}"


@pytest.mark.caffe_ref
def test_converter_byte_identical_to_real_convert_annoset(synth_set, ours, tmp_path, convert_annoset_bin):
    root, lst = synth_set
    ref = tmp_path / "ref_lmdb"
    r = subprocess.run([convert_annoset_bin, "--anno_type=detection", "--label_type=xml",
                        f"--label_map_file={LABELMAP}", "--check_label", "--encode_type=jpg", "--encoded",
                        "--backend=lmdb", f"{root}/", str(lst), str(ref)],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, GLOG_logtostderr="1"))
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = records(ref)
    assert len(theirs) == 24
    assert [k for k, _ in ours] == [k for k, _ in theirs]
    differing = [k.decode() for (k, a), (_, b) in zip(ours, theirs) if a != b]
    assert not differing, f"records differ from real convert_annoset: {differing}"
