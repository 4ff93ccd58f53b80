"""The log parser on the SSD fork's real log lines (caffe-ssd-spec §5.5, verbatim), on BVLC Caffe's
loss-line format, on our engine's lines (written with the engine's own glog formatter), and on
broken logs: truncated, garbled, out of order, empty, binary, missing."""
import json
import math

import pytest
from google.protobuf import text_format

from scratchdet.caffe.schema import pb
from scratchdet.caffe import glog
from scratchdet.errors import ScratchDetError
from scratchdet.report.logparse import number, parse_log, parse_text

SSD_SOLVER_BLOCK = """\
I0608 10:40:00.000000 19222 solver.cpp:48] Initializing solver from parameters: 
train_net: "models/VGGNet/VOC0712/SSD_300x300/train.prototxt"
test_net: "models/VGGNet/VOC0712/SSD_300x300/test.prototxt"
test_iter: 619
test_interval: 10000
base_lr: 0.001
display: 10
max_iter: 120000
lr_policy: "multistep"
gamma: 0.1
momentum: 0.9
weight_decay: 0.0005
snapshot: 80000
snapshot_prefix: "models/VGGNet/VOC0712/SSD_300x300/VGG_VOC0712_SSD_300x300"
solver_mode: GPU
device_id: 0
train_state {
  level: 0
  stage: ""
}
test_initialization: false
average_loss: 10
stepvalue: 80000
stepvalue: 100000
stepvalue: 120000
iter_size: 1
type: "SGD"
eval_type: "detection"
ap_version: "11point"
I0608 10:40:00.100000 19222 solver.cpp:81] Creating training net from train_net file: models/VGGNet/VOC0712/SSD_300x300/train.prototxt
I0608 10:40:00.200000 19222 net.cpp:58] Initializing net from parameters: 
name: "VGG_VOC0712_SSD_300x300_train"
state {
  phase: TRAIN
}
layer {
  name: "data"
  type: "AnnotatedData"
}
"""

# the five example lines of caffe-ssd-spec §5.5, verbatim
SSD_LINES = """\
I0608 10:52:30.927119 19222 solver.cpp:243] Iteration 330, loss = 7.29032
I0608 10:52:30.927280 19222 solver.cpp:259]     Train net output #0: mbox_loss = 6.79195 (* 1 = 6.79195 loss)
I0608 10:52:30.927317 19222 sgd_solver.cpp:138] Iteration 330, lr = 0.001
I0612 16:28:38.198149 13666 solver.cpp:421] Iteration 20000, Testing net (#0)
I0609 03:16:09.110113 23885 solver.cpp:546]     Test net output #0: detection_eval = 0.778522
"""


def test_ssd_fork_log_lines():
    rec = parse_text(SSD_SOLVER_BLOCK + SSD_LINES, "ssd.log")
    assert rec.format == "ssd" and rec.warnings == []
    assert rec.max_iter == 120000 and rec.solver["base_lr"] == 0.001 and rec.solver["lr_policy"] == "multistep"
    assert rec.solver["stepvalue"] == [80000, 100000, 120000] and rec.solver["test_initialization"] is False
    assert rec.snapshot_prefix == "models/VGGNet/VOC0712/SSD_300x300/VGG_VOC0712_SSD_300x300"
    assert rec.net_name == "VGG_VOC0712_SSD_300x300_train"
    [p] = rec.train
    assert (p.iteration, p.loss, p.outputs, p.lr) == (330, 7.29032, {"mbox_loss": 6.79195}, 0.001)
    [t] = rec.tests
    assert (t.iteration, t.net, t.outputs) == (20000, 0, {"detection_eval": 0.778522})
    assert rec.final_map == 0.778522 and rec.best_map == (20000, 0.778522)
    assert rec.last_iteration == 20000 and rec.status == "running" and rec.diverged is None


