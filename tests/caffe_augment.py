"""Per-sample statistics of the SSD training transform, from real Caffe and from our data layer.

Real Caffe's AnnotatedData output cannot be dumped by the ``caffe`` tool, so a net reads it with
batch size 1 and a few layers whose ``debug_info`` lines carry the numbers (each line is a blob's
mean absolute value): per channel, the pixel mean (Scale by 1 plus 1000, so the value is positive)
and the mean square (Eltwise PROD of the channel with itself); per box, the width x height area and
the width / height aspect (Slice of the label's columns, Eltwise); the box count as 1 / the mean of
a Softmax over the boxes of a zero column; whether the sample has no box (its one label row
is -1); and the share of values exactly 0 after mean subtraction (AbsVal, Threshold 0), which is
the mean-filled canvas of an expanded sample (about 1 - 1/ratio^2 of it) and ~0.4 % otherwise. A Silence layer takes them all, so the net has no output that the solver would print
element by element. Our side runs the same data layer (same prototxt) and computes the same numbers with numpy.
"""
from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path

import numpy as np

from scratchdet.caffe import io
from scratchdet.caffe.schema import pb

STATS = ("count", "empty", "area", "aspect", "zero", "mean0", "mean1", "mean2", "sq0", "sq1", "sq2")

_TAIL = """
layer { name: "ch" type: "Slice" bottom: "data" top: "c0" top: "c1" top: "c2" slice_param { axis: 1 } }
%(channels)s
layer { name: "cols" type: "Slice" bottom: "label" top: "l0" top: "l1" top: "l2" top: "l3" top: "l4" top: "l5"
        top: "l6" top: "l7" slice_param { axis: 3 } }
layer { name: "w" type: "Eltwise" bottom: "l5" bottom: "l3" top: "w" eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "h" type: "Eltwise" bottom: "l6" bottom: "l4" top: "h" eltwise_param { operation: SUM coeff: 1 coeff: -1 } }
layer { name: "area" type: "Eltwise" bottom: "w" bottom: "h" top: "area" eltwise_param { operation: PROD } }
layer { name: "zero" type: "Scale" bottom: "l1" top: "zero" param { lr_mult: 0 } param { lr_mult: 0 }
        scale_param { filler { value: 0 } bias_term: true bias_filler { value: 0 } } }
layer { name: "count" type: "Softmax" bottom: "zero" top: "count" softmax_param { axis: 2 } }
layer { name: "absd" type: "AbsVal" bottom: "data" top: "absd" }
layer { name: "nz" type: "Threshold" bottom: "absd" top: "nz" threshold_param { threshold: 0 } }
layer { name: "quiet" type: "Silence" bottom: "m0" bottom: "m1" bottom: "m2" bottom: "s0" bottom: "s1" bottom: "s2"
        bottom: "area" bottom: "count" bottom: "l0" bottom: "l2" bottom: "l7" bottom: "nz" }
"""
_CHANNEL = """layer { name: "m%(k)d" type: "Scale" bottom: "c%(k)d" top: "m%(k)d" param { lr_mult: 0 } param { lr_mult: 0 }
        scale_param { filler { value: 1 } bias_term: true bias_filler { value: 1000 } } }
layer { name: "s%(k)d" type: "Eltwise" bottom: "c%(k)d" bottom: "c%(k)d" top: "s%(k)d" eltwise_param { operation: PROD } }"""


def stats_net(train_prototxt: Path, source: str, out: Path) -> None:
    """The train net's AnnotatedData layer (its full transform), batch 1, reading ``source``, and
    the statistics layers."""
    net = io.read_net(train_prototxt)
    data = next(lp for lp in net.layer if lp.type == "AnnotatedData")
    data.data_param.batch_size = 1
    data.data_param.source = source
    head = pb.NetParameter(name="augment_stats")
    head.layer.append(data)
    tail = _TAIL % {"channels": "\n".join(_CHANNEL % {"k": k} for k in range(3))}
    out.write_text(io.to_text(head) + tail)
    # the data layer alone, for our side (the read-out layers are Caffe's, Threshold is not ours)
    out.with_name(out.stem + "_data.prototxt").write_text(io.to_text(head))


