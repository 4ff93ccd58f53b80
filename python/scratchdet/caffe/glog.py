"""Caffe's log lines: glog's line format, and the wording of every Caffe message our engine writes,
each format function beside the regex that reads it back. The one home of that wording: the trainer
(``engine/``), the log parser (``report/logparse.py``) and the caffe backend (which reads a real
Caffe binary's output) all use it. It sits with the Caffe formats because a log is one of them.
Our own notes that nothing parses (seed, device, fast path) stay with their writer, tagged ``OURS``.

A line is ``<I|W|E|F><MMDD> <HH:MM:SS.micro> <pid right-aligned width 5> <file>:<line>] <message>``
(caffe-ssd-spec §5.5). The ``file:line`` tags of the fork's own messages are the fork tip's, so a
log of ours looks like a Caffe log to tools that key on them; our extra lines carry ``train.py``.
"""
from __future__ import annotations

import datetime
import math
import os
import re
import sys
from pathlib import Path
from typing import IO

# file:line tags of the SSD fork tip for the lines log parsers know (spec §5.5), as its binary prints them
LOSS = "solver.cpp:243"
TRAIN_OUTPUT = "solver.cpp:259"
TESTING = "solver.cpp:433"
TEST_OUTPUT = "solver.cpp:546"
LR = "sgd_solver.cpp:138"
MULTISTEP = "sgd_solver.cpp:46"
CLIP = "sgd_solver.cpp:93"
SNAPSHOT_MODEL = "solver.cpp:596"
SNAPSHOT_STATE = "sgd_solver.cpp:307"
RESTORE = "sgd_solver.cpp:287"
SOLVER = "solver.cpp:63"
TRAIN_NET = "solver.cpp:96"
TEST_NET = "solver.cpp:196"
SOLVING = "solver.cpp:294"
LR_POLICY = "solver.cpp:295"
FINAL_LOSS = "solver.cpp:332"
DONE = "solver.cpp:337"
PER_CLASS = "solver.cpp:540"
MISSING_TP = "solver.cpp:524"
CAFFE_TOOL = "caffe.cpp:251"
# debug_info lines (Net::ForwardDebugInfo / BackwardDebugInfo and the all-params norms)
FORWARD_TOP = "net.cpp:608"
FORWARD_PARAM = "net.cpp:620"
BACKWARD_BOTTOM = "net.cpp:636"
BACKWARD_PARAM = "net.cpp:647"
NORMS = "net.cpp:736"
OURS = "train.py:1"


def num(v) -> str:
    """A number as C++ iostream's default formatting prints it (6 significant digits)."""
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    text = f"{v:.6g}"
    return text


# -- Caffe's log wording: every message our trainer writes, each beside the pattern the log parser
# and the caffe backend read it with (real Caffe forks' variants included, each with where it is from).
# Written lines must stay byte-identical to Caffe's: tests compare them with real Caffe logs.

# a glog line; time and thread may be missing (logs quoted in Caffe's own docs: "I1203 solver.cpp:84] ...")
GLOG_RE = re.compile(r"^([IWEF])((?:\d{4})?\d{4})(?: (\d{2}:\d{2}:\d{2}(?:\.\d+)?))?(?:\s+(\d+))?\s+([^\]\s]+)\]\s?(.*)$")
# a number as iostream prints it, or MSVC's 1.#QNAN; the look-ahead rejects a number cut short
NUM_RE = r"([-+]?\d\.#\w+|[-+]?(?i:nan|inf)\w*|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\d.#eE])"
ITERATION_RE = re.compile(r"\bIteration (\d+)\b")                  # any line that names an iteration
# how a run dies without a fatal glog line of its own: glog's failure handler, the shell
CRASH_RE = re.compile(r"^(?:\*\*\* (?:Aborted at|SIG\w+ .*received by PID)|(?:Aborted|Segmentation fault|Bus error|Killed)"
                      r"(?: \(core dumped\))?$)")


def is_ours(tag: str) -> bool:
    """A line our engine wrote (its extra lines carry the ``OURS`` tag)."""
    return tag.startswith(OURS.partition(":")[0])