def test_bvlc_loss_line_format():
    text = """\
I0301 12:00:00.000001  4242 solver.cpp:218] Iteration 0 (0 iter/s, 0.25s/100 iters), loss = 2.30259
I0301 12:00:00.000002  4242 solver.cpp:237]     Train net output #0: loss = 2.30259 (* 1 = 2.30259 loss)
I0301 12:00:00.000003  4242 sgd_solver.cpp:105] Iteration 0, lr = 0.01
I0301 12:00:09.000001  4242 solver.cpp:218] Iteration 100 (11.0011 iter/s, 9.09s/100 iters), loss = 0.215
I0301 12:00:09.000002  4242 solver.cpp:237]     Train net output #0: loss = 0.215 (* 1 = 0.215 loss)
I0301 12:00:09.000003  4242 sgd_solver.cpp:105] Iteration 100, lr = 0.00992565
I0301 12:00:20.000001  4242 solver.cpp:330] Iteration 500, Testing net (#0)
I0301 12:00:21.000001  4242 solver.cpp:397]     Test net output #0: accuracy = 0.9761
I0301 12:00:21.000002  4242 solver.cpp:397]     Test net output #1: loss = 0.0744 (* 1 = 0.0744 loss)
I0301 12:00:22.000001  4242 solver.cpp:447] Snapshotting to binary proto file examples/mnist/lenet_iter_500.caffemodel
I0301 12:00:22.000002  4242 sgd_solver.cpp:273] Snapshotting solver state to binary proto file examples/mnist/lenet_iter_500.solverstate
I0301 12:00:22.000003  4242 solver.cpp:315] Optimization Done.
"""
    rec = parse_text(text, "bvlc.log")
    assert rec.format == "bvlc" and rec.warnings == []
    assert [(p.iteration, p.loss, p.iter_per_s, p.lr) for p in rec.train] == [
        (0, 2.30259, 0.0, 0.01), (100, 0.215, 11.0011, 0.00992565)]
    assert rec.tests[0].outputs == {"accuracy": 0.9761, "loss": 0.0744}
    assert rec.map_output() == "accuracy"        # no detection_eval: the first output
    assert rec.snapshots == [(500, "examples/mnist/lenet_iter_500.caffemodel")]
    assert rec.done and rec.status == "done"


def our_log(diverge: bool) -> str:
    """Lines as our engine writes them, through its own glog formatter and tags."""
    sp = pb.SolverParameter(net="models/synthetic/demo/train.prototxt", base_lr=0.05, max_iter=40, display=10,
                            lr_policy="multistep", gamma=0.1, snapshot_prefix="runs/synthetic/demo/demo",
                            test_interval=20)
    sp.stepvalue.extend([30])
    sp.test_iter.extend([5])
    lines = [glog.line("I", glog.SOLVER, "Initializing solver from parameters: \n" + text_format.MessageToString(sp).rstrip()),
             glog.line("I", glog.SOLVER, "Solving demo_rootres_train"),
             glog.line("I", glog.SOLVER, "Learning Rate Policy: multistep")]
    losses = {0: 21.5, 10: 12.25, 20: 9.5, 30: 8.0}
    for it in (0, 10, 20, 30):
        if it == 20:
            lines += [glog.line("I", glog.TESTING, f"Iteration {it}, Testing net (#0)"),
                      glog.line("W", glog.MISSING_TP, "Missing true_pos for label: 3"),
                      glog.line("I", glog.TEST_OUTPUT, "class1: 0.5"),
                      glog.line("I", glog.TEST_OUTPUT, "class2: 0.25"),
                      glog.line("I", glog.TEST_OUTPUT, "class3: 0"),
                      glog.line("I", glog.TEST_OUTPUT, "Test loss: 7.5"),
                      glog.line("I", glog.TEST_OUTPUT, f"    Test net output #0: detection_eval = {glog.num(0.25)}")]
        if diverge and it == 30:
            lines.append(glog.line("E", glog.OURS, f"Training diverged at iteration {it}: loss = {glog.num(float('nan'))}"))
            break
        lines += [glog.line("I", glog.LOSS, f"Iteration {it}, loss = {glog.num(losses[it])}"),
                  glog.line("I", glog.TRAIN_OUTPUT, f"    Train net output #0: mbox_loss = {glog.num(losses[it])} (* 1 = {glog.num(losses[it])} loss)"),
                  glog.line("I", glog.OURS, f"Iteration {it}, gradient L2 norm = {glog.num(100.0 / (it + 1))}"),
                  glog.line("I", glog.OURS, f"Iteration {it}, speed = 2.5 iter/s, 80.0 images/s, ETA 0:01:{40 - it:02d}")]
        if it == 30:
            lines.append(glog.line("I", glog.MULTISTEP, "MultiStep Status: Iteration 30, step = 1"))
        lines.append(glog.line("I", glog.LR, f"Iteration {it}, lr = {glog.num(0.05 if it < 30 else 0.005)}"))
        if it == 20:
            lines.append(glog.line("I", glog.CLIP, "Gradient clipping: scaling down gradients (L2 norm 12.5 > 10) by scale factor 0.8"))
    if not diverge:
        lines += [glog.line("I", glog.SNAPSHOT_MODEL, "Snapshotting to binary proto file runs/synthetic/demo/demo_iter_40.caffemodel"),
                  glog.line("I", glog.SNAPSHOT_STATE, "Snapshotting solver state to binary proto file runs/synthetic/demo/demo_iter_40.solverstate"),
                  glog.line("I", glog.TESTING, "Iteration 40, Testing net (#0)"),
                  glog.line("I", glog.TEST_OUTPUT, "    Test net output #0: detection_eval = 0.3125"),
                  glog.line("I", glog.DONE, "Optimization Done.")]
    return "\n".join(lines) + "\n"


