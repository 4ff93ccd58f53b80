"""``make mini-paper``: its plan (which nets, what scale, which commands), its nets (Figure 3's
four first layers with equal detection maps), the claim arithmetic, and the report's format,
from hand-made run folders (no training here: the real run is the target itself)."""
from __future__ import annotations

import json
import math
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from prototxt_gen import build, registry
from prototxt_gen.variants import mini_paper as nets
from scratchdet import mini_paper as mp
from scratchdet.caffe import io, shapes
from scratchdet.caffe import glog

REPO = Path(__file__).resolve().parents[1]


def test_plan_covers_both_tables_and_every_seed():
    runs = mp.plan(mp.default_scales())
    assert len(runs) == 12 * 2 + 4 * 3            # Table 1: 2 seeds, Figure 3: 3 (mini_paper.PART_SEEDS)
    assert {r.variant for r in runs} <= set(registry.VARIANTS)
    t1 = {(r.cell, r.seed) for r in runs if r.part == "table1"}
    assert t1 == {(f"{bn}/lr{lr:g}", s) for bn in ("bn-none", "bn-head", "bn-backbone", "bn-both")
                  for lr in (0.001, 0.01, 0.05) for s in (1, 2)}
    assert {r.scale.iterations for r in runs if r.part == "table1"} == {1500}
    assert {r.scale.iterations for r in runs if r.part == "fig3"} == {1000}
    # longest first: Root-ResNet-18's runs start before any other
    assert {r.cell for r in runs[:3]} == {"root_resnet18"}
    assert {r.cell for r in runs if r.part == "fig3"} == {"resnet18", "resnet18_a", "resnet18_b", "root_resnet18"}
    assert len({r.folder for r in runs}) == len(runs)            # no two runs share a folder
    only = mp.plan(mp.default_scales(seeds=(7,)), parts=("fig3",))
    assert [r.seed for r in only] == [7] * 4


def test_scale_flags_reach_the_generated_solver_and_net(tmp_path, monkeypatch):
    """The gen command the plan writes, run as written: the solver and net carry the scale and seed."""
    monkeypatch.chdir(tmp_path)
    scale = mp.Scale(input_size=96, width=0.5, iterations=120, seeds=(5,), images=50)
    run = next(r for r in mp.plan({"table1": scale, "fig3": scale}) if r.variant == "mini_fig3_root_resnet18")
    (gen, _), (train, _), (evaluate, out) = run.commands()
    assert gen[:3] == ["scratchdet", "gen", "mini_fig3_root_resnet18"]
    from scratchdet import cli
    assert cli.main(gen[1:]) == 0
    folder = run.folder / "models" / "synthetic" / run.variant
    solver = (folder / "solver.prototxt").read_text()
    for field in ("max_iter: 120", "test_interval: 120", "random_seed: 5", "test_iter: 1", "base_lr: 0.005"):
        assert field in solver
    assert train[train.index("--solver") + 1] == str(folder / "solver.prototxt")
    assert train[train.index("--log") + 1] == str(run.log)
    net = shapes.infer(io.read_net(str(folder / "deploy.prototxt")))
    assert tuple(net.layers[0].top_shapes[0]) == (1, 3, 96, 96)
    assert net.layer("stem_1").param_shapes[0][0] == 8             # 16 channels x width 0.5
    assert evaluate[:3] == ["scratchdet", "eval", "voc"] and "--by-size" in evaluate and out == run.folder / "by_size.json"


def test_figure3_nets_keep_the_detection_maps_and_differ_only_in_the_first_layers(tmp_path):
    """Figure 3 (a)-(d): 7x7/2 + pool, 7x7/2 without pool, 7x7/1 + pool, three 3x3/1 + pool; the
    first source at stride 8 in all four, so the priors are the same (the paper keeps them equal)."""
    expect = {"resnet18": (1, 7, 2, True), "resnet18_a": (1, 7, 2, False),
              "resnet18_b": (1, 7, 1, True), "root_resnet18": (3, 3, 1, True)}
    maps = set()
    for name, (convs, kernel, stride, pool) in expect.items():
        spec = registry.get(f"mini_fig3_{name}").arch.resnet
        assert (spec.root_convs, spec.root_kernel, spec.root_stride, spec.maxpool) == (convs, kernel, stride, pool)
        early = stride * (2 if pool else 1)
        total = early * math.prod(s for _, _, s in spec.stages[:3])
        assert total == 8, name                                       # conv4 (first source) at stride 8
        maps.add(_priorbox_maps(f"mini_fig3_{name}", tmp_path))
    assert maps == {(16, 8, 4, 2, 1)}


