"""The full SSD training transform: our data layer against real Caffe's AnnotatedData (issue 11).

The demo net's train data layer (distort, expand up to 4x, the 7 batch samplers, warp resize with
the 5 interp modes, mirror; tests/caffe_augment.py reads its output back from Caffe) draws 2,000
samples, batch 1, from an 80-image synthetic LMDB in both engines. Per sample: box count, whether
no box is left, mean box area and width/height aspect, the share of values exactly 0 (the
mean-filled canvas of an expansion), per-channel pixel mean and mean square. Each distribution is
compared with a two-sample Kolmogorov-Smirnov test; the seeds are fixed, so the p-values are too.
Measured here (Caffe / ours, KS p): boxes per sample 1.78 / 1.73 (0.95), no box left 9.1 % /
9.7 % (1.0), mean box area 0.153 / 0.164 (0.05), aspect 0.97 / 0.96 (0.28), zero share 0.218 /
0.201 (0.10), channel means 8.0 / 8.7, 0.7 / 0.5, -6.3 / -6.7 (sd 41-44; p 0.13-0.45), mean
squares p 0.10-0.25. A failure needs p < 1e-3 on one of the 11 statistics; without the expansion
the area and zero-share tests fail (test_the_comparison_sees_a_missing_transform).
tests/fixtures/caffe_augment_demo.npz holds real Caffe's per-sample values.
"""
from __future__ import annotations

import io as _io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

import caffe_augment as ca
import caffe_parity as cp

FIXTURE = cp.REPO / "tests" / "fixtures" / "caffe_augment_demo.npz"
SAMPLES = 2000
SEED = 1
P_MIN = 1e-3


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("augment")
    (root / "data").mkdir()
    shutil.copy(cp.REPO / "data" / "labelmap_synthetic.prototxt", root / "data")
    cp.run([sys.executable, "-m", "scratchdet", "data", "synthetic", "--out", "data/synthetic", "--images", "100",
            "--seed", "1", "--lmdb", "data/lmdb", "--quiet"], root)
    ca.stats_net(cp.REPO / "models/synthetic/demo_rootres/train.prototxt", "data/lmdb/synthetic_trainval_lmdb",
                 root / "net.prototxt")
    ca.solver("net.prototxt", SAMPLES, SEED, root / "solver.prototxt")
    return root


@pytest.fixture(scope="module")
def ours(root) -> dict:
    return ca.from_ours(root, "net.prototxt", SAMPLES, SEED)


def compare(ours: dict, theirs: dict) -> list[str]:
    bad = []
    for k in ca.STATS:
        d, p = ca.ks(ours[k], theirs[k])
        if p < P_MIN:
            bad.append(f"{k}: KS D {d:.3f}, p {p:.2g} (ours mean {np.nanmean(ours[k]):.4g}, "
                       f"Caffe {np.nanmean(theirs[k]):.4g})")
    return bad


def test_data_layer_draws_what_recorded_caffe_drew(ours):
    theirs = dict(np.load(FIXTURE))
    assert len(theirs["count"]) >= SAMPLES
    bad = compare(ours, theirs)
    assert not bad, "; ".join(bad)


def test_the_comparison_sees_a_missing_transform(root, ours):
    """Without the expansion the boxes grow: the same test must notice."""
    net = (root / "net_data.prototxt").read_text()       # the data layer that stats_net wrote alone
    start = net.index("expand_param {")
    end = net.index("}", start) + 1
    (root / "noexpand_data.prototxt").write_text(net[:start] + net[end:])
    changed = ca.from_ours(root, "noexpand.prototxt", SAMPLES // 2, SEED)
    bad = compare(changed, dict(np.load(FIXTURE)))
    assert any(b.startswith("area") for b in bad) and any(b.startswith("zero") for b in bad), bad


@pytest.mark.caffe_ref
def test_data_layer_draws_what_real_caffe_draws(root, ours, caffe_bin):
    log = cp.run([caffe_bin, "train", "--solver=solver.prototxt"], root).stderr
    theirs = ca.from_caffe_log(log)
    assert len(theirs["count"]) >= SAMPLES
    if os.environ.get("SCRATCHDET_RECORD") == "1":
        buf = _io.BytesIO()
        how = ("real SSD Caffe (ssd 4817bf8b, CPU): per-sample statistics of 2,000 samples of the demo's train "
               "transform, read from the debug_info lines of tests/caffe_augment.py's net; written by "
               "SCRATCHDET_RECORD=1 pytest -m caffe_ref tests/test_caffe_ref_augment.py")
        np.savez_compressed(buf, how=np.array(how), **{k: v.astype(np.float32) for k, v in theirs.items()})
        FIXTURE.write_bytes(buf.getvalue())
    bad = compare(ours, theirs)
    assert not bad, "; ".join(bad)