def test_our_engine_lines():
    rec = parse_text(our_log(diverge=False), "ours.log")
    assert rec.format == "scratchdet" and rec.warnings == []
    assert rec.max_iter == 40 and rec.solver["base_lr"] == 0.05 and rec.net_name == "demo_rootres_train"
    assert [(p.iteration, p.loss, p.lr) for p in rec.train] == [(0, 21.5, 0.05), (10, 12.25, 0.05),
                                                               (20, 9.5, 0.05), (30, 8.0, 0.005)]
    assert rec.train[1].outputs == {"mbox_loss": 12.25}
    assert rec.grad_norm == [(it, pytest.approx(100 / (it + 1), rel=1e-5)) for it in (0, 10, 20, 30)]
    assert rec.speed[0] == (0, 2.5, 80.0, 100) and rec.speed[-1] == (30, 2.5, 80.0, 70)
    t20, t40 = rec.tests
    assert t20.per_class == {1: 0.5, 2: 0.25, 3: 0.0} and t20.loss == 7.5 and t20.missing_labels == [3]
    assert rec.map_series() == [(20, 0.25), (40, 0.3125)] and rec.final_map == 0.3125 and rec.best_map == (40, 0.3125)
    assert rec.steps == [(30, 1)] and rec.clips == [(12.5, 10.0, 0.8)]
    assert rec.snapshots == [(40, "runs/synthetic/demo/demo_iter_40.caffemodel")]
    assert rec.done and rec.status == "done" and rec.last_iteration == 40
    json.dumps(rec.to_dict(), allow_nan=False)


def test_our_divergence_line_marks_the_run_as_nan():
    rec = parse_text(our_log(diverge=True), "ours.log")
    assert rec.status == "diverged" and rec.diverged.iteration == 30 and rec.diverged.reported
    assert math.isnan(rec.diverged.value) and not rec.done
    assert rec.final_map == 0.25        # the test before the divergence is still there
    d = rec.to_dict()
    assert d["diverged"]["value"] == "nan"
    json.dumps(d, allow_nan=False)


@pytest.mark.parametrize("text,value", [("-nan", math.nan), ("nan", math.nan), ("inf", math.inf),
                                        ("-inf", -math.inf), ("1.#QNAN", math.nan), ("1.#INF", math.inf)])
def test_caffe_non_finite_losses_are_divergence(text, value):
    log = ("I0608 10:52:30.927119 19222 solver.cpp:243] Iteration 10, loss = 3.5\n"
           f"I0608 10:52:31.927119 19222 solver.cpp:243] Iteration 20, loss = {text}\n"
           f"I0608 10:52:31.927280 19222 solver.cpp:259]     Train net output #0: mbox_loss = {text} (* 1 = {text} loss)\n"
           "I0608 10:52:32.927119 19222 solver.cpp:243] Iteration 30, loss = nan\n")
    rec = parse_text(log, "nan.log")
    assert rec.status == "diverged" and rec.diverged.iteration == 20 and not rec.diverged.reported
    got = rec.diverged.value
    assert (math.isnan(got) and math.isnan(value)) or got == value
    assert number("1e-05") == 1e-05 and number("-nan") != number("-nan")


