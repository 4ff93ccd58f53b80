"""Box operations of the SSD fork's ``bbox_util.cpp`` (caffe-ssd-spec §2.1-§2.5), once, in float32.

Boxes are ``[..., 4]`` arrays of (xmin, ymin, xmax, ymax), normalized to the network input unless a
function says otherwise. Matching, mining order and NMS are discrete decisions Caffe takes in
float32; the numpy functions take them as Caffe's loops do, and the ``_t`` functions take the same
decisions batched in torch (same float32 arithmetic) on the net's device. ``encode``/``decode``
accept either, so the loss layer keeps the autograd graph.
"""
from __future__ import annotations

import numpy as np

F32 = np.float32

# PriorBoxParameter.CodeType
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3
# MultiBoxLossParameter.MatchType
BIPARTITE, PER_PREDICTION = 0, 1


@np.errstate(over="ignore", invalid="ignore")      # diverged predictions decode to inf; Caffe carries on
def sizes(boxes, normalized: bool = True) -> np.ndarray:
    """BBoxSize: 0 for inverted boxes; (w)(h) normalized, (w+1)(h+1) in pixels."""
    b = np.asarray(boxes, dtype=F32)
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    if not normalized:
        w, h = w + F32(1), h + F32(1)
    out = w * h
    return np.where((b[..., 2] < b[..., 0]) | (b[..., 3] < b[..., 1]), F32(0), out).astype(F32)


@np.errstate(over="ignore", invalid="ignore", divide="ignore")
def jaccard(a, b, normalized: bool = True) -> np.ndarray:
    """Pairwise JaccardOverlap, ``[len(a), len(b)]``: touching or disjoint boxes give 0."""
    a = np.asarray(a, dtype=F32).reshape(-1, 4)
    b = np.asarray(b, dtype=F32).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    iw, ih = ix1 - ix0, iy1 - iy0
    if not normalized:
        iw, ih = iw + F32(1), ih + F32(1)
    disjoint = ((b[None, :, 0] > a[:, None, 2]) | (b[None, :, 2] < a[:, None, 0])
                | (b[None, :, 1] > a[:, None, 3]) | (b[None, :, 3] < a[:, None, 1]))
    ok = (iw > 0) & (ih > 0) & ~disjoint
    inter = np.where(ok, iw * ih, F32(0)).astype(F32)
    union = sizes(a, normalized)[:, None] + sizes(b, normalized)[None, :] - inter
    iou = np.where(ok, inter / np.where(ok, union, F32(1)), F32(0))
    return iou.astype(F32)


def clip(boxes) -> np.ndarray:
    """ClipBBox to [0, 1]."""
    return np.clip(np.asarray(boxes, dtype=F32), F32(0), F32(1))


def cross_boundary(boxes) -> np.ndarray:
    """IsCrossBoundaryBBox: any coordinate outside [0, 1]."""
    b = np.asarray(boxes, dtype=F32)
    return ((b < 0) | (b > 1)).any(axis=-1)


# -- encoding -------------------------------------------------------------------------------------

def _lib(x):
    import torch
    return torch if isinstance(x, torch.Tensor) else np


def encode(priors, variances, gt, code_type: int = CENTER_SIZE, variance_in_target: bool = False):
    """EncodeBBox of matched ground truth ``gt`` against ``priors`` (same leading shape)."""
    xp = _lib(gt)
    p, v, g = priors, variances, gt
    if code_type == CORNER:
        t = g - p
        return t if variance_in_target else t / v
    pw, ph = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    if code_type == CORNER_SIZE:
        scale = xp.stack([pw, ph, pw, ph], -1)
        t = (g - p) / scale
        return t if variance_in_target else t / v
    if code_type != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    pcx, pcy = (p[..., 0] + p[..., 2]) / 2, (p[..., 1] + p[..., 3]) / 2
    gw, gh = g[..., 2] - g[..., 0], g[..., 3] - g[..., 1]
    gcx, gcy = (g[..., 0] + g[..., 2]) / 2, (g[..., 1] + g[..., 3]) / 2
    t = xp.stack([(gcx - pcx) / pw, (gcy - pcy) / ph, xp.log(gw / pw), xp.log(gh / ph)], -1)
    return t if variance_in_target else t / v


