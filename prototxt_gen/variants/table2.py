"""Table 2: SSD300 with ResNet-18 on VOC07, the first conv with or without downsampling and a root
block of n k x k convs (paper §4.2.2, Table 2's rows in ``scratchdet.paper.TABLE2_ROWS``), trained
with the paper's Table 2 schedule. 10 rows, ids ``table2_<ds|nods>_<n>x<k>``."""
from __future__ import annotations

from scratchdet import paper
from scratchdet.datasets import DATASETS

from ..backbones import resnet18
from .base import Arch, Variant
from .schedules import TABLE2_SCHEDULE

RESNET18_SOURCES = ("sources conv4_4 (38) and conv5_4 (19), the last branch conv of each stage, then SSD "
                    "extras conv6_2 (10), conv7_2 (5), conv8_2 (3), conv9_2 (1): the same layers in every "
                    "row; with conv1 stride 2 and the max-pool, conv3 has stride 1 so conv4 stays at 38x38")


def resnet18_variant(vid, title, table, cell, key, convs, kernel, ds, pool, schedule=TABLE2_SCHEDULE,
                     data="voc07") -> Variant:
    """A ResNet-18 SSD300 with the given first layers (Table 2's rows, Figure 3's nets)."""
    return Variant(id=vid, title=title, table=table, cell=cell, data=DATASETS[data], paper_key=key,
                   schedule=schedule, profile="paper",
                   arch=Arch(resnet=resnet18(convs, kernel, ds, pool), bn_head=True),
                   batch_per_gpu=32, gpus=4, notes=(RESNET18_SOURCES,))


def variants() -> list[Variant]:
    out = []
    for row, (ds, convs, kernel, _fps, _map) in enumerate(paper.TABLE2_ROWS, start=1):
        first = "with" if ds else "without"
        out.append(resnet18_variant(
            f"table2_{'ds' if ds else 'nods'}_{convs}x{kernel}",
            f"ResNet-18 SSD300, first conv {first} downsampling, root {convs} x {kernel}x{kernel}",
            "Table 2", f"row {row}: {first} downsample, {convs}: {kernel}x{kernel}",
            paper.table2_key(ds, convs, kernel), convs, kernel, ds, True))
    return out