def solver(net: str, iterations: int, seed: int, out: Path) -> None:
    # display 1: Caffe turns debug_info on at display iterations only
    sp = pb.SolverParameter(train_net=net, base_lr=0.0, lr_policy="fixed", max_iter=iterations, display=1,
                            debug_info=True, random_seed=seed, snapshot_after_train=False,
                            solver_mode=pb.SolverParameter.CPU)
    io.write_text(sp, out)


_FWD = re.compile(r"\[Forward\] Layer \S+, top blob (\S+) data: (\S+)$")


def from_caffe_log(text: str) -> dict[str, np.ndarray]:
    """Per-sample statistics from Caffe's debug lines (one block of forward lines per iteration)."""
    rows, cur = [], {}
    for line in text.splitlines():
        m = _FWD.search(line)
        if not m:
            continue
        blob, v = m.group(1), float(m.group(2))
        if blob == "data" and cur:
            rows.append(cur)
            cur = {}
        cur[blob] = v
    if cur:
        rows.append(cur)
    out = {k: [] for k in STATS}
    for r in rows:
        if "count" not in r:
            continue
        empty = r["l0"] == 1.0 and r["count"] == 1.0      # the one -1 row of a sample without boxes
        out["empty"].append(float(empty))
        out["count"].append(0.0 if empty else float(round(1.0 / r["count"])))   # 1/G printed to 6 digits
        out["area"].append(math.nan if empty else r["area"])
        out["aspect"].append(math.nan if empty else r["w"] / r["h"])
        out["zero"].append(1.0 - r["nz"])
        for k in range(3):
            out[f"mean{k}"].append(r[f"m{k}"] - 1000.0)
            out[f"sq{k}"].append(r[f"s{k}"])
    return {k: np.asarray(v) for k, v in out.items()}


def from_ours(root: Path, net_path: str, iterations: int, seed: int) -> dict[str, np.ndarray]:
    """The same statistics from our AnnotatedData layer (``net_path``'s data layer, which
    ``stats_net`` also wrote alone)."""
    import torch
    from scratchdet.caffe.netstate import TRAIN
    from scratchdet.engine.net import Net
    from scratchdet.engine.score import data_layers
    out = {k: [] for k in STATS}
    data_net = str(Path(net_path).with_name(Path(net_path).stem + "_data.prototxt"))
    with contextlib.chdir(root):
        net = Net(io.read_net(data_net), TRAIN, source=data_net, seed=seed)
        layer = data_layers(net)[0]
        layer.configure(seed=seed, workers=0)
        with torch.no_grad():
            for _ in range(iterations):
                data, label = (t.detach().cpu().numpy() for t in layer())
                boxes = label.reshape(-1, 8)
                boxes = boxes[boxes[:, 0] != -1]
                empty = len(boxes) == 0
                out["empty"].append(float(empty))
                out["count"].append(float(len(boxes)))
                w, h = boxes[:, 5] - boxes[:, 3], boxes[:, 6] - boxes[:, 4]
                out["area"].append(math.nan if empty else float(np.mean(np.abs(w * h))))
                out["aspect"].append(math.nan if empty else float(np.mean(np.abs(w)) / np.mean(np.abs(h))))
                out["zero"].append(float(np.mean(data == 0)))
                for k in range(3):
                    out[f"mean{k}"].append(float(data[0, k].mean()))
                    out[f"sq{k}"].append(float((data[0, k].astype(np.float64) ** 2).mean()))
        layer.close()
    return {k: np.asarray(v) for k, v in out.items()}


def ks(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and its asymptotic p-value (NaNs dropped)."""
    a, b = np.sort(a[~np.isnan(a)]), np.sort(b[~np.isnan(b)])
    grid = np.concatenate([a, b])
    d = float(np.max(np.abs(np.searchsorted(a, grid, side="right") / len(a)
                             - np.searchsorted(b, grid, side="right") / len(b))))
    n = len(a) * len(b) / (len(a) + len(b))
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    p = 2 * sum((-1) ** (j - 1) * math.exp(-2 * j * j * lam * lam) for j in range(1, 101)) if lam > 0 else 1.0
    return d, min(max(p, 0.0), 1.0)