def test_truncated_and_malformed_logs_give_partial_results_and_warnings(tmp_path):
    text = (SSD_LINES
            + "\x00\x17garbage \xff line\n"
            + "I0609 03:17:00.000000 23885 solver.cpp:243] Iteration 340, loss = 7.1\n"
            + "I0609 03:17:00.000001 23885 solver.cpp:259]     Train net output #0: mbox_loss = 6.5e (* 1 = 6.5 loss)\n"
            + "I0609 03:17:01.000000 23885 solver.cpp:546]     Test net output #0: detection_eval = 0.7\n"
            + "I0609 03:17:02.000000 23885 sgd_solver.cpp:138] Iteration 350, lr = 0.001\n"
            + "I0609 03:17:03.000000 23885 solver.cpp:421] Iteration 360, Testing net (#0)\n"
            + "I0609 03:17:04.000000 23885 solver.cpp:243] Iteration 360, lo")
    path = tmp_path / "broken.log"
    path.write_bytes(text.encode("utf-8", errors="surrogateescape"))
    rec = parse_log(path)
    assert [p.iteration for p in rec.train] == [330, 340, 350]
    assert rec.train[1].outputs == {}                       # the cut number is not read as 6.5
    # the test output with no 'Testing net' line before it is booked at no iteration (not at 340)
    assert [t.iteration for t in rec.tests] == [20000] and rec.unplaced_tests == 1
    joined = " | ".join(rec.warnings)
    assert "line not understood (truncated?)" in joined and "Iteration 360, lo" in joined
    assert "test output without its 'Testing net' line: not booked at any iteration" in joined
    assert "'lr' line at iteration 350 without its loss line" in joined
    assert "test at iteration 360 has no outputs" in joined
    assert "last line has no line end" in joined
    assert "mbox_loss = 6.5e" in joined


def test_empty_binary_and_missing_files(tmp_path):
    (tmp_path / "empty.log").write_text("")
    rec = parse_log(tmp_path / "empty.log")
    assert rec.status == "empty" and "the log is empty" in rec.warnings[0]
    (tmp_path / "model.caffemodel").write_bytes(b"\x0a\x05hello\x00\x00\x01")
    assert "binary data" in parse_log(tmp_path / "model.caffemodel").warnings[0]
    (tmp_path / "notes.txt").write_text("hello\nworld\n")
    assert "no Caffe training lines" in parse_log(tmp_path / "notes.txt").warnings[0]
    with pytest.raises(ScratchDetError, match="nope.log: cannot read the log"):
        parse_log(tmp_path / "nope.log")


def test_resumed_log_keeps_both_parts_and_the_last_solver_block():
    first = SSD_SOLVER_BLOCK + SSD_LINES
    second = (SSD_SOLVER_BLOCK.replace("max_iter: 120000", "max_iter: 150000")
              + "I0610 00:00:00.000000 5555 sgd_solver.cpp:287] SGDSolver: restoring history from "
                "models/x_iter_20000.solverstate\n"
              + "I0610 00:00:10.000000 5555 solver.cpp:243] Iteration 20010, loss = 3.25\n")
    rec = parse_text(first + second, "resumed.log")
    assert rec.max_iter == 150000 and rec.solver["stepvalue"] == [80000, 100000, 120000]
    assert rec.resumed_from == ["models/x_iter_20000.solverstate"]
    assert [p.iteration for p in rec.train] == [330, 20010] and rec.last_iteration == 20010


def test_logs_without_glog_prefixes_still_parse():
    text = ("Initializing solver from parameters:\nmax_iter: 500\nbase_lr: 0.01\n"
            "Iteration 100, loss = 1.5\nIteration 100, lr = 0.01\n"
            "Iteration 200, Testing net (#0)\n    Test net output #0: detection_eval = 0.5\n")
    rec = parse_text(text, "piped.log")
    assert rec.max_iter == 500 and [p.loss for p in rec.train] == [1.5] and rec.final_map == 0.5


