"""The experiment pipeline behind the make targets: data checks and dry runs (issue 7)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_cli(args, env_extra, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k not in ("DRY_RUN", "LMDB_DIR", "VOC_ROOT", "COCO_ROOT")}
    env.update(env_extra)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "scratchdet", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    return proc, time.monotonic() - start


def test_missing_data_stops_at_once_with_preparation_commands(tmp_path):
    proc, _ = run_cli(["run", "voc07_rootres34"],
                      {"LMDB_DIR": str(tmp_path / "lmdb"), "VOC_ROOT": str(tmp_path / "VOCdevkit")})
    assert proc.returncode == 2
    err = proc.stderr
    assert "VOC0712_trainval_lmdb" in err and str(tmp_path / "VOCdevkit") in err
    # the exact preparation commands: downloads of the three VOC tars, then the LMDB conversion
    assert err.count("wget -c http://host.robots.ox.ac.uk/pascal/VOC/") == 3
    assert f"scratchdet data voc --devkit {tmp_path / 'VOCdevkit'} --out {tmp_path / 'lmdb'}" in err
    assert "Traceback" not in err and proc.stdout == ""


def test_make_target_without_data_exits_nonzero(tmp_path):
    if not (REPO / ".venv" / ".installed").exists():
        pytest.skip("make's venv is not set up in this checkout")
    start = time.monotonic()
    proc = subprocess.run(["make", "-s", "coco_rootres34"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, LMDB_DIR=str(tmp_path), COCO_ROOT=str(tmp_path / "coco")))
    assert proc.returncode != 0
    assert "coco_trainval35k_lmdb" in proc.stderr and "scratchdet data coco" in proc.stderr
    assert time.monotonic() - start < 60  # "at once": no training, no conversion was attempted


def _fake_lmdbs(root: Path, names):
    for name in names:
        (root / name).mkdir(parents=True)
        (root / name / "data.mdb").write_bytes(b"")


def test_dry_run_prints_the_full_sequence(tmp_path):
    _fake_lmdbs(tmp_path, ["VOC0712_trainval_lmdb", "VOC0712_test_lmdb"])
    proc, _ = run_cli(["run", "voc07_rootres34"], {"LMDB_DIR": str(tmp_path), "DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    cmds = [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    verbs = [c.split()[1] for c in cmds]
    assert verbs == ["gen", "train", "compare", "plot"]
    assert f"--lmdb-dir {tmp_path}" in cmds[0]
    assert "--solver runs/VOC0712/voc07_rootres34/models/VOC0712/voc07_rootres34/solver.prototxt" in cmds[1]
    assert "--gpu cpu" in cmds[1] or "--gpu 0" in cmds[1]
    assert cmds[2].endswith("runs/VOC0712/voc07_rootres34/train.log --variant voc07_rootres34")
    # a dry run writes nothing
    assert not (REPO / "runs" / "VOC0712" / "voc07_rootres34" / "train.log").exists()


def test_dry_run_builds_lmdbs_when_only_raw_data_exist(tmp_path):
    (tmp_path / "VOCdevkit" / "VOC2007" / "Annotations").mkdir(parents=True)
    proc, _ = run_cli(["run", "voc07_rootres18", "--dry-run"],
                      {"LMDB_DIR": str(tmp_path / "lmdb"), "VOC_ROOT": str(tmp_path / "VOCdevkit")})
    assert proc.returncode == 0, proc.stderr
    first = proc.stdout.splitlines()[0]
    assert first == f"+ scratchdet data voc --devkit {tmp_path / 'VOCdevkit'} --out {tmp_path / 'lmdb'}"


def test_unknown_experiment_is_one_line_error():
    proc, _ = run_cli(["run", "voc07_rootres99"], {})
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "voc07_rootres99" in proc.stderr


def test_demo_dry_run_sequence_and_sample_images_placeholder(tmp_path):
    env = {"DRY_RUN": "1", "SYNTH_ROOT": str(tmp_path / "synthetic")}
    proc, _ = run_cli(["run", "demo", "--images", "300"], env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    cmds = [line[2:] for line in proc.stdout.splitlines() if line.startswith("+ ")]
    verbs = [c.split()[1] for c in cmds]
    assert verbs[-6:] == ["gen", "train", "test", "detect", "compare", "plot"]
    assert "--set num_test_image=60" in cmds[-6]               # 300 images, every 5th held out
    assert "--per-class" in cmds[-4]
    assert cmds[-3].endswith("{sample_test_images}")
    # the demo net is not the paper's configuration, and the run says so before it starts
    note = next(line for line in proc.stderr.splitlines() if line.startswith("note: demo_rootres"))
    assert "no BatchNorm in the head (paper: with)" in note and "base lr 0.005 (paper: 0.05)" in note
    assert "make voc07_rootres34" in note and "make mini-paper" in note


def test_paper_config_difference_is_silent_when_there_is_none():
    from scratchdet.pipeline import paper_config_difference
    assert paper_config_difference("voc07_rootres34") is None          # a paper variant imitates nothing


def test_diverged_training_is_recorded_and_the_plan_goes_on(monkeypatch, capsys):
    from scratchdet import pipeline
    calls = []

    def fake_call(argv):
        calls.append(argv)
        return 3 if "train" in argv and "models/a/solver.prototxt" in argv else 0

    monkeypatch.setattr(pipeline.subprocess, "call", fake_call)
    plan = pipeline.Plan("t", commands=[
        "scratchdet train --solver models/a/solver.prototxt --gpu cpu --log runs/a/train.log",
        "scratchdet detect --model models/a/deploy.prototxt --weights runs/a/x.caffemodel --out d img.jpg",
        "scratchdet train --solver models/ab/solver.prototxt --gpu cpu --log runs/ab/train.log",
        "scratchdet detect --model models/ab/deploy.prototxt --weights runs/ab/x.caffemodel --out d img.jpg",
        "scratchdet compare runs/a/train.log runs/ab/train.log"])
    assert pipeline.run_plan(plan, dry_run=False) == 0
    assert len(calls) == 4                                     # a's detect skipped, everything else ran
    assert not any("models/a/deploy.prototxt" in " ".join(a) for a in calls)
    assert any("models/ab/deploy.prototxt" in " ".join(a) for a in calls)
    assert "diverged" in capsys.readouterr().err


def test_other_failures_stop_the_plan(monkeypatch):
    from scratchdet import pipeline
    monkeypatch.setattr(pipeline.subprocess, "call", lambda argv: 1)
    plan = pipeline.Plan("t", commands=["scratchdet gen x", "scratchdet train --solver s/solver.prototxt"])
    assert pipeline.run_plan(plan, dry_run=False) == 1
