"""Resume on the real engine: a small net (AnnotatedData with SSD augmentation, Convolution,
BatchNorm, Scale, InnerProduct, EuclideanLoss) trained 6 iterations with a snapshot at 3, then
resumed from the 3-iteration solverstate through `scratchdet train --snapshot`: the final
caffemodel and solverstate are byte-identical to the uninterrupted run's. `scratchdet test`
reproduces the loss a direct forward pass gives."""
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST
from scratchdet.caffe.schema import pb
from scratchdet.data.lmdb_io import LMDBWriter, record_key

REPO = Path(__file__).resolve().parents[1]
SCRATCHDET = [sys.executable, "-m", "scratchdet"]

DATA = """layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: {phase} }}
  data_param {{ source: "{db}" batch_size: 2 backend: LMDB }}
  transform_param {{ mirror: {mirror} mean_value: 128 scale: 0.015625
    resize_param {{ resize_mode: WARP height: 12 width: 12 interp_mode: LINEAR interp_mode: CUBIC }}
    {augment} }}
  annotated_data_param {{ {samplers} }} }}
"""
AUGMENT = ("emit_constraint { emit_type: CENTER } distort_param { brightness_prob: 0.5 brightness_delta: 32 "
           "contrast_prob: 0.5 contrast_lower: 0.5 contrast_upper: 1.5 } expand_param { prob: 0.5 max_expand_ratio: 2 }")
SAMPLERS = ("batch_sampler { max_sample: 1 max_trials: 1 } batch_sampler { sampler { min_scale: 0.3 max_scale: 1 "
            "min_aspect_ratio: 0.5 max_aspect_ratio: 2 } sample_constraint { min_jaccard_overlap: 0.3 } "
            "max_sample: 1 max_trials: 20 }")
BODY = """
layer { name: "slice" type: "Slice" bottom: "data" top: "d0" top: "rest" slice_param { axis: 1 slice_point: 1 } }
layer { name: "target" type: "Pooling" bottom: "d0" top: "target" pooling_param { pool: AVE global_pooling: true } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv" param { lr_mult: 1 decay_mult: 1 }
  param { lr_mult: 2 decay_mult: 0 }
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 weight_filler { type: "xavier" } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc"
  inner_product_param { num_output: 1 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "target" top: "loss" }
layer { name: "silence" type: "Silence" bottom: "label" bottom: "rest" }
"""


def _record(i):
    rec = pb.AnnotatedDatum(type=pb.AnnotatedDatum.BBOX)
    img = (np.random.default_rng(100 + i).random((20, 24, 3)) * 255).astype(np.uint8)
    rec.datum.data = cv2.imencode(".jpg", img)[1].tobytes()
    rec.datum.encoded = True
    for k in range(1 + i % 2):
        a = rec.annotation_group.add(group_label=1 + k).annotation.add(instance_id=0)
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = 0.1 + 0.3 * k, 0.2, 0.5 + 0.3 * k, 0.9
    return rec


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    db = root / "tiny_lmdb"
    with LMDBWriter(db) as w:
        for i in range(9):
            w.put(record_key(i, f"{i}.jpg"), _record(i).SerializeToString())
    net = root / "net.prototxt"
    net.write_text('name: "tiny"\n' + DATA.format(phase="TRAIN", db=db, mirror="true", augment=AUGMENT, samplers=SAMPLERS)
                   + DATA.format(phase="TEST", db=db, mirror="false", augment="", samplers="") + BODY)
    sp = pb.SolverParameter(net=str(net), base_lr=0.05, lr_policy="multistep", gamma=0.1, momentum=0.9,
                            weight_decay=0.0005, iter_size=2, average_loss=2, display=1, max_iter=6, snapshot=3,
                            snapshot_prefix=str(root / "snap" / "tiny"), random_seed=3, test_interval=3,
                            eval_type="classification")
    sp.stepvalue.extend([2, 4])
    sp.test_iter.append(2)
    solver = root / "solver.prototxt"
    solver.write_text(text_format.MessageToString(sp))
    return root, solver, net


