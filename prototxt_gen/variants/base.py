"""The records a paper table fills in: ``Arch`` (what ``build`` makes) and ``Variant`` (one trainable
configuration: net, data set, schedule, batch, the paper number it reproduces)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from scratchdet import paper
from scratchdet.datasets import DataSpec

from ..backbones import ResNetSpec, VGGSpec
from ..solver import Schedule


@dataclass(frozen=True)
class Arch:
    """What ``build`` makes: a backbone (VGG or ResNet spec), the head's BatchNorm switch, SSD's
    L2 Normalize scales per source (None: no Normalize), the input size, and the detection map
    sizes the net must have (checked when building; None: not fixed)."""
    vgg: VGGSpec | None = None
    resnet: ResNetSpec | None = None
    bn_head: bool = True
    normalizations: tuple | None = None
    input_size: int = 300
    maps: tuple | None = (38, 19, 10, 5, 3, 1)
    steps: tuple | None = (8, 16, 32, 64, 100, 300)   # None: input size / map size
    aspect_ratios: tuple = ((2,), (2, 3), (2, 3), (2, 3), (2,), (2,))
    width: float = 1.0
    sources: int = 6
    # demo and mini-paper nets: (input_size, width, sources) -> this net at that scale, so the
    # input size, width and source count may be overridden; None: a paper net, fixed at 300x300
    rescale: Callable[[int, float, int], "Arch"] | None = None
    head_small_init: bool = False   # head convs without BN: gaussian 0.01 weights instead of xavier
    unit_strides: bool = False      # write stride: 1 where the authors' scripts do (released profile)

    @property
    def scalable(self) -> bool:
        return self.rescale is not None


@dataclass(frozen=True)
class Variant:
    id: str
    title: str
    table: str                # "Table 1", "Table 2", "Figure 3", "ScratchDet300", "Root-ResNet-18", "SSD300", "demo"
    cell: str                 # the row / cell / configuration in words
    data: DataSpec
    paper_key: str | None     # key into scratchdet.paper.RESULTS; None: no paper number
    schedule: Schedule
    profile: str              # "paper", "released" (the authors' scripts), "ssd" (SSD's), "demo"
    arch: Arch
    batch_per_gpu: int
    gpus: int
    iter_size: int = 1
    pretrained: str | None = None   # weights the run needs (None: from scratch)
    test_batch: int = 8
    test_interval: int = 5000
    snapshot: int = 5000
    display: int = 20
    debug_info: bool = False
    random_seed: int | None = None
    analogue: str | None = None     # demo nets: the paper key they mimic at toy scale
    twin: str | None = None         # the same net under the other profile (ScratchDet300: paper <-> released)
    notes: tuple = field(default_factory=tuple)

    @property
    def dataset(self) -> str:
        return self.data.folder

    @property
    def base_lr(self) -> float:
        return self.schedule.base_lr

    @property
    def batch(self) -> int:
        """Images per solver step: per-GPU batch x GPUs x iter_size."""
        return self.batch_per_gpu * self.gpus * self.iter_size

    @property
    def paper_result(self):
        return paper.RESULTS.get(self.paper_key) if self.paper_key else None

    def describe(self) -> dict:
        """The fields ``gen --list --json`` prints."""
        r = self.paper_result
        return {
            "id": self.id, "title": self.title, "table": self.table, "cell": self.cell,
            "dataset": self.dataset, "paper_key": self.paper_key,
            "paper_metric": r.metric if r else None,
            "paper_value": ("NAN" if r.is_nan else r.value) if r else None,
            "paper_source": r.source if r else None,
            "base_lr": self.base_lr, "lr_policy": "multistep", "stepvalue": list(self.schedule.stepvalue),
            "gamma": self.schedule.gamma, "max_iter": self.schedule.max_iter,
            "schedule_source": self.schedule.source, "profile": self.profile,
            "batch": self.batch, "batch_per_gpu": self.batch_per_gpu, "gpus": self.gpus,
            "iter_size": self.iter_size, "pretrained": self.pretrained, "analogue": self.analogue,
            "notes": list(self.notes),
        }