TINY_NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" top: "label" input_param { shape { dim: 2 dim: 3 } shape { dim: 2 dim: 4 } } }
layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" inner_product_param { num_output: 4 bias_filler { type: "constant" value: 1 } } }
layer { name: "loss" type: "EuclideanLoss" bottom: "fc" bottom: "label" top: "loss" }
"""


@pytest.mark.parametrize("base_lr,diverges", [(0.1, False), (300.0, True)])
def test_a_real_engine_run_parses(tmp_path, monkeypatch, base_lr, diverges):
    """The contract between the engine's log and this parser, on a run of the real training loop."""
    pytest.importorskip("scratchdet.engine.net", reason="the engine's Net is not present")
    from scratchdet import cli
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.prototxt").write_text(TINY_NET)
    (tmp_path / "solver.prototxt").write_text(
        f'net: "net.prototxt"\ntest_iter: 1\ntest_interval: 20\nbase_lr: {base_lr}\nlr_policy: "multistep"\n'
        'stepvalue: 30\ngamma: 0.1\ndisplay: 5\nmax_iter: 40\nmomentum: 0.9\n'
        'snapshot_prefix: "runs/tiny/x/tiny"\neval_type: "classification"\naverage_loss: 2\nrandom_seed: 1\n')
    rc = cli.main(["train", "--solver", "solver.prototxt", "--gpu", "cpu", "--quiet"])
    rec = parse_log(tmp_path / "runs/tiny/x/train.log")
    assert rec.format == "scratchdet" and rec.warnings == [] and rec.max_iter == 40
    assert rec.solver["base_lr"] == base_lr and rec.solver["stepvalue"] == 30
    if diverges:
        assert rc != 0 and rec.status == "diverged" and rec.diverged.reported
        assert rec.diverged.iteration == rec.last_iteration < 40
    else:
        assert rc == 0 and rec.status == "done" and rec.last_iteration == 40
        assert [p.iteration for p in rec.train] == list(range(0, 41, 5))
        assert [p.lr for p in rec.train][:-1] == [0.1] * 6 + [pytest.approx(0.01)] * 2
        assert [i for i, _ in rec.grad_norm] == list(range(0, 36, 5)) and all(v > 0 for _, v in rec.grad_norm)
        assert [t.iteration for t in rec.tests] == [0, 20, 40] and rec.map_output() is None   # only a loss
        assert rec.steps == [(30, 1)] and rec.snapshots == [(40, "runs/tiny/x/tiny_iter_40.caffemodel")]
        assert [s[0] for s in rec.speed] == list(range(5, 36, 5))


# -- logs of other Caffe forks, from public sources -------------------------------------------------
# NVIDIA caffe 0.16/0.17: the three lines are quoted verbatim from an NVIDIA-Caffe log in a public
# job runner's log reader (GitHub, code index); the "-nan" display line is the one issue #12 found in a
# public repository; the "(0.0423 s)" form of the first iterations is the format string of
# NVIDIA/caffe src/caffe/solver.cpp (`"Iteration " << iter_ << " (" << lapse << " s), loss = "`).
NVIDIA_LOG = """\
I0329 06:59:54.980000 1 solver.cpp:334] Iteration 1 (0.0423 s), loss = 2.30512
I0329 06:59:54.980010 1 solver.cpp:356]     Train net output #0: loss = 2.30512 (* 1 = 2.30512 loss)
I0329 06:59:55.182549 1 solver.cpp:334] Iteration 100 (497.307 iter/s, 0.197061s/98 iter), loss = 2.18689
I0329 06:59:55.182579 1 solver.cpp:356]     Train net output #0: loss = 2.18689 (* 1 = 2.18689 loss)
I0329 06:59:55.182588 1 sgd_solver.cpp:161] Iteration 100, lr = 9.92565e-05, m = 0.9, wd = 0.0005, gs = 1
I0329 07:05:01.000000 1 solver.cpp:334] Iteration 900 (2.36675 iter/s, 21.126s/50 iter), loss = -nan
I0329 07:05:01.000010 1 solver.cpp:356]     Train net output #0: loss = -nan (* 1 = -nan loss)
I0329 07:05:01.000020 1 sgd_solver.cpp:161] Iteration 900, lr = 9.3e-05, m = 0.9, wd = 0.0005, gs = 1
"""


