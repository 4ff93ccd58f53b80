"""Log lines in glog's format, as Caffe SSD writes them, so that Caffe's log tools read our logs.

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


# -- Caffe's log wording: the messages our trainer writes and the patterns the log parser and the
# caffe backend read, in one place (real Caffe forks' variants included, each with where it is from).

def loss_message(it: int, loss) -> str:
    return f"Iteration {it}, loss = {num(loss)}"


def lr_message(it: int, rate) -> str:
    return f"Iteration {it}, lr = {num(rate)}"


def testing_message(it: int, net: int) -> str:
    return f"Iteration {it}, Testing net (#{net})"


def grad_norm_message(it: int, norm) -> str:
    return f"Iteration {it}, gradient L2 norm = {num(norm)}"


def diverged_message(it: int, loss) -> str:
    return f"Training diverged at iteration {it}: loss = {num(loss)}"


# a glog line; time and thread may be missing (logs quoted in Caffe's own docs: "I1203 solver.cpp:84] ...")
GLOG_RE = re.compile(r"^([IWEF])((?:\d{4})?\d{4})(?: (\d{2}:\d{2}:\d{2}(?:\.\d+)?))?(?:\s+(\d+))?\s+([^\]\s]+)\]\s?(.*)$")
# a number as iostream prints it, or MSVC's 1.#QNAN; the look-ahead rejects a number cut short
NUM_RE = r"([-+]?\d\.#\w+|[-+]?(?i:nan|inf)\w*|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\d.#eE])"
# The display line. Forks put a timing note between the iteration and the loss, and some text after:
#   BVLC / SSD fork  "Iteration 20 (2.1 iter/s, 9.5s/20 iters), loss = 7.29" (SSD: no parentheses)
#   NVIDIA caffe     "Iteration 900 (2.36675 iter/s, 21.126s/50 iter), loss = -nan",
#                    "Iteration 1 (0.53 s), loss = 8.1" (its first two iterations)
#   Xilinx caffe     "Iteration 900 (...), loss = 3.39, remaining 212 hours"
LOSS_RE = re.compile(r"Iteration (\d+)(?: \(([^)]*)\))?, loss = " + NUM_RE)
ITER_PER_S_RE = re.compile(NUM_RE + r" ?(?:iter)?/s\b")          # "2.36 iter/s" (BVLC, NVIDIA), "12.3/s" (old NVIDIA)
TRAIN_OUTPUT_RE = re.compile(r"Train net output #(\d+): (\S+) = " + NUM_RE + r"(?: \(\* " + NUM_RE + r" = " + NUM_RE + r" loss\))?")
# "Iteration 100, lr = 0.001"; NVIDIA appends ", m = 0.9, wd = 0.0005, gs = 1", old NVIDIA puts
# "(12.3/s)" after the iteration
LR_RE = re.compile(r"Iteration (\d+)(?: \([^)]*\))?, lr = " + NUM_RE)
# "Iteration 500, Testing net (#0)"; BVLC 2014: "Iteration 500, Testing net"; 2013: "Testing net"
TESTING_RE = re.compile(r"^(?:Iteration (\d+), )?Testing net(?: \(#(\d+)\))?\s*$")
TEST_OUTPUT_RE = re.compile(r"Test net output #(\d+): (\S+) = " + NUM_RE + r"(?: \(\* " + NUM_RE + r" = " + NUM_RE + r" loss\))?")
OLD_TEST_SCORE_RE = re.compile(r"^(?:\w+ )?[Tt]est score #(\d+): " + NUM_RE)   # BVLC before 2015: no blob name
PER_CLASS_RE = re.compile(r"^\s*class(\d+): " + NUM_RE + r"\s*$")
TEST_LOSS_RE = re.compile(r"Test loss: " + NUM_RE)
SNAPSHOT_RE = re.compile(r"Snapshotting to (?:binary proto |HDF5 )?(?:file )?(\S+)")
SNAPSHOT_STATE_RE = re.compile(r"Snapshotting solver state to (?:binary proto |HDF5 )?(?:file )?(\S+)")
MULTISTEP_RE = re.compile(r"MultiStep Status: Iteration (\d+), step = (\d+)")
CLIP_RE = re.compile(r"Gradient clipping: scaling down gradients \(L2 norm " + NUM_RE + r" > " + NUM_RE + r"\) by scale factor " + NUM_RE)
RESTORE_RE = re.compile(r"(?:SGDSolver: restoring history from|Restoring previous solver status from) (\S+)")
SOLVING_RE = re.compile(r"^Solving (\S*)")
DONE_RE = re.compile(r"Optimization Done\.")
GRAD_NORM_RE = re.compile(r"Iteration (\d+), gradient L2 norm = " + NUM_RE)
SPEED_RE = re.compile(r"Iteration (\d+), speed = " + NUM_RE + r" iter/s, " + NUM_RE + r" images/s, ETA (\d+):(\d{2}):(\d{2})")
DIVERGED_RE = re.compile(r"Training diverged at iteration (\d+): loss = " + NUM_RE)
MISSING_TP_RE = re.compile(r"Missing true_pos for label: (\d+)")
ITERATION_RE = re.compile(r"\bIteration (\d+)\b")                  # any line that names an iteration
# how a run dies without a fatal glog line of its own: glog's failure handler, the shell
CRASH_RE = re.compile(r"^(?:\*\*\* (?:Aborted at|SIG\w+ .*received by PID)|(?:Aborted|Segmentation fault|Bus error|Killed)"
                      r"(?: \(core dumped\))?$)")
SOLVER_BLOCK = "Initializing solver from parameters:"
NET_BLOCK = "Initializing net from parameters:"


def number(text: str) -> float:
    """A number as C++ iostream (or MSVC's runtime) prints it: ``nan``, ``-nan``, ``inf``, ``1.#QNAN``..."""
    t = text.strip().lower()
    if "nan" in t or "#ind" in t or "#q" in t:
        return math.nan
    if "inf" in t:
        return -math.inf if t.startswith("-") else math.inf
    return float(t)


def is_nonfinite_loss(message: str) -> re.Match | None:
    """The display line when its loss is nan/inf (any fork's form), else None."""
    m = LOSS_RE.search(message)
    return m if m and re.match(r"[-+]?\d\.#|[-+]?(?i:nan|inf)", m.group(3)) else None


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
