"""Average precision from ranked detections: Caffe SSD's ``ComputeAP`` and the VOC devkit's rules.

Two families live here, because the project needs both and they differ in small ways:

* ``average_precision`` is Caffe's ``ComputeAP`` (caffe-ssd-spec §2.6), used by the solver's test
  pass. It works in float32 as the C++ does (precision/recall are ``float``, the 11 thresholds
  ``j / 10.`` are ``double``), so a recall of 7/10 stored as float32 (0.69999999) misses the 0.7
  threshold exactly as it does in Caffe.
* ``voc07_ap`` / ``voc_all_point_ap`` are the VOC devkit's ``VOCevaldet`` formulas on float64
  precision/recall arrays, used by ``eval voc``. The 11 thresholds are ``j / 10`` (the exact
  doubles), so a recall of exactly 7/10 counts at t = 0.7, as the devkit intends.

``detection_map`` is ``Solver::TestDetection``'s aggregation of DetectionEvaluate rows into mAP
(with Caffe's ``ComputeAP``); it lives here rather than in ``eval/`` because the engine's test pass
needs it and ``eval/`` sits above the engine; the engine's ``score`` module writes its log lines.

Pure numpy, at the level of ``boxes`` in the stack (DESIGN §1): the solver's in-training mAP and
``eval voc`` both use it.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

from .errors import ScratchDetError

AP_VERSIONS = ("11point", "MaxIntegral", "Integral")
_EPS = np.float32(1e-6)   # ComputeAP's ``const float eps``


def ranked_cumsums(tp_pairs: Sequence, fp_pairs: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """Caffe's ``CumSum`` of both lists: pairs (score, 0/1) stable-sorted by score descending (scores
    compared as float32, as Caffe stores them), then cumulative sums of the flags."""
    tp = _pairs(tp_pairs, "tp_pairs")
    fp = _pairs(fp_pairs, "fp_pairs")
    if len(tp[0]) != len(fp[0]):
        raise ScratchDetError(f"average precision: {len(tp[0])} true-positive pairs but {len(fp[0])} "
                              "false-positive pairs (they must describe the same detections)")
    if len(tp[0]) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tp_cum = tp[1][np.argsort(-tp[0], kind="stable")].cumsum()
    fp_cum = fp[1][np.argsort(-fp[0], kind="stable")].cumsum()
    return tp_cum, fp_cum


def _pairs(pairs, what: str) -> tuple[np.ndarray, np.ndarray]:
    arr = np.asarray(pairs, dtype=np.float64)
    if arr.size == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ScratchDetError(f"average precision: {what} must be (score, flag) pairs, got shape {arr.shape}")
    return arr[:, 0].astype(np.float32), arr[:, 1].astype(np.int64)


def average_precision(tp_pairs: Sequence, fp_pairs: Sequence, num_pos: int, ap_version: str) -> float:
    """Caffe SSD's ``ComputeAP``: ``tp_pairs`` / ``fp_pairs`` are (score, 0/1) for the same detections
    of one class, ``num_pos`` the number of ground-truth objects. 0 when there are no detections or
    no positives. ``ap_version``: "11point" (VOC2007), "MaxIntegral" (VOC2010+/ILSVRC), "Integral"."""
    if ap_version not in AP_VERSIONS:
        raise ScratchDetError(f"Unknown ap_version: {ap_version!r} (known: {', '.join(AP_VERSIONS)})")
    tp_cum, fp_cum = ranked_cumsums(tp_pairs, fp_pairs)
    num_pos = int(num_pos)
    if len(tp_cum) == 0 or num_pos == 0:
        return 0.0
    if tp_cum[-1] > num_pos:
        raise ScratchDetError(f"average precision: {int(tp_cum[-1])} true positives but only {num_pos} "
                              "ground-truth objects")
    tp_f = tp_cum.astype(np.float32)
    prec = tp_f / (tp_cum + fp_cum).astype(np.float32)
    rec = tp_f / np.float32(num_pos)
    if ap_version == "11point":
        return _caffe_11point(prec, rec)
    if ap_version == "MaxIntegral":
        return _caffe_max_integral(prec, rec)
    return _caffe_integral(prec, rec)


def _f32_sum(terms: Iterable) -> np.float32:
    """Left-to-right float32 accumulation, as ``*ap += term`` in the C++ (np.sum would pair up terms)."""
    terms = np.asarray(list(terms) if not isinstance(terms, np.ndarray) else terms, np.float32)
    return np.float32(0) if terms.size == 0 else np.cumsum(terms, dtype=np.float32)[-1]


def _caffe_11point(prec: np.ndarray, rec: np.ndarray) -> float:
    # max precision at recall >= j/10; the C++ compares the float recall with the double j/10.
    rec64 = rec.astype(np.float64)
    max_precs = [np.float32(prec[rec64 >= j / 10.0].max()) if (rec64 >= j / 10.0).any() else np.float32(0)
                 for j in range(11)]
    # the C++ adds max_precs[j] / 11 for j = 10 down to 0, in float
    return float(_f32_sum(np.float32(max_precs[j]) / np.float32(11) for j in range(10, -1, -1)))


def _caffe_max_integral(prec: np.ndarray, rec: np.ndarray) -> float:
    cur_rec, cur_prec = rec[-1], prec[-1]
    terms = []
    for i in range(len(prec) - 2, -1, -1):
        cur_prec = max(prec[i], cur_prec)
        step = np.float32(abs(cur_rec - rec[i]))
        if step > _EPS:
            terms.append(np.float32(cur_prec * step))
        cur_rec = rec[i]
    terms.append(np.float32(cur_rec * cur_prec))
    return float(_f32_sum(terms))


def _caffe_integral(prec: np.ndarray, rec: np.ndarray) -> float:
    prev = np.concatenate([np.zeros(1, np.float32), rec[:-1]])
    step = np.abs(rec - prev).astype(np.float32)
    keep = step > _EPS
    return float(_f32_sum((prec[keep] * step[keep]).astype(np.float32)))


# -- the VOC devkit's formulas (float64) ----------------------------------------------------------

def precision_recall(tp: np.ndarray, fp: np.ndarray, num_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall after each detection, given 0/1 flags already in ranked order
    (VOCevaldet: ``rec = cumsum(tp) / npos``, ``prec = cumsum(tp) ./ (cumsum(tp) + cumsum(fp))``).
    With no positives recall is 0 everywhere (the devkit would divide by zero)."""
    tp_cum = np.cumsum(np.asarray(tp, np.float64))
    fp_cum = np.cumsum(np.asarray(fp, np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        prec = np.where(tp_cum + fp_cum > 0, tp_cum / np.maximum(tp_cum + fp_cum, 1e-300), 0.0)
    rec = tp_cum / num_pos if num_pos > 0 else np.zeros_like(tp_cum)
    return prec, rec


def voc07_ap(prec: np.ndarray, rec: np.ndarray) -> float:
    """VOC2007's 11-point interpolated AP: mean over t = 0, 0.1, ..., 1 of max{prec : rec >= t}
    (0 where no point reaches t)."""
    prec, rec = np.asarray(prec, np.float64), np.asarray(rec, np.float64)
    total = 0.0
    for j in range(11):
        reached = rec >= j / 10
        total += (prec[reached].max() if reached.any() else 0.0) / 11
    return float(total)


def voc_all_point_ap(prec: np.ndarray, rec: np.ndarray) -> float:
    """VOC2010+ all-point AP: the area under the precision envelope (precision made monotone
    from the right), summed where recall changes, with sentinels rec 0..1 and prec 0..0."""
    mrec = np.concatenate([[0.0], np.asarray(rec, np.float64), [1.0]])
    mpre = np.concatenate([[0.0], np.asarray(prec, np.float64), [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    changed = np.nonzero(mrec[1:] != mrec[:-1])[0] + 1
    return float(np.sum((mrec[changed] - mrec[changed - 1]) * mpre[changed]))


def mean(values: Iterable[float]) -> float:
    """Mean over classes; 0 for an empty list (no classes at all)."""
    values = list(values)
    return float(sum(values) / len(values)) if values else 0.0


def detection_map(rows_per_pass: Sequence, ap_version: str) -> tuple[float, list[tuple[int, float | None]]]:
    """Solver::TestDetection for one output blob: ``rows_per_pass`` are the [K, 5] DetectionEvaluate
    rows (image_id, label, score, tp, fp) of each forward pass. Returns the mAP and, for every label
    with ground truth in label order, its AP, or None where it has no detection at all (Caffe warns
    "Missing true_pos" and counts it as 0 in the mean). Rows that matched a difficult ground truth
    (tp = fp = 0) are not evaluated; ground-truth rows (image_id -1) carry the count in ``score``."""
    num_pos: dict[int, int] = {}
    true_pos: dict[int, list] = defaultdict(list)
    false_pos: dict[int, list] = defaultdict(list)
    for rows in rows_per_pass:
        for item, label, score, tp, fp in np.asarray(rows, np.float64).reshape(-1, 5):
            label = int(label)
            if int(item) == -1:
                num_pos[label] = num_pos.get(label, 0) + int(score)
                continue
            tp, fp = int(tp), int(fp)
            if tp == 0 and fp == 0:
                continue
            true_pos[label].append((float(score), tp))
            false_pos[label].append((float(score), fp))
    if not num_pos:
        return 0.0, []
    total = 0.0
    per_label: list[tuple[int, float | None]] = []
    for label in sorted(num_pos):
        if label not in true_pos:
            per_label.append((label, None))
            continue
        ap = average_precision(true_pos[label], false_pos[label], num_pos[label], ap_version)
        total += ap
        per_label.append((label, ap))
    return total / len(num_pos), per_label
