"""The training loop on a tiny hand-built stand-in for the engine's Net (same API, one linear layer
on the real AnnotatedData layer): resume is bit-exact, Caffe's log lines and their order, snapshot
cadence, test cadence, divergence reported as NAN, Ctrl-C snapshots and stops.

The stand-in and its caffemodel I/O are installed in ``sys.modules`` for these tests only, so
the loop is tested apart from the layers; tests/test_train_e2e.py runs the real engine."""
import re
import signal
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from google.protobuf import text_format

from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST, TRAIN, filter_net
from scratchdet.caffe.schema import pb
from scratchdet.data.lmdb_io import LMDBWriter, record_key
from scratchdet.caffe import glog
from scratchdet.engine.layers.annotated_data import AnnotatedDataLayer
from scratchdet.engine.layers.base import Layer

H = W = 8
BATCH = 2


# -- the stand-in net --------------------------------------------------------------------------------

class StandInFC(Layer):
    """pred = features . w + b; a running mean of pred as a non-learnable statistic (like BatchNorm)."""

    def __init__(self):
        lp = pb.LayerParameter(name="fc", type="StandInFC")
        lp.param.add(lr_mult=1, decay_mult=1)
        lp.param.add(lr_mult=2, decay_mult=0)
        super().__init__(lp, TRAIN, [], [])
        self.add_blob((3,), True)
        self.add_blob((1,), True)
        self.add_blob((1,), False)


class ParamInfo(types.SimpleNamespace):
    pass


class StandInNet(torch.nn.Module):
    scale = 1.0           # loss multiplier; a test raises it to make training diverge

    def __init__(self, net_param, phase, *, level=0, stages=(), source="net", seed=None):
        super().__init__()
        filtered = filter_net(net_param, phase)
        self.name = net_param.name
        self.phase = phase
        lp = filtered.layer[0]
        self.data = AnnotatedDataLayer(lp, phase, [], [(lp.data_param.batch_size, 3, H, W), (1, 1, 1, 8)])
        self.fc = StandInFC()
        self.layers = [self.data, self.fc]
        if seed is not None:
            self.fill(seed)

    def layer(self, name):
        return next(layer for layer in self.layers if layer.name == name)

    def fill(self, seed):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.fc.blobs()[0].copy_(torch.randn(3, generator=g) * 0.1)

    @property
    def output_names(self):
        return ["loss"] if self.phase == TRAIN else ["err"]

    def forward(self, inputs=None):
        data, label = self.data()
        w, b, stat = self.fc.blobs()
        pred = (data.mean(dim=(2, 3)) / 64.0) @ w + b
        rows = label[0, 0]
        counts = torch.stack([((rows[:, 0] == i) & (rows[:, 1] > 0)).sum() for i in range(data.shape[0])]).float()
        err = (pred - counts) ** 2
        if self.phase == TRAIN:
            with torch.no_grad():
                stat.mul_(0.5).add_(0.5 * pred.mean())
            return {"data": data, "label": label, "loss": err.mean() * self.scale}
        return {"data": data, "label": label, "err": err.mean().reshape(1)}

    def total_loss(self, blobs):
        return blobs["loss"] if self.phase == TRAIN else torch.zeros(())

    def loss_outputs(self, blobs):
        return [("loss", 1.0, blobs["loss"])] if self.phase == TRAIN else []

    def params(self):
        out = []
        for i, t in enumerate(self.fc.blobs()):
            lr_mult, decay_mult = self.fc.param_mults(i)
            out.append(ParamInfo(layer="fc", index=i, tensor=t, lr_mult=lr_mult, decay_mult=decay_mult,
                                 learnable=self.fc.blob_learnable(i)))
        return out

    def to_proto(self):
        net = pb.NetParameter(name=self.name)
        lp = net.layer.add(name="fc", type="StandInFC")
        for t in self.fc.blobs():
            lp.blobs.append(_array_to_blob(t.detach().numpy()))
        return net

    def copy_from(self, net_param, source="caffemodel"):
        with torch.no_grad():
            for lp in net_param.layer:
                if lp.name == "fc":
                    for t, blob in zip(self.fc.blobs(), lp.blobs):
                        t.copy_(torch.from_numpy(_blob_to_array(blob)).reshape(t.shape))


def _array_to_blob(a):
    blob = pb.BlobProto()
    blob.shape.dim.extend(a.shape)
    blob.data.extend(a.astype(np.float32).ravel().tolist())
    return blob