# Solver::Init and Net::Init: the parameters block, its message and then one text-format line each
SOLVER_BLOCK = "Initializing solver from parameters:"
NET_BLOCK = "Initializing net from parameters:"


def solver_block_message(text: str) -> str:
    return f"{SOLVER_BLOCK} \n{text}"


def train_net_message(source: str) -> str:
    return f"Creating training net from {source}"


def test_net_message(net: int, source: str) -> str:
    return f"Creating test net (#{net}) specified by {source}"


def finetune_message(path: str) -> str:
    return f"Finetuning from {path}"


# The display line. Forks put a timing note between the iteration and the loss, and some text after:
#   BVLC / SSD fork  "Iteration 20 (2.1 iter/s, 9.5s/20 iters), loss = 7.29" (SSD: no parentheses)
#   NVIDIA caffe     "Iteration 900 (2.36675 iter/s, 21.126s/50 iter), loss = -nan",
#                    "Iteration 1 (0.53 s), loss = 8.1" (its first two iterations)
#   Xilinx caffe     "Iteration 900 (...), loss = 3.39, remaining 212 hours"
LOSS_RE = re.compile(r"Iteration (\d+)(?: \(([^)]*)\))?, loss = " + NUM_RE)
ITER_PER_S_RE = re.compile(NUM_RE + r" ?(?:iter)?/s\b")          # "2.36 iter/s" (BVLC, NVIDIA), "12.3/s" (old NVIDIA)


def loss_message(it: int, loss) -> str:
    return f"Iteration {it}, loss = {num(loss)}"


def is_nonfinite_loss(message: str) -> re.Match | None:
    """The display line when its loss is nan/inf (any fork's form), else None."""
    m = LOSS_RE.search(message)
    return m if m and re.match(r"[-+]?\d\.#|[-+]?(?i:nan|inf)", m.group(3)) else None


# "    Train net output #0: mbox_loss = 7.3 (* 1 = 7.3 loss)", and the same for the test net
TRAIN_OUTPUT_RE = re.compile(r"Train net output #(\d+): (\S+) = " + NUM_RE + r"(?: \(\* " + NUM_RE + r" = " + NUM_RE + r" loss\))?")
TEST_OUTPUT_RE = re.compile(r"Test net output #(\d+): (\S+) = " + NUM_RE + r"(?: \(\* " + NUM_RE + r" = " + NUM_RE + r" loss\))?")
OLD_TEST_SCORE_RE = re.compile(r"^(?:\w+ )?[Tt]est score #(\d+): " + NUM_RE)   # BVLC before 2015: no blob name


def output_message(phase: str, k: int, name: str, value: float, loss_weight: float = 0.0) -> str:
    """Solver's ``    Train net output #k: name = v`` (``phase`` "Train" or "Test"), with
    `` (* w = w*v loss)`` after an output that has a loss weight (spec §5.5)."""
    extra = f" (* {num(loss_weight)} = {num(loss_weight * value)} loss)" if loss_weight else ""
    return f"    {phase} net output #{k}: {name} = {num(value)}{extra}"


# "Iteration 100, lr = 0.001"; NVIDIA appends ", m = 0.9, wd = 0.0005, gs = 1", old NVIDIA puts
# "(12.3/s)" after the iteration
LR_RE = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, lr = " + NUM_RE)


def lr_message(it: int, rate) -> str:
    return f"Iteration {it}, lr = {num(rate)}"


MULTISTEP_RE = re.compile(r"MultiStep Status: Iteration (\d+), step = (\d+)")


def multistep_message(it: int, step: int) -> str:
    return f"MultiStep Status: Iteration {it}, step = {step}"


def plateau_message(it: int, step: int) -> str:
    return f"Plateau Status: Iteration {it}, step = {step}"


CLIP_RE = re.compile(r"Gradient clipping: scaling down gradients \(L2 norm " + NUM_RE + r" > " + NUM_RE + r"\) by scale factor " + NUM_RE)


