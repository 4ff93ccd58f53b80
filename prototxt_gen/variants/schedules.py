"""The solver schedules the tables share, each with where it comes from."""
from __future__ import annotations

from ..solver import Schedule


def ssd_schedule(lr: float) -> Schedule:
    return Schedule(lr, (80000, 100000, 120000), 120000,
                    "SSD300's solver (caffe-ssd-spec §5.6) at the cell's base lr, as DESIGN.md §3 decides")


TABLE2_SCHEDULE = Schedule(0.05, (45000, 75000, 95000), 100000,
                           "paper §4.2.2: 0.05 for 45k iterations, then /10 for 30k, 20k and 5k")
RELEASED_VOC_SCHEDULE = Schedule(0.05, (40000, 75000, 90000, 100000), 100000,
                                 "released caffe/ssd_pascal.py solver (scratchdet-released-code.md §7)")
RELEASED_COCO_SCHEDULE = Schedule(0.05, (150000, 250000, 310000, 320000), 325000,
                                  "released caffe/ssd_coco.py solver (scratchdet-released-code.md §7)")


def short_schedule(lr: float, max_iter: int, source: str) -> Schedule:
    """The toy nets' multistep: the base lr for 2/3 of the run, then /10 twice."""
    return Schedule(lr, (round(max_iter * 2 / 3), round(max_iter * 11 / 12)), max_iter, source)