def _blob_to_array(blob):
    return np.asarray(blob.data, np.float32).reshape(tuple(blob.shape.dim))


def _fake_modules():
    net = types.ModuleType("scratchdet.engine.net")
    net.Net = StandInNet
    cm = types.ModuleType("scratchdet.engine.caffemodel")
    cm.save_caffemodel = lambda n, path: io.write_binary(n.to_proto(), path)
    cm.load_caffemodel = lambda n, path: n.copy_from(io.read_binary(path, pb.NetParameter), str(path))
    cm.write_solverstate = lambda path, state: io.write_binary(state, path)
    cm.read_solverstate = lambda path: io.read_binary(path, pb.SolverState)
    blobs = types.ModuleType("scratchdet.caffe.blobs")
    blobs.array_to_blob = _array_to_blob
    blobs.blob_to_array = _blob_to_array
    return {"scratchdet.engine.net": net, "scratchdet.engine.caffemodel": cm, "scratchdet.caffe.blobs": blobs}


@pytest.fixture
def standin(monkeypatch):
    for name, mod in _fake_modules().items():
        monkeypatch.setitem(sys.modules, name, mod)
    monkeypatch.setattr(StandInNet, "scale", 1.0)


# -- data and solver files ---------------------------------------------------------------------------

def _record(i):
    rec = pb.AnnotatedDatum(type=pb.AnnotatedDatum.BBOX)
    rng = np.random.default_rng(i)
    rec.datum.data = cv2.imencode(".png", (rng.random((H, W, 3)) * 255).astype(np.uint8))[1].tobytes()
    rec.datum.encoded = True
    for k in range(i % 3):
        a = rec.annotation_group.add(group_label=1).annotation.add(instance_id=k)
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = 0.1 * k, 0.1, 0.1 * k + 0.5, 0.8
    return rec


@pytest.fixture(scope="module")
def lmdb_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("loopdata") / "tiny_lmdb"
    with LMDBWriter(path) as w:
        for i in range(7):
            w.put(record_key(i, f"{i}.png"), _record(i).SerializeToString())
    return path


NET = """name: "standin"
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TRAIN }}
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
  transform_param {{ mirror: true mean_value: 100 resize_param {{ resize_mode: WARP height: {h} width: {w} }}
    distort_param {{ brightness_prob: 0.5 brightness_delta: 32 }} }} }}
layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label" include {{ phase: TEST }}
  data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
  transform_param {{ mean_value: 100 resize_param {{ resize_mode: WARP height: {h} width: {w} }} }} }}
"""


def make_solver(tmp_path, lmdb_path, **overrides):
    net = tmp_path / "net.prototxt"
    net.write_text(NET.format(db=lmdb_path, batch=BATCH, h=H, w=W))
    fields = dict(net=str(net), base_lr=0.05, lr_policy="multistep", gamma=0.5, momentum=0.9,
                  weight_decay=0.01, iter_size=2, average_loss=3, display=1, max_iter=8, snapshot=4,
                  snapshot_prefix=str(tmp_path / "snaps" / "standin"), test_interval=4,
                  eval_type="classification", random_seed=5)
    stepvalue = overrides.pop("stepvalue", [3, 6])
    test_iter = overrides.pop("test_iter", [2])
    fields.update(overrides)
    sp = pb.SolverParameter(**fields)
    sp.stepvalue.extend(stepvalue)
    sp.test_iter.extend(test_iter)
    path = tmp_path / "solver.prototxt"
    path.write_text(text_format.MessageToString(sp))
    return path


def trainer(solver, **kw):
    from scratchdet.engine.train import Trainer
    kw.setdefault("quiet", True)
    kw.setdefault("workers", 0)
    return Trainer(solver, **kw)


def weights(t):
    return [p.tensor.detach().clone() for p in t.sgd.params], [h.clone() for h in t.sgd.history]


# -- tests ---------------------------------------------------------------------------------------------

