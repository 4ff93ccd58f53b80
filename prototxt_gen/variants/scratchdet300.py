"""ScratchDet300 (Root-ResNet-34) on VOC07, VOC12 (07++12) and COCO, twice: as the paper describes it
(``<ds>_rootres34``: maps 38/19/10/5/3/1, BatchNorm in backbone and head) and as the authors' released
scripts generate it (``<ds>_rootres34_released``: maps 38/19/10/5/5/5, 8892 priors, no BatchNorm in
the VOC head); the two are each other's ``twin``. Plus SSD300 with Root-ResNet-18 on the same sets
(``<ds>_rootres18``, Table 2 row 8 / Figure 3d)."""
from __future__ import annotations

from scratchdet.datasets import DATASETS

from ..backbones import PAPER_EXTRAS, RELEASED_EXTRAS, resnet18, root_resnet34
from .base import Arch, Variant
from .schedules import RELEASED_COCO_SCHEDULE, RELEASED_VOC_SCHEDULE, TABLE2_SCHEDULE
from .table2 import RESNET18_SOURCES

RES34_SOURCES = ("sources conv4_12, conv5_6, conv6_2, conv7_2, conv8_2, conv9_2: the last branch conv of each "
                 "stage / extra block, before the sum (as the released code)")


def variants() -> list[Variant]:
    out = []
    keys = {"voc07": "scratchdet300/voc07", "voc12": None, "coco": "scratchdet300/coco"}
    for ds in ("voc07", "voc12", "coco"):
        coco = ds == "coco"
        schedule = RELEASED_COCO_SCHEDULE if coco else RELEASED_VOC_SCHEDULE
        common = dict(table="ScratchDet300", data=DATASETS[ds], paper_key=keys[ds], schedule=schedule,
                      batch_per_gpu=16 if coco else 32, gpus=4, iter_size=2 if coco else 1,
                      test_interval=10000 if coco else 5000, snapshot=10000 if coco else 5000)
        notes_voc12 = (("VOC2012: the paper's 07++12-only number is in its Table 4, which our copy lacks "
                        "(Figure 5's 82.1 is for 07++12+COCO)",) if ds == "voc12" else ())
        paper_id, released_id = f"{ds}_rootres34", f"{ds}_rootres34_released"
        out.append(Variant(
            id=paper_id, title=f"ScratchDet300 (Root-ResNet-34) on {DATASETS[ds].folder}, as the paper describes it",
            cell="Root-ResNet-34, maps 38/19/10/5/3/1, BatchNorm in backbone and head", profile="paper",
            arch=Arch(resnet=root_resnet34(PAPER_EXTRAS), bn_head=True), twin=released_id,
            notes=(RES34_SOURCES, "conv8: 3x3/2 + 1x1/2 shortcut (5->3); conv9: valid 3x3 (3->1), since a "
                   "1x1/2 shortcut cannot reach 1x1 (its sum, unused by the head, is not emitted)") + notes_voc12, **common))
        out.append(Variant(
            id=released_id, title=f"ScratchDet300 (Root-ResNet-34) on {DATASETS[ds].folder}, "
            f"as the authors' caffe/ssd_{'coco' if coco else 'pascal'}.py generates it",
            cell=("Root-ResNet-34 as released: maps 38/19/10/5/5/5 (8892 priors), "
                  + ("BatchNorm in the head (ssd_coco.py)" if coco else "no BatchNorm in the head (ssd_pascal.py)")),
            profile="released",
            arch=Arch(resnet=root_resnet34(RELEASED_EXTRAS), bn_head=coco, maps=(38, 19, 10, 5, 5, 5),
                      unit_strides=True),
            test_batch=2 if coco else 1, debug_info=not coco, twin=paper_id,
            notes=(RES34_SOURCES, "layers, fillers and solver as the released scripts (debug_info as "
                   "ssd_pascal.py sets it); data paths, test net and file locations follow this project's "
                   "layout (the released COCO script points at the VOC LMDBs and has no test net)") + notes_voc12,
            **common))
        r18_schedule = TABLE2_SCHEDULE if ds == "voc07" else schedule
        out.append(Variant(
            id=f"{ds}_rootres18", title=f"SSD300 with Root-ResNet-18 on {DATASETS[ds].folder}",
            table="Root-ResNet-18", cell="Root-ResNet-18 (Table 2 row 8 / Figure 3d), BatchNorm in backbone and head",
            data=DATASETS[ds], paper_key="rootres18/voc07" if ds == "voc07" else None, schedule=r18_schedule,
            profile="paper", arch=Arch(resnet=resnet18(3, 3, False, True), bn_head=True),
            batch_per_gpu=common["batch_per_gpu"], gpus=4, iter_size=common["iter_size"],
            test_interval=common["test_interval"], snapshot=common["snapshot"],
            notes=(RESNET18_SOURCES,
                   "schedule: Table 2's for VOC07 (its paper number is Table 2's); the released solver elsewhere")))
    return out
