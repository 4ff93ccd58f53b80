"""Backbones: VGG16 (atrous, fc6/fc7 as convs) with SSD's extra layers, and a parametric
pre-activation ResNet that gives ResNet-18, -A, -B, every Table 2 row, Root-ResNet-18 and
Root-ResNet-34 (the paper's and the released layout).

Each builder adds layers to a NetSpec and returns the detection sources, in order, as
``Source(name, top)``: ``name`` is the blob the head reads (and names its layers after).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from scratchdet.errors import ScratchDetError

from .blocks import basic_block, bn_relu, conv, conv_bn_relu, ssd_extra_pair
from .netspec import L, NetSpec, Top


@dataclass(frozen=True)
class Source:
    name: str
    top: Top


# -- VGG16 ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class VGGSpec:
    """A truncated VGG: conv blocks ``(convs, channels)`` with 2x2/2 max-pools between them, then
    SSD's pool5 (3x3/1) and fc6 (3x3, dilated)/fc7 (1x1) as convolutions, then extra conv pairs
    ``(mid, out, stride, pad)``. Sources: the last conv of block ``source_block`` (conv4_3 in SSD),
    fc7, and every extra pair's second conv. ``bn`` puts BatchNorm after every conv of it all."""
    blocks: tuple = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
    source_block: int = 4
    fc_channels: int = 1024
    fc6_dilation: int = 6
    extras: tuple = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
    bn: bool = False


SSD300_VGG16 = VGGSpec()


def vgg_ssd(net: NetSpec, data: Top, spec: VGGSpec) -> list[Source]:
    """SSD's ``VGGNetBody(fully_conv, reduced, dilated, dropout=False)`` + ``AddExtraLayers``, with
    BatchNorm+Scale after every convolution when ``spec.bn`` (biases then dropped). Layer names
    are SSD's (conv1_1 ... fc7, conv6_1 ... conv9_2; relu1_1 ... relu7, conv6_1_relu ...), so a
    VGG16 caffemodel (e.g. SSD's VGG_ILSVRC_16_layers_fc_reduced) loads by name."""
    sources: list[Source] = []
    x = data
    for b, (convs, channels) in enumerate(spec.blocks, start=1):
        for i in range(1, convs + 1):
            x = conv_bn_relu(net, x, f"conv{b}_{i}", channels, 3, pad=1, bn=spec.bn, relu_name=f"relu{b}_{i}")
        if b == spec.source_block:
            sources.append(Source(f"conv{b}_{convs}", net[f"conv{b}_{convs}"]))
        if b < len(spec.blocks):
            net[f"pool{b}"] = L.Pooling(x, pool="MAX", kernel_size=2, stride=2)
            x = net[f"pool{b}"]
    net.pool5 = L.Pooling(x, pool="MAX", kernel_size=3, stride=1, pad=1)
    d = spec.fc6_dilation
    x = conv_bn_relu(net, net.pool5, "fc6", spec.fc_channels, 3, pad=d, dilation=d, bn=spec.bn, relu_name="relu6")
    x = conv_bn_relu(net, x, "fc7", spec.fc_channels, 1, bn=spec.bn, relu_name="relu7")
    sources.append(Source("fc7", net.fc7))
    for i, (mid, out, stride, pad) in enumerate(spec.extras, start=6):
        ssd_extra_pair(net, x, i, mid, out, stride, pad, bn=spec.bn)
        x = net[f"conv{i}_2_relu"]
        sources.append(Source(f"conv{i}_2", net[f"conv{i}_2"]))
    return sources


# -- ResNet ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ResidualExtra:
    """One extra residual block: 3x3 conv with ``stride``/``pad``, then 3x3/1; the shortcut is a
    projection conv (``shortcut_kernel`` x ``shortcut_kernel``, same stride, no pad) or identity."""
    stride: int = 2
    pad: int = 1
    shortcut: str = "project"
    shortcut_kernel: int = 1


