"""Every network the paper trains, as a variant id, plus the released-code twins, the SSD300
baseline, and small synthetic-data nets built by the same code.

Ids (``scratchdet gen --list`` prints them all):

* ``table1_<config>_lr<lr>``: the 18 cells of Table 1 (VGG16 SSD300, BatchNorm switches x base lr);
  ``<config>`` is one of ``scratchdet.paper.TABLE1_CONFIGS``.
* ``table2_<ds|nods>_<n>x<k>``: the 10 rows of Table 2 (ResNet-18, first conv with or without
  downsampling, root block of n k x k convs).
* ``fig3_resnet18``, ``fig3_resnet18_a``, ``fig3_resnet18_b``, ``fig3_root_resnet18``: Figure 3.
* ``<voc07|voc12|coco>_rootres34`` (ScratchDet300 as the paper describes it) and
  ``..._rootres34_released`` (exactly what the authors' scripts generate), ``<...>_rootres18``.
* ``voc07_ssd300_vgg16``: SSD300 itself (pretrained VGG16, L2 Normalize on conv4_3), the reference
  the paper compares with (77.2 in SSD's paper).
* ``demo_rootres``, ``demo_table1_<bn-none|bn-head|bn-backbone|bn-both>_lr<lr>``: scaled-down nets
  for the synthetic data set (CPU minutes), with overridable size, width and schedule.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field

from scratchdet import paper
from scratchdet.datasets import DATASETS, DataSpec
from scratchdet.errors import ScratchDetError

from .backbones import PAPER_EXTRAS, RELEASED_EXTRAS, ResidualExtra, ResNetSpec, VGGSpec, resnet18, root_resnet34
from .solver import Schedule

# -- architectures -----------------------------------------------------------------------------------


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
    scalable: bool = False          # demo nets: input size, width and source count may be overridden
    width: float = 1.0
    sources: int = 6
    family: str = ""                # demo family ("rootres" | "vgg") for rebuilding at other sizes
    rebuild: object = None          # or a callable (input_size, width, sources) -> Arch doing it
    head_small_init: bool = False   # head convs without BN: gaussian 0.01 weights instead of xavier
    unit_strides: bool = False      # write stride: 1 where the authors' scripts do (released profile)


# -- variants ----------------------------------------------------------------------------------------


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


# Schedules -------------------------------------------------------------------------------------------

def ssd_schedule(lr: float) -> Schedule:
    return Schedule(lr, (80000, 100000, 120000), 120000,
                    "SSD300's solver (caffe-ssd-spec §5.6) at the cell's base lr, as DESIGN.md §3 decides")


TABLE2_SCHEDULE = Schedule(0.05, (45000, 75000, 95000), 100000,
                           "paper §4.2.2: 0.05 for 45k iterations, then /10 for 30k, 20k and 5k")
RELEASED_VOC_SCHEDULE = Schedule(0.05, (40000, 75000, 90000, 100000), 100000,
                                 "released caffe/ssd_pascal.py solver (scratchdet-released-code.md §7)")
RELEASED_COCO_SCHEDULE = Schedule(0.05, (150000, 250000, 310000, 320000), 325000,
                                  "released caffe/ssd_coco.py solver (scratchdet-released-code.md §7)")

# Table 1 --------------------------------------------------------------------------------------------

_TABLE1_SWITCHES = {   # config -> (BN in backbone, BN in head, pretrained weights)
    "scratch_nobn": (False, False, None),
    "scratch_bn_head": (False, True, None),
    "scratch_bn_backbone": (True, False, None),
    "scratch_bn_both": (True, True, None),
    "pretrained_vgg16": (False, False, "VGG16 fc-reduced ImageNet (SSD's VGG_ILSVRC_16_layers_fc_reduced)"),
    "pretrained_vgg16bn_bn_both": (True, True, "VGG16-BN ImageNet weights converted from PyTorch's model"),
}

_VGG_SOURCES = ("conv4_3 (38), fc7 (19), conv6_2 (10), conv7_2 (5), conv8_2 (3), conv9_2 (1); "
                "SSD's layers, read after their ReLU")


def _table1() -> list[Variant]:
    out = []
    labels = dict(paper.TABLE1_CONFIGS)
    for config, _ in paper.TABLE1_CONFIGS:
        bn_backbone, bn_head, weights = _TABLE1_SWITCHES[config]
        for lr in paper.TABLE1_LRS:
            scratch = weights is None
            out.append(Variant(
                id=f"table1_{config}_lr{lr:g}", title=f"SSD300 VGG16, {labels[config]}, lr {lr:g}",
                table="Table 1", cell=f"{labels[config]}; base lr {lr:g}", data=DATASETS["voc07"],
                paper_key=paper.table1_key(config, lr), schedule=ssd_schedule(lr), profile="paper",
                arch=Arch(vgg=VGGSpec(bn=bn_backbone), bn_head=bn_head),
                # scratch: batch 128 as 4 GPUs x 32; pretrained: SSD's 32 (paper §4.1)
                batch_per_gpu=32, gpus=4 if scratch else 1, pretrained=weights,
                test_interval=10000, snapshot=80000, display=10,
                notes=("'backbone' = truncated VGG16 + SSD's extra layers, 'head' = the 3x3 loc/conf convs "
                       "(BatchNorm+Scale after each); no L2 Normalize (paper §4.1)",
                       "sources: " + _VGG_SOURCES)))
    return out


# Table 2 and Figure 3 -------------------------------------------------------------------------------

_RESNET18_SOURCES = ("sources conv4_4 (38) and conv5_4 (19), the last branch conv of each stage, then SSD "
                     "extras conv6_2 (10), conv7_2 (5), conv8_2 (3), conv9_2 (1): the same layers in every "
                     "row; with conv1 stride 2 and the max-pool, conv3 has stride 1 so conv4 stays at 38x38")


def _resnet18_variant(vid, title, table, cell, key, convs, kernel, ds, pool, schedule=TABLE2_SCHEDULE,
                      data="voc07"):
    return Variant(id=vid, title=title, table=table, cell=cell, data=DATASETS[data], paper_key=key,
                   schedule=schedule, profile="paper",
                   arch=Arch(resnet=resnet18(convs, kernel, ds, pool), bn_head=True),
                   batch_per_gpu=32, gpus=4, notes=(_RESNET18_SOURCES,))


def _table2() -> list[Variant]:
    out = []
    for row, (ds, convs, kernel, _fps, _map) in enumerate(paper.TABLE2_ROWS, start=1):
        first = "with" if ds else "without"
        out.append(_resnet18_variant(
            f"table2_{'ds' if ds else 'nods'}_{convs}x{kernel}",
            f"ResNet-18 SSD300, first conv {first} downsampling, root {convs} x {kernel}x{kernel}",
            "Table 2", f"row {row}: {first} downsample, {convs}: {kernel}x{kernel}",
            paper.table2_key(ds, convs, kernel), convs, kernel, ds, True))
    return out


def _figure3() -> list[Variant]:
    spec = {   # name -> (title, root convs, kernel, downsample, max-pool)
        "resnet18": ("ResNet-18 (7x7/2 conv + max-pool)", 1, 7, True, True),
        "resnet18_a": ("ResNet-18-A (max-pool removed)", 1, 7, True, False),
        "resnet18_b": ("ResNet-18-B (first conv stride 1)", 1, 7, False, True),
        "root_resnet18": ("Root-ResNet-18 (three 3x3 convs, stride 1)", 3, 3, False, True),
    }
    return [_resnet18_variant(f"fig3_{name}", title, "Figure 3", title, f"figure3/{name}", c, k, ds, pool)
            for name, (title, c, k, ds, pool) in spec.items()]


# ScratchDet300 and Root-ResNet-18 -------------------------------------------------------------------

_RES34_SOURCES = ("sources conv4_12, conv5_6, conv6_2, conv7_2, conv8_2, conv9_2: the last branch conv of each "
                  "stage / extra block, before the sum (as the released code)")


def _scratchdet() -> list[Variant]:
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
        out.append(Variant(
            id=f"{ds}_rootres34", title=f"ScratchDet300 (Root-ResNet-34) on {DATASETS[ds].folder}, as the paper describes it",
            cell="Root-ResNet-34, maps 38/19/10/5/3/1, BatchNorm in backbone and head", profile="paper",
            arch=Arch(resnet=root_resnet34(PAPER_EXTRAS), bn_head=True),
            notes=(_RES34_SOURCES, "conv8: 3x3/2 + 1x1/2 shortcut (5->3); conv9: valid 3x3 (3->1), since a "
                   "1x1/2 shortcut cannot reach 1x1 (its sum, unused by the head, is not emitted)") + notes_voc12, **common))
        out.append(Variant(
            id=f"{ds}_rootres34_released", title=f"ScratchDet300 (Root-ResNet-34) on {DATASETS[ds].folder}, "
            f"as the authors' caffe/ssd_{'coco' if coco else 'pascal'}.py generates it",
            cell=("Root-ResNet-34 as released: maps 38/19/10/5/5/5 (8892 priors), "
                  + ("BatchNorm in the head (ssd_coco.py)" if coco else "no BatchNorm in the head (ssd_pascal.py)")),
            profile="released",
            arch=Arch(resnet=root_resnet34(RELEASED_EXTRAS), bn_head=coco, maps=(38, 19, 10, 5, 5, 5),
                      unit_strides=True),
            test_batch=2 if coco else 1, debug_info=not coco,
            notes=(_RES34_SOURCES, "layers, fillers and solver as the released scripts (debug_info as "
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
            notes=(_RESNET18_SOURCES,
                   "schedule: Table 2's for VOC07 (its paper number is Table 2's); the released solver elsewhere")))
    return out


def _ssd300() -> list[Variant]:
    return [Variant(
        id="voc07_ssd300_vgg16", title="SSD300 (pretrained VGG16, L2 Normalize on conv4_3), the paper's baseline",
        table="SSD300", cell="SSD300 as SSD's ssd_pascal.py: fine-tuned VGG16, no BatchNorm, Normalize 20 on conv4_3",
        data=DATASETS["voc07"], paper_key=None, schedule=ssd_schedule(0.001), profile="ssd",
        arch=Arch(vgg=VGGSpec(bn=False), bn_head=False, normalizations=(20, -1, -1, -1, -1, -1)),
        batch_per_gpu=32, gpus=1, pretrained="VGG16 fc-reduced ImageNet (SSD's VGG_ILSVRC_16_layers_fc_reduced)",
        test_interval=10000, snapshot=80000, display=10,
        notes=("the paper quotes SSD's own 77.2 mAP for it (not one of its tables)", "sources: " + _VGG_SOURCES))]


# Demo nets (synthetic data) --------------------------------------------------------------------------

DEMO_INPUT = 128
DEMO_BATCH = 16
DEMO_MAX_ITER = 1200
# demo_rootres: 800 iterations at lr 0.005, a few CPU minutes. lr 0.01 (the earlier default) sits
# near this net's divergence (0.02 diverges): loss spikes left seeds anywhere from 0.07 to 0.64 mAP
DEMO_ROOTRES_LR = 0.005
DEMO_ROOTRES_MAX_ITER = 800
# demo Table 1: twelve short runs, enough for the no-BN / high-lr cells to blow up or not
DEMO_TABLE1_MAX_ITER = 300


def demo_schedule(lr: float, max_iter: int = DEMO_MAX_ITER) -> Schedule:
    return Schedule(lr, (round(max_iter * 2 / 3), round(max_iter * 11 / 12)), max_iter,
                    "demo: the base lr for 2/3 of the run, then /10 twice (a short multistep like the paper's)")


def demo_rootres_arch(input_size: int = DEMO_INPUT, width: float = 1.0, sources: int = 5,
                      bn_head: bool = False) -> Arch:
    """A scaled-down ScratchDet: a two-conv root (stride 1) and 2x2 max-pool, four one-block
    pre-activation stages (16/32/64/128 channels x width), residual extra blocks (64 x width) down
    to 1x1; sources from the stage at stride 8 on; BatchNorm in backbone and extras.

    The head has no BatchNorm by default, as the authors' released VOC script: BatchNorm on the
    prediction outputs first shrinks their scale and learns far slower over a few hundred
    iterations (measured: VOC mAP 0.002 after 360 iterations at lr 0.05, against 0.33 without),
    which a CPU-minutes demo cannot afford; it pays off on the paper's 100k-iteration schedules.
    Its convs start from the BN head's gaussian 0.01 rather than SSD's xavier: the sources are raw
    residual-branch outputs, and xavier-sized predictions on them learned five times slower here
    (mAP 0.11 against 0.53 after 700 iterations at lr 0.01)."""
    c = lambda n: max(4, int(round(n * width)))   # noqa: E731
    n_extras = max(sources - 2, 0)
    return Arch(resnet=ResNetSpec(root_convs=2, root_kernel=3, root_stride=1, root_channels=c(16), maxpool=True,
                                  stages=((1, c(16), 1), (1, c(32), 2), (1, c(64), 2), (1, c(128), 2)),
                                  source_stages=(4, 5), extras="residual",
                                  extra_blocks=(ResidualExtra(2, 1),) * n_extras, extra_channels=c(64)),
                bn_head=bn_head, input_size=input_size, maps=None, steps=None,
                aspect_ratios=_demo_ratios(sources), scalable=True, width=width, sources=sources,
                family="rootres", head_small_init=not bn_head)


def demo_vgg_arch(bn_backbone: bool, bn_head: bool, input_size: int = DEMO_INPUT, width: float = 1.0,
                  sources: int = 5) -> Arch:
    """A small VGG-like SSD with Table 1's switches: conv blocks 16/32/2x32/2x64/64 (x width) with
    2x2 pools, fc6 (3x3, dilation 2)/fc7 (128 x width), 1x1+3x3/2 extra pairs; sources conv4_2
    (stride 8), fc7 (16) and the extras."""
    c = lambda n: max(4, int(round(n * width)))   # noqa: E731
    n_extras = max(sources - 2, 0)
    vgg = VGGSpec(blocks=((1, c(16)), (1, c(32)), (2, c(32)), (2, c(64)), (1, c(64))), source_block=4,
                  fc_channels=c(128), fc6_dilation=2, extras=((c(32), c(64), 2, 1),) * n_extras, bn=bn_backbone)
    return Arch(vgg=vgg, bn_head=bn_head, input_size=input_size, maps=None, steps=None,
                aspect_ratios=_demo_ratios(sources), scalable=True, width=width, sources=sources, family="vgg")


def _demo_ratios(sources: int) -> tuple:
    """SSD300's pattern: (2) on the first source and the last two, (2, 3) between."""
    if sources <= 3:
        return ((2,),) + ((2, 3),) * (sources - 1)
    return ((2,),) + ((2, 3),) * (sources - 3) + ((2,), (2,))