def test_nvidia_caffe_log_keeps_losses_speed_lr_and_divergence():
    rec = parse_text(NVIDIA_LOG, "nvidia.log")
    assert [p.iteration for p in rec.train] == [1, 100, 900]
    assert rec.train[1].loss == pytest.approx(2.18689) and rec.train[1].iter_per_s == pytest.approx(497.307)
    assert rec.train[0].iter_per_s is None                          # "(0.0423 s)" is a lapse, not a rate
    assert rec.train[1].lr == pytest.approx(9.92565e-05)
    # each train output on its own iteration
    assert [p.outputs["loss"] for p in rec.train[:2]] == pytest.approx([2.30512, 2.18689])
    assert math.isnan(rec.train[2].outputs["loss"])
    assert rec.status == "diverged" and rec.diverged.iteration == 900 and not rec.diverged.reported
    assert not [w for w in rec.warnings if "not understood" in w]


def test_xilinx_caffe_remaining_time_suffix():
    # the display line issue #12 quotes from a Xilinx-fork log: ", remaining N hours" after the loss
    text = ("I0101 10:00:00.000000 77 solver.cpp:310] Iteration 850 (2.4 iter/s, 20.8s/50 iter), loss = 3.61, remaining 213 hours\n"
            "I0101 10:00:00.000001 77 solver.cpp:329]     Train net output #0: mbox_loss = 3.5 (* 1 = 3.5 loss)\n"
            "I0101 10:00:21.000000 77 solver.cpp:310] Iteration 900, loss = 3.39, remaining 212 hours\n"
            "I0101 10:00:21.000001 77 solver.cpp:329]     Train net output #0: mbox_loss = 3.3 (* 1 = 3.3 loss)\n")
    rec = parse_text(text, "xilinx.log")
    assert [(p.iteration, p.loss, p.outputs) for p in rec.train] == [
        (850, pytest.approx(3.61), {"mbox_loss": pytest.approx(3.5)}),
        (900, pytest.approx(3.39), {"mbox_loss": pytest.approx(3.3)})]


def test_unknown_iteration_line_does_not_take_the_next_outputs():
    # an iteration line of a form no fork here writes: its outputs must not land on iteration 10
    text = ("I0101 10:00:00.000000 77 solver.cpp:243] Iteration 10, loss = 5\n"
            "I0101 10:00:00.000001 77 solver.cpp:259]     Train net output #0: mbox_loss = 5 (* 1 = 5 loss)\n"
            "I0101 10:00:01.000000 77 solver.cpp:243] Iteration 20 [[odd]] loss is 4\n"
            "I0101 10:00:01.000001 77 solver.cpp:259]     Train net output #0: mbox_loss = 4 (* 1 = 4 loss)\n")
    rec = parse_text(text, "odd.log")
    assert [(p.iteration, p.outputs) for p in rec.train] == [(10, {"mbox_loss": 5.0})]
    assert any("train output before any 'Iteration N, loss' line" in w for w in rec.warnings)


# BVLC Caffe, early 2014: Caffe's CIFAR-10 tutorial (docs/gathered/examples/cifar10.md), verbatim
BVLC_2014 = """\
I0317 21:52:49.309447 2008298256 solver.cpp:47] Solving CIFAR10_quick_train
I0317 21:53:12.179772 2008298256 solver.cpp:208] Iteration 100, lr = 0.001
I0317 21:53:12.185698 2008298256 solver.cpp:65] Iteration 100, loss = 1.73643
I0317 21:54:41.150030 2008298256 solver.cpp:87] Iteration 500, Testing net
I0317 21:54:47.129461 2008298256 solver.cpp:114] Test score #0: 0.5504
I0317 21:54:47.129500 2008298256 solver.cpp:114] Test score #1: 1.27805
"""
# BVLC Caffe, 2013: Caffe's MNIST tutorial (docs/mnist.md), verbatim (the docs shortened the prefix)
BVLC_2013 = """\
I1203 solver.cpp:204] Iteration 100, lr = 0.00992565
I1203 solver.cpp:66] Iteration 100, loss = 0.26044
I1203 solver.cpp:84] Testing net
I1203 solver.cpp:111] Test score #0: 0.9785
I1203 solver.cpp:111] Test score #1: 0.0606671
"""