def test_resume_from_half_way_is_bit_exact(standin, tmp_path, lmdb_path):
    solver = make_solver(tmp_path, lmdb_path)
    full = trainer(solver)
    res = full.solve()
    assert res.status == "done" and res.iter == 8
    assert [Path(s).name for s in res.snapshots] == ["standin_iter_4.caffemodel", "standin_iter_8.caffemodel"]
    w_full, h_full = weights(full)
    full_log = full.log.path.read_text()
    full.close()

    resumed = trainer(solver, snapshot=str(tmp_path / "snaps" / "standin_iter_4.solverstate"))
    assert resumed.iter == 4 and resumed.lr.current_step == 1
    resumed.solve()
    w_res, h_res = weights(resumed)
    for a, b in zip(w_full + h_full, w_res + h_res):
        assert torch.equal(a, b)
    # the instantaneous train outputs of iterations 4..7 are the same lines (same data, same weights)
    pat = re.compile(r"\] (Iteration [4-7], lr = .*|    Train net output #0: loss = .*)$", re.M)
    tail = resumed.log.path.read_text()
    assert pat.findall(full_log)[-8:] == pat.findall(tail)[-8:]
    resumed.close()
    # a fresh start from the weights alone (no history) differs: the resume really restored state
    fresh = trainer(solver, weights=str(tmp_path / "snaps" / "standin_iter_4.caffemodel"), max_iter=4)
    fresh.solve()
    assert not torch.equal(weights(fresh)[0][0], w_full[0])
    fresh.close()


PREFIX = re.compile(r"^([IWEF])(\d{4}) (\d{2}:\d{2}:\d{2}\.\d{6}) +(\d+) (\S+):(\d+)\] (.*)$")
LOSS = re.compile(r"Iteration (\d+)(?: \(([^ ]+) iter/s, ([^ ]+)s/(\d+) iters\))?, loss = (\S+)")
TRAIN_OUT = re.compile(r"Train net output #(\d+): (\S+) = ([\.\deE+-]+)")
TEST_OUT = re.compile(r"Test net output #(\d+): (\S+) = ([\.\deE+-]+)")
LR = re.compile(r"lr = ([-+]?[0-9]*\.?[0-9]+([eE]?[-+]?[0-9]+)?)")


def test_log_lines_parse_with_caffe_regexes_in_caffe_order(standin, tmp_path, lmdb_path):
    solver = make_solver(tmp_path, lmdb_path, display=2, base_lr=0.001, stepvalue=[3, 6], gamma=0.01)
    t = trainer(solver)
    t.solve()
    t.close()
    raw = t.log.path.read_text().splitlines()
    lines = []
    for line in raw:
        m = PREFIX.match(line)
        if m:
            lines.append(m.group(7))
        else:                               # only the solver parameter dump continues a line
            assert lines and lines[-1].startswith("Initializing solver from parameters")
    losses = [(int(m.group(1)), float(m.group(5))) for m in map(LOSS.search, lines) if m]
    assert [i for i, _ in losses] == [0, 2, 4, 6, 8]            # display 2, and the final loss line
    assert all(np.isfinite(v) for _, v in losses)
    outs = [m for m in map(TRAIN_OUT.search, lines) if m]
    assert len(outs) == 4 and all(o.group(1) == "0" and o.group(2) == "loss" for o in outs)
    assert all(re.search(r"loss = \S+ \(\* 1 = \S+ loss\)$", ln) for ln in lines if "Train net output" in ln)
    lrs = [float(m.group(1)) for m in map(LR.search, lines) if m]
    assert lrs == pytest.approx([0.001, 0.001, 1e-05, 1e-07])     # multistep at 3 and 6, gamma 0.01
    assert "Iteration 4, lr = 1e-05" in lines and "Iteration 6, lr = 1e-07" in lines
    assert "MultiStep Status: Iteration 3, step = 1" in lines and "MultiStep Status: Iteration 6, step = 2" in lines
    assert sum("gradient L2 norm = " in ln for ln in lines) == 4
    assert sum(re.search(r"speed = \S+ iter/s, \S+ images/s, ETA \d+:\d\d:\d\d", ln) is not None for ln in lines) == 3
    tests = [i for i, ln in enumerate(lines) if TEST_OUT.search(ln)]
    assert len(tests) == 3                                         # at 0 (test_initialization), 4 and 8
    assert not any(lines[i].endswith("loss)") for i in tests)      # "err" has no loss weight: no suffix
    # order at a test iteration: Testing net -> Test net output -> Iteration N, loss -> Train output -> lr
    k = lines.index("Iteration 4, Testing net (#0)")
    assert TEST_OUT.search(lines[k + 1]) and LOSS.search(lines[k + 2]) and TRAIN_OUT.search(lines[k + 3])
    assert any(ln.startswith("Snapshotting to binary proto file ") and ln.endswith("standin_iter_4.caffemodel") for ln in lines)
    assert any(ln.startswith("Snapshotting solver state to binary proto file ") and ln.endswith("_iter_8.solverstate")
               for ln in lines)
    assert lines[-1] == "Optimization Done."


