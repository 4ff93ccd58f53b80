"""Test phase: the solver's ``detection_eval`` of real Caffe against ours (issue 11).

A small demo net (``demo_rootres`` at 64x64, width 0.25, 4 detection maps), generated for a
50-image synthetic set (10 test images, one test batch), starts from weights that real Caffe
trained (tests/fixtures/caffe_trained_demo_small.npz: 800 iterations of that net on another
500-image synthetic set, solver_mode CPU, otherwise the generated solver; weights rounded to
float16, BatchNorm's sums kept in float32, so both engines load the same values). The solver
(CPU, ``test_initialization: true``, ``max_iter: 1``, ``show_per_class_result: true``) tests once
at iteration 0, before any step, so the test net holds exactly the given weights.
``detection_eval`` and the per-class APs must be the numbers real Caffe logs, for each
``ap_version``; so must ``scratchdet test`` on the same weights. (With ``max_iter: 0`` Caffe runs
one display forward of the train net before its final test, which moves BatchNorm's statistics;
the engine now does the same.) The printed values have 6 digits and both engines find the same
detections (tests/test_detection_save.py), so the bound is 1e-6.
tests/fixtures/caffe_test_phase_demo.json holds what real Caffe logged, for machines without it.
"""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import caffe_parity as cp
from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST
from scratchdet.caffe.schema import pb

FIXTURE = cp.REPO / "tests" / "fixtures" / "caffe_test_phase_demo.json"
AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
MODEL = "models/synthetic/demo_rootres"
WEIGHTS = cp.REPO / "tests" / "fixtures" / "caffe_trained_demo_small.npz"
SMALL = ["--set", "input_size=64", "--set", "width=0.25", "--set", "sources=4"]


def scores(log: str) -> dict[str, float]:
    """{"detection_eval": v, "class1": ap, ...} of the first test in a log."""
    out = {}
    for line in log.splitlines():
        m = re.search(r"\] (class\d+): (\S+)$", line)
        if m and m.group(1) not in out:
            out[m.group(1)] = float(m.group(2))
        m = re.search(r"Test net output #0: detection_eval = (\S+)$", line)
        if m:
            out["detection_eval"] = float(m.group(1))
            break
    return out


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    from scratchdet.engine.caffemodel import save_caffemodel
    from scratchdet.engine.net import Net
    root = tmp_path_factory.mktemp("testphase")
    (root / "data").mkdir()
    shutil.copy(cp.REPO / "data" / "labelmap_synthetic.prototxt", root / "data")
    scratchdet = [sys.executable, "-m", "scratchdet"]
    cp.run(scratchdet + ["data", "synthetic", "--out", "data/synthetic", "--images", "50", "--seed", "0",
                         "--lmdb", "data/lmdb", "--quiet"], root)
    cp.run(scratchdet + ["gen", "demo_rootres", "--out", "models", "--set", "num_test_image=10", *SMALL], root)
    net = Net(io.read_net(root / MODEL / "deploy.prototxt"), TEST, source="deploy")
    trained = np.load(WEIGHTS)
    with torch.no_grad():
        for p in net.params():
            p.tensor.copy_(torch.from_numpy(trained[f"{p.layer}/{p.index}"].astype(np.float32)).reshape(p.tensor.shape))
    save_caffemodel(net, root / "init.caffemodel")
    for version in AP_VERSIONS:
        sp = io.read_solver(root / MODEL / "solver.prototxt")
        sp.solver_mode = pb.SolverParameter.CPU
        sp.max_iter = 1
        sp.test_initialization = True
        sp.show_per_class_result = True
        sp.snapshot = 0
        sp.snapshot_after_train = False
        sp.ap_version = version
        io.write_text(sp, root / f"solver_{version}.prototxt")
    return root


def _ours(root: Path, version: str) -> dict[str, float]:
    log = root / f"ours_{version}.log"
    if not log.is_file():          # one run per version serves both comparisons
        cp.train_here(root, f"solver_{version}.prototxt", "init.caffemodel", log)
    return scores(log.read_text())


def _assert_same(ours: dict, theirs: dict, what: str) -> None:
    assert sorted(ours) == sorted(theirs), (what, ours, theirs)
    for k, v in theirs.items():
        assert abs(ours[k] - v) <= 1e-6, f"{what}: {k} = {ours[k]}, real Caffe {v}"