def test_pre_2015_test_score_lines():
    rec = parse_text(BVLC_2014, "cifar.log")
    assert [(t.iteration, t.outputs) for t in rec.tests] == [(500, {"score#0": 0.5504, "score#1": 1.27805})]
    assert rec.net_name == "CIFAR10_quick_train" and rec.final_map == pytest.approx(0.5504)
    # 2013: a bare "Testing net"; the test ran at the first multiple of test_interval from the
    # latest named iteration (display lines come first), here 500
    rec = parse_text("I1203 solver.cpp:47] Initializing solver from parameters: \ntest_interval: 500\n" + BVLC_2013, "mnist.log")
    assert [(t.iteration, t.outputs["score#0"]) for t in rec.tests] == [(500, 0.9785)]
    assert [p.iteration for p in rec.train] == [100] and rec.train[0].lr == pytest.approx(0.00992565)
    # without test_interval: the latest named iteration, and a warning that says so
    rec = parse_text(BVLC_2013, "mnist.log")
    assert [t.iteration for t in rec.tests] == [100]
    assert any("without an iteration and no test_interval" in w for w in rec.warnings)


# a fatal glog line: BVLC/caffe issue #5748, verbatim (the data layer cannot open the LMDB)
FATAL_LOG = """\
I0707 16:48:46.332346 16677 layer_factory.hpp:77] Creating layer data
I0707 16:48:46.332937 16677 net.cpp:100] Creating Layer data
I0707 16:48:46.332957 16677 net.cpp:408] data -> data
F0707 16:48:46.336623 16692 db_lmdb.hpp:15] Check failed: mdb_status == 0 (2 vs. 0) No such file or directory
*** Check failure stack trace: ***
    @     0x7f4524eb0daa  (unknown)
    @     0x7f4525702c90  caffe::db::LMDB::Open()
Aborted (core dumped)
"""


def test_fatal_line_marks_the_run_crashed_and_the_score_card_says_so():
    from scratchdet.report import compare
    rec = parse_text(SSD_SOLVER_BLOCK + SSD_LINES + FATAL_LOG, "crash.log")
    assert rec.status == "crashed" and rec.crashed.message.startswith("db_lmdb.hpp:15] Check failed: mdb_status == 0")
    assert rec.crashed.iteration == 20000 and rec.to_dict()["crashed"]["line"] == rec.crashed.line
    card = compare.score(rec, variant="voc07_rootres34")
    assert card.verdict == compare.CRASHED and card.status == "crashed"
    assert any("Check failed: mdb_status == 0" in n for n in card.notes)
    # a crash before any iteration (the usual case for a missing LMDB), and one the shell reports
    rec = parse_text(FATAL_LOG, "crash0.log")
    assert rec.status == "crashed" and rec.crashed.iteration is None
    assert compare.score(rec, variant="voc07_rootres34").verdict == compare.CRASHED
    rec = parse_text(SSD_LINES + "Segmentation fault (core dumped)\n", "segv.log")
    assert rec.status == "crashed" and rec.crashed.message == "Segmentation fault (core dumped)"
    # a run restarted after its crash (the solver block again) is not crashed any more
    rec = parse_text(SSD_SOLVER_BLOCK + FATAL_LOG + SSD_SOLVER_BLOCK + SSD_LINES, "resumed.log")
    assert rec.status == "running" and any("crashed" in w and "started again" in w for w in rec.warnings)


def test_the_caffe_backend_and_the_parser_read_one_wording():
    # the trainer's lines come from glog's message functions; the parser and the caffe backend read
    # them with glog's patterns
    assert glog.LOSS_RE.search(glog.loss_message(7, 1.5)).group(1) == "7"
    assert glog.is_nonfinite_loss("Iteration 900 (2.36675 iter/s, 21.126s/50 iter), loss = -nan").group(1) == "900"
    assert glog.is_nonfinite_loss("Iteration 900, loss = 1.#QNAN").group(1) == "900"
    assert glog.is_nonfinite_loss("Iteration 900, loss = 3.39, remaining 212 hours") is None
    rec = parse_text("\n".join(glog.line("I", glog.OURS, m) for m in (
        glog.loss_message(5, 2.0), glog.lr_message(5, 0.01), glog.grad_norm_message(5, 3.0),
        glog.testing_message(5, 0), "    Test net output #0: detection_eval = 0.25",
        glog.diverged_message(6, float("nan")))) + "\n", "ours.log")
    assert [(p.iteration, p.loss, p.lr) for p in rec.train] == [(5, 2.0, 0.01)] and rec.grad_norm == [(5, 3.0)]
    assert rec.map_series() == [(5, 0.25)] and rec.diverged.iteration == 6 and rec.diverged.reported