@dataclass(frozen=True)
class ResNetSpec:
    """A pre-activation ResNet as ScratchDet builds it.

    Root: ``root_convs`` convs of ``root_kernel`` x ``root_kernel`` (the first with ``root_stride``),
    ``root_channels`` each, BatchNorm+Scale+ReLU in place; then an optional 2x2/2 max-pool
    (``pool1``, the released Root-ResNet's pool). Stages ``(blocks, channels, stride)`` are named
    conv2, conv3, ...; the sources are the last branch conv of each stage in ``source_stages``
    (as the released ScratchDet: the conv before the sum, not BatchNorm'd). Extras are either
    ``residual`` blocks (ScratchDet, ``extra_blocks``, ``extra_channels`` each) or ``ssd`` conv pairs
    ``(mid, out, stride, pad)`` with BatchNorm (the released Root-ResNet-18 body), read after their
    ReLU as in SSD."""
    root_convs: int = 3
    root_kernel: int = 3
    root_stride: int = 1
    root_channels: int = 64
    maxpool: bool = True
    stages: tuple = ((2, 64, 1), (2, 128, 2), (2, 256, 2), (2, 512, 2))
    source_stages: tuple = (4, 5)
    extras: str = "ssd"
    ssd_extras: tuple = ((256, 512, 2, 1), (128, 256, 2, 1), (128, 256, 1, 0), (128, 256, 1, 0))
    extra_blocks: tuple = field(default_factory=tuple)
    extra_channels: int = 128