def test_test_outputs_with_a_loss_weight_print_the_weighted_loss(standin, tmp_path, lmdb_path, monkeypatch):
    """Solver::Test: ``Test net output #0: err = v (* w = w*v loss)`` for a loss output (spec §5.5),
    in the training log and in ``scratchdet test``'s."""
    from scratchdet.engine.score import score
    monkeypatch.setattr(StandInNet, "loss_outputs",
                        lambda self, blobs: [("loss", 1.0, blobs["loss"])] if self.phase == TRAIN
                        else [("err", 2.5, blobs["err"])])
    solver = make_solver(tmp_path, lmdb_path, max_iter=0, test_interval=1)
    t = trainer(solver)
    t.solve()
    t.close()
    suffixed = re.compile(r"\]     Test net output #0: err = (\S+) \(\* 2\.5 = (\S+) loss\)$")
    found = [m for m in map(suffixed.search, t.log.path.read_text().splitlines()) if m]
    assert len(found) == 1
    v, weighted = float(found[0].group(1)), float(found[0].group(2))
    assert weighted == pytest.approx(2.5 * v, rel=1e-5) and v > 0
    assert TEST_OUT.search(found[0].string)                         # Caffe's parse_log.py still reads it
    lines = []
    score(str(tmp_path / "net.prototxt"), None, 2, eval_type="classification",
          log=lambda level, tag, msg: lines.append(msg), progress=False)
    outs = [m for m in (suffixed.search("] " + ln) for ln in lines if "Test net output" in ln)]
    assert len(outs) == 1 and outs[0] and float(outs[0].group(2)) == pytest.approx(2.5 * float(outs[0].group(1)), rel=1e-5)


def test_non_finite_loss_stops_the_run_as_nan(standin, tmp_path, lmdb_path, monkeypatch):
    monkeypatch.setattr(StandInNet, "scale", 1e30)
    solver = make_solver(tmp_path, lmdb_path, base_lr=1e6, momentum=0.0, test_interval=0, max_iter=50)
    t = trainer(solver)
    res = t.solve()
    t.close()
    assert res.status == "diverged" and res.exit_code == 3 and res.iter < 50
    text = t.log.path.read_text()
    m = re.search(r"^E\d{4} .*\] Training diverged at iteration (\d+): loss = (nan|inf)$", text, re.M)
    assert m and int(m.group(1)) == res.iter
    assert "Optimization Done." not in text


def test_sigint_snapshots_and_stops(standin, tmp_path, lmdb_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT)    # SIG_IGN when the suite runs in a background job
    solver = make_solver(tmp_path, lmdb_path, snapshot=0, test_interval=0, max_iter=20)
    t = trainer(solver)
    forward = StandInNet.forward
    calls = {"n": 0}

    def interrupting(self, inputs=None):
        calls["n"] += 1
        if calls["n"] == 5:                     # during iteration 2 (iter_size 2)
            signal.raise_signal(signal.SIGINT)
        return forward(self, inputs)

    monkeypatch.setattr(StandInNet, "forward", interrupting)
    res = t.solve()
    t.close()
    assert res.status == "interrupted" and res.iter == 3 and res.exit_code == 130
    assert [Path(s).name for s in res.snapshots] == ["standin_iter_3.caffemodel"]
    assert (tmp_path / "snaps" / "standin_iter_3.solverstate").is_file()
    assert signal.getsignal(signal.SIGINT) is before        # the trainer's handler is removed again


def test_test_net_takes_the_train_weights(standin, tmp_path, lmdb_path):
    solver = make_solver(tmp_path, lmdb_path, max_iter=0, test_interval=1)
    t = trainer(solver)
    with torch.no_grad():
        t.net.fc.blobs()[0].copy_(torch.tensor([1.0, 2.0, 3.0]))
    res = t.solve()
    t.close()
    assert torch.equal(t.test_nets[0].fc.blobs()[0], torch.tensor([1.0, 2.0, 3.0]))
    assert len(res.tests) == 1 and res.tests[0][0] == 0 and "err" in res.tests[0][1]
