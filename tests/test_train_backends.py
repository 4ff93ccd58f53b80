"""GPU placement (per-GPU batch kept, iter_size raised), the Caffe backend's command line and log
copy (with a stand-in `caffe` script), and its clear error when no binary is installed."""
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from google.protobuf import text_format

from scratchdet.caffe import io
from scratchdet.caffe.schema import pb
from scratchdet.engine import distributed as D
from scratchdet.errors import ScratchDetError

REPO = Path(__file__).resolve().parents[1]
SCRATCHDET = [sys.executable, "-m", "scratchdet"]


@pytest.mark.parametrize("flag,present,devices,factor", [
    (None, 0, ["cpu"], 1),
    (None, 2, ["cuda:0"], 1),
    ("cpu", 4, ["cpu"], 1),
    ("all", 3, ["cuda:0", "cuda:1", "cuda:2"], 1),
    ("all", 0, ["cpu"], 1),
    ("0,1,2,3", 4, ["cuda:0", "cuda:1", "cuda:2", "cuda:3"], 1),
    ("0,1,2,3", 0, ["cpu"], 4),                   # no GPU: one process, iter_size x4
    ("0,1,2,3", 1, ["cuda:0"], 4),
    ("0,1,2,3", 2, ["cuda:0", "cuda:1"], 2),
    ("0,1,2,3", 3, ["cuda:0", "cuda:1"], 2),      # 3 cannot split 4 evenly: 2 GPUs x iter_size 2
    ("1", 2, ["cuda:1"], 1),
])
def test_placement_keeps_the_effective_batch(flag, present, devices, factor):
    p = D.place(flag, present)
    assert p.devices == devices and p.iter_size_factor == factor
    if flag not in (None, "cpu", "all"):
        assert p.world * p.iter_size_factor == len(flag.split(","))
    if factor > 1:
        assert "iter_size" in p.note


@pytest.mark.parametrize("flag", ["0,x", "-1", "0,0", ""])
def test_bad_gpu_flags(flag):
    with pytest.raises(ScratchDetError, match="--gpu"):
        D.place(flag, 4)


FAKE_CAFFE = """#!{python}
import sys
args = sys.argv[1:]
open({argfile!r}, "w").write("\\n".join(args))
solver = [a for a in args if a.startswith("--solver=")][0].split("=", 1)[1]
text = open(solver).read()
sys.stderr.write("I0101 00:00:00.000000  4242 caffe.cpp:1] solver text: " + " ".join(text.split()) + "\\n")
for it, loss in enumerate({losses!r}):
    sys.stderr.write("I0101 00:00:00.000000  4242 solver.cpp:243] Iteration %d, loss = %s\\n" % (it * 10, loss))
    sys.stderr.flush()
sys.stderr.write("I0101 00:00:00.000000  4242 solver.cpp:546]     Test net output #0: detection_eval = 0.5\\n")
"""


def fake_caffe(tmp_path, losses=("2.5", "1.5")):
    argfile = tmp_path / "args.txt"
    exe = tmp_path / "caffe"
    exe.write_text(FAKE_CAFFE.format(python=sys.executable, argfile=str(argfile), losses=list(losses)))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe, argfile


def write_solver(tmp_path):
    sp = pb.SolverParameter(train_net="train.prototxt", base_lr=0.01, lr_policy="fixed", max_iter=100,
                            iter_size=1, snapshot_prefix=str(tmp_path / "snap" / "x"))
    path = tmp_path / "solver.prototxt"
    path.write_text(text_format.MessageToString(sp))
    return path


def run_cli(args, env):
    return subprocess.run(SCRATCHDET + args, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_caffe_backend_flags_solver_copy_and_log(tmp_path):
    exe, argfile = fake_caffe(tmp_path)
    solver = write_solver(tmp_path)
    log = tmp_path / "run" / "train.log"
    env = dict(os.environ, CAFFE_BIN=str(exe), CUDA_VISIBLE_DEVICES="")
    r = run_cli(["train", "--solver", str(solver), "--backend", "caffe", "--gpu", "0,1", "--max-iter", "7",
                 "--weights", "w.caffemodel", "--log", str(log)], env)
    assert r.returncode == 0, r.stderr
    args = argfile.read_text().splitlines()
    assert "--weights=w.caffemodel" in args and "--sigint_effect=snapshot" in args
    assert not any(a.startswith("--gpu") for a in args)            # no GPU here: CPU mode
    assert args[0] == "train"
    copy = io.read_solver(next(a for a in args if a.startswith("--solver=")).split("=", 1)[1])
    assert copy.max_iter == 7 and copy.iter_size == 2 and copy.solver_mode == pb.SolverParameter.CPU
    text = log.read_text()
    assert "Iteration 10, loss = 1.5" in text and "detection_eval = 0.5" in text


def test_caffe_backend_stops_at_nan_loss(tmp_path):
    exe, _ = fake_caffe(tmp_path, losses=("2.5", "-nan", "3"))
    solver = write_solver(tmp_path)
    log = tmp_path / "train.log"
    env = dict(os.environ, CAFFE_BIN=str(exe), CUDA_VISIBLE_DEVICES="")
    r = run_cli(["train", "--solver", str(solver), "--backend", "caffe", "--gpu", "cpu", "--log", str(log)], env)
    assert r.returncode == 3
    assert "Training diverged at iteration 10: loss = nan" in log.read_text()
    assert "recorded as NAN" in r.stderr


def test_caffe_backend_without_binary_is_one_clear_line(tmp_path):
    solver = write_solver(tmp_path)
    env = dict(os.environ, PATH=str(tmp_path), CUDA_VISIBLE_DEVICES="")
    env.pop("CAFFE_BIN", None)
    r = run_cli(["train", "--solver", str(solver), "--backend", "caffe"], env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "CAFFE_BIN" in lines[0] and "Traceback" not in r.stderr