@pytest.mark.parametrize("version", AP_VERSIONS)
def test_solver_test_matches_recorded_caffe(root, version):
    theirs = json.loads(FIXTURE.read_text())["scores"][version]
    _assert_same(_ours(root, version), theirs, f"ap_version {version}")


def test_scratchdet_test_gives_the_solvers_number(root):
    r = cp.run([sys.executable, "-m", "scratchdet", "test", "--model", f"{MODEL}/test.prototxt",
                "--weights", "init.caffemodel", "--iterations", "1", "--per-class"], root)
    theirs = json.loads(FIXTURE.read_text())["scores"]["11point"]
    _assert_same(scores(r.stdout + r.stderr), theirs, "scratchdet test")


@pytest.mark.caffe_ref
def test_solver_test_matches_real_caffe(root, caffe_bin):
    recorded = {"how": ("real SSD Caffe (ssd 4817bf8b, CPU) `caffe train --solver solver_<ap_version>.prototxt "
                        "--weights init.caffemodel` as this test's `root` fixture sets them up; the per-class "
                        "APs and detection_eval of its test at iteration 0. Written by SCRATCHDET_RECORD=1 "
                        "pytest -m caffe_ref tests/test_caffe_ref_test_phase.py"), "scores": {}}
    for version in AP_VERSIONS:
        theirs = scores(cp.run([caffe_bin, "train", f"--solver=solver_{version}.prototxt",
                                "--weights=init.caffemodel"], root).stderr)
        assert "detection_eval" in theirs
        recorded["scores"][version] = theirs
        _assert_same(_ours(root, version), theirs, f"ap_version {version}")
    if os.environ.get("SCRATCHDET_RECORD") == "1":
        FIXTURE.write_text(json.dumps(recorded, indent=1) + "\n")


# -- debug_info in the test pass: Caffe's test nets print their forward lines too ---------------------

DEBUG_FIXTURE = cp.REPO / "tests" / "fixtures" / "caffe_test_phase_debug_info.txt.gz"


def _test_pass_lines(log: str) -> list[tuple[str, str]]:
    """The debug lines between 'Testing net' and the first 'Test net output'."""
    from test_caffe_ref_debug_info import first_pass
    start = log.index("Testing net (#0)")
    end = log.index("Test net output #0", start)
    return first_pass(log[start:end])


def _debug_solver(root: Path) -> str:
    sp = io.read_solver(root / "solver_11point.prototxt")
    sp.debug_info = True
    io.write_text(sp, root / "solver_debug.prototxt")
    return "solver_debug.prototxt"


def test_test_pass_debug_lines_match_recorded_caffe(root):
    from test_caffe_ref_debug_info import assert_same_lines
    solver = _debug_solver(root)
    ours = _test_pass_lines(cp.train_here(root, solver, "init.caffemodel", root / "ours_debug.log"))
    theirs = _test_pass_lines(gzip.decompress(DEBUG_FIXTURE.read_bytes()).decode())
    assert len(theirs) > 200
    assert_same_lines(ours, theirs)


@pytest.mark.caffe_ref
def test_test_pass_debug_lines_match_real_caffe(root, caffe_bin):
    from test_caffe_ref_debug_info import assert_same_lines
    solver = _debug_solver(root)
    log = cp.run([caffe_bin, "train", f"--solver={solver}", "--weights=init.caffemodel"], root).stderr
    theirs = _test_pass_lines(log)
    if os.environ.get("SCRATCHDET_RECORD") == "1":
        start = log.index("Testing net (#0)")
        end = log.index("\n", log.index("Test net output #0", start))
        head = ("# real SSD Caffe (ssd 4817bf8b, CPU) `caffe train --solver solver_debug.prototxt --weights "
                "init.caffemodel` as tests/test_caffe_ref_test_phase.py sets it up: its test pass at iteration 0\n")
        DEBUG_FIXTURE.write_bytes(gzip.compress((head + "I " + log[start:end] + "\n").encode(), mtime=0))
    ours = _test_pass_lines(cp.train_here(root, solver, "init.caffemodel", root / "ours_debug.log"))
    assert_same_lines(ours, theirs)
