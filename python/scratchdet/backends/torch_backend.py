"""The ``torch`` backend: this project's engine. One process on the CPU or one GPU; one process per
GPU (spawned here, or started by ``torchrun``) for multi-GPU runs."""
from __future__ import annotations

import os
import signal
import sys

from ..engine import distributed as D
from ..errors import ScratchDetError


def _trainer_kwargs(args) -> dict:
    from ..engine.fast import FastPath
    return dict(fast=FastPath.parse(getattr(args, "fast", None)), weights=args.weights, snapshot=args.snapshot, log_path=args.log, max_iter=args.max_iter,
                seed=args.seed, workers=args.workers, sigint_effect=args.sigint_effect,
                quiet=getattr(args, "quiet", False))


def _report(result) -> int:
    if result.status == "diverged":
        print(f"scratchdet train: training diverged at iteration {result.iter} (loss = {result.loss:g}); "
              "recorded as NAN", file=sys.stderr)
    elif result.status == "interrupted":
        print(f"scratchdet train: interrupted at iteration {result.iter}"
              + (f"; snapshot {result.snapshots[-1]}" if result.snapshots else ""), file=sys.stderr)
    return result.exit_code


def _run_one(solver: str, kwargs: dict, dist: D.Dist, factor: int, notes=()):
    from ..engine.train import Trainer
    trainer = Trainer(solver, dist=dist, iter_size_factor=factor, notes=tuple(notes), **kwargs)
    try:
        return trainer.solve()
    finally:
        trainer.close()


def _spawned(rank: int, devices: list[str], solver: str, kwargs: dict, factor: int, notes, queue) -> None:
    dist = D.Dist(rank, len(devices), devices[rank])
    try:
        D.init_group(dist)
        result = _run_one(solver, kwargs, dist, factor, notes)
        queue.put((rank, result.status, result.iter, result.loss, list(result.snapshots), None))
    except ScratchDetError as exc:
        queue.put((rank, "error", 0, float("nan"), [], str(exc)))
    finally:
        D.close_group()


def train(args) -> int:
    env = D.from_env()
    if env is not None:                                   # under torchrun: this process is one rank
        placement = D.place(args.gpu, present=None) if args.gpu else None
        factor = 1
        if placement is not None and placement.requested > env.world and placement.requested % env.world == 0:
            factor = placement.requested // env.world
        D.init_group(env)
        try:
            return _report(_run_one(args.solver, _trainer_kwargs(args), env, factor))
        finally:
            D.close_group()
    placement = D.place(args.gpu)
    notes = [placement.note] if placement.note else []
    if placement.note:
        print(f"scratchdet train: {placement.note}", file=sys.stderr)
    if placement.world == 1:
        return _report(_run_one(args.solver, _trainer_kwargs(args), D.Dist(0, 1, placement.devices[0]),
                                placement.iter_size_factor, notes))
    return _launch(args, placement, notes)


def _launch(args, placement: D.Placement, notes) -> int:
    import torch.multiprocessing as mp
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ["MASTER_PORT"] = str(D.free_port())
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    procs = mp.start_processes(_spawned, args=(placement.devices, args.solver, _trainer_kwargs(args),
                                              placement.iter_size_factor, notes, queue),
                               nprocs=placement.world, join=False, start_method="spawn")
    # Ctrl-C reaches every rank; they agree on the iteration to stop at. The launcher waits.
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        while not procs.join():
            pass
    except Exception as exc:  # a rank died without reporting (killed, out of memory)
        raise ScratchDetError(f"multi-GPU training failed: {str(exc).strip().splitlines()[-1]}") from None
    finally:
        signal.signal(signal.SIGINT, old)
    results = {}
    while not queue.empty():
        rank, status, it, loss, snaps, err = queue.get()
        results[rank] = (status, it, loss, snaps, err)
    errors = [r[4] for r in results.values() if r[0] == "error"]
    if errors:
        raise ScratchDetError(errors[0])
    if 0 not in results:
        raise ScratchDetError("multi-GPU training: rank 0 reported no result")
    from ..engine.train import TrainResult
    status, it, loss, snaps, _ = results[0]
    return _report(TrainResult(status, it, loss, snapshots=snaps))


def test(args) -> int:
    from ..caffe import glog
    from ..engine.score import score
    placement = D.place(args.gpu)
    device = placement.devices[0]
    with glog.Logger(args.log, quiet=getattr(args, "quiet", False)) as log:
        out = score(args.model, args.weights, args.iterations, device=device, eval_type=args.eval_type,
                    ap_version=args.ap_version, log=log.log, workers=args.workers,
                    show_per_class=args.per_class, fold=not getattr(args, "no_fold", False))
    for name, value in out.items():
        print(f"{name} = {glog.num(value)}")
    return 0
