"""Parse training logs of Caffe SSD, BVLC Caffe and ours into one structured run record.

Lines are glog's ``<I|W|E|F><MMDD> <HH:MM:SS.micro> <thread> <file>:<line>] <message>``; the
messages (caffe-ssd-spec §5.5) are matched on their text, not on ``file:line`` (which differs by
build). Lines without the prefix are continuation lines of a multi-line message (the solver and
net parameters Caffe prints at start-up) or, failing that, matched as bare messages, so logs
piped through other tools still parse.

What is read: the solver parameters block (max_iter, base_lr, lr_policy, display, test_interval,
snapshot_prefix, ...); the net name; per display point the smoothed loss, every train output and
the lr; per test the outputs (mAP), per-class APs and test loss; snapshots; multistep and
gradient-clipping events; resumes; "Optimization Done."; and our extra lines (gradient L2 norm,
speed/ETA, divergence). A non-finite loss (``nan``, ``-nan``, ``inf``, ``1.#QNAN``) marks the run as
diverged at that iteration, whether or not the log says so in words.

Forks: BVLC ("Iteration N (x iter/s, ys/K iters), loss = v"), NVIDIA caffe ("(x iter/s, ys/K iter)",
"(y s)" on its first iterations, ", m = .., wd = .." after the lr), Xilinx (", remaining N hours" after
the loss), BVLC before 2015 ("Test score #k: v", read as output ``score#k``; lr line before the loss
line). A line that names an iteration in a form not known ends the current display point and test,
so the outputs after it are not booked at an earlier iteration.

Rules for tests: a test block is booked at the iteration its "Iteration N, Testing net" line names.
A bare "Testing net" (BVLC 2013) is booked at the first multiple of the solver's test_interval at or
after the latest iteration the log named (without test_interval: that iteration, with a warning). A
test output with no "Testing net" line before it (a log cut or filtered) is booked at no iteration:
it is counted in ``unplaced_tests`` with a warning, never given to the previous test.

A fatal glog line (``F0723 ... Check failed: ...``), glog's failure handler (``*** Aborted at``,
``*** SIGSEGV ... received by PID``) or the shell's ``Aborted``/``Segmentation fault`` marks the run as
crashed (``status`` "crashed", ``crashed`` holds the line), unless a new solver block follows (a restart).

Parsing never raises on content: malformed or truncated logs give what could be read plus
``warnings``. Only an unreadable file is an error (``parse_log``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ..errors import ScratchDetError

# Caffe's log wording has one home, caffe/glog.py, shared with the writer; the parser only reads it
from ..caffe.glog import number  # noqa: F401  (a number as Caffe prints it; re-exported)
from ..caffe.glog import (CLIP_RE as CLIP, CRASH_RE as CRASH, DIVERGED_RE as DIVERGED, DONE_RE as DONE,
                           GLOG_RE as GLOG, GRAD_NORM_RE as GRAD_NORM, ITER_PER_S_RE as ITER_PER_S, ITERATION_RE,
                           LOSS_RE as LOSS, LR_RE as LR, MESSAGE_STARTS, MISSING_TP_RE as MISSING_TP,
                           MULTISTEP_RE as MULTISTEP, NET_BLOCK, NUM_RE as NUM, OLD_TEST_SCORE_RE as OLD_TEST_SCORE, PER_CLASS_RE as PER_CLASS,
                           RESTORE_RE as RESTORE, SNAPSHOT_RE as SNAPSHOT, SNAPSHOT_STATE_RE as SNAPSHOT_STATE,
                           SOLVER_BLOCK, SOLVING_RE as SOLVING, SPEED_RE as SPEED, TEST_LOSS_RE as TEST_LOSS,
                           TEST_OUTPUT_RE as TEST_OUTPUT, TESTING_RE as TESTING, TRAIN_OUTPUT_RE as TRAIN_OUTPUT,
                           is_ours)

BLOCK_FIELD = re.compile(r"^\s*(\w+)\s*:\s*(.*?)\s*$")
PROTO_LINE = re.compile(r"^(?:\w+\s*:\s*\S.*|\w+\s*\{|\})$")   # a line of protobuf text format

MAX_WARNINGS = 20   # one malformed line per kind is enough to read; the rest are counted


@dataclass
class TrainPoint:
    iteration: int
    loss: float                                   # the smoothed loss of the display line
    outputs: dict[str, float] = field(default_factory=dict)   # blob name -> raw value (#k suffix if repeated)
    lr: float | None = None
    iter_per_s: float | None = None               # BVLC's "(x iter/s, ...)"


@dataclass
class TestPoint:
    iteration: int
    net: int = 0
    outputs: dict[str, float] = field(default_factory=dict)
    per_class: dict[int, float] = field(default_factory=dict)
    loss: float | None = None
    missing_labels: list[int] = field(default_factory=list)


@dataclass
class Divergence:
    iteration: int
    value: float
    line: int            # 1-based line number in the log
    reported: bool       # True when the log says so in words (ours), False when inferred from a loss


@dataclass
class Crash:
    iteration: int | None   # the latest iteration the log named before it (None: before any)
    line: int               # 1-based line number in the log
    message: str            # the fatal line's message, e.g. "Check failed: mdb_status == 0 (2 vs. 0) ..."


@dataclass
class RunRecord:
    source: str = ""
    format: str = "unknown"                        # "ssd" | "bvlc" | "scratchdet" | "unknown"
    solver: dict[str, object] = field(default_factory=dict)   # top-level solver fields (repeated -> list)
    net_name: str | None = None
    train: list[TrainPoint] = field(default_factory=list)
    tests: list[TestPoint] = field(default_factory=list)
    grad_norm: list[tuple[int, float]] = field(default_factory=list)
    speed: list[tuple[int, float, float, int]] = field(default_factory=list)   # (iter, it/s, img/s, ETA s)
    snapshots: list[tuple[int | None, str]] = field(default_factory=list)     # caffemodel paths
    steps: list[tuple[int, int]] = field(default_factory=list)                # multistep (iter, step)
    clips: list[tuple[float, float, float]] = field(default_factory=list)     # (norm, threshold, scale)
    resumed_from: list[str] = field(default_factory=list)
    diverged: Divergence | None = None
    crashed: Crash | None = None                   # a fatal glog line (F...), glog's failure handler, the shell's "Aborted"
    unplaced_tests: int = 0                        # test outputs with no 'Testing net' line: booked nowhere
    done: bool = False
    lines: int = 0
    warnings: list[str] = field(default_factory=list)

    # -- derived values ---------------------------------------------------------------------------
    @property
    def max_iter(self) -> int | None:
        v = self.solver.get("max_iter")
        return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def snapshot_prefix(self) -> str | None:
        v = self.solver.get("snapshot_prefix")
        return v if isinstance(v, str) else None

    @property
    def last_iteration(self) -> int | None:
        its = [p.iteration for p in self.train] + [t.iteration for t in self.tests] + [i for i, _ in self.grad_norm]
        if self.diverged:
            its.append(self.diverged.iteration)
        return max(its) if its else None

    @property
    def status(self) -> str:
        if self.diverged:
            return "diverged"
        if self.crashed:
            return "crashed"
        if self.done:
            return "done"
        return "running" if self.lines else "empty"

    def test_output_names(self, net: int = 0) -> list[str]:
        names: list[str] = []
        for t in self.tests:
            if t.net == net:
                names += [n for n in t.outputs if n not in names]
        return names

    def map_output(self, net: int = 0) -> str | None:
        """The test output that holds mAP: ``detection_eval`` (or one named like it), else the first
        output that is not a loss; None when the tests report only losses."""
        names = self.test_output_names(net)
        for n in names:
            if "detection_eval" in n or n.lower() in ("map", "eval"):
                return n
        others = [n for n in names if "loss" not in n.lower()]
        return others[0] if others else None

    def map_series(self, net: int = 0, output: str | None = None) -> list[tuple[int, float]]:
        output = output or self.map_output(net)
        return [(t.iteration, t.outputs[output]) for t in self.tests
                if t.net == net and output is not None and output in t.outputs]

    @property
    def final_map(self) -> float | None:
        s = self.map_series()
        return s[-1][1] if s else None

    @property
    def best_map(self) -> tuple[int, float] | None:
        finite = [(it, v) for it, v in self.map_series() if math.isfinite(v)]
        return max(finite, key=lambda p: p[1]) if finite else None

    def loss_series(self) -> list[tuple[int, float]]:
        return [(p.iteration, p.loss) for p in self.train]

    def lr_series(self) -> list[tuple[int, float]]:
        return [(p.iteration, p.lr) for p in self.train if p.lr is not None]

    def to_dict(self) -> dict:
        best = self.best_map
        return {
            "source": self.source, "format": self.format, "status": self.status, "net_name": self.net_name,
            "max_iter": self.max_iter, "last_iteration": self.last_iteration, "done": self.done,
            "solver": {k: v for k, v in self.solver.items()},
            "diverged": None if not self.diverged else {"iteration": self.diverged.iteration,
                                                        "value": _json_num(self.diverged.value),
                                                        "line": self.diverged.line, "reported": self.diverged.reported},
            "crashed": None if not self.crashed else {"iteration": self.crashed.iteration, "line": self.crashed.line,
                                                      "message": self.crashed.message},
            "unplaced_tests": self.unplaced_tests,
            "train": [{"iteration": p.iteration, "loss": _json_num(p.loss), "lr": p.lr,
                       "outputs": {k: _json_num(v) for k, v in p.outputs.items()}} for p in self.train],
            "tests": [{"iteration": t.iteration, "net": t.net, "outputs": {k: _json_num(v) for k, v in t.outputs.items()},
                       "per_class": {str(k): _json_num(v) for k, v in t.per_class.items()},
                       "loss": _json_num(t.loss)} for t in self.tests],
            "final_map": _json_num(self.final_map), "best_map": None if not best else
            {"iteration": best[0], "value": best[1]},
            "grad_norm": [[i, _json_num(v)] for i, v in self.grad_norm],
            "speed": [list(s) for s in self.speed], "snapshots": [list(s) for s in self.snapshots],
            "resumed_from": self.resumed_from, "warnings": self.warnings,
        }


def _json_num(v):
    """JSON has no nan/inf: written as the strings Caffe prints."""
    if v is None or (isinstance(v, float) and math.isfinite(v)) or isinstance(v, int):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


class _Parser:
    def __init__(self, source: str):
        self.rec = RunRecord(source=source)
        self.block: str | None = None          # "solver" | "net" while reading a parameters block
        self.depth = 0
        self.test: TestPoint | None = None      # the test whose outputs are being read
        self.point: TrainPoint | None = None    # the display point being read
        self.cur_iter = 0
        self.test_indices: set[int] = set()
        self.lr_only: dict[int, int] = {}        # id(TrainPoint) of an lr line still without its loss -> line      # output indices the current test block has shown
        self.ours = False
        self.bvlc = False
        self.caffe_lines = 0
        self.warn_counts: dict[str, int] = {}

    def warn(self, kind: str, message: str) -> None:
        n = self.warn_counts.get(kind, 0)
        self.warn_counts[kind] = n + 1
        if n == 0 and len(self.rec.warnings) < MAX_WARNINGS:
            self.rec.warnings.append(message)

    # -- line dispatch --------------------------------------------------------------------------
    def feed(self, lineno: int, raw: str) -> None:
        line = raw.rstrip("\r\n")
        m = GLOG.match(line)
        if m is None:
            if self.block is not None and self._block_line(line):
                return
            message, tag = line.strip(), ""
            if CRASH.match(message):
                self._crash(lineno, message)
                return
        else:
            self.block = None
            message, tag = m.group(6), m.group(5)
            self.caffe_lines += 1
            if is_ours(tag):
                self.ours = True
            if m.group(1) == "F":       # glog's FATAL: Caffe aborts right after it
                self._crash(lineno, f"{tag}] {message.strip()}")
                return
        if message:
            self._message(lineno, message, line)

    def _block_line(self, line: str) -> bool:
        """A line of the solver/net parameters block; top-level ``key: value`` fields are kept."""
        text = line.strip()
        if not text:
            return True
        if not PROTO_LINE.match(text):   # the block has ended (logs without glog prefixes)
            self.block = None
            return False
        if self.depth == 0:
            fm = BLOCK_FIELD.match(text)
            if fm and not text.endswith("{"):
                self._block_field(fm.group(1), fm.group(2))
        self.depth += text.count("{") - text.count("}")
        self.depth = max(self.depth, 0)
        return True

    def _block_field(self, key: str, value: str) -> None:
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            parsed: object = value[1:-1]
        elif value in ("true", "false"):
            parsed = value == "true"
        else:
            try:
                parsed = int(value)
            except ValueError:
                try:
                    parsed = float(value)
                except ValueError:
                    parsed = value
        if self.block == "solver":
            solver = self.rec.solver
            if key in solver:   # repeated field (stepvalue, test_iter): a list
                old = solver[key]
                solver[key] = (old if isinstance(old, list) else [old]) + [parsed]
            else:
                solver[key] = parsed
        elif self.block == "net" and key == "name" and isinstance(parsed, str) and self.rec.net_name is None:
            self.rec.net_name = parsed

    def _message(self, lineno: int, message: str, line: str) -> None:
        rec = self.rec
        if message.startswith(SOLVER_BLOCK) or message.startswith(NET_BLOCK):
            self.block = "solver" if message.startswith(SOLVER_BLOCK) else "net"
            self.depth = 0
            if self.block == "solver":      # a resumed run logs its parameters again: the last block wins
                self.rec.solver = {}
                if self.rec.crashed is not None:   # ... and a crash before it is history
                    c = self.rec.crashed
                    self.rec.warnings.append(f"{rec.source}:{c.line}: the run crashed ({c.message[:80]}) and was "
                                             f"started again at line {lineno}")
                    self.rec.crashed = None
            rest = message.split(":", 1)[1].strip()
            if rest:
                self._block_line(rest)
            return
        try:
            if self._train_or_test(lineno, message):
                return
            if self._events(lineno, message):
                return
        except (ValueError, OverflowError):
            self.warn("number:" + message.split(" ", 1)[0], f"{rec.source}:{lineno}: unreadable number in {message[:100]!r}")
            return
        if ITERATION_RE.search(message):   # an iteration line of a form not known: what follows is not
            self.point = None              # the last known point's, nor the last test's
            self.test = None
        if any(message.lstrip().startswith(k) for k in MESSAGE_STARTS):
            self.warn("unparsed:" + message.split(" ", 1)[0],
                      f"{rec.source}:{lineno}: line not understood (truncated?): {message[:100]!r}")

    def _train_or_test(self, lineno: int, message: str) -> bool:
        rec = self.rec
        m = LOSS.search(message)
        if m:
            it, loss = int(m.group(1)), number(m.group(3))
            self.cur_iter = it
            speed = ITER_PER_S.search(m.group(2) or "")
            if m.group(2) is not None:
                self.bvlc = True
            per_s = number(speed.group(1)) if speed else None
            if self.point is not None and id(self.point) in self.lr_only and self.point.iteration == it:
                # BVLC before 2015 logs the lr line first: this is its loss
                self.lr_only.pop(id(self.point), None)
                self.point.loss, self.point.iter_per_s = loss, per_s
            else:
                self.point = TrainPoint(it, loss, iter_per_s=per_s)
                rec.train.append(self.point)
            self.test = None
            if not math.isfinite(loss):
                self._diverge(it, loss, lineno, reported=False)
            return True
        m = TRAIN_OUTPUT.search(message)
        if m:
            value = number(m.group(3))
            if self.point is None:
                self.warn("orphan-train", f"{rec.source}:{lineno}: train output before any 'Iteration N, loss' line")
                return True
            name = m.group(2)
            key = name if name not in self.point.outputs else f"{name}#{m.group(1)}"
            self.point.outputs[key] = value
            if not math.isfinite(value) and m.group(5) is not None:
                self._diverge(self.point.iteration, value, lineno, reported=False)
            return True
        m = LR.search(message)
        if m:
            it, lr = int(m.group(1)), number(m.group(2))
            self.cur_iter = it
            if self.point is not None and self.point.iteration == it:
                self.point.lr = lr
            else:   # an lr line without its loss line (display cut short): keep it on its own
                self.point = TrainPoint(it, math.nan, lr=lr)
                rec.train.append(self.point)
                self.lr_only[id(self.point)] = lineno   # its loss line may follow (BVLC before 2015)
            return True
        m = TESTING.search(message.strip())
        if m:
            if m.group(1) is not None:
                self.cur_iter = int(m.group(1))
                it = self.cur_iter
            else:
                it = self._untold_test_iteration(lineno)
            self.test = TestPoint(it, int(m.group(2) or 0))
            self.test_indices = set()
            rec.tests.append(self.test)
            return True
        m = TEST_OUTPUT.search(message)
        old = None if m else OLD_TEST_SCORE.search(message.strip())
        if m or old:
            index = int((m or old).group(1))
            name = m.group(2) if m else f"score#{index}"
            value = number(m.group(3) if m else old.group(2))
            if self.test is not None and index in self.test_indices:   # a second block: its header is lost
                self.test = None
            if self.test is None:
                rec.unplaced_tests += 1
                self.warn("orphan-test", f"{rec.source}:{lineno}: test output without its 'Testing net' line: "
                                         "not booked at any iteration")
                return True
            self.test_indices.add(index)
            self.test.outputs[name] = value
            return True
        m = PER_CLASS.search(message)
        if m and self.test is not None:
            self.test.per_class[int(m.group(1))] = number(m.group(2))
            return True
        m = TEST_LOSS.search(message)
        if m and self.test is not None:
            self.test.loss = number(m.group(1))
            return True
        m = MISSING_TP.search(message)
        if m:
            if self.test is not None:
                self.test.missing_labels.append(int(m.group(1)))
            return True
        return False

    def _events(self, lineno: int, message: str) -> bool:
        rec = self.rec
        m = GRAD_NORM.search(message)
        if m:
            self.ours = True
            rec.grad_norm.append((int(m.group(1)), number(m.group(2))))
            return True
        m = SPEED.search(message)
        if m:
            self.ours = True
            eta = int(m.group(4)) * 3600 + int(m.group(5)) * 60 + int(m.group(6))
            rec.speed.append((int(m.group(1)), number(m.group(2)), number(m.group(3)), eta))
            return True
        m = DIVERGED.search(message)
        if m:
            self.ours = True
            self._diverge(int(m.group(1)), number(m.group(2)), lineno, reported=True)
            return True
        m = SNAPSHOT_STATE.search(message)
        if m:
            return True
        m = SNAPSHOT.search(message)
        if m:
            path = m.group(1)
            im = re.search(r"_iter_(\d+)\.caffemodel", path)
            rec.snapshots.append((int(im.group(1)) if im else None, path))
            return True
        m = MULTISTEP.search(message)
        if m:
            rec.steps.append((int(m.group(1)), int(m.group(2))))
            return True
        m = CLIP.search(message)
        if m:
            rec.clips.append((number(m.group(1)), number(m.group(2)), number(m.group(3))))
            return True
        m = RESTORE.search(message)
        if m:
            rec.resumed_from.append(m.group(1))
            return True
        m = SOLVING.search(message)
        if m:
            if m.group(1) and rec.net_name is None:
                rec.net_name = m.group(1)
            return True
        if DONE.search(message):
            rec.done = True
            return True
        return False

    def _untold_test_iteration(self, lineno: int) -> int:
        """BVLC Caffe before 2014 logs a bare "Testing net": its test ran at the first multiple of
        test_interval at or after the latest iteration the log named (the display lines come first).
        Without a known test_interval, the latest named iteration is taken, and a warning says so."""
        interval = self.rec.solver.get("test_interval")
        if isinstance(interval, int) and interval > 0:
            return -(-self.cur_iter // interval) * interval
        self.warn("test-iteration", f"{self.rec.source}:{lineno}: 'Testing net' line without an iteration and no "
                                    f"test_interval in the log: booked at iteration {self.cur_iter}, the latest named")
        return self.cur_iter

    def _crash(self, lineno: int, message: str) -> None:
        if self.rec.crashed is None:
            self.rec.crashed = Crash(self.cur_iter if (self.rec.train or self.rec.tests) else None, lineno, message)

    def _diverge(self, iteration: int, value: float, lineno: int, reported: bool) -> None:
        d = self.rec.diverged
        if d is None:
            self.rec.diverged = Divergence(iteration, value, lineno, reported)
        elif reported and not d.reported:
            d.reported = True

    def finish(self, lines: int) -> RunRecord:
        rec = self.rec
        rec.lines = lines
        for p in rec.train:
            if id(p) in self.lr_only:
                self.warn("lr-alone", f"{rec.source}:{self.lr_only[id(p)]}: 'lr' line at iteration {p.iteration} "
                                      "without its loss line")
        rec.format = "scratchdet" if self.ours else "bvlc" if self.bvlc else "ssd" if self.caffe_lines else "unknown"
        for t in rec.tests:
            if not t.outputs:
                self.warn("empty-test", f"{rec.source}: test at iteration {t.iteration} has no outputs (log truncated?)")
        rec.tests = [t for t in rec.tests if t.outputs]
        if lines and not rec.train and not rec.tests and not rec.solver:
            rec.warnings.append(f"{rec.source}: no Caffe training lines found (is this a Caffe log?)")
        elif lines == 0:
            rec.warnings.append(f"{rec.source}: the log is empty")
        for kind, n in self.warn_counts.items():
            if n > 1:
                rec.warnings.append(f"{rec.source}: {n - 1} more line(s) like the above ({kind.split(':')[0]})")
        return rec


def parse_lines(lines: Iterable[str], source: str = "<log>") -> RunRecord:
    """Parse log lines; never raises on content (see ``RunRecord.warnings``)."""
    parser = _Parser(source)
    n = 0
    for n, line in enumerate(lines, start=1):
        parser.feed(n, line)
    return parser.finish(n)


def parse_text(text: str, source: str = "<log>") -> RunRecord:
    rec = parse_lines(text.splitlines(), source)
    if text and not text.endswith("\n"):
        rec.warnings.append(f"{source}: the last line has no line end (log truncated, or the run is still writing)")
    return rec


def parse_log(path) -> RunRecord:
    """Parse a log file. A missing or unreadable file is a ScratchDetError; bad bytes are replaced."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read the log ({exc.strerror})") from None
    head = data[:4096]
    control = sum(1 for b in head if b < 32 and b not in (9, 10, 13))
    if head and control > 0.1 * len(head):
        rec = RunRecord(source=str(path))
        rec.warnings.append(f"{path}: binary data, not a text log")
        return rec
    # NUL runs are what a crash leaves in a file that was being appended to: drop them
    return parse_text(data.replace(b"\0", b"").decode("utf-8", errors="replace"), str(path))
