"""The mini-paper's nets: Table 1 and Table 2 / Figure 3 at CPU scale, on the synthetic sets.

Made by the same builders as the paper's nets and trained by the same engine; only the scale
differs (input, widths, one block per stage, a short schedule). Every net carries its ``rescale``,
so ``scratchdet run mini-paper --input-size/--width/--iterations`` runs a larger version of the
same plan (a GPU's 15 minutes, say).

* ``mini_table1_<bn-none|bn-head|bn-backbone|bn-both>_lr<0.001|0.01|0.05>``: the small VGG SSD of
  ``demo_vgg_arch`` with Table 1's two switches (BatchNorm after every backbone conv; after the
  head's loc/conf convs), SSD's xavier head as in the paper's VGG nets.
* ``mini_fig3_<resnet18|resnet18_a|resnet18_b|root_resnet18>``: a one-block-per-stage ResNet-18
  with Figure 3's four first layers; the detection maps are the same in all four (the stage
  strides absorb the early downsampling, as ``backbones.resnet18`` does at full size). Its head
  is the demo's (no BatchNorm, gaussian 0.01), the configuration that learns at this scale.
"""
from __future__ import annotations

import functools

from scratchdet import paper
from scratchdet.datasets import DATASETS

from ..backbones import ResidualExtra, ResNetSpec
from ..solver import Schedule
from .base import Arch, Variant
from .demo import BN_SWITCHES, demo_ratios, demo_vgg_arch
from .schedules import short_schedule

MINI_INPUT = 128
MINI_BATCH = 16
# One schedule for every cell, chosen before any mini-paper result was seen (README "mini-paper"):
# long enough for the demo-sized nets to leave SSD's early all-background plateau
MINI_ITER = 1500
MINI_LRS = paper.TABLE1_LRS
# Figure 3: the demo's lr. Its head has no BatchNorm (a BatchNorm head learns far slower over a few
# hundred iterations), and without one these nets diverge at lr 0.02 (README, "make demo")
MINI_FIG3_LR = 0.005

TABLE1_BN = BN_SWITCHES   # the demo's Table 1 switches: name -> (BN backbone, BN head, Table 1 config)
# name -> (root convs, root kernel, first-conv stride 2, max-pool), as Figure 3 (a)-(d)
FIG3 = {"resnet18": (1, 7, True, True), "resnet18_a": (1, 7, True, False),
        "resnet18_b": (1, 7, False, True), "root_resnet18": (3, 3, False, True)}
FIG3_TITLES = {"resnet18": "ResNet-18 (7x7/2 conv + max-pool)", "resnet18_a": "ResNet-18-A (no max-pool)",
               "resnet18_b": "ResNet-18-B (7x7 conv, stride 1)", "root_resnet18": "Root-ResNet-18 (three 3x3, stride 1)"}


def mini_schedule(lr: float, max_iter: int = MINI_ITER) -> Schedule:
    return short_schedule(lr, max_iter,
                          "mini-paper: the base lr for 2/3 of the run, then /10 twice (the paper's multistep, shortened)")


def mini_resnet18_arch(root_convs: int, root_kernel: int, downsample: bool, maxpool: bool,
                       input_size: int = MINI_INPUT, width: float = 1.0, sources: int = 5) -> Arch:
    """ResNet-18's first layers at toy scale: the root (``root_convs`` convs of ``root_kernel``, the
    first with stride 2 when ``downsample``), an optional 2x2 max-pool, then one pre-activation
    block per stage (16/32/64/128 x width) and residual extras (64 x width). With both early
    downsamplings (stride 4 before conv2) conv3 keeps stride 1, so every variant has its first
    source (conv4) at stride 8: the detection maps are equal, only where the resolution drops
    differs. Both removed would leave conv4 at stride 4, which Figure 3 has no row for."""
    c = lambda n: max(4, int(round(n * width)))   # noqa: E731
    early = (2 if downsample else 1) * (2 if maxpool else 1)
    if early not in (2, 4):
        raise ValueError("keep the first conv's stride or the max-pool (Figure 3 has no row without both)")
    s3 = 1 if early == 4 else 2
    n_extras = max(sources - 2, 0)
    return Arch(resnet=ResNetSpec(root_convs=root_convs, root_kernel=root_kernel,
                                  root_stride=2 if downsample else 1, root_channels=c(16), maxpool=maxpool,
                                  stages=((1, c(16), 1), (1, c(32), s3), (1, c(64), 2), (1, c(128), 2)),
                                  source_stages=(4, 5), extras="residual",
                                  extra_blocks=(ResidualExtra(2, 1),) * n_extras, extra_channels=c(64)),
                bn_head=False, input_size=input_size, maps=None, steps=None,
                aspect_ratios=demo_ratios(sources), width=width, sources=sources, head_small_init=True,
                rescale=functools.partial(mini_resnet18_arch, root_convs, root_kernel, downsample, maxpool))


def variants() -> list[Variant]:
    common = dict(data=DATASETS["synthetic"], profile="demo", batch_per_gpu=MINI_BATCH, gpus=1, test_batch=10,
                  display=20, random_seed=1, paper_key=None, test_interval=MINI_ITER, snapshot=0)
    out = []
    for name, (bn_b, bn_h, config) in TABLE1_BN.items():
        for lr in MINI_LRS:
            out.append(Variant(
                id=f"mini_table1_{name}_lr{lr:g}", title=f"mini-paper Table 1: small VGG SSD, {name}, lr {lr:g}",
                table="mini-paper", cell=f"Table 1 cell at CPU scale: {name}, base lr {lr:g}",
                schedule=mini_schedule(lr), arch=demo_vgg_arch(bn_b, bn_h, MINI_INPUT),
                analogue=paper.table1_key(config, lr),
                notes=("sources: conv4_2 (stride 8), fc7 (16), then conv6_2 ... per extra pair",), **common))
    for name, spec in FIG3.items():
        out.append(Variant(
            id=f"mini_fig3_{name}", title=f"mini-paper Figure 3: {FIG3_TITLES[name]}, small",
            table="mini-paper", cell=f"Figure 3 at CPU scale: {FIG3_TITLES[name]}",
            schedule=mini_schedule(MINI_FIG3_LR), arch=mini_resnet18_arch(*spec),
            analogue=f"figure3/{name}",
            notes=("sources: conv4_2 (stride 8), conv5_2 (16), then one residual extra block each",
                   "head without BatchNorm, gaussian 0.01 (the demo's): see prototxt_gen/variants/mini_paper.py"),
            **common))
    return out
