"""``scratchdet train --backend caffe`` with the real binary, and ``compare`` / ``plot`` on its log
(issue 11).

The demo net, generated for a 50-image synthetic set at batch 4, trains 6 iterations in real Caffe
through the backend (test every 3, display every iteration); the log must give the parser the
solver block, every loss, both tests and the final snapshot, and compare / plot must read it.
The referee build's glog writes the year in its prefix (``I20261204 ...``), which the parser must
accept. tests/fixtures/caffe_backend_demo.log.gz is such a log, recorded from the caffe_ref test,
so the parsing half runs everywhere.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
from pathlib import Path

import pytest

import caffe_parity as cp
from scratchdet.report import logparse

FIXTURE = cp.REPO / "tests" / "fixtures" / "caffe_backend_demo.log.gz"
SOLVER = "models/synthetic/demo_rootres/solver.prototxt"
SCRATCHDET = [sys.executable, "-m", "scratchdet"]


def check_log(root: Path, log: Path) -> None:
    rec = logparse.parse_log(log)
    assert rec.solver["max_iter"] == 6 and rec.solver["display"] == 1
    assert [p.iteration for p in rec.train][:6] == [0, 1, 2, 3, 4, 5]
    assert [t.iteration for t in rec.tests] == [3, 6]
    assert all(0 <= t.outputs["detection_eval"] <= 1 for t in rec.tests)
    r = cp.run(SCRATCHDET + ["compare", str(log), "--json"], root)
    card = json.loads(r.stdout)[0]
    assert card["variant"] == "demo_rootres" and card["iterations"] == 6 and card["max_iter"] == 6
    assert card["status"] == "done" and card["complete"]
    assert card["final_map"] == pytest.approx(100 * rec.tests[-1].outputs["detection_eval"])
    cp.run(SCRATCHDET + ["plot", str(log), "--out", "plots"], root)
    assert all((root / "plots" / f"{k}.png").stat().st_size > 0 for k in ("loss", "lr", "map", "figure1"))


def test_compare_and_plot_read_a_recorded_caffe_log(tmp_path):
    log = tmp_path / "runs" / "synthetic" / "demo_rootres" / "train.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(gzip.decompress(FIXTURE.read_bytes()))
    check_log(tmp_path, log)


@pytest.mark.caffe_ref
def test_backend_caffe_trains_the_demo_and_its_log_is_read(tmp_path, caffe_bin):
    root = tmp_path
    (root / "data").mkdir()
    shutil.copy(cp.REPO / "data" / "labelmap_synthetic.prototxt", root / "data")
    cp.run(SCRATCHDET + ["data", "synthetic", "--out", "data/synthetic", "--images", "50", "--seed", "0",
                         "--lmdb", "data/lmdb", "--quiet"], root)
    cp.run(SCRATCHDET + ["gen", "demo_rootres", "--out", "models", "--set", "num_test_image=10", "--set", "batch=4",
                         "--set", "display=1", "--set", "test_interval=3", "--set", "snapshot=0",
                         "--set", "max_iter=6"], root)
    log = root / "runs" / "synthetic" / "demo_rootres" / "train.log"
    cp.run(SCRATCHDET + ["train", "--backend", "caffe", "--solver", SOLVER, "--gpu", "cpu", "--log", str(log),
                         "--quiet"], root, env={"CAFFE_BIN": caffe_bin})
    assert (root / "runs/synthetic/demo_rootres/demo_rootres_iter_6.caffemodel").is_file()
    assert (root / "runs/synthetic/demo_rootres/demo_rootres_iter_6.solverstate").is_file()
    check_log(root, log)
    if os.environ.get("SCRATCHDET_RECORD") == "1":
        FIXTURE.write_bytes(gzip.compress(log.read_bytes(), mtime=0))
