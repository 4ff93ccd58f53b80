"""Caffe's training loop (``Solver::Solve`` / ``Step``, caffe-ssd-spec §5.1) on the torch engine.

Per iteration: clear diffs; test every ``test_interval`` (before the update; at 0 only with
``test_initialization``); ``iter_size`` forward/backward passes; the smoothed loss over
``average_loss`` values; the display lines; the SGD update; the iteration count; a snapshot every
``snapshot`` iterations. After the loop: the final snapshot, a last loss line and a last test as
Caffe has them, then ``Optimization Done.``

Test passes (``engine/score.py``, shared with ``scratchdet test``) aggregate the DetectionEvaluate
rows of every test-net output into mAP exactly as ``Solver::TestDetection`` does (spec §2.6). Besides Caffe's lines, the log gets the gradient L2
norm and the speed at every display, and a non-finite loss stops the run (recorded as NAN).
"""
from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from google.protobuf import text_format

from ..caffe import glog, io
from ..caffe.netstate import TEST, TRAIN
from ..caffe.schema import pb
from ..errors import EXIT_DIVERGED, EXIT_INTERRUPTED, ScratchDetError
from .debug_info import DebugPass
from .distributed import Dist, broadcast_from_root, reduce_gradients
from .fast import FastPath, set_tf32
from .malloc import keep_freed_memory
from .score import data_layers, images_per_forward, run_test
from .solver import SGD, LearningRate, check_solver


@dataclass
class TrainResult:
    status: str                          # "done" | "diverged" | "interrupted"
    iter: int
    loss: float = float("nan")
    tests: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return {"done": 0, "diverged": EXIT_DIVERGED, "interrupted": EXIT_INTERRUPTED}[self.status]

    @property
    def last_map(self) -> float | None:
        for _it, outputs in reversed(self.tests):
            if outputs:
                return next(iter(outputs.values()))
        return None


# -- nets from the solver ---------------------------------------------------------------------------

def _read_net_file(path: str, what: str):
    if not Path(path).is_file():
        raise ScratchDetError(f"solver: {what} {path!r} does not exist (paths are relative to the "
                              f"directory training runs from, as in Caffe)")
    return io.read_net(path)


def train_net_param(sp) -> tuple[object, str]:
    """The train net's NetParameter and a name for messages (Solver::InitTrainNet)."""
    given = [f for f in ("train_net", "train_net_param", "net", "net_param") if sp.HasField(f)]
    if len(given) != 1:
        raise ScratchDetError("solver: give exactly one of train_net, train_net_param, net, net_param "
                              f"(got {', '.join(given) or 'none'})")
    f = given[0]
    if f in ("train_net", "net"):
        path = getattr(sp, f)
        return _read_net_file(path, f), path
    return getattr(sp, f), f


def test_net_params(sp) -> list[tuple[object, str]]:
    """Solver::InitTestNets: test_net_param, then test_net files, then instances of the generic
    net for the remaining ``test_iter`` entries."""
    nets = [(p, f"test_net_param[{i}]") for i, p in enumerate(sp.test_net_param)]
    nets += [(_read_net_file(path, "test_net"), path) for path in sp.test_net]
    generic = len(sp.test_iter) - len(nets)
    if generic > 0:
        if sp.HasField("net"):
            nets += [(_read_net_file(sp.net, "net"), sp.net)] * generic
        elif sp.HasField("net_param"):
            nets += [(sp.net_param, "net_param")] * generic
        else:
            raise ScratchDetError(f"solver: {len(sp.test_iter)} test_iter values but {len(nets)} test nets")
    elif generic < 0:
        raise ScratchDetError(f"solver: {len(nets)} test nets need as many test_iter values (got {len(sp.test_iter)})")
    return nets