def clip_message(norm, clip, scale) -> str:
    return f"Gradient clipping: scaling down gradients (L2 norm {num(norm)} > {num(clip)}) by scale factor {num(scale)}"


# "Iteration 500, Testing net (#0)"; BVLC 2014: "Iteration 500, Testing net"; 2013: "Testing net"
TESTING_RE = re.compile(r"^(?:Iteration (\d+), )?Testing net(?: \(#(\d+)\))?\s*$")


def testing_message(it: int, net: int) -> str:
    return f"Iteration {it}, Testing net (#{net})"


TEST_LOSS_RE = re.compile(r"Test loss: " + NUM_RE)


def test_loss_message(loss) -> str:
    return f"Test loss: {num(loss)}"


PER_CLASS_RE = re.compile(r"^\s*class(\d+): " + NUM_RE + r"\s*$")


def per_class_message(label: int, ap) -> str:
    return f"class{label}: {num(ap)}"


MISSING_TP_RE = re.compile(r"Missing true_pos for label: (\d+)")


def missing_tp_message(label: int) -> str:
    return f"Missing true_pos for label: {label}"


SNAPSHOT_RE = re.compile(r"Snapshotting to (?:binary proto |HDF5 )?(?:file )?(\S+)")
SNAPSHOT_STATE_RE = re.compile(r"Snapshotting solver state to (?:binary proto |HDF5 )?(?:file )?(\S+)")


def snapshot_message(path: str) -> str:
    return f"Snapshotting to binary proto file {path}"


def snapshot_state_message(path: str) -> str:
    return f"Snapshotting solver state to binary proto file {path}"


RESTORE_RE = re.compile(r"(?:SGDSolver: restoring history from|Restoring previous solver status from) (\S+)")


def restore_message(path: str) -> str:
    return f"SGDSolver: restoring history from {path}"


SOLVING_RE = re.compile(r"^Solving (\S*)")


def solving_message(net_name: str) -> str:
    return f"Solving {net_name}"


def lr_policy_message(policy: str) -> str:
    return f"Learning Rate Policy: {policy}"


DONE_RE = re.compile(r"Optimization Done\.")


def done_message() -> str:
    return "Optimization Done."


# our extra lines (tag OURS or the solver's): the gradient norm of Figure 1, speed, divergence, Ctrl-C
GRAD_NORM_RE = re.compile(r"Iteration (\d+), gradient L2 norm = " + NUM_RE)


def grad_norm_message(it: int, norm) -> str:
    return f"Iteration {it}, gradient L2 norm = {num(norm)}"


SPEED_RE = re.compile(r"Iteration (\d+), speed = " + NUM_RE + r" iter/s, " + NUM_RE + r" images/s, ETA (\d+):(\d{2}):(\d{2})")


def speed_message(it: int, iter_per_s: float, images_per_s: float, seconds_left: float) -> str:
    eta = f"{int(seconds_left // 3600)}:{int(seconds_left % 3600 // 60):02d}:{int(seconds_left % 60):02d}"
    return f"Iteration {it}, speed = {iter_per_s:.3g} iter/s, {images_per_s:.1f} images/s, ETA {eta}"


DIVERGED_RE = re.compile(r"Training diverged at iteration (\d+): loss = " + NUM_RE)


def diverged_message(it: int, loss) -> str:
    return f"Training diverged at iteration {it}: loss = {num(loss)}"


def interrupted_message(it: int) -> str:
    return f"Interrupted at iteration {it}: stopping"


# Net::ForwardDebugInfo / BackwardDebugInfo and the all-params norms (debug_info: true), values as mean |x|
def forward_top_message(layer: str, blob: str, value) -> str:
    return f"    [Forward] Layer {layer}, top blob {blob} data: {num(value)}"


def forward_param_message(layer: str, k: int, value) -> str:
    return f"    [Forward] Layer {layer}, param blob {k} data: {num(value)}"


def backward_bottom_message(layer: str, blob: str, value) -> str:
    return f"    [Backward] Layer {layer}, bottom blob {blob} diff: {num(value)}"


