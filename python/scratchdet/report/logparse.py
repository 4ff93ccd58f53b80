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

# glog's prefix: level, MMDD (newer glog, as the referee build's, writes YYYYMMDD), time, thread id, file:line
GLOG = re.compile(r"^([IWEF])((?:\d{4})?\d{4}) (\d{2}:\d{2}:\d{2}(?:\.\d+)?)\s+(\d+)\s+([^\]\s]+)\]\s?(.*)$")
# a number as iostream prints it, or MSVC's 1.#QNAN; the look-ahead rejects a number cut short
NUM = r"([-+]?\d\.#\w+|[-+]?(?i:nan|inf)\w*|[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)(?![\d.#eE])"

LOSS = re.compile(r"Iteration (\d+)(?: \(" + NUM + r" iter/s, " + NUM + r"s/(\d+) iters\))?, loss = " + NUM)
TRAIN_OUTPUT = re.compile(r"Train net output #(\d+): (\S+) = " + NUM + r"(?: \(\* " + NUM + r" = " + NUM + r" loss\))?")
LR = re.compile(r"Iteration (\d+), lr = " + NUM)
TESTING = re.compile(r"Iteration (\d+), Testing net \(#(\d+)\)")
TEST_OUTPUT = re.compile(r"Test net output #(\d+): (\S+) = " + NUM + r"(?: \(\* " + NUM + r" = " + NUM + r" loss\))?")
PER_CLASS = re.compile(r"^\s*class(\d+): " + NUM + r"\s*$")
TEST_LOSS = re.compile(r"Test loss: " + NUM)
SNAPSHOT = re.compile(r"Snapshotting to (?:binary proto|HDF5) file (\S+)")
SNAPSHOT_STATE = re.compile(r"Snapshotting solver state to (?:binary proto|HDF5) file (\S+)")
MULTISTEP = re.compile(r"MultiStep Status: Iteration (\d+), step = (\d+)")
CLIP = re.compile(r"Gradient clipping: scaling down gradients \(L2 norm " + NUM + r" > " + NUM + r"\) by scale factor " + NUM)
RESTORE = re.compile(r"(?:SGDSolver: restoring history from|Restoring previous solver status from) (\S+)")
SOLVING = re.compile(r"^Solving (\S*)")
DONE = re.compile(r"Optimization Done\.")
GRAD_NORM = re.compile(r"Iteration (\d+), gradient L2 norm = " + NUM)
SPEED = re.compile(r"Iteration (\d+), speed = " + NUM + r" iter/s, " + NUM + r" images/s, ETA (\d+):(\d{2}):(\d{2})")
DIVERGED = re.compile(r"Training diverged at iteration (\d+): loss = " + NUM)
MISSING_TP = re.compile(r"Missing true_pos for label: (\d+)")
SOLVER_BLOCK = "Initializing solver from parameters:"
NET_BLOCK = "Initializing net from parameters:"
BLOCK_FIELD = re.compile(r"^\s*(\w+)\s*:\s*(.*?)\s*$")
TEST_KEYWORDS = ("Iteration", "Train net output", "Test net output", "Test loss", "Training diverged")
PROTO_LINE = re.compile(r"^(?:\w+\s*:\s*\S.*|\w+\s*\{|\})$")   # a line of protobuf text format

MAX_WARNINGS = 20   # one malformed line per kind is enough to read; the rest are counted


def number(text: str) -> float:
    """A number as C++ iostream (or MSVC's runtime) prints it: ``nan``, ``-nan``, ``inf``, ``1.#QNAN``..."""
    t = text.strip().lower()
    if "nan" in t or "#ind" in t or "#q" in t:
        return math.nan
    if "inf" in t:
        return -math.inf if t.startswith("-") else math.inf
    return float(t)


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
        else:
            self.block = None
            message, tag = m.group(6), m.group(5)
            self.caffe_lines += 1
            if tag.startswith("train.py"):
                self.ours = True
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
        if any(message.lstrip().startswith(k) for k in TEST_KEYWORDS):
            self.warn("unparsed:" + message.split(" ", 1)[0],
                      f"{rec.source}:{lineno}: line not understood (truncated?): {message[:100]!r}")

    def _train_or_test(self, lineno: int, message: str) -> bool:
        rec = self.rec
        m = LOSS.search(message)
        if m:
            it, loss = int(m.group(1)), number(m.group(5))
            self.cur_iter = it
            if m.group(2) is not None:
                self.bvlc = True
            self.point = TrainPoint(it, loss, iter_per_s=number(m.group(2)) if m.group(2) else None)
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
                self.warn("lr-alone", f"{rec.source}:{lineno}: 'lr' line at iteration {it} without its loss line")
            return True
        m = TESTING.search(message)
        if m:
            self.cur_iter = int(m.group(1))
            self.test = TestPoint(self.cur_iter, int(m.group(2)))
            rec.tests.append(self.test)
            return True
        m = TEST_OUTPUT.search(message)
        if m:
            value = number(m.group(3))
            if self.test is None:
                it = self._current_iteration()
                self.warn("orphan-test", f"{rec.source}:{lineno}: test output without a 'Testing net' line; "
                                         f"counted at iteration {it}")
                self.test = TestPoint(it, 0)
                rec.tests.append(self.test)
            self.test.outputs[m.group(2)] = value
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

    def _current_iteration(self) -> int:
        """The iteration of the latest line that names one (logs of resumed runs go back in time)."""
        return self.cur_iter

    def _diverge(self, iteration: int, value: float, lineno: int, reported: bool) -> None:
        d = self.rec.diverged
        if d is None:
            self.rec.diverged = Divergence(iteration, value, lineno, reported)
        elif reported and not d.reported:
            d.reported = True

    def finish(self, lines: int) -> RunRecord:
        rec = self.rec
        rec.lines = lines
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