def resnet(net: NetSpec, data: Top, spec: ResNetSpec, unit_strides: bool = False) -> list[Source]:
    """``unit_strides``: write ``stride: 1`` where the released scripts pass it (``stem_1`` and the
    first conv of a stride-1 residual extra block), so the text equals theirs."""
    if spec.root_convs < 1:
        raise ScratchDetError(f"the root block needs at least one conv (got {spec.root_convs})")
    if spec.root_kernel < 1 or spec.root_kernel % 2 == 0:
        raise ScratchDetError(f"root conv kernel must be odd, got {spec.root_kernel}")
    if spec.extras not in ("residual", "ssd"):
        raise ScratchDetError(f"unknown extra-layer kind {spec.extras!r} (residual or ssd)")
    sources: list[Source] = []
    x = data
    k = spec.root_kernel
    for i in range(1, spec.root_convs + 1):
        stride = spec.root_stride if i == 1 else 1
        net[f"stem_{i}"] = conv(x, spec.root_channels, k, stride=stride, pad=k // 2, unit_stride=unit_strides and i == 1)
        x = bn_relu(net[f"stem_{i}"], in_place=True)
    if spec.maxpool:
        net.pool1 = L.Pooling(x, pool="MAX", kernel_size=2, stride=2)
        x = net.pool1
    # x is activated here: the first block reads it directly (no pre-activation of its own)
    total = x
    first = True
    channels_in = spec.root_channels
    for s, (blocks, channels, stride) in enumerate(spec.stages, start=2):
        for b in range(blocks):
            names = (f"conv{s}_{2 * b + 1}", f"conv{s}_{2 * b + 2}")
            st = stride if b == 0 else 1
            project = b == 0 and (st != 1 or channels != channels_in)
            total, branch = basic_block(net, total, names, channels, st, preactivate=not first,
                                        shortcut="project" if project else "identity")
            first = False
        channels_in = channels
        if s in spec.source_stages:
            sources.append(Source(names[1], branch))
    if spec.extras == "residual":
        for i, extra in enumerate(spec.extra_blocks, start=len(spec.stages) + 2):
            project = extra.shortcut == "project" or spec.extra_channels != channels_in
            total, branch = basic_block(net, total, (f"conv{i}_1", f"conv{i}_2"), spec.extra_channels,
                                        extra.stride, preactivate=True, pad=extra.pad,
                                        shortcut="project" if project else "identity",
                                        shortcut_kernel=extra.shortcut_kernel, unit_stride=unit_strides)
            channels_in = spec.extra_channels
            sources.append(Source(f"conv{i}_2", branch))
    else:
        x = bn_relu(total, in_place=False)
        for i, (mid, out, stride, pad) in enumerate(spec.ssd_extras, start=len(spec.stages) + 2):
            x = ssd_extra_pair(net, x, i, mid, out, stride, pad, bn=True)
            sources.append(Source(f"conv{i}_2", net[f"conv{i}_2"]))
    return sources


# The stage layouts of ResNet-18 and ResNet-34 (BasicBlocks).
RESNET18_STAGES = ((2, 64, 1), (2, 128, 2), (2, 256, 2), (2, 512, 2))
RESNET34_STAGES = ((3, 64, 1), (4, 128, 2), (6, 256, 2), (3, 512, 2))

# ScratchDet's four residual extra blocks, 128 channels each.
# Released code: conv8/conv9 have stride 1 and pad 1, so the maps stay 5x5 (38/19/10/5/5/5).
RELEASED_EXTRAS = (ResidualExtra(2, 1), ResidualExtra(2, 1), ResidualExtra(1, 1, "identity"),
                   ResidualExtra(1, 1, "identity"))
# Paper (§3.2, "1x1 stride 2 branch and 3x3 stride 2 + 3x3 branch") with SSD300's 38/19/10/5/3/1:
# conv8 as described (5 -> 3); conv9 takes 3 -> 1 with a valid 3x3 conv (pad 0), our choice (a 1x1
# stride-2 shortcut cannot reach 1x1). conv9's sum feeds nothing (the head reads conv9_2), so
# NetSpec emits neither it nor its shortcut, as in the released net.
PAPER_EXTRAS = (ResidualExtra(2, 1), ResidualExtra(2, 1), ResidualExtra(2, 1),
                ResidualExtra(1, 0, "project", 3))


def root_resnet34(extras: tuple = PAPER_EXTRAS) -> ResNetSpec:
    return ResNetSpec(root_convs=3, root_kernel=3, root_stride=1, stages=RESNET34_STAGES,
                      extras="residual", extra_blocks=extras)


def resnet18(root_convs: int = 1, root_kernel: int = 7, downsample: bool = True,
             maxpool: bool = True) -> ResNetSpec:
    """The ResNet-18 family of Table 2 and Figure 3, always with detection maps 38/19/10/5/3/1 at
    300x300 from the same layers (conv4_4, conv5_4 and SSD extras conv6_2 ... conv9_2), so only
    the early downsampling differs between rows:

    * first conv stride 2 and the max-pool (ResNet-18, Table 2 "with downsample"): conv3 gets
      stride 1, so conv4 is still at stride 8 (38x38): the total stride is unchanged, it is just
      taken earlier, which is what the rows compare;
    * stride 2 without the max-pool (ResNet-18-A) or stride 1 with it (ResNet-18-B, Root-ResNet-18,
      Table 2 "without downsample"): the standard stage strides 1, 2, 2, 2.
    The max-pool is the released Root-ResNet's 2x2/2 (ResNet's 3x3/2 pad 1 would give 151x151
    maps under Caffe's ceil rounding)."""
    if root_convs < 1:
        raise ScratchDetError(f"the root block needs at least one conv (got {root_convs})")
    early = (2 if downsample else 1) * (2 if maxpool else 1)
    if early == 4:
        stages = ((2, 64, 1), (2, 128, 1), (2, 256, 2), (2, 512, 2))
    elif early == 2:
        stages = RESNET18_STAGES
    else:
        raise ScratchDetError("ResNet-18 without the first-conv stride and without the max-pool would put "
                              "conv4 at 75x75, not 38x38: keep one of the two")
    return ResNetSpec(root_convs=root_convs, root_kernel=root_kernel, root_stride=2 if downsample else 1,
                      maxpool=maxpool, stages=stages, extras="ssd")
