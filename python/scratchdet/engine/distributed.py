"""Multi-GPU training with Caffe's semantics (caffe-ssd-spec §8, DESIGN §3).

Each process (one per GPU) runs its own copy of the train net with the prototxt's per-GPU
``batch_size`` and its own BatchNorm statistics (no synchronisation in the forward pass). After
the backward passes, gradients are summed over processes and scaled by 1/#GPUs (P2PSync's
reduction), every process applies the same update, and the root's parameter blobs - BatchNorm
statistics included - are broadcast, as the root's broadcast at the start of each iteration does.
Testing, display and snapshots happen on rank 0.

When fewer GPUs are present than the job asks for, the per-GPU batch is kept and ``iter_size`` is
raised so the effective batch (batch_size x GPUs x iter_size) is unchanged.
"""
from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as tdist

from ..errors import ScratchDetError


@dataclass
class Placement:
    """Where a run goes: ``devices`` (one per process; ``"cpu"`` or ``"cuda:i"``), the factor on
    ``iter_size`` that makes up for missing GPUs, and a note for the log."""
    devices: list[str]
    requested: int
    iter_size_factor: int = 1
    note: str = ""

    @property
    def world(self) -> int:
        return len(self.devices)


@dataclass
class Dist:
    """This process's place in a multi-process run."""
    rank: int = 0
    world: int = 1
    device: str = "cpu"

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def parse_gpu_flag(flag: str | None) -> list[int] | str | None:
    """``None`` (not given), ``"cpu"``, ``"all"`` or a list of device ids."""
    if flag is None:
        return None
    flag = flag.strip().lower()
    if flag in ("cpu", "all"):
        return flag
    try:
        ids = [int(x) for x in flag.split(",") if x.strip() != ""]
    except ValueError:
        raise ScratchDetError(f"--gpu {flag!r}: expected cpu, all, or device ids like 0,1,2,3") from None
    if not ids or any(i < 0 for i in ids) or len(set(ids)) != len(ids):
        raise ScratchDetError(f"--gpu {flag!r}: expected distinct non-negative device ids like 0,1,2,3")
    return ids


def _largest_divisor_at_most(n: int, k: int) -> int:
    return max(d for d in range(1, min(n, k) + 1) if n % d == 0)


def place(flag: str | None, present: int | None = None) -> Placement:
    """Decide the processes for ``--gpu flag`` given ``present`` CUDA devices (detected if None).

    No flag: GPU 0 when there is one, else the CPU. ``cpu``: the CPU, one process. A list or
    ``all``: one process per GPU; with fewer GPUs than asked, the largest count that divides the
    request runs and iter_size grows by the rest, so the effective batch is exactly the asked one.
    """
    if present is None:
        present = torch.cuda.device_count() if torch.cuda.is_available() else 0
    want = parse_gpu_flag(flag)
    if want is None:
        return Placement(["cuda:0"] if present else ["cpu"], 1)
    if want == "cpu":
        return Placement(["cpu"], 1)
    if want == "all":
        if not present:
            return Placement(["cpu"], 1, note="--gpu all: no GPU found, training on the CPU")
        return Placement([f"cuda:{i}" for i in range(present)], present)
    n = len(want)
    usable = [i for i in want if i < present]
    if len(usable) == n:
        return Placement([f"cuda:{i}" for i in want], n)
    if not present:
        note = (f"--gpu {flag}: no GPU found; training on the CPU with iter_size x{n} "
                f"(per-GPU batch kept, effective batch unchanged)")
        return Placement(["cpu"], n, n, note)
    ids = usable if usable else list(range(present))
    w = _largest_divisor_at_most(n, len(ids))
    factor = n // w
    note = (f"--gpu {flag}: {present} GPU(s) present; training on {w} with iter_size x{factor} "
            f"(per-GPU batch kept, effective batch unchanged)")
    return Placement([f"cuda:{i}" for i in ids[:w]], n, factor, note)


# -- inside a process group ------------------------------------------------------------------------

def from_env() -> Dist | None:
    """The process's rank under ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK set), else None."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = f"cuda:{local}" if torch.cuda.is_available() and torch.cuda.device_count() > local else "cpu"
    return Dist(rank, world, device)


def init_group(d: Dist) -> None:
    if not d.active or (tdist.is_available() and tdist.is_initialized()):
        return
    backend = "nccl" if d.device.startswith("cuda") else "gloo"
    if d.device.startswith("cuda"):
        torch.cuda.set_device(torch.device(d.device))
    # test passes run on rank 0 alone while the others wait: allow long ones
    tdist.init_process_group(backend, rank=d.rank, world_size=d.world, timeout=datetime.timedelta(hours=3))


def close_group() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@torch.no_grad()
def reduce_gradients(tensors: list[torch.Tensor], extras: list[float], world: int) -> list[float]:
    """Sum the gradients of ``tensors`` over all processes and scale by 1/world (P2PSync); the
    ``extras`` (loss, flags) travel in the same buffer and come back summed."""
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in tensors]
    device = tensors[0].device if tensors else torch.device("cpu")
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor(extras, dtype=grads[0].dtype if grads else torch.float32,
                                                                     device=device)])
    tdist.all_reduce(flat, op=tdist.ReduceOp.SUM)
    n = flat.numel() - len(extras)
    flat[:n].mul_(1.0 / world)
    offset = 0
    for t, g in zip(tensors, grads):
        k = g.numel()
        if t.grad is None:
            t.grad = flat[offset:offset + k].view_as(t).clone()
        else:
            t.grad.copy_(flat[offset:offset + k].view_as(t))
        offset += k
    return [float(v) for v in flat[n:].tolist()]


@torch.no_grad()
def broadcast_from_root(tensors: list[torch.Tensor]) -> None:
    """Copy rank 0's values of ``tensors`` (parameters, BatchNorm statistics) to every process."""
    if not tensors:
        return
    flat = torch.cat([t.detach().reshape(-1) for t in tensors])
    tdist.broadcast(flat, src=0)
    offset = 0
    for t in tensors:
        k = t.numel()
        t.data.copy_(flat[offset:offset + k].view_as(t))
        offset += k


def all_true(flag: bool, device) -> bool:
    t = torch.tensor([0.0 if flag else 1.0], device=device)
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return float(t.item()) == 0.0


def barrier() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.barrier()


def check_world_batch(world: int) -> None:
    if world < 1:
        raise ScratchDetError(f"distributed: world size {world} < 1")