def _probe_writable(folder: Path, what: str) -> None:
    """Caffe checks at start-up that snapshots can be written; so do we, before any training."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ScratchDetError(f"solver: {what} folder {folder} cannot be created ({exc.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ScratchDetError(f"solver: {what} folder {folder} is not writable")


def _state(states, i):
    return states[i] if i < len(states) else pb.NetState()


def build_net(net_param, phase: int, state, source: str, seed: int):
    from .net import Net
    return Net(net_param, phase, level=state.level, stages=tuple(state.stage), source=source, seed=seed)


@torch.no_grad()
def share_trained_layers(src, dst) -> None:
    """Net::ShareTrainedLayersWith: the test net takes the train net's blobs for every layer with
    the same name (values copied before each test pass)."""
    by_name = {layer.name: layer for layer in src.layers}
    for layer in dst.layers:
        other = by_name.get(layer.name)
        if other is None:
            continue
        theirs, ours = other.blobs(), layer.blobs()
        if len(theirs) != len(ours):
            raise ScratchDetError(f"layer {layer.name!r}: {len(ours)} blobs in the test net, {len(theirs)} in the train net")
        for k, (a, b) in enumerate(zip(theirs, ours)):
            if a.shape != b.shape:
                raise ScratchDetError(f"layer {layer.name!r} blob {k}: shape {tuple(b.shape)} in the test net, "
                                      f"{tuple(a.shape)} in the train net")
            b.data.copy_(a.data)


# -- the solver ---------------------------------------------------------------------------------------

class Trainer:
    """One ``caffe train`` run: the solver file, optional weights or solverstate to start from."""

    def __init__(self, solver_path, *, weights: str | None = None, snapshot: str | None = None,
                 log_path=None, max_iter: int | None = None, seed: int | None = None,
                 device: str = "cpu", dist: Dist | None = None, iter_size_factor: int = 1,
                 workers: int | None = None, sigint_effect: str = "snapshot", quiet: bool = False,
                 notes: tuple[str, ...] = (), fast: FastPath | None = None):
        keep_freed_memory()
        self.solver_path = str(solver_path)
        sp = io.read_solver(solver_path)
        if max_iter is not None:
            sp.max_iter = max_iter
        if iter_size_factor > 1:
            sp.iter_size = sp.iter_size * iter_size_factor
        check_solver(sp, self.solver_path)
        if weights and snapshot:
            raise ScratchDetError("give either --weights or --snapshot, not both (as caffe train)")
        self.sp = sp
        self.dist = dist or Dist(0, 1, device)
        self.device = torch.device(self.dist.device)
        self.sigint_effect = sigint_effect
        if seed is None:
            seed = int(sp.random_seed) if sp.random_seed >= 0 else int.from_bytes(os.urandom(4), "little")
        self.seed = seed

        if self.dist.is_root and sp.snapshot_prefix and (sp.snapshot > 0 or sp.snapshot_after_train):
            _probe_writable(Path(sp.snapshot_prefix).parent, "snapshot_prefix")
        if log_path is None and sp.snapshot_prefix:
            log_path = Path(sp.snapshot_prefix).parent / "train.log"
        if self.dist.is_root:
            self.log = glog.Logger(log_path, quiet=quiet, append=bool(snapshot))
        else:
            self.log = glog.NullLogger()
        self.log.info(glog.SOLVER, glog.solver_block_message(text_format.MessageToString(sp).rstrip()))
        for note in notes:
            self.log.info(glog.OURS, note)
        self.log.info(glog.OURS, f"Random seed: {seed}; device: {self.dist.device}"
                      + (f"; rank {self.dist.rank} of {self.dist.world}" if self.dist.active else ""))
        torch.manual_seed(seed)

        param, source = train_net_param(sp)
        self.log.info(glog.TRAIN_NET, glog.train_net_message(source))
        self.net = build_net(param, TRAIN, sp.train_state, source, seed)
        self.test_nets = []
        if self.dist.is_root:
            for i, (tparam, tsource) in enumerate(test_net_params(sp)):
                self.log.info(glog.TEST_NET, glog.test_net_message(i, tsource))
                self.test_nets.append(build_net(tparam, TEST, _state(sp.test_state, i), tsource, seed))
        self.fast = fast or FastPath()
        if not self.fast.faithful:
            self.log.info(glog.OURS, f"Fast path (not Caffe's arithmetic): {self.fast.describe()}")
        if self.device.type == "cuda":
            set_tf32(self.fast.tf32)
        for net in [self.net] + self.test_nets:
            net.to(self.device)
            if not self.fast.faithful:
                net.set_fast(self.fast)
            for layer in data_layers(net):
                layer.device = self.device
                layer.configure(seed=seed, rank=self.dist.rank, world=self.dist.world, workers=workers)

        self._share_cores_with_workers()
        for j, net in enumerate(self.test_nets):
            self._check_test_coverage(j, net)
        self.sgd = SGD(self.net.params(), sp)
        self.lr = LearningRate(sp)
        self.iter = 0
        if weights:
            self._copy_weights(weights)
        if snapshot:
            self._restore(snapshot)
        if self.dist.active:
            broadcast_from_root([p.tensor for p in self.sgd.params])
        self.batch = images_per_forward(self.net)
        self._losses: list[float] = []
        self._smoothed = 0.0
        self._stop_request: str | None = None
        self._hup_request = False

    def _share_cores_with_workers(self) -> None:
        """On the CPU, torch's own threads and the data workers share the cores: with more busy
        threads than cores, torch's spinning threads wait on each other and a step takes several
        times longer. Unless OMP_NUM_THREADS says otherwise, torch keeps the cores the workers leave."""
        if self.device.type != "cpu" or "OMP_NUM_THREADS" in os.environ:
            return
        workers = max((layer.workers for layer in data_layers(self.net)), default=0)
        if workers <= 0:
            return
        threads = max(1, (os.cpu_count() or 1) - workers)
        if threads < torch.get_num_threads():
            self._torch_threads = torch.get_num_threads()       # close() gives them back
            torch.set_num_threads(threads)
            self.log.info(glog.OURS, f"{threads} torch thread(s) beside {workers} data worker(s) on {os.cpu_count()} cores")

    def _check_test_coverage(self, j: int, net) -> None:
        """Each test pass starts at the first record; say when test_iter x batch is not one pass."""
        layers = data_layers(net)
        if not layers or j >= len(self.sp.test_iter):
            return
        seen, total = self.sp.test_iter[j] * layers[0].batch_size, len(layers[0].db)
        if seen < total:
            self.log.warning(glog.OURS, f"Test net #{j}: test_iter {self.sp.test_iter[j]} x batch {layers[0].batch_size} "
                                        f"= {seen} images; the test set has {total}: the rest is never scored")
        elif seen > total:
            self.log.warning(glog.OURS, f"Test net #{j}: test_iter {self.sp.test_iter[j]} x batch {layers[0].batch_size} "
                                        f"= {seen} images; the test set has {total}: {seen - total} are scored twice")

    # -- starting points --------------------------------------------------------------------------
    def _copy_weights(self, weights: str) -> None:
        from .caffemodel import load_caffemodel
        for path in [w for w in weights.split(",") if w]:
            self.log.info(glog.CAFFE_TOOL, glog.finetune_message(path))
            for net in [self.net] + self.test_nets:
                load_caffemodel(net, path)

    def _restore(self, path: str) -> None:
        from .caffemodel import load_caffemodel, read_solverstate
        self.log.info(glog.RESTORE, glog.restore_message(path))
        state = read_solverstate(path)
        learned = state.learned_net
        if learned and not Path(learned).is_file() and (Path(path).parent / Path(learned).name).is_file():
            learned = str(Path(path).parent / Path(learned).name)   # moved together with its solverstate
        if not learned or not Path(learned).is_file():
            raise ScratchDetError(f"{path}: its weights file {state.learned_net!r} (learned_net) does not exist")
        load_caffemodel(self.net, learned)
        self.sgd.restore(state, self.lr, path)
        self.iter = int(state.iter)
        for layer in data_layers(self.net):
            layer.seek(self.iter * self.sp.iter_size * layer.batch_size)

    # -- snapshots ----------------------------------------------------------------------------------
    def snapshot(self) -> str | None:
        if not self.dist.is_root:
            return None
        from .caffemodel import save_caffemodel, write_solverstate
        prefix = self.sp.snapshot_prefix
        if not prefix:
            self.log.warning(glog.SNAPSHOT_MODEL, "No snapshot_prefix: snapshot skipped")
            return None
        model = f"{prefix}_iter_{self.iter}.caffemodel"
        state = f"{prefix}_iter_{self.iter}.solverstate"
        Path(model).parent.mkdir(parents=True, exist_ok=True)
        self.log.info(glog.SNAPSHOT_MODEL, glog.snapshot_message(model))
        save_caffemodel(self.net, model)
        self.log.info(glog.SNAPSHOT_STATE, glog.snapshot_state_message(state))
        write_solverstate(state, self.sgd.state_proto(self.iter, model, self.lr))
        return model

    # -- test ----------------------------------------------------------------------------------------
    def test_all(self) -> dict[str, float]:
        results: dict[str, float] = {}
        if not self.dist.is_root:
            return results
        for j, net in enumerate(self.test_nets):
            self.log.info(glog.TESTING, glog.testing_message(self.iter, j))
            share_trained_layers(self.net, net)
            out = run_test(net, self.sp.test_iter[j], self.sp.eval_type, self.sp.ap_version,
                           log=self.log.log, show_per_class=self.sp.show_per_class_result,
                           compute_loss=self.sp.test_compute_loss, debug_info=self.sp.debug_info)
            for name, value in out.items():
                results[name if len(self.test_nets) == 1 else f"{name}#{j}"] = value
        return results

    # -- the loop ----------------------------------------------------------------------------------------
    def _update_smoothed(self, loss: float, start_iter: int) -> None:
        n = self.sp.average_loss
        if len(self._losses) < n:
            self._losses.append(loss)
            size = len(self._losses)
            self._smoothed = (self._smoothed * (size - 1) + loss) / size
        else:
            idx = (self.iter - start_iter) % n
            self._smoothed += (loss - self._losses[idx]) / n
            self._losses[idx] = loss

    def _display(self, blobs, elapsed: float, iters: int) -> None:
        log = self.log
        log.info(glog.LOSS, glog.loss_message(self.iter, self._smoothed))
        weights = {name: w for name, w, _t in self.net.loss_outputs(blobs)}
        k = 0
        for name in self.net.output_names:
            values = blobs[name].detach().float().reshape(-1).cpu().tolist()
            w = weights.get(name, 0.0)
            for v in values:
                log.info(glog.TRAIN_OUTPUT, glog.output_message("Train", k, name, v, w))
                k += 1
        log.info(glog.OURS, glog.grad_norm_message(self.iter, self._grad_norm))
        if iters > 0 and elapsed > 0:
            its = iters / elapsed
            imgs = its * self.batch * self.sp.iter_size * self.dist.world
            left = max(self.sp.max_iter - self.iter, 0) / its
            log.info(glog.OURS, glog.speed_message(self.iter, its, imgs, left))

    def _install_signals(self):
        if threading_main() is False:
            return None

        def on_int(signum, frame):
            if self._stop_request is not None:   # a second Ctrl-C: stop now
                raise KeyboardInterrupt
            self._stop_request = self.sigint_effect

        def on_hup(signum, frame):
            self._hup_request = True

        old = {signal.SIGINT: signal.signal(signal.SIGINT, on_int)}
        if hasattr(signal, "SIGHUP"):
            old[signal.SIGHUP] = signal.signal(signal.SIGHUP, on_hup)
        return old

    def solve(self) -> TrainResult:
        sp = self.sp
        log = self.log
        result = TrainResult("done", self.iter)
        log.info(glog.SOLVING, glog.solving_message(self.net_name()))
        log.info(glog.LR_POLICY, glog.lr_policy_message(sp.lr_policy))
        old_handlers = self._install_signals()
        start_iter = self.iter
        stop_iter = sp.max_iter
        self._losses, self._smoothed = [], 0.0
        last_snap = None
        tick, tick_iter = time.perf_counter(), self.iter
        try:
            while self.iter < stop_iter:
                self.sgd.zero_diffs()
                if sp.test_interval > 0 and self.iter % sp.test_interval == 0 and (self.iter > 0 or sp.test_initialization):
                    t0 = time.perf_counter()
                    result.tests.append((self.iter, self.test_all()))
                    tick += time.perf_counter() - t0     # the test's time is not training speed
                loss = 0.0
                blobs = None
                # Caffe turns the net's debug_info on for display iterations only
                debugging = sp.debug_info and bool(sp.display) and self.iter % sp.display == 0
                for _ in range(sp.iter_size):
                    debug = DebugPass(self.net, log.log) if debugging else None
                    blobs = debug.forward() if debug else self.net.forward()
                    total = self.net.total_loss(blobs)
                    total.backward()
                    if debug:
                        debug.backward()
                    loss += float(total.detach())
                loss /= sp.iter_size
                stop_flag = 1.0 if self._stop_request is not None else 0.0
                if self.dist.active:
                    bad, stop_all = reduce_gradients([p.tensor for p in self.sgd.params if p.learnable],
                                                     [0.0 if math.isfinite(loss) else 1.0, stop_flag], self.dist.world)
                    diverged = bad > 0
                    if stop_all > 0 and self._stop_request is None:
                        self._stop_request = self.sigint_effect
                else:
                    diverged = not math.isfinite(loss)
                self._update_smoothed(loss, start_iter)
                result.loss = loss
                if diverged:
                    log.error(glog.OURS, glog.diverged_message(self.iter, loss if not math.isfinite(loss) else float('nan')))
                    result.status = "diverged"
                    break
                displaying = bool(sp.display) and self.iter % sp.display == 0
                norm = self.sgd.grad_norm() if displaying or sp.clip_gradients >= 0 else None
                if displaying:
                    # the gradient of the mean loss over the effective batch (Figure 1's quantity)
                    self._grad_norm = norm / sp.iter_size
                    now = time.perf_counter()
                    self._display(blobs, now - tick, self.iter - tick_iter)
                    tick, tick_iter = now, self.iter
                rate = self.lr.rate(self.iter, self._smoothed, log=lambda m: log.info(glog.MULTISTEP, m))
                if displaying:
                    log.info(glog.LR, glog.lr_message(self.iter, rate))
                info = self.sgd.apply_update(rate, norm)
                for m in info.messages:
                    log.info(glog.CLIP, m)
                if self.dist.active:
                    broadcast_from_root([p.tensor for p in self.sgd.params if not p.learnable])
                self.iter += 1
                result.iter = self.iter
                snap_now = (sp.snapshot and self.iter % sp.snapshot == 0) or self._hup_request
                self._hup_request = False
                if snap_now:
                    last_snap = self.snapshot()
                    result.snapshots.append(last_snap)
                if self._stop_request is not None:
                    if self._stop_request == "snapshot" and not snap_now:
                        result.snapshots.append(self.snapshot())
                    if self._stop_request != "none":
                        log.info(glog.SOLVER, glog.interrupted_message(self.iter))
                        result.status = "interrupted"
                        break
                    self._stop_request = None
            if result.status == "done":
                if sp.snapshot_after_train and (not sp.snapshot or self.iter % sp.snapshot != 0):
                    result.snapshots.append(self.snapshot())
                # as Caffe, also when no step was taken (max_iter reached already): this forward
                # moves BatchNorm's statistics, which the test below then uses
                if sp.display and self.iter % sp.display == 0 and self.dist.is_root:
                    # Caffe's net keeps the debug_info flag of the last step for this forward
                    last_debug = sp.debug_info and stop_iter > start_iter and (self.iter - 1) % sp.display == 0
                    with torch.no_grad():
                        blobs = DebugPass(self.net, log.log).forward() if last_debug else self.net.forward()
                        loss = float(self.net.total_loss(blobs))
                    self._update_smoothed(loss, start_iter)
                    log.info(glog.FINAL_LOSS, glog.loss_message(self.iter, self._smoothed))
                if sp.test_interval and self.iter % sp.test_interval == 0:
                    result.tests.append((self.iter, self.test_all()))
                log.info(glog.DONE, glog.done_message())
        finally:
            if old_handlers:
                for sig, handler in old_handlers.items():
                    signal.signal(sig, handler)
            for net in self.test_nets:
                for layer in data_layers(net):
                    layer.close()
            # the train net's loader (and its worker processes) lives on for the next solve(): close() ends it
        result.snapshots = [s for s in result.snapshots if s]
        return result

    def net_name(self) -> str:
        name = getattr(self.net, "name", "") or ""
        return name if isinstance(name, str) else ""

    def close(self) -> None:
        for net in [self.net] + self.test_nets:
            for layer in data_layers(net):
                layer.close()
        if getattr(self, "_torch_threads", None):
            torch.set_num_threads(self._torch_threads)
            self._torch_threads = None
        self.log.close()


def threading_main() -> bool:
    import threading
    return threading.current_thread() is threading.main_thread()