def _priorbox_maps(variant_id: str, folder) -> tuple:
    """The side of every detection map, read from the deploy net's PriorBox inputs."""
    net = shapes.infer(io.read_net(str(build.write_variant(registry.get(variant_id), folder) / "deploy.prototxt")))
    return tuple(layer.bottom_shapes[0][2] for layer in net.layers if layer.type == "PriorBox")


def test_table1_nets_switch_batchnorm_as_table1():
    for bn, (backbone, head, _) in nets.TABLE1_BN.items():
        for lr in (0.001, 0.01, 0.05):
            v = registry.get(f"mini_table1_{bn}_lr{lr:g}")
            assert (v.arch.vgg.bn, v.arch.bn_head, v.base_lr) == (backbone, head, lr)
            assert v.schedule.max_iter == nets.MINI_ITER and v.analogue.startswith("table1/")
    big = build.resolve(registry.get("mini_table1_bn-both_lr0.05"), input_size=160, width=2.0)
    assert big.arch.input_size == 160 and big.arch.vgg.bn and big.arch.bn_head
    assert big.arch.vgg.fc_channels == 256


# -- claims -------------------------------------------------------------------------------------------

def cell(*values, nans=()):
    return mp.Cell(values=list(values), nans=list(nans))


def test_compare_means_calls_a_difference_within_two_standard_errors_a_tie():
    low, high = cell(0.50, 0.52, 0.54), cell(0.60, 0.62, 0.64)
    # se = sqrt(0.02^2/3 * 2) = 0.0163; diff 0.10 > 2 se
    assert mp.compare_means(low, high)[0] == mp.REPRODUCED
    assert mp.compare_means(high, low)[0] == mp.NOT_REPRODUCED
    close = cell(0.53, 0.55, 0.57)       # diff 0.03 < 2 x 0.0163
    verdict, numbers = mp.compare_means(low, close)
    assert verdict == mp.TIE and "+3.0" in numbers and "2 SE 3.3" in numbers
    assert mp.compare_means(cell(), high)[0] == mp.NO_DATA


def test_cell_statistics():
    c = cell(0.5, 0.6, 0.7, nans=(12,))
    assert math.isclose(c.mean, 0.6) and math.isclose(c.sd, 0.1)
    assert c.text() == "60.0 ± 10.0; NAN (it. 12)"
    assert cell(nans=(4, 2)).all_nan and cell(nans=(4, 2)).text() == "NAN x2 (it. 4, 2)"


def test_table1_claims_follow_the_cells():
    cells = {(bn, lr): cell(0.3, 0.31, 0.32) for bn in nets.TABLE1_BN for lr in nets.MINI_LRS}
    cells[("bn-none", 0.01)] = cell(nans=(4, 3, 5))
    cells[("bn-none", 0.05)] = cell(nans=(2, 2, 2))
    cells[("bn-head", 0.05)] = cell(0.1, nans=(7, 9))
    cells[("bn-both", 0.05)] = cell(0.60, 0.61, 0.62)
    claims = {c.text: c for c in mp.table1_claims(cells)}
    assert claims["without BatchNorm, lr 0.01 and 0.05 diverge"].verdict == mp.REPRODUCED
    assert claims["BatchNorm in the head only still diverges at lr 0.05"].verdict == "partly (2 of 3 runs)"
    assert claims["bn-both: lr 0.05 beats lr 0.001"].verdict == mp.REPRODUCED
    assert claims["bn-backbone: lr 0.05 beats lr 0.001"].verdict == mp.TIE
    best = claims["BatchNorm in backbone and head at lr 0.05 is the best cell"]
    assert best.verdict == mp.REPRODUCED and "61.0 vs 31.0" in best.numbers


# -- the report, from hand-made runs ------------------------------------------------------------------

