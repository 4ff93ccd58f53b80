"""The index of every network the paper trains, as a variant id, plus the released-code twins, the
SSD300 baseline, and small synthetic-data nets built by the same code. The variants themselves are
written one module per paper table under ``prototxt_gen/variants/``; this module collects them.

Ids (``scratchdet gen --list`` prints them all):

* ``table1_<config>_lr<lr>`` (``variants/table1.py``): the 18 cells of Table 1 (VGG16 SSD300, BatchNorm switches x base lr);
  ``<config>`` is one of ``scratchdet.paper.TABLE1_CONFIGS``.
* ``table2_<ds|nods>_<n>x<k>`` (``variants/table2.py``): the 10 rows of Table 2 (ResNet-18, first conv with or without
  downsampling, root block of n k x k convs).
* ``fig3_resnet18``, ``fig3_resnet18_a``, ``fig3_resnet18_b``, ``fig3_root_resnet18``: Figure 3 (``variants/figure3.py``).
* ``<voc07|voc12|coco>_rootres34`` (ScratchDet300 as the paper describes it) and
  ``..._rootres34_released`` (exactly what the authors' scripts generate), ``<...>_rootres18`` (``variants/scratchdet300.py``).
* ``voc07_ssd300_vgg16``: SSD300 itself (pretrained VGG16, L2 Normalize on conv4_3), the reference
  the paper compares with (77.2 in SSD's paper; ``variants/ssd300.py``).
* ``demo_rootres``, ``demo_table1_<bn-none|bn-head|bn-backbone|bn-both>_lr<lr>``: scaled-down nets
  for the synthetic data set (CPU minutes), with overridable size, width and schedule
  (``variants/demo.py``); ``mini_table1_...``, ``mini_fig3_...``: the mini-paper's (``variants/mini_paper.py``).
"""
from __future__ import annotations

import difflib

from scratchdet.datasets import DATASETS  # noqa: F401  (the catalog the variants' data come from)
from scratchdet.errors import ScratchDetError

from .variants import demo, figure3, mini_paper, scratchdet300, ssd300, table1, table2
from .variants.base import Arch, Variant  # noqa: F401  (the records, for callers that make their own)

TABLES = (table1, table2, figure3, scratchdet300, ssd300, demo, mini_paper)


def _build_all() -> dict[str, Variant]:
    variants: dict[str, Variant] = {}
    for table in TABLES:
        for v in table.variants():
            if v.id in variants:
                raise AssertionError(f"duplicate variant id {v.id}")
            variants[v.id] = v
    for v in variants.values():   # a twin names a variant of another profile that names it back
        twin = variants.get(v.twin) if v.twin else None
        if v.twin and (twin is None or twin.twin != v.id or twin.profile == v.profile):
            raise AssertionError(f"variant {v.id}: twin {v.twin!r} is not its other-profile twin")
    return variants


VARIANTS: dict[str, Variant] = _build_all()


def all_variants() -> list[Variant]:
    return list(VARIANTS.values())


def get(variant_id: str) -> Variant:
    """The variant with this id; an unknown id is a one-line error with the closest ids."""
    try:
        return VARIANTS[variant_id]
    except KeyError:
        close = difflib.get_close_matches(variant_id, list(VARIANTS), n=4, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `scratchdet gen --list` shows them all"
        raise ScratchDetError(f"unknown variant {variant_id!r}{hint}") from None