@np.errstate(over="ignore", invalid="ignore")
def decode(priors, variances, t, code_type: int = CENTER_SIZE, variance_in_target: bool = False):
    """DecodeBBox of predictions ``t`` (no clipping, as DetectionOutput and matching use it)."""
    xp = _lib(t)
    p = priors
    v = 1 if variance_in_target else variances
    if code_type == CORNER:
        return p + v * t
    pw, ph = p[..., 2] - p[..., 0], p[..., 3] - p[..., 1]
    if code_type == CORNER_SIZE:
        return p + v * t * xp.stack([pw, ph, pw, ph], -1)
    if code_type != CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    pcx, pcy = (p[..., 0] + p[..., 2]) / 2, (p[..., 1] + p[..., 3]) / 2
    s = t if variance_in_target else variances * t
    cx = s[..., 0] * pw + pcx
    cy = s[..., 1] * ph + pcy
    w = xp.exp(s[..., 2]) * pw
    h = xp.exp(s[..., 3]) * ph
    return xp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


# -- matching -------------------------------------------------------------------------------------

def match(priors, gt, overlap_threshold: float = 0.5, match_type: int = PER_PREDICTION,
          ignore_cross_boundary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """MatchBBox: (match_index [P] int, match_overlap [P] float32) of ``priors`` against ``gt``.

    -1 unmatched, -2 cross-boundary prior (with ``ignore_cross_boundary``). The bipartite pass
    gives every gt its best free prior (even below the threshold); PER_PREDICTION then assigns
    the rest to their best gt at or above ``overlap_threshold``.
    """
    priors = np.asarray(priors, dtype=F32).reshape(-1, 4)
    gt = np.asarray(gt, dtype=F32).reshape(-1, 4)
    n_p = len(priors)
    index = np.full(n_p, -1, dtype=np.int64)
    overlap = np.zeros(n_p, dtype=F32)
    if len(gt) == 0:
        return index, overlap
    if ignore_cross_boundary:
        index[cross_boundary(priors)] = -2
    iou = jaccard(priors, gt)
    iou = np.where(iou > F32(1e-6), iou, F32(0))
    iou[index == -2] = 0          # Caffe never records overlaps of ignored priors
    overlap = iou.max(axis=1)
    work = iou.copy()
    work[index != -1] = -1
    for _ in range(len(gt)):
        flat = int(np.argmax(work))          # first maximum in prior-major order: Caffe's tie rule
        i, j = divmod(flat, work.shape[1])
        if work[i, j] <= 0:
            break
        index[i] = j
        overlap[i] = work[i, j]
        work[i, :] = -1
        work[:, j] = -1
    if match_type == PER_PREDICTION:
        free = np.flatnonzero(index == -1)
        if len(free):
            sub = iou[free]
            best = sub.argmax(axis=1)                    # first gt among equal overlaps
            ok = sub[np.arange(len(free)), best] >= F32(overlap_threshold)
            index[free[ok]] = best[ok]
            overlap[free[ok]] = sub[np.arange(len(free)), best][ok]
    return index, overlap


# -- non-maximum suppression -----------------------------------------------------------------------

def nms(boxes, scores, threshold: float, top_k: int = -1, eta: float = 1.0,
        score_threshold: float | None = None) -> np.ndarray:
    """ApplyNMSFast: indices kept, in descending score order.

    Candidates are the boxes scoring above ``score_threshold`` (strictly), stable-sorted by score
    and cut to ``top_k``; a candidate is kept when its overlap with every kept box is at most the
    (adaptive, with ``eta`` < 1) threshold.
    """
    boxes = np.asarray(boxes, dtype=F32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=F32).reshape(-1)
    cand = np.arange(len(scores)) if score_threshold is None else np.flatnonzero(scores > F32(score_threshold))
    order = cand[np.argsort(-scores[cand], kind="stable")]
    if top_k > -1:
        order = order[:top_k]
    if len(order) == 0:
        return order
    iou = jaccard(boxes[order], boxes[order])
    keep: list[int] = []
    if eta >= 1.0:
        suppressed = np.zeros(len(order), dtype=bool)
        for k in range(len(order)):
            if suppressed[k]:
                continue
            keep.append(k)
            suppressed |= iou[k] > F32(threshold)
    else:
        adaptive = F32(threshold)          # Caffe's float, multiplied in float
        for k in range(len(order)):
            if all(iou[k, j] <= adaptive for j in keep):
                keep.append(k)
                if adaptive > F32(0.5):
                    adaptive = F32(adaptive * F32(eta))
    return order[np.asarray(keep, dtype=np.int64)]


# -- prior boxes -----------------------------------------------------------------------------------

def prior_boxes(height: int, width: int, img_h: int, img_w: int, step_h: float, step_w: float,
                min_sizes, max_sizes, aspect_ratios, offset: float = 0.5, clip_boxes: bool = False):
    """PriorBox's boxes ``[H*W*num_priors, 4]`` in the fork's order (cell row-major; per min size:
    min square, sqrt(min*max) square, then the non-1 aspect ratios). ``aspect_ratios`` is the
    de-duplicated, flipped list that starts with 1. Rounding follows the layer: centres and box
    sides are float32, the corner arithmetic is double, the result float32."""
    sides: list[tuple[float, float]] = []
    for s, mn in enumerate(min_sizes):
        mn = int(mn)                                  # the fork truncates sizes to int
        sides.append((F32(mn), F32(mn)))
        if len(max_sizes):
            sq = F32(np.sqrt(float(mn * int(max_sizes[s]))))
            sides.append((sq, sq))
        for ar in aspect_ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            r = np.sqrt(float(F32(ar)))
            sides.append((F32(mn * r), F32(mn / r)))
    bw = np.asarray([s[0] for s in sides], dtype=np.float64) / 2.0
    bh = np.asarray([s[1] for s in sides], dtype=np.float64) / 2.0
    cx = ((np.arange(width, dtype=F32) + F32(offset)) * F32(step_w)).astype(np.float64)
    cy = ((np.arange(height, dtype=F32) + F32(offset)) * F32(step_h)).astype(np.float64)
    cy, cx = cy[:, None, None], cx[None, :, None]
    out = np.stack(np.broadcast_arrays((cx - bw) / img_w, (cy - bh) / img_h,
                                       (cx + bw) / img_w, (cy + bh) / img_h), -1)
    arr = out.astype(F32).reshape(-1, 4)
    return clip(arr) if clip_boxes else arr


# -- the same decisions in torch, batched, on the net's device ------------------------------------------
# (the arithmetic of ``sizes`` / ``jaccard`` op for op, so float32 results are the numpy ones)

def overlap_t(a, b):
    """Batched pairwise JaccardOverlap of normalized boxes for threshold decisions: ``a`` [..., A, 4],
    ``b`` [..., B, 4] -> [..., A, B], torch float32. Equal to ``jaccard`` wherever the boxes are
    finite and do not both have zero size; elsewhere it may give NaN where ``jaccard`` gives 0,
    and ``overlap > t`` (t >= 0) decides the same for both."""
    # contiguous coordinate planes: torch's CPU kernels broadcast those far faster than strided views
    ax0, ay0, ax1, ay1 = (a[..., i].contiguous()[..., :, None] for i in range(4))
    bx0, by0, bx1, by1 = (b[..., i].contiguous()[..., None, :] for i in range(4))
    # a pair that does not overlap (jaccard's "not ok", its disjoint test included) has iw <= 0 or
    # ih <= 0, so its intersection clamps to 0
    iw = (ax1.minimum(bx1) - ax0.maximum(bx0)).clamp_(min=0)
    ih = (ay1.minimum(by1) - ay0.maximum(by0)).clamp_(min=0)
    inter = iw.mul_(ih)

    def size(x0, y0, x1, y1):         # BBoxSize: 0 for an inverted box
        return (x1 - x0).clamp_(min=0) * (y1 - y0).clamp_(min=0)
    union = (size(ax0, ay0, ax1, ay1) + size(bx0, by0, bx1, by1)).sub_(inter)
    return inter.div_(union)


def top_desc_t(values, k: int):
    """Indices of the ``k`` largest ``values`` along the last axis, largest first, equal values by
    lower index first: numpy's stable argsort of ``-values`` cut to ``k``, without a full stable
    sort (the float32 values and their indices form one unique int64 key per element)."""
    import torch
    v = values.float() + 0.0                                    # -0.0 ties with 0.0, as in numpy
    bits = v.view(torch.int32).long()
    ordered = torch.where(bits < 0, -(bits & 0x7FFFFFFF) - 1, bits)     # monotonic in the float value
    n = values.shape[-1]
    index = torch.arange(n, device=values.device)
    key = ordered * (1 << 32) + (n - 1 - index)
    return torch.topk(key, min(k, n), dim=-1, largest=True, sorted=True).indices


def nms_keep_t(boxes, valid, threshold: float, eta: float = 1.0, chunk: int | None = None):
    """ApplyNMSFast's greedy pass for many rows at once: ``boxes`` [R, K, 4] in candidate order
    (score descending), ``valid`` [R, K] bool -> keep [R, K] bool. A candidate is kept when its
    overlap with every kept earlier one is at most the (adaptive) threshold, as ``nms`` decides.

    Candidates are taken in order for all rows at once (a few small tensor operations per
    candidate, no host sync); with eta < 1 the threshold shrinks after every kept box, per row.
    The overlaps are computed ``chunk`` pair-values at a time (small on the CPU, where large
    temporaries cost more than the arithmetic)."""
    import torch
    r, k = valid.shape
    keep = torch.zeros_like(valid)
    if r == 0 or k == 0:
        return keep
    if chunk is None:
        chunk = 1 << 26 if valid.device.type == "cuda" else 1 << 17
    thr = float(F32(threshold))
    step = max(1, chunk // (k * k))
    adaptive_needed = eta < 1.0
    over = torch.empty((r, k, k), dtype=boxes.dtype if adaptive_needed else torch.bool, device=valid.device)
    for s in range(0, r, step):
        b = boxes[s:s + step]
        iou = overlap_t(b, b)
        over[s:s + step] = iou if adaptive_needed else iou > thr
    if not adaptive_needed:
        suppressed = torch.zeros_like(valid)
        for j in range(k):
            kept = valid[:, j] & ~suppressed[:, j]
            keep[:, j] = kept
            suppressed |= over[:, j] & kept[:, None]
        return keep
    adaptive = torch.full((r,), thr, dtype=over.dtype, device=over.device)
    f_eta = torch.tensor(float(F32(eta)), dtype=over.dtype, device=over.device)
    for j in range(k):
        ok = valid[:, j] & ~(keep[:, :j] & (over[:, :j, j] > adaptive[:, None])).any(1)
        keep[:, j] = ok
        adaptive = torch.where(ok & (adaptive > 0.5), adaptive * f_eta, adaptive)
    return keep


def match_t(priors, gt, gt_valid, overlap_threshold: float = 0.5, match_type: int = PER_PREDICTION,
            ignore_cross_boundary: bool = False):
    """``match`` for a batch at once: ``priors`` [P, 4], ``gt`` [N, G, 4] with ``gt_valid`` [N, G]
    (padding false) -> (match_index [N, P] int64, match_overlap [N, P] float32), the same decisions
    and tie rules (the bipartite pass takes the first maximum in prior-major order, one gt per
    step for every image together; per prediction the first gt among equal overlaps)."""
    import torch
    n, g = gt_valid.shape
    p = priors.shape[0]
    dev = priors.device
    index = torch.full((n, p), -1, dtype=torch.long, device=dev)
    overlap = torch.zeros((n, p), dtype=torch.float32, device=dev)
    if g == 0 or n == 0:
        return index, overlap
    iou = overlap_t(priors.expand(n, p, 4), gt)                      # [N, P, G]
    iou = torch.where(iou > float(F32(1e-6)), iou, iou.new_zeros(()))  # (NaN -> 0, as jaccard's 0 would)
    iou = iou.masked_fill(~gt_valid[:, None, :], 0.0)
    if ignore_cross_boundary:
        cross = ((priors < 0) | (priors > 1)).any(-1)                 # [P]
        index.masked_fill_(cross[None, :], -2)
        iou = iou.masked_fill(cross[None, :, None], 0.0)
    overlap = iou.max(dim=2).values
    work = iou.masked_fill(~gt_valid[:, None, :], -1.0)
    work = work.masked_fill((index != -1)[:, :, None], -1.0)
    rows = torch.arange(n, device=dev)
    for _ in range(g):
        flat = work.reshape(n, p * g)
        best = flat.argmax(dim=1)                                      # first maximum
        value = flat.gather(1, best[:, None])[:, 0]
        active = value > 0
        i, j = best // g, best % g
        index[rows, i] = torch.where(active, j, index[rows, i])
        overlap[rows, i] = torch.where(active, value, overlap[rows, i])
        work[rows, i, :] = torch.where(active[:, None], work.new_full((), -1.0), work[rows, i, :])
        work[rows, :, j] = torch.where(active[:, None], work.new_full((), -1.0), work[rows, :, j])
    if match_type == PER_PREDICTION:
        scored = iou.masked_fill(~gt_valid[:, None, :], -1.0)
        best = scored.argmax(dim=2)                                    # first gt among equal overlaps
        best_iou = scored.gather(2, best[..., None])[..., 0]
        take = (index == -1) & (best_iou >= float(F32(overlap_threshold)))
        index = torch.where(take, best, index)
        overlap = torch.where(take, best_iou, overlap)
    return index, overlap
