"""solver.prototxt: Caffe's SGD with a multistep schedule, as SSD's scripts write it."""
from __future__ import annotations

from dataclasses import dataclass, field

from scratchdet.caffe.schema import pb


@dataclass(frozen=True)
class Schedule:
    """A multistep learning-rate schedule and where it comes from."""
    base_lr: float
    stepvalue: tuple
    max_iter: int
    source: str
    gamma: float = 0.1

    def lr_at(self, iteration: int) -> float:
        """Caffe's multistep rate at an iteration (the step advances once iter >= stepvalue)."""
        k = sum(1 for s in self.stepvalue if iteration >= s)
        return self.base_lr * self.gamma ** k


@dataclass(frozen=True)
class SolverSpec:
    train_net: str
    test_net: str | None
    test_iter: int
    test_interval: int
    schedule: Schedule
    iter_size: int
    snapshot: int
    snapshot_prefix: str
    display: int = 20
    average_loss: int = 10
    momentum: float = 0.9
    weight_decay: float = 0.0005
    ap_version: str = "11point"
    debug_info: bool = False
    random_seed: int | None = None
    extra: dict = field(default_factory=dict)


def solver_param(spec: SolverSpec) -> pb.SolverParameter:
    s = spec.schedule
    sp = pb.SolverParameter(
        train_net=spec.train_net, base_lr=s.base_lr, display=spec.display, max_iter=s.max_iter,
        lr_policy="multistep", gamma=s.gamma, momentum=spec.momentum, weight_decay=spec.weight_decay,
        snapshot=spec.snapshot, snapshot_prefix=spec.snapshot_prefix, solver_mode=pb.SolverParameter.GPU,
        device_id=0, debug_info=spec.debug_info, snapshot_after_train=True, average_loss=spec.average_loss,
        iter_size=spec.iter_size, type="SGD")
    sp.stepvalue.extend(s.stepvalue)
    if spec.test_net:
        sp.test_net.append(spec.test_net)
        sp.test_iter.append(spec.test_iter)
        sp.test_interval = spec.test_interval
        sp.eval_type = "detection"
        sp.ap_version = spec.ap_version
        sp.test_initialization = False
    if spec.random_seed is not None:
        sp.random_seed = spec.random_seed
    for key, value in spec.extra.items():
        setattr(sp, key, value)
    return sp
