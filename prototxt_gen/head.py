"""SSD's multibox head (``CreateMultiBoxHead``) and the layers after it.

Per source: ``<src>_mbox_loc`` and ``<src>_mbox_conf`` 3x3 convs (BatchNorm+Scale after each when
``bn``, SSD's ConvBNLayer style, no ReLU), each followed by Permute (0,2,3,1) and Flatten;
``<src>_mbox_priorbox`` (PriorBox on the source and the data blob). Then ``mbox_loc``,
``mbox_conf`` (Concat axis 1) and ``mbox_priorbox`` (Concat axis 2). Test and deploy nets add
SSD's softmax branch, DetectionOutput and (test only) DetectionEvaluate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from scratchdet.errors import ScratchDetError

from .backbones import Source
from .blocks import GAUSSIAN_001, HEAD, XAVIER, conv, named_bn_relu
from .netspec import L, NetSpec, Top

VARIANCE = (0.1, 0.1, 0.2, 0.2)   # CENTER_SIZE code with SSD's variances


@dataclass(frozen=True)
class PriorSpec:
    min_sizes: tuple
    max_sizes: tuple
    aspect_ratios: tuple     # one tuple per source, e.g. ((2,), (2, 3), ...)
    steps: tuple             # one per source (pixels)
    flip: bool = True
    clip: bool = False
    offset: float = 0.5


def ssd_prior_sizes(min_dim: int, n_sources: int, min_ratio: int, max_ratio: int,
                    first: tuple[int, int]) -> tuple[list[float], list[float]]:
    """Prior sizes as SSD's scripts derive them: ``step = floor((max_ratio - min_ratio) /
    (n - 2))``, ratios ``min_ratio, +step, ... <= max_ratio`` give ``min = min_dim*r/100`` and
    ``max = min_dim*(r+step)/100``; a first layer ``first = (min %, max %)`` is prepended.
    VOC (20, 90, (10, 20)) at 300: 30, 60, 111, 162, 213, 264 / 60, 111, 162, 213, 264, 315."""
    if n_sources < 3:
        raise ScratchDetError(f"SSD's prior-size rule needs at least 3 sources, got {n_sources}")
    step = int(math.floor((max_ratio - min_ratio) / (n_sources - 2)))
    mins, maxs = [], []
    for ratio in range(min_ratio, max_ratio + 1, step):
        mins.append(min_dim * ratio / 100.0)
        maxs.append(min_dim * (ratio + step) / 100.0)
    mins = [min_dim * first[0] / 100.0] + mins
    maxs = [min_dim * first[1] / 100.0] + maxs
    if len(mins) != n_sources:
        raise ScratchDetError(f"prior sizes for {n_sources} sources came out as {len(mins)} "
                              f"(ratios {min_ratio}..{max_ratio})")
    return mins, maxs


def priors_per_location(min_sizes: int, max_sizes: int, aspect_ratios, flip: bool) -> int:
    """As CreateMultiBoxHead counts them (and as PriorBox does for distinct ratios != 1)."""
    n = (2 if max_sizes else 1) + len(aspect_ratios)
    n *= max(min_sizes, 1)
    if flip:
        n += len(aspect_ratios) * max(min_sizes, 1)
    return n


def multibox_head(net: NetSpec, data: Top, sources: list[Source], num_classes: int, priors: PriorSpec,
                  bn: bool, normalizations: tuple | None = None, kernel: int = 3, pad: int = 1,
                  lr_mult: float = 1, small_init: bool = False, unit_stride: bool = False) -> list[Top]:
    """Returns [mbox_loc, mbox_conf, mbox_priorbox]. ``normalizations[i] != -1`` puts SSD's L2
    Normalize (scale ``normalizations[i]``, per channel) on source i first. Head convs without BN
    have a bias (xavier, bias 0, lr 1/2); with BN they are bias-free, gaussian 0.01 (ConvBNLayer).
    ``small_init`` gives the biased convs the BN head's gaussian 0.01 weights instead of xavier.
    ``unit_stride`` writes their ``stride: 1`` (SSD's ConvBNLayer passes it; the released text has it)."""
    n = len(sources)
    for what, values in (("min sizes", priors.min_sizes), ("max sizes", priors.max_sizes),
                         ("aspect ratios", priors.aspect_ratios), ("steps", priors.steps)):
        if values and len(values) != n:
            raise ScratchDetError(f"{n} detection sources but {len(values)} {what}")
    locs, confs, boxes = [], [], []
    for i, src in enumerate(sources):
        name, top = src.name, src.top
        if normalizations and normalizations[i] != -1:
            net[f"{name}_norm"] = L.Normalize(top, scale_filler={"type": "constant", "value": normalizations[i]},
                                              across_spatial=False, channel_shared=False)
            name, top = f"{name}_norm", net[f"{name}_norm"]
        ars = tuple(priors.aspect_ratios[i]) if priors.aspect_ratios else ()
        has_max = bool(priors.max_sizes)
        per_loc = priors_per_location(1, 1 if has_max else 0, ars, priors.flip)
        for kind, outputs, bucket in (("loc", per_loc * 4, locs), ("conf", per_loc * num_classes, confs)):
            head = f"{name}_mbox_{kind}"
            if bn:
                net[head] = conv(top, outputs, kernel, pad=pad, filler=GAUSSIAN_001, lr_mult=lr_mult,
                                 unit_stride=unit_stride)
                named_bn_relu(net, head, None, style=HEAD, relu=False, lr_mult=lr_mult)
            else:
                net[head] = conv(top, outputs, kernel, pad=pad, bias=True, lr_mult=lr_mult,
                                 filler=GAUSSIAN_001 if small_init else XAVIER, unit_stride=unit_stride)
            net[f"{head}_perm"] = L.Permute(net[head], order=[0, 2, 3, 1])
            net[f"{head}_flat"] = L.Flatten(net[f"{head}_perm"], axis=1)
            bucket.append(net[f"{head}_flat"])
        pp = {"min_size": [priors.min_sizes[i]], "clip": priors.clip, "variance": list(VARIANCE),
              "offset": priors.offset}
        if has_max:
            pp["max_size"] = [priors.max_sizes[i]]
        if ars:
            pp["aspect_ratio"] = list(ars)
            pp["flip"] = priors.flip
        if priors.steps:
            pp["step"] = priors.steps[i]
        net[f"{name}_mbox_priorbox"] = L.PriorBox(top, data, prior_box_param=pp)
        boxes.append(net[f"{name}_mbox_priorbox"])
    net.mbox_loc = L.Concat(*locs, axis=1)
    net.mbox_conf = L.Concat(*confs, axis=1)
    net.mbox_priorbox = L.Concat(*boxes, axis=2)
    return [net.mbox_loc, net.mbox_conf, net.mbox_priorbox]


def multibox_loss(net: NetSpec, mbox: list[Top], label: Top, num_classes: int, use_difficult_gt: bool) -> None:
    """SSD's MultiBoxLoss settings (loc weight (neg_pos_ratio+1)/4 = 1, VALID normalisation)."""
    neg_pos_ratio = 3.0
    net.mbox_loss = L.MultiBoxLoss(
        *mbox, label,
        multibox_loss_param={
            "loc_loss_type": "SMOOTH_L1", "conf_loss_type": "SOFTMAX",
            "loc_weight": (neg_pos_ratio + 1.0) / 4.0, "num_classes": num_classes, "share_location": True,
            "match_type": "PER_PREDICTION", "overlap_threshold": 0.5, "use_prior_for_matching": True,
            "background_label_id": 0, "use_difficult_gt": use_difficult_gt, "mining_type": "MAX_NEGATIVE",
            "neg_pos_ratio": neg_pos_ratio, "neg_overlap": 0.5, "code_type": "CENTER_SIZE",
            "ignore_cross_boundary_bbox": False},
        loss_param={"normalization": "VALID"},
        include={"phase": "TRAIN"}, propagate_down=[True, True, False, False])


@dataclass(frozen=True)
class OutputSpec:
    """Where DetectionOutput writes its detections (``save_output_param``), and what the solver's
    DetectionEvaluate compares against. ``output_directory`` empty: no files are written."""
    num_classes: int
    label_map_file: str
    name_size_file: str
    num_test_image: int
    output_directory: str = ""
    output_name_prefix: str = "comp4_det_test_"
    output_format: str = "VOC"
    evaluate: bool = True       # False: no DetectionEvaluate (a test set without ground truth)


def detection_layers(net: NetSpec, mbox: list[Top], label: Top | None, out: OutputSpec) -> None:
    """SSD's test tail: softmax over classes, DetectionOutput (NMS 0.45, top_k 400, keep 200,
    confidence 0.01) and DetectionEvaluate (IoU 0.5, difficult ignored)."""
    c = out.num_classes
    net.mbox_conf_reshape = L.Reshape(mbox[1], shape={"dim": [0, -1, c]})
    net.mbox_conf_softmax = L.Softmax(net.mbox_conf_reshape, axis=2)
    net.mbox_conf_flatten = L.Flatten(net.mbox_conf_softmax, axis=1)
    dp = {"num_classes": c, "share_location": True, "background_label_id": 0,
          "nms_param": {"nms_threshold": 0.45, "top_k": 400}, "keep_top_k": 200,
          "confidence_threshold": 0.01, "code_type": "CENTER_SIZE"}
    if out.output_directory:
        dp["save_output_param"] = {
            "output_directory": out.output_directory, "output_name_prefix": out.output_name_prefix,
            "output_format": out.output_format, "label_map_file": out.label_map_file,
            "name_size_file": out.name_size_file, "num_test_image": out.num_test_image}
    net.detection_out = L.DetectionOutput(mbox[0], net.mbox_conf_flatten, mbox[2],
                                          detection_output_param=dp, include={"phase": "TEST"})
    if out.evaluate and label is not None:
        net.detection_eval = L.DetectionEvaluate(
            net.detection_out, label,
            detection_evaluate_param={"num_classes": c, "background_label_id": 0, "overlap_threshold": 0.5,
                                      "evaluate_difficult_gt": False, "name_size_file": out.name_size_file},
            include={"phase": "TEST"})