def cli(args, cwd=REPO):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    return subprocess.run(SCRATCHDET + args, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_resume_through_the_cli_is_byte_identical(files):
    from scratchdet.engine.train import Trainer
    root, solver, _ = files
    # the same --workers as the resumed run below: on a CPU it sets torch's thread count, and with
    # it the float summation order of the convolutions and BatchNorm
    t = Trainer(solver, quiet=True, workers=1)
    res = t.solve()
    t.close()
    assert res.status == "done" and res.iter == 6
    snap = root / "snap"
    full = {name: (snap / name).read_bytes() for name in ("tiny_iter_6.caffemodel", "tiny_iter_6.solverstate")}
    state3 = io.read_binary(snap / "tiny_iter_3.solverstate", pb.SolverState)
    assert state3.iter == 3 and state3.current_step == 1 and len(state3.history) == len(t.sgd.params)
    assert any(np.abs(np.asarray(h.data)).sum() > 0 for h in state3.history)
    (snap / "tiny_iter_6.caffemodel").unlink()
    (snap / "tiny_iter_6.solverstate").unlink()

    r = cli(["train", "--solver", str(solver), "--snapshot", str(snap / "tiny_iter_3.solverstate"), "--gpu", "cpu",
             "--workers", "1"])
    assert r.returncode == 0, r.stderr[-2000:]
    for name, data in full.items():
        assert (snap / name).read_bytes() == data, name
    log = (snap / "train.log").read_text()                 # default log beside the snapshots, appended
    assert "SGDSolver: restoring history from" in log and log.count("Optimization Done.") == 2
    assert re.search(r"\] Iteration 3, lr = 0\.005$", log, re.M)


def test_score_matches_a_direct_forward(files):
    from scratchdet.engine.caffemodel import load_caffemodel
    from scratchdet.engine.net import Net
    root, _, netfile = files
    weights = root / "snap" / "tiny_iter_3.caffemodel"
    r = cli(["test", "--model", str(netfile), "--weights", str(weights), "--iterations", "3",
             "--eval-type", "classification", "--gpu", "cpu", "--workers", "0"])
    assert r.returncode == 0, r.stderr[-2000:]
    reported = float(re.search(r"^loss = (\S+)$", r.stdout, re.M).group(1))
    net = Net(io.read_net(netfile), TEST, source=str(netfile), seed=0)
    load_caffemodel(net, weights)
    for layer in net.layers:
        if layer.lp.type == "AnnotatedData":
            layer.configure(workers=0)
    with torch.no_grad():
        losses = [float(net.forward()["loss"]) for _ in range(3)]
    assert reported == pytest.approx(np.mean(losses), rel=1e-5)
    assert "Test net output #0: loss = " in r.stderr


def test_weights_and_snapshot_together_is_an_error(files):
    root, solver, _ = files
    r = cli(["train", "--solver", str(solver), "--snapshot", "a.solverstate", "--weights", "b.caffemodel"])
    assert r.returncode == 2 and "not allowed with" in r.stderr


def test_missing_solverstate_is_one_clear_line(files):
    root, solver, _ = files
    r = cli(["train", "--solver", str(solver), "--snapshot", str(root / "nope.solverstate"), "--gpu", "cpu"])
    assert r.returncode == 2 and "nope.solverstate" in r.stderr and "Traceback" not in r.stderr


def test_ctrl_c_to_the_process_group_snapshots_and_stops(files, tmp_path):
    import signal
    import time
    root, solver, _ = files
    sp = io.read_solver(solver)
    sp.max_iter, sp.snapshot, sp.test_interval = 100000, 0, 0
    sp.snapshot_prefix = str(tmp_path / "int")
    long_solver = tmp_path / "long_solver.prototxt"
    long_solver.write_text(text_format.MessageToString(sp))
    log = tmp_path / "train.log"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(SCRATCHDET + ["train", "--solver", str(long_solver), "--gpu", "cpu", "--workers", "2",
                                          "--log", str(log), "--quiet"],
                            cwd=REPO, env=env, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and "Iteration 3, loss" in log.read_text()):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)              # as a terminal's Ctrl-C: every process of the group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    m = re.search(r"interrupted at iteration (\d+); snapshot (\S+)", err)
    assert m and Path(m.group(2)).is_file() and Path(m.group(2)).with_suffix(".solverstate").is_file()
    assert "Traceback" not in err
