"""PASCAL VOC detection evaluation as the devkit's ``VOCevaldet`` defines it.

Per class: detections ranked by score (a stable sort of the given order, as MATLAB's ``sort``);
each is matched to the ground-truth box of its image and class with the highest overlap, overlap
being IoU with the devkit's +1 pixel convention (a box spans ``xmax - xmin + 1`` pixels). At overlap
>= 0.5 the detection is a true positive the first time that box is hit and a false positive (a
duplicate) afterwards; a match to a *difficult* box is neither (ignored), and difficult boxes are
not counted as positives. Anything else is a false positive. Both AP rules are reported: VOC2007's
11-point and VOC2010+'s all-point (area under the monotone precision envelope).

A class with no detections scores 0 and still counts in the mean, as in the devkit and in Caffe's
solver; a class without any (non-difficult) ground truth also scores 0 (the devkit would divide by
zero) and is reported in the warnings.

AP by object size (``evaluate_by_size``) carries COCO's area ranges over to these rules: within a
range, ground truth outside it is ignored like a difficult box (a detection matching it is neither
TP nor FP) and a detection outside it that matches nothing counted is ignored too, so a small-object
AP is not charged for the large boxes a detector finds. Areas use the same +1 pixel convention.
A class without ground truth in a range is left out of that range's mean (COCO's -1).
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping

import numpy as np

from ..errors import ScratchDetError
from .. import ap as ap_math
from .detfiles import ClassDetections
from .groundtruth import GroundTruth

IOU_THRESHOLD = 0.5   # VOCopts.minoverlap
COCO_SIZE_SIDES = (32, 96)   # COCO's small/medium/large limits, as sqrt(area) in pixels


@dataclass
class ClassResult:
    name: str
    num_pos: int              # ground-truth objects that count (non-difficult unless use_difficult)
    num_det: int
    tp: int
    fp: int
    ignored: int              # detections that matched a difficult object
    ap07: float               # VOC2007 11-point
    ap_all: float             # VOC2010+ all-point
    precision: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    recall: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_dict(self) -> dict:
        return {"class": self.name, "num_pos": self.num_pos, "num_det": self.num_det, "tp": self.tp,
                "fp": self.fp, "ignored": self.ignored, "ap_11point": self.ap07, "ap_all_point": self.ap_all}


@dataclass
class VOCResult:
    classes: list[ClassResult]
    iou_threshold: float = IOU_THRESHOLD
    use_difficult: bool = False
    warnings: list[str] = field(default_factory=list)
    area_range: tuple[float, float] | None = None

    def _mean(self, values) -> float:
        if self.area_range is None:
            return ap_math.mean(values)
        scored = [v for v in values if not math.isnan(v)]      # classes with objects of this size
        return ap_math.mean(scored) if scored else float("nan")

    @property
    def map07(self) -> float:
        return self._mean([c.ap07 for c in self.classes])

    @property
    def map_all(self) -> float:
        return self._mean([c.ap_all for c in self.classes])

    def by_name(self) -> dict[str, ClassResult]:
        return {c.name: c for c in self.classes}

    def to_dict(self) -> dict:
        return {"metric": "voc", "iou_threshold": self.iou_threshold, "use_difficult": self.use_difficult,
                "map_11point": self.map07, "map_all_point": self.map_all,
                "classes": [c.to_dict() for c in self.classes], "warnings": list(self.warnings)}

    def format_table(self) -> str:
        width = max([len("class")] + [len(c.name) for c in self.classes])
        lines = [f"{'class':<{width}}  {'GT':>6} {'dets':>8} {'TP':>6} {'FP':>8}  {'AP 11pt':>8} {'AP all':>8}"]
        for c in self.classes:
            lines.append(f"{c.name:<{width}}  {c.num_pos:>6} {c.num_det:>8} {c.tp:>6} {c.fp:>8}  "
                         f"{100 * c.ap07:>8.2f} {100 * c.ap_all:>8.2f}")
        lines.append(f"{'mean':<{width}}  {'':>6} {'':>8} {'':>6} {'':>8}  {100 * self.map07:>8.2f} {100 * self.map_all:>8.2f}")
        lines.append(f"mAP (VOC2007 11-point)    = {self.map07:.4f}")
        lines.append(f"mAP (VOC2010+ all-point)  = {self.map_all:.4f}")
        return "\n".join(lines)


def overlaps(boxes: np.ndarray, gt_boxes: np.ndarray) -> np.ndarray:
    """[D, G] IoU with the +1 pixel convention; pairs that do not intersect get -inf (VOCevaldet
    computes no overlap for them, so they can never be the best match)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 1, 4)
    g = np.asarray(gt_boxes, np.float64).reshape(1, -1, 4)
    # huge (finite) detection boxes overflow the areas to inf: their IoU is then 0 or nan, never a match
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        iw = np.minimum(b[..., 2], g[..., 2]) - np.maximum(b[..., 0], g[..., 0]) + 1
        ih = np.minimum(b[..., 3], g[..., 3]) - np.maximum(b[..., 1], g[..., 1]) + 1
        inter = iw * ih
        union = ((b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
                 + (g[..., 2] - g[..., 0] + 1) * (g[..., 3] - g[..., 1] + 1) - inter)
        ov = inter / union
    return np.where((iw > 0) & (ih > 0), np.nan_to_num(ov, nan=0.0), -np.inf)


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """Pixel areas with the devkit's +1 convention (a box spans ``xmax - xmin + 1`` pixels)."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    with np.errstate(over="ignore"):     # a box of 1e200 pixels a side has an infinite area, not a warning
        return np.maximum(b[:, 2] - b[:, 0] + 1, 0) * np.maximum(b[:, 3] - b[:, 1] + 1, 0)


def in_area_range(boxes: np.ndarray, area_range: tuple[float, float] | None) -> np.ndarray:
    """Which boxes have ``lo <= area < hi``; all of them without a range."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    if area_range is None:
        return np.ones(len(boxes), bool)
    areas = box_areas(boxes)
    return (areas >= area_range[0]) & (areas < area_range[1])


def match_class(dets: ClassDetections, truth: Mapping[str, tuple[np.ndarray, np.ndarray]],
                iou_threshold: float = IOU_THRESHOLD, use_difficult: bool = False, class_name: str = "?",
                area_range: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """0/1 flags (tp, fp) of one class's detections in ranked order. ``truth``: image id ->
    (boxes [G, 4], difficult [G]) of this class, for every image of the test set. With
    ``area_range``, a false positive whose own box lies outside the range is ignored (the caller
    marks ground truth outside it as difficult)."""
    n = len(dets)
    tp, fp = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if n == 0:
        return tp, fp
    order = np.argsort(-dets.scores, kind="stable")
    boxes = dets.boxes[order]
    by_image: dict[str, list[int]] = defaultdict(list)
    for rank, k in enumerate(order):
        by_image[dets.images[k]].append(rank)
    unknown = [img for img in by_image if img not in truth]
    if unknown:
        raise ScratchDetError(f"detections of class {class_name!r} name image {unknown[0]!r}, which is not in the "
                              f"ground truth ({len(unknown)} such image(s); wrong image list or annotations?)")
    for image, ranks in by_image.items():
        ranks = np.asarray(ranks)                     # ascending: best-scored first
        gt_boxes, gt_difficult = truth[image]
        if len(gt_boxes) == 0:
            fp[ranks] = 1
            continue
        ov = overlaps(boxes[ranks], gt_boxes)
        best = np.argmax(ov, axis=1)                  # the first of equal maxima, as ``ov > ovmax``
        hit = ov[np.arange(len(ranks)), best] >= iou_threshold
        fp[ranks[~hit]] = 1
        difficult = gt_difficult[best] & (not use_difficult)
        counted = hit & ~difficult                    # hits on difficult boxes: neither tp nor fp
        _, first = np.unique(best[counted], return_index=True)
        counted_ranks = ranks[counted]
        flags = np.zeros(len(counted_ranks), bool)
        flags[first] = True
        tp[counted_ranks[flags]] = 1
        fp[counted_ranks[~flags]] = 1                 # later hits on an already detected box
    if area_range is not None:
        fp[~in_area_range(boxes, area_range)] = 0     # boxes are in ranked order, as fp
    return tp, fp


def class_truth(gt: GroundTruth, name: str, use_difficult: bool,
                area_range: tuple[float, float] | None = None) -> tuple[dict, int]:
    """Per image (boxes, ignored) of one class, and the number of objects that count: ignored are
    the difficult ones (unless ``use_difficult``) and those outside ``area_range``."""
    truth, num_pos = {}, 0
    for image, t in gt.images.items():
        boxes, difficult = t.of_class(name)
        if use_difficult:
            difficult = np.zeros(len(boxes), bool)
        difficult = difficult | ~in_area_range(boxes, area_range)
        truth[image] = (boxes, difficult)
        num_pos += int((~difficult).sum())
    return truth, num_pos


def evaluate(dets: Mapping[str, ClassDetections], gt: GroundTruth, classes: Iterable[str],
             iou_threshold: float = IOU_THRESHOLD, use_difficult: bool = False,
             area_range: tuple[float, float] | None = None) -> VOCResult:
    """Per-class AP (both rules) and their means over ``classes``; with ``area_range`` (pixel
    areas ``[lo, hi)``), only the objects of that size count (module docstring)."""
    classes = list(classes)
    if not classes:
        raise ScratchDetError("VOC evaluation: no classes to evaluate")
    if not gt.images:
        raise ScratchDetError(f"VOC evaluation: no ground-truth images in {gt.source or 'the ground truth'}")
    result = VOCResult([], iou_threshold, use_difficult, area_range=area_range)
    extra = sorted(set(gt.class_names()) - set(classes))
    if extra:
        result.warnings.append(f"ground-truth classes not evaluated (not in the class list): {', '.join(extra)}")
    unknown = sorted(set(dets) - set(classes))
    if unknown:
        result.warnings.append(f"detections of classes not evaluated: {', '.join(unknown)}")
    for name in classes:
        class_dets = dets.get(name) or ClassDetections.empty()
        truth, num_pos = class_truth(gt, name, use_difficult, area_range)
        # use_difficult is already folded into the ignored flags of ``truth``
        tp, fp = match_class(class_dets, truth, iou_threshold, False, name, area_range)
        prec, rec = ap_math.precision_recall(tp, fp, num_pos)
        if num_pos == 0 and area_range is not None:
            ap07 = ap_all = float("nan")              # no object of this size: not in this range's mean
        elif num_pos == 0:
            result.warnings.append(f"class {name!r} has no ground-truth objects: AP counted as 0")
            ap07 = ap_all = 0.0
        else:
            ap07, ap_all = ap_math.voc07_ap(prec, rec), ap_math.voc_all_point_ap(prec, rec)
        if len(class_dets) == 0 and num_pos > 0 and area_range is None:
            result.warnings.append(f"class {name!r} has no detections: AP 0")
        result.classes.append(ClassResult(name, num_pos, len(class_dets), int(tp.sum()), int(fp.sum()),
                                          int(len(class_dets) - tp.sum() - fp.sum()), ap07, ap_all, prec, rec))
    return result


def size_ranges(sides: tuple[float, float] = COCO_SIZE_SIDES) -> dict[str, tuple[float, float]]:
    """small / medium / large pixel-area ranges from two side limits (COCO: 32 and 96 pixels;
    scale them with the images, e.g. x 300/640 for ~300-pixel images against COCO's ~640)."""
    small, large = (float(v) for v in sides)
    if not 0 < small < large:
        raise ScratchDetError(f"object size limits must satisfy 0 < small < large, got {small:g}, {large:g}")
    return {"small": (0.0, small ** 2), "medium": (small ** 2, large ** 2), "large": (large ** 2, math.inf)}


def evaluate_by_size(dets: Mapping[str, ClassDetections], gt: GroundTruth, classes: Iterable[str],
                     iou_threshold: float = IOU_THRESHOLD, use_difficult: bool = False,
                     sides: tuple[float, float] = COCO_SIZE_SIDES) -> dict[str, VOCResult]:
    """The evaluation once per object size range (module docstring), keyed small/medium/large."""
    classes = list(classes)
    return {name: evaluate(dets, gt, classes, iou_threshold, use_difficult, area_range)
            for name, area_range in size_ranges(sides).items()}


def format_size_table(by_size: Mapping[str, VOCResult]) -> str:
    """One line per size range: its limits, the objects that count, and both mAPs."""
    lines = [f"{'size':<7} {'area (pixels)':>19} {'GT':>6}  {'mAP 11pt':>8} {'mAP all':>8}"]
    for name, r in by_size.items():
        lo, hi = r.area_range
        limits = f"[{lo:g}, {hi:g})" if math.isfinite(hi) else f">= {lo:g}"
        gt_count = sum(c.num_pos for c in r.classes)
        fmt = lambda v: "n/a" if math.isnan(v) else f"{100 * v:.2f}"   # noqa: E731
        lines.append(f"{name:<7} {limits:>19} {gt_count:>6}  {fmt(r.map07):>8} {fmt(r.map_all):>8}")
    return "\n".join(lines)


def default_classes(gt: GroundTruth) -> list[str]:
    """Without a label map: the 20 VOC classes in the devkit's order when the ground truth uses
    only those, else the names found, sorted."""
    from ..data.labelmap import VOC_CLASSES
    found = gt.class_names()
    return list(VOC_CLASSES) if set(found) <= set(VOC_CLASSES) else found


def labelmap_classes(labelmap, background_label: int = 0) -> tuple[list[str], dict[int, str], dict[str, str]]:
    """(class names in label order without the background, label -> name, name -> display name).
    Ground truth and file names use ``name``; the SSD fork names result files by display name, so
    both are accepted when reading."""
    items = sorted(labelmap.item, key=lambda it: it.label)
    names = [it.name for it in items if it.label != background_label]
    return names, {it.label: it.name for it in items}, {it.name: (it.display_name or it.name) for it in items}
