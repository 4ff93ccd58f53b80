"""``scratchdet compare`` on constructed logs: every verdict (NAN expected for a Table 1 NAN cell,
unexpected NAN, within/below/above tolerance, no test yet, no paper value, not comparable),
the variant inferred from the runs/ layout, the net name or the registry, and the three output
formats. The registry is replaced by a stand-in (or hidden) so the tests do not depend on it."""
import json
import types

import pytest

from scratchdet import cli
from scratchdet.caffe import glog
from scratchdet.report import compare, variants
from scratchdet.report.logparse import parse_log

NAN_CELL = "table1/scratch_nobn/lr0.01"           # paper: NAN
BN_BOTH = "table1/scratch_bn_both/lr0.05"         # paper: 78.7


@pytest.fixture(autouse=True)
def no_registry(monkeypatch):
    monkeypatch.setattr(variants, "registry", lambda: None)


def write_log(path, *, max_iter=1000, tests=(), diverge_at=None, done=False, net_name="x_train", last=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [glog.line("I", glog.SOLVER, f"Initializing solver from parameters: \nbase_lr: 0.05\nmax_iter: {max_iter}\n"
                                         'snapshot_prefix: "snapshots/x"'),
             glog.line("I", glog.SOLVER, f"Solving {net_name}")]
    tests = dict(tests)
    end = last if last is not None else max_iter
    for it in range(0, end + 1, 100):
        if it in tests:
            lines += [glog.line("I", glog.TESTING, f"Iteration {it}, Testing net (#0)"),
                      glog.line("I", glog.TEST_OUTPUT, f"    Test net output #0: detection_eval = {glog.num(tests[it])}")]
        if diverge_at is not None and it >= diverge_at:
            lines.append(glog.line("E", glog.OURS, f"Training diverged at iteration {it}: loss = nan"))
            break
        if it < end:
            lines.append(glog.line("I", glog.LOSS, f"Iteration {it}, loss = {glog.num(10.0 / (1 + it))}"))
    if done:
        lines.append(glog.line("I", glog.DONE, "Optimization Done."))
    path.write_text("\n".join(lines) + "\n")
    return path


def card(path, key=None, variant=None, tolerance=1.0):
    return compare.score(parse_log(path), variant, key, tolerance)


def test_table1_nan_cell(tmp_path):
    diverged = write_log(tmp_path / "runs/VOC0712/nobn_lr0.01/train.log", diverge_at=300, tests={0: 0.01})
    c = card(diverged, NAN_CELL)
    assert (c.verdict, c.paper_nan, c.diverged_at, c.variant) == (compare.NAN_EXPECTED, True, 300, "nobn_lr0.01")
    finished = write_log(tmp_path / "runs/VOC0712/a/train.log", tests={1000: 0.6}, done=True)
    assert card(finished, NAN_CELL).verdict == compare.CONVERGED_PAPER_NAN
    running = write_log(tmp_path / "runs/VOC0712/b/train.log", tests={500: 0.4}, last=500)
    assert card(running, NAN_CELL).verdict == compare.NAN_NOT_YET


def test_numbers_against_the_paper(tmp_path):
    c = card(write_log(tmp_path / "runs/VOC0712/v/train.log", tests={500: 0.79, 1000: 0.783}, done=True), BN_BOTH)
    assert c.verdict == compare.WITHIN and c.paper_value == 78.7
    assert c.final_map == pytest.approx(78.3) and c.best_map == pytest.approx(79.0) and c.best_iteration == 500
    assert c.diff == pytest.approx(-0.4) and c.complete and c.iterations == 1000 and c.max_iter == 1000
    below = card(write_log(tmp_path / "runs/VOC0712/w/train.log", tests={1000: 0.75}, done=True), BN_BOTH)
    assert below.verdict == compare.BELOW and below.diff == pytest.approx(-3.7)
    above = card(write_log(tmp_path / "runs/VOC0712/y/train.log", tests={1000: 0.80}, done=True), BN_BOTH)
    assert above.verdict == compare.ABOVE
    assert card(write_log(tmp_path / "runs/VOC0712/y/train.log", tests={1000: 0.75}, done=True), BN_BOTH,
                tolerance=4.0).verdict == compare.WITHIN
    nan = card(write_log(tmp_path / "runs/VOC0712/z/train.log", tests={0: 0.0}, diverge_at=200), BN_BOTH)
    assert nan.verdict == compare.NAN_UNEXPECTED
    untested = card(write_log(tmp_path / "runs/VOC0712/u/train.log", last=300), BN_BOTH)
    assert untested.verdict == compare.NO_TEST and any("partial run: 200 of 1000" in n for n in untested.notes)


def test_no_paper_value_and_other_metrics(tmp_path):
    log = write_log(tmp_path / "runs/synthetic/demo_rootres/train.log", tests={1000: 0.4}, done=True)
    c = card(log)
    assert c.variant == "demo_rootres" and c.verdict == compare.NO_PAPER and c.paper_value is None
    assert any("--paper-key" in n for n in c.notes)
    coco = card(log, "scratchdet300/coco")
    assert coco.verdict == compare.NOT_COMPARABLE and any("eval coco" in n for n in coco.notes)


def test_variant_from_the_net_name_outside_runs(tmp_path):
    log = write_log(tmp_path / "logs/somewhere.log", tests={1000: 0.5}, net_name="table2_nods_3x3_train")
    assert card(log).variant == "table2_nods_3x3"


def test_registry_supplies_variant_and_paper_key(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(all_variants=lambda: [types.SimpleNamespace(id="table1_nobn_lr0.01", paper_key=NAN_CELL),
                                                       types.SimpleNamespace(id="demo_rootres", paper_key=None)])
    monkeypatch.setattr(variants, "registry", lambda: fake)
    # the log sits in a folder named after the variant, not in runs/: the registry recognises it
    log = write_log(tmp_path / "exp/table1_nobn_lr0.01/train.log", diverge_at=200)
    c = card(log)
    assert (c.variant, c.paper_key, c.verdict) == ("table1_nobn_lr0.01", NAN_CELL, compare.NAN_EXPECTED)
    assert "Table 1" in c.paper_source
    demo = card(write_log(tmp_path / "runs/synthetic/demo_rootres/train.log", tests={1000: 0.3}, done=True))
    assert demo.verdict == compare.NO_PAPER and not any("--paper-key" in n for n in demo.notes)


def test_cli_outputs(tmp_path, capsys):
    a = write_log(tmp_path / "runs/VOC0712/bn_both/train.log", tests={1000: 0.783}, done=True)
    b = write_log(tmp_path / "runs/VOC0712/nobn/train.log", diverge_at=300)
    args = ["compare", str(a), str(b), "--paper-key", BN_BOTH, "--paper-key", NAN_CELL]
    assert cli.main(args + ["--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert [(c["variant"], c["verdict"]) for c in cards] == [("bn_both", compare.WITHIN), ("nobn", compare.NAN_EXPECTED)]
    assert cli.main(args + ["--markdown"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| variant | paper | final | best | diff | iterations | verdict |")
    assert "| bn_both | 78.7 | 78.3 | 78.3 @1000 | -0.4 | 1000/1000 | within tolerance |" in md
    assert "| nobn | NAN |" in md and "NAN as expected" in md
    assert cli.main(args) == 0
    text = capsys.readouterr().out
    assert "within tolerance" in text and "NAN as expected" in text
    low = write_log(tmp_path / "runs/VOC0712/low/train.log", tests={1000: 0.70}, done=True)
    assert cli.main(["compare", str(a), "--paper-key", BN_BOTH, "--strict"]) == 0
    assert cli.main(["compare", str(low), "--paper-key", BN_BOTH, "--strict"]) == 1
    capsys.readouterr()
    assert cli.main(["compare", str(a), str(b), "--variant", "only_one"]) == 2
    assert "--variant given 1 times for 2 logs" in capsys.readouterr().err
    assert cli.main(["compare", str(a), "--paper-key", "table9/nothing"]) == 2
    assert "no paper result 'table9/nothing'" in capsys.readouterr().err
    assert cli.main(["compare", str(tmp_path / "missing.log")]) == 2
    assert "cannot read the log" in capsys.readouterr().err


def test_tests_without_map_output(tmp_path):
    log = tmp_path / "runs/VOC0712/lossonly/train.log"
    log.parent.mkdir(parents=True)
    log.write_text("\n".join([
        glog.line("I", glog.TESTING, "Iteration 0, Testing net (#0)"),
        glog.line("I", glog.TEST_OUTPUT, "    Test net output #0: loss = 2 (* 1 = 2 loss)"),
        glog.line("I", glog.LOSS, "Iteration 0, loss = 2")]) + "\n")
    c = card(log, BN_BOTH)
    assert c.verdict == compare.NO_MAP and c.final_map is None
    assert any("no mAP output (outputs: loss)" in n for n in c.notes)


def test_registry_key_missing_from_the_paper_table_is_a_note(tmp_path, monkeypatch):
    fake = types.SimpleNamespace(all_variants=lambda: [types.SimpleNamespace(id="odd", paper_key="table7/none")])
    monkeypatch.setattr(variants, "registry", lambda: fake)
    c = card(write_log(tmp_path / "runs/VOC0712/odd/train.log", tests={1000: 0.5}, done=True))
    assert c.verdict == compare.NO_PAPER and any("'table7/none'" in n for n in c.notes)


def test_toy_table1_cells_are_judged_on_divergence_only(tmp_path, monkeypatch):
    toys = [types.SimpleNamespace(id=f"demo_table1_{bn}_lr0.05", paper_key=None, analogue=f"table1/{cfg}/lr0.05")
            for bn, cfg in (("bn-none", "scratch_nobn"), ("bn-head", "scratch_bn_head"),
                            ("bn-backbone", "scratch_bn_backbone"), ("bn-both", "scratch_bn_both"))]
    monkeypatch.setattr(variants, "registry", lambda: types.SimpleNamespace(all_variants=lambda: toys))
    run = lambda vid, **kw: card(write_log(tmp_path / f"runs/synthetic/{vid}/train.log", **kw))  # noqa: E731
    nobn = run("demo_table1_bn-none_lr0.05", diverge_at=2)          # paper: scratch no BN at 0.05 is NAN
    assert nobn.verdict == compare.NAN_EXPECTED and nobn.paper_value is None
    assert any("toy analogue of Table 1" in n and "NAN in the paper" in n for n in nobn.notes)
    backbone = run("demo_table1_bn-backbone_lr0.05", diverge_at=50)  # paper: 78.0, so a NAN is unexpected
    assert backbone.verdict == compare.NAN_UNEXPECTED
    head = run("demo_table1_bn-head_lr0.05", tests={300: 0.002}, done=True, max_iter=300)
    assert head.verdict == compare.CONVERGED_PAPER_NAN                # paper: NAN; the toy run trained
    both = run("demo_table1_bn-both_lr0.05", tests={300: 0.003}, done=True, max_iter=300)
    assert both.verdict == compare.NO_PAPER and both.diff is None     # toy mAP is not compared with 78.7