def _write_log(path: Path, max_iter: int, final_map: float | None, nan_at: int | None = None):
    p = lambda tag: glog.prefix("I", tag)   # noqa: E731
    lines = [p(glog.SOLVER) + "Initializing solver from parameters: ", f"max_iter: {max_iter}"]
    if nan_at is not None:
        lines.append(p(glog.LOSS) + glog.loss_message(0, 9.5))
        lines.append(glog.prefix("E", "train.py:1") + glog.diverged_message(nan_at, float("nan")))
    else:
        lines.append(p(glog.LOSS) + glog.loss_message(max_iter, 4.2))
        lines.append(p(glog.TESTING) + glog.testing_message(max_iter, 0))
        lines.append(p(glog.TEST_OUTPUT) + f"    Test net output #0: detection_eval = {final_map}")
        lines.append(p(glog.DONE) + "Optimization Done.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_report_tables_claims_and_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scales = mp.default_scales(iterations=100, seeds=(1, 2))
    runs = mp.plan(scales)
    fig3_map = {"resnet18": 0.40, "resnet18_a": 0.45, "resnet18_b": 0.50, "root_resnet18": 0.55}
    for r in runs:
        if r.cell.startswith("bn-none/lr0.0") and r.cell != "bn-none/lr0.001":
            _write_log(r.log, 100, None, nan_at=3 + r.seed)
        elif r.part == "table1":
            _write_log(r.log, 100, 0.3 + 0.01 * r.seed + (0.3 if r.cell == "bn-both/lr0.05" else 0))
        else:
            _write_log(r.log, 100, fig3_map[r.cell] + 0.01 * r.seed)
            small = fig3_map[r.cell] - 0.2 + 0.01 * r.seed
            (r.folder / "by_size.json").write_text(json.dumps({"by_size": {
                "small": {"map_11point": small}, "medium": {"map_11point": 0.6}, "large": {"map_11point": None}}}))
        (r.folder / "run.json").write_text(json.dumps({"settings": r.settings(), "seconds": 60}))
    assert all(mp.finished(r) for r in runs)
    assert not mp.finished(mp.Run(runs[0].part, runs[0].cell, runs[0].variant, 1, mp.Scale(iterations=99)))
    path = mp.report(runs, scales, wall_seconds=600.0, jobs=2)
    text = path.read_text()
    assert "| bn-none | 31.5 ± 0.7 / 67.6 | NAN x2 (it. 4, 5) / NAN | NAN x2 (it. 4, 5) / NAN |" in text
    assert "| bn-both | 31.5 ± 0.7 / 71.8 | 31.5 ± 0.7 / 77.3 | 61.5 ± 0.7 / 78.7 |" in text
    assert re.search(r"\| Root-ResNet-18 \(three 3x3, stride 1\) \| 56\.5 ± 0\.7 \| 78\.5 \| 36\.5 ± 0\.7 \| "
                     r"60\.0 ± 0\.0 \| 2 missing \|", text)
    assert "10.0 min wall clock" in text and "32.0 run-minutes" in text
    results = json.loads((tmp_path / mp.OUT / "results.json").read_text())
    verdicts = {c["text"]: c["verdict"] for c in results["claims"]}
    assert verdicts["without BatchNorm, lr 0.01 and 0.05 diverge"] == mp.REPRODUCED
    assert verdicts["BatchNorm in backbone and head at lr 0.05 is the best cell"] == mp.REPRODUCED
    assert verdicts["mAP: ResNet-18-A (no max-pool) > ResNet-18 (7x7/2 conv + max-pool)"] == mp.REPRODUCED
    gain = [c for c in results["claims"] if "gain is larger on small" in c["text"]]
    assert len(gain) == 2 and all(c["verdict"] == mp.NO_DATA for c in gain)   # no large-object AP here
    assert len(results["runs"]) == len(runs)
    # the score card (scratchdet compare) and the plots came with it
    assert "## Score card" in text and "mini_table1_bn-both_lr0.05" in text
    assert (tmp_path / mp.OUT / "table1_plots" / "figure1.png").stat().st_size > 1000
    assert (tmp_path / mp.OUT / "fig3_ap_by_size.png").stat().st_size > 1000


def test_dry_run_prints_the_plan(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "scratchdet", "mini-paper", "--dry-run", "--seeds", "1,2",
                           "--iterations", "300", "--only", "fig3"], cwd=tmp_path, capture_output=True, text=True,
                          env={**_env(), "PYTHONPATH": f"{REPO / 'python'}:{REPO}"})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("+ scratchdet data synthetic --out data/mini-paper/fig3/set") and "--profile small" in lines[0]
    trains = [shlex.split(line[2:]) for line in lines if line.startswith("+ scratchdet train")]
    assert len(trains) == 8 and lines[-1] == "# 8 runs, %d at a time; then the report in runs/mini-paper/report.md" % _cpus()
    bad = subprocess.run([sys.executable, "-m", "scratchdet", "mini-paper", "--dry-run", "--seeds", "1,1"],
                         cwd=tmp_path, capture_output=True, text=True, env={**_env(), "PYTHONPATH": f"{REPO / 'python'}:{REPO}"})
    assert bad.returncode == 2 and "--seeds '1,1'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def _env():
    import os
    return {k: v for k, v in os.environ.items() if k != "DRY_RUN"}


def _cpus():
    import os
    return os.cpu_count() or 1
