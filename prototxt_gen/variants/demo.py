"""The demo nets (``make demo``, ``scratchdet run demo``/``demo-table1``): scaled-down ScratchDet and
Table 1 nets for the synthetic shapes, CPU minutes each, built by the same code as the paper's. Each
carries its own ``rescale``, so input size, width and source count may be overridden.

* ``demo_rootres``: a small Root-ResNet SSD (imitates ScratchDet300 on VOC07);
* ``demo_table1_<bn-none|bn-head|bn-backbone|bn-both>_lr<lr>``: a small VGG SSD with Table 1's switches.
"""
from __future__ import annotations

import functools

from scratchdet import paper
from scratchdet.datasets import DATASETS

from ..backbones import ResidualExtra, ResNetSpec, VGGSpec
from ..solver import Schedule
from .base import Arch, Variant
from .schedules import short_schedule

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
    return short_schedule(lr, max_iter,
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
                aspect_ratios=demo_ratios(sources), width=width, sources=sources,
                rescale=functools.partial(demo_rootres_arch, bn_head=bn_head), head_small_init=not bn_head)


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
                aspect_ratios=demo_ratios(sources), width=width, sources=sources,
                rescale=functools.partial(demo_vgg_arch, bn_backbone, bn_head))


def demo_ratios(sources: int) -> tuple:
    """SSD300's pattern: (2) on the first source and the last two, (2, 3) between."""
    if sources <= 3:
        return ((2,),) + ((2, 3),) * (sources - 1)
    return ((2,),) + ((2, 3),) * (sources - 3) + ((2,), (2,))


BN_SWITCHES = {"bn-none": (False, False, "scratch_nobn"), "bn-head": (False, True, "scratch_bn_head"),
               "bn-backbone": (True, False, "scratch_bn_backbone"), "bn-both": (True, True, "scratch_bn_both")}


def variants() -> list[Variant]:
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
    for name, (bn_b, bn_h, config) in BN_SWITCHES.items():
        for lr in paper.TABLE1_LRS:
            out.append(Variant(
                id=f"demo_table1_{name}_lr{lr:g}", title=f"demo Table 1: small VGG SSD, {name}, lr {lr:g}",
                table="demo", cell=f"toy Table 1 cell: {name}, base lr {lr:g}",
                schedule=demo_schedule(lr, DEMO_TABLE1_MAX_ITER), arch=demo_vgg_arch(bn_b, bn_h),
                analogue=paper.table1_key(config, lr),
                notes=("sources: conv4_2 (stride 8), fc7 (16), then conv6_2 ... per extra pair",),
                test_interval=half, snapshot=half, **common))
    return out