_DEMO_BN = {"bn-none": (False, False, "scratch_nobn"), "bn-head": (False, True, "scratch_bn_head"),
            "bn-backbone": (True, False, "scratch_bn_backbone"), "bn-both": (True, True, "scratch_bn_both")}


def _demo() -> list[Variant]:
    common = dict(data=DATASETS["synthetic"], profile="demo", batch_per_gpu=DEMO_BATCH, gpus=1, test_batch=10,
                  display=20, random_seed=1, paper_key=None)
    half = DEMO_ROOTRES_MAX_ITER // 2
    out = [Variant(id="demo_rootres", title="demo ScratchDet: small Root-ResNet SSD on the synthetic shapes",
                   table="demo", cell="root block + residual stages, BatchNorm in backbone and extras, 128x128",
                   schedule=demo_schedule(DEMO_ROOTRES_LR, DEMO_ROOTRES_MAX_ITER), arch=demo_rootres_arch(),
                   analogue="scratchdet300/voc07",
                   notes=("sources: conv4_2 (stride 8), conv5_2, then conv6_2 ... per extra block",
                          "no BatchNorm in the head (as the released VOC script) and lr 0.005: see demo_rootres_arch and DEMO_ROOTRES_LR"),
                   test_interval=half, snapshot=half, **common)]
    half = DEMO_TABLE1_MAX_ITER // 2
    for name, (bn_b, bn_h, config) in _DEMO_BN.items():
        for lr in paper.TABLE1_LRS:
            out.append(Variant(
                id=f"demo_table1_{name}_lr{lr:g}", title=f"demo Table 1: small VGG SSD, {name}, lr {lr:g}",
                table="demo", cell=f"toy Table 1 cell: {name}, base lr {lr:g}",
                schedule=demo_schedule(lr, DEMO_TABLE1_MAX_ITER), arch=demo_vgg_arch(bn_b, bn_h),
                analogue=paper.table1_key(config, lr),
                notes=("sources: conv4_2 (stride 8), fc7 (16), then conv6_2 ... per extra pair",),
                test_interval=half, snapshot=half, **common))
    return out


def _build_all() -> dict[str, Variant]:
    variants: dict[str, Variant] = {}
    from .mini_paper import mini_variants     # below: it builds on this module's demo nets
    for v in _table1() + _table2() + _figure3() + _scratchdet() + _ssd300() + _demo() + mini_variants():
        if v.id in variants:
            raise AssertionError(f"duplicate variant id {v.id}")
        variants[v.id] = v
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