def backward_param_message(layer: str, k: int, value) -> str:
    return f"    [Backward] Layer {layer}, param blob {k} diff: {num(value)}"


def norms_message(l1_data, l1_diff, l2_data, l2_diff) -> str:
    return (f"    [Backward] All net params (data, diff): L1 norm = ({num(l1_data)}, {num(l1_diff)}); "
            f"L2 norm = ({num(l2_data)}, {num(l2_diff)})")


# caffe time (tools/caffe.cpp time()): the benchmark's lines, in the order it writes them
TIME_FORWARD, TIME_BACKWARD = "Performing Forward", "Performing Backward"
BENCHMARK_BEGINS, BENCHMARK_ENDS = "*** Benchmark begins ***", "*** Benchmark ends ***"
AVERAGE_PER_LAYER = "Average time per layer: "


def use_device_message(gpu: int | None) -> str:
    return f"Use GPU {gpu}." if gpu is not None else "Use CPU."


def initial_loss_message(loss) -> str:
    return f"Initial loss: {num(loss)}"


def testing_for_message(iterations: int) -> str:
    return f"Testing for {iterations} iterations."


def iteration_time_message(it: int, ms) -> str:
    return f"Iteration: {it} forward-backward time: {num(ms)} ms."


def layer_time_message(layer: str, direction: str, ms) -> str:
    """``direction`` is "forward" or "backward"."""
    return f"{layer:>10}\t{direction}: {num(ms)} ms."


def average_time_message(what: str, ms) -> str:
    """``what``: "Forward pass", "Backward pass" or "Forward-Backward"."""
    return f"Average {what}: {num(ms)} ms."


def total_time_message(ms) -> str:
    return f"Total Time: {num(ms)} ms."


# lines that begin a test-phase or display message: one of these that no pattern reads is a line
# cut short, which the parser reports
MESSAGE_STARTS = ("Iteration", "Train net output", "Test net output", "Test loss", "Training diverged")


def number(text: str) -> float:
    """A number as C++ iostream (or MSVC's runtime) prints it: ``nan``, ``-nan``, ``inf``, ``1.#QNAN``..."""
    t = text.strip().lower()
    if "nan" in t or "#ind" in t or "#q" in t:
        return math.nan
    if "inf" in t:
        return -math.inf if t.startswith("-") else math.inf
    return float(t)


def prefix(level: str, tag: str, when: datetime.datetime | None = None, pid: int | None = None) -> str:
    when = when or datetime.datetime.now()
    pid = os.getpid() if pid is None else pid
    return f"{level}{when:%m%d} {when:%H:%M:%S}.{when.microsecond:06d} {pid:>5} {tag}] "


def line(level: str, tag: str, message: str, when: datetime.datetime | None = None, pid: int | None = None) -> str:
    return prefix(level, tag, when, pid) + message


class Logger:
    """Writes glog lines to stderr and, when given, appends them to a log file (flushed per line, so
    a run killed half way leaves a readable log). ``quiet`` drops the stderr copy."""

    def __init__(self, path=None, stream: IO | None = None, quiet: bool = False, append: bool = False):
        self.stream = None if quiet else (stream or sys.stderr)
        self.path = Path(path) if path else None
        self._file = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a" if append else "w", encoding="utf-8")

    def log(self, level: str, tag: str, message: str) -> str:
        text = line(level, tag, message)
        for out in (self.stream, self._file):
            if out is not None:
                out.write(text + "\n")
                out.flush()
        return text

    def info(self, tag: str, message: str) -> str:
        return self.log("I", tag, message)

    def warning(self, tag: str, message: str) -> str:
        return self.log("W", tag, message)

    def error(self, tag: str, message: str) -> str:
        return self.log("E", tag, message)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class NullLogger(Logger):
    """For ranks other than 0 in multi-GPU runs: Caffe logs on the root solver only."""

    def __init__(self):
        super().__init__(None, quiet=True)

    def log(self, level: str, tag: str, message: str) -> str:
        return ""
