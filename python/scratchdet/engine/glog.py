"""Log lines in glog's format, as Caffe SSD writes them, so that Caffe's log tools read our logs.

A line is ``<I|W|E|F><MMDD> <HH:MM:SS.micro> <pid right-aligned width 5> <file>:<line>] <message>``
(caffe-ssd-spec §5.5). The ``file:line`` tags of the fork's own messages are the fork tip's, so a
log of ours looks like a Caffe log to tools that key on them; our extra lines carry ``train.py``.
"""
from __future__ import annotations

import datetime
import math
import os
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
