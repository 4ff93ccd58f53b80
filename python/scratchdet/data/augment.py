"""SSD's data augmentation, as the fork's AnnotatedData layer applies it (caffe-ssd-spec §3).

Per image, in this order: photometric distortion (``distort_param``), zoom-out onto a mean-filled
canvas (``expand_param``), the batch samplers' random crop (``annotated_data_param.batch_sampler``),
then ``DataTransformer``: resize (``resize_param``), optional fixed crop, mirror, mean subtraction
and scale, giving a float CHW BGR array. Boxes follow every geometric step with Caffe's rules:
``UpdateBBoxByResizePolicy``, the emit constraint, ``ProjectBBox`` (drop when outside, clip to
[0, 1], drop when empty) and the mirror flip.

Randomness comes from a ``numpy.random.Generator`` passed in, so a sample is a pure function of
(record, seed). The draws follow Caffe's order step by step but cannot reproduce its boost
stream. Caffe keeps an encoded datum encoded: after distort, after an expansion and after a
batch sampler's crop it writes the image back as a JPEG at OpenCV's default quality (95) and
decodes it again for the next step. Each round trip changes pixels by compression noise, and the
SSD test nets' empty ``batch_sampler {}`` makes one for every test image (measured on the
synthetic set: mean |pixel - mean| 41.209 in real Caffe's data blob, 41.261 from the stored JPEG,
41.209 after one cv2 round trip). ``reencode_jpeg`` turns the round trips on; the AnnotatedData
layer does it for encoded records, as Caffe does.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..caffe.netstate import TRAIN
from ..caffe.schema import pb
from ..errors import ScratchDetError

RP = pb.ResizeParameter
_INTERP = {RP.LINEAR: cv2.INTER_LINEAR, RP.AREA: cv2.INTER_AREA, RP.NEAREST: cv2.INTER_NEAREST,
           RP.CUBIC: cv2.INTER_CUBIC, RP.LANCZOS4: cv2.INTER_LANCZOS4}
_PAD = {RP.CONSTANT: cv2.BORDER_CONSTANT, RP.MIRRORED: cv2.BORDER_REFLECT101,
        RP.REPEAT_NEAREST: cv2.BORDER_REPLICATE}
UNIT_BOX = (0.0, 0.0, 1.0, 1.0)


@dataclass
class Sample:
    """An image (HxWx3 uint8 BGR) with its boxes in stored order: ``labels`` (group label),
    ``boxes`` [N,4] normalized xmin, ymin, xmax, ymax, ``difficult``, ``instance_ids``."""
    image: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    difficult: np.ndarray
    instance_ids: np.ndarray

    @classmethod
    def make(cls, image, labels=(), boxes=(), difficult=None, instance_ids=None) -> "Sample":
        labels = np.asarray(labels, np.int32).reshape(-1)
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        n = len(labels)
        difficult = np.zeros(n, bool) if difficult is None else np.asarray(difficult, bool).reshape(-1)
        instance_ids = np.arange(n, dtype=np.int32) if instance_ids is None else np.asarray(instance_ids, np.int32).reshape(-1)
        if not (len(boxes) == len(difficult) == len(instance_ids) == n):
            raise ScratchDetError(f"sample: {n} labels, {len(boxes)} boxes, {len(difficult)} difficult flags, "
                                  f"{len(instance_ids)} instance ids")
        return cls(image, labels, boxes, difficult, instance_ids)

    def keep(self, mask: np.ndarray, boxes: np.ndarray, image: np.ndarray | None = None) -> "Sample":
        return Sample(self.image if image is None else image, self.labels[mask], boxes[mask].astype(np.float32),
                      self.difficult[mask], self.instance_ids[mask])

    def __len__(self) -> int:
        return len(self.labels)


# -- box helpers (util/bbox_util.cpp, normalized coordinates) ---------------------------------------
# Not boxes.sizes/jaccard/clip: those are Caffe's float32 arithmetic for the loss and NMS, while the
# sampler's crop boxes and the projections below are float64 here (crop() turns them into pixel
# offsets as Python floats). Caffe's NormalizedBBox is float, so float32 would be its arithmetic
# too; moving the augmenter onto boxes.py can flip an emit_overlap or size > 0 decision at the last
# bit and so change which boxes a crop keeps, a behaviour change that belongs in its own step with
# test_caffe_ref_augment's Caffe replays, not in a move.

def box_size(b: np.ndarray) -> np.ndarray:
    """BBoxSize: width*height, 0 for an inverted box. ``b`` [..., 4]."""
    w = b[..., 2] - b[..., 0]
    h = b[..., 3] - b[..., 1]
    return np.where((w < 0) | (h < 0), 0.0, w * h)


def intersection(a: np.ndarray, b) -> np.ndarray:
    """Area of IntersectBBox(a, b) for boxes ``a`` [N,4] and one box ``b``."""
    b = np.asarray(b, np.float64)
    disjoint = (b[0] > a[:, 2]) | (b[2] < a[:, 0]) | (b[1] > a[:, 3]) | (b[3] < a[:, 1])
    w = np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0])
    h = np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1])
    return np.where(disjoint, 0.0, np.maximum(w, 0) * np.maximum(h, 0))


def clip_box(b) -> tuple[float, float, float, float]:
    return tuple(float(min(max(v, 0.0), 1.0)) for v in b)


# -- 1. distortion (im_transforms.cpp ApplyDistort) -------------------------------------------------

def _convert(channel: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """cv::Mat::convertTo(dst, -1, alpha, beta) on uint8: round to nearest, saturate. Each output
    depends on its input value alone, so the float32 arithmetic runs once per value, into a table."""
    table = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta)
    return cv2.LUT(np.ascontiguousarray(channel), np.clip(np.rint(table), 0, 255).astype(np.uint8))


def random_brightness(img, dp, rng):
    if rng.uniform() < dp.brightness_prob:
        delta = rng.uniform(-dp.brightness_delta, dp.brightness_delta) if dp.brightness_delta > 0 else 0.0
        if delta != 0:
            img = _convert(img, 1.0, delta)
    return img


def random_contrast(img, dp, rng):
    if rng.uniform() < dp.contrast_prob:
        alpha = _uniform(rng, dp.contrast_lower, dp.contrast_upper, "contrast")
        if abs(alpha - 1.0) > 1e-3:
            img = _convert(img, alpha, 0.0)
    return img


def random_saturation(img, dp, rng):
    if rng.uniform() < dp.saturation_prob:
        alpha = _uniform(rng, dp.saturation_lower, dp.saturation_upper, "saturation")
        # the fork tests |alpha - 1| != 1e-3, which is always true: it always converts
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = _convert(hsv[..., 1], alpha, 0.0)
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return img


def random_hue(img, dp, rng):
    if rng.uniform() < dp.hue_prob:
        delta = rng.uniform(-dp.hue_delta, dp.hue_delta) if dp.hue_delta > 0 else 0.0
        if abs(delta) > 0:
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[..., 0] = _convert(hsv[..., 0], 1.0, delta)   # saturating, no wrap (as the fork)
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    return img


def random_channel_order(img, dp, rng):
    if rng.uniform() < dp.random_order_prob:
        img = np.ascontiguousarray(img[..., rng.permutation(img.shape[2])])
    return img


def distort(img: np.ndarray, dp, rng) -> np.ndarray:
    """ApplyDistort: brightness, then contrast before or after saturation+hue (a coin flip),
    then a random channel order; each with its own probability."""
    if rng.uniform() > 0.5:
        steps = (random_brightness, random_contrast, random_saturation, random_hue, random_channel_order)
    else:
        steps = (random_brightness, random_saturation, random_hue, random_contrast, random_channel_order)
    for step in steps:
        img = step(img, dp, rng)
    return img


def _uniform(rng, lo: float, hi: float, what: str) -> float:
    if hi < lo:
        raise ScratchDetError(f"distort_param: {what}_upper {hi} < {what}_lower {lo}")
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


# -- box transform (DataTransformer::TransformAnnotation) ---------------------------------------------

def meets_emit_constraint(boxes: np.ndarray, crop, emit) -> np.ndarray:
    """MeetEmitConstraint for each box against ``crop`` (normalized)."""
    if emit is None:
        return np.ones(len(boxes), bool)
    if emit.emit_type == pb.EmitConstraint.CENTER:
        cx = (boxes[:, 0] + boxes[:, 2]) / 2
        cy = (boxes[:, 1] + boxes[:, 3]) / 2
        return (cx >= crop[0]) & (cx <= crop[2]) & (cy >= crop[1]) & (cy <= crop[3])
    size = box_size(boxes)
    coverage = np.where(size > 0, intersection(boxes, crop) / np.where(size > 0, size, 1), 0.0)
    return coverage > emit.emit_overlap


def project_boxes(boxes: np.ndarray, crop) -> tuple[np.ndarray, np.ndarray]:
    """ProjectBBox onto ``crop``: (kept mask, projected boxes). A box that does not overlap the crop,
    or that is empty after clipping to [0, 1], is dropped."""
    x0, y0, x1, y1 = (float(v) for v in crop)
    outside = (boxes[:, 0] >= x1) | (boxes[:, 2] <= x0) | (boxes[:, 1] >= y1) | (boxes[:, 3] <= y0)
    w, h = x1 - x0, y1 - y0
    proj = np.empty_like(boxes, dtype=np.float64)
    proj[:, 0] = (boxes[:, 0] - x0) / w
    proj[:, 1] = (boxes[:, 1] - y0) / h
    proj[:, 2] = (boxes[:, 2] - x0) / w
    proj[:, 3] = (boxes[:, 3] - y0) / h
    proj = np.clip(proj, 0.0, 1.0)
    return ~outside & (box_size(proj) > 0), proj


def transform_boxes(sample: Sample, crop=UNIT_BOX, emit=None, mirror: bool = False,
                    resize=None, image_hw: tuple[int, int] | None = None, image: np.ndarray | None = None) -> Sample:
    """TransformAnnotation: optional resize-policy update (``resize`` = ResizeParameter, with the
    pre-resize ``image_hw``), the emit constraint against ``crop``, projection onto ``crop``, and the
    horizontal flip. Returns the surviving boxes (stored order kept) with ``image`` attached."""
    boxes = sample.boxes.astype(np.float64)
    if resize is not None and image_hw is not None:
        boxes = update_boxes_by_resize(boxes, resize, *image_hw)
    keep = meets_emit_constraint(boxes, crop, emit)
    inside, proj = project_boxes(boxes, crop)
    keep &= inside
    if mirror:
        proj = proj.copy()
        proj[:, [0, 2]] = 1.0 - proj[:, [2, 0]]
    return sample.keep(keep, proj, image)


def update_boxes_by_resize(boxes: np.ndarray, rp, old_h: int, old_w: int) -> np.ndarray:
    """UpdateBBoxByResizePolicy: boxes in the resized (and padded) image, normalized."""
    new_w, new_h = float(rp.width), float(rp.height)
    old_w, old_h = float(old_w), float(old_h)
    x0, y0, x1, y1 = (boxes[:, i] * s for i, s in ((0, old_w), (1, old_h), (2, old_w), (3, old_h)))
    orig_aspect, new_aspect = old_w / old_h, new_w / new_h
    mode = rp.resize_mode
    if mode == RP.WARP:
        x0 = np.maximum(0.0, x0 * new_w / old_w)
        x1 = np.minimum(new_w, x1 * new_w / old_w)
        y0 = np.maximum(0.0, y0 * new_h / old_h)
        y1 = np.minimum(new_h, y1 * new_h / old_h)
    elif mode == RP.FIT_LARGE_SIZE_AND_PAD:
        if orig_aspect > new_aspect:
            pad = (new_h - new_w / orig_aspect) / 2
            x0 = np.maximum(0.0, x0 * new_w / old_w)
            x1 = np.minimum(new_w, x1 * new_w / old_w)
            y0 = pad + np.maximum(0.0, y0 * (new_h - 2 * pad) / old_h)
            y1 = pad + np.minimum(new_h, y1 * (new_h - 2 * pad) / old_h)
        else:
            pad = (new_w - orig_aspect * new_h) / 2
            x0 = pad + np.maximum(0.0, x0 * (new_w - 2 * pad) / old_w)
            x1 = pad + np.minimum(new_w, x1 * (new_w - 2 * pad) / old_w)
            y0 = np.maximum(0.0, y0 * new_h / old_h)
            y1 = np.minimum(new_h, y1 * new_h / old_h)
    elif mode == RP.FIT_SMALL_SIZE:
        if orig_aspect < new_aspect:
            new_h = new_w / orig_aspect
        else:
            new_w = orig_aspect * new_h
        x0 = np.maximum(0.0, x0 * new_w / old_w)
        x1 = np.minimum(new_w, x1 * new_w / old_w)
        y0 = np.maximum(0.0, y0 * new_h / old_h)
        y1 = np.minimum(new_h, y1 * new_h / old_h)
    else:
        raise ScratchDetError(f"resize_param: unknown resize_mode {mode}")
    return np.stack([x0 / new_w, y0 / new_h, x1 / new_w, y1 / new_h], axis=1).reshape(-1, 4)


# -- 2. expand (DataTransformer::ExpandImage) ----------------------------------------------------------

def expand(sample: Sample, ep, mean: tuple[float, float, float], rng, emit=None) -> Sample:
    """Zoom out: paste the image at a random place on a canvas ``ratio`` times larger, filled with
    the mean; boxes are re-projected onto the canvas."""
    if rng.uniform() > ep.prob:
        return sample
    max_ratio = float(ep.max_expand_ratio)
    if abs(max_ratio - 1.0) < 1e-2:
        return sample
    ratio = float(rng.uniform(1.0, max_ratio))
    h, w = sample.image.shape[:2]
    eh, ew = int(h * ratio), int(w * ratio)
    h_off = int(math.floor(rng.uniform(0.0, eh - h))) if eh > h else 0
    w_off = int(math.floor(rng.uniform(0.0, ew - w))) if ew > w else 0
    fill = [int(v) for v in np.clip(np.rint(np.asarray(mean, np.float64)), 0, 255)]
    # one pass that writes the border and copies the image (a full-canvas fill then a paste was two)
    canvas = cv2.copyMakeBorder(np.ascontiguousarray(sample.image), h_off, eh - h - h_off, w_off, ew - w - w_off,
                                cv2.BORDER_CONSTANT, value=fill)
    expand_box = (-w_off / w, -h_off / h, (ew - w_off) / w, (eh - h_off) / h)
    return transform_boxes(sample, expand_box, emit, image=canvas)


# -- 3. batch samplers (util/sampler.cpp) ----------------------------------------------------------------

def sampler_ranges(sampler) -> tuple[float, float, float, float]:
    """(min_scale, max_scale, min_aspect, max_aspect) of a Sampler, checked."""
    lo_s, hi_s = float(sampler.min_scale), float(sampler.max_scale)
    if not (0 < lo_s <= hi_s <= 1):
        raise ScratchDetError(f"batch_sampler: need 0 < min_scale <= max_scale <= 1, got {lo_s}, {hi_s}")
    lo_a, hi_a = float(sampler.min_aspect_ratio), float(sampler.max_aspect_ratio)
    if not (0 < lo_a <= hi_a):
        raise ScratchDetError(f"batch_sampler: need 0 < min_aspect_ratio <= max_aspect_ratio, got {lo_a}, {hi_a}")
    return lo_s, hi_s, lo_a, hi_a


def sample_boxes(ranges, u: np.ndarray) -> np.ndarray:
    """SampleBBox for each row of ``u`` [T,4] (uniforms in [0, 1)): scale and aspect ratio (the
    aspect clamped to [s^2, 1/s^2]), then a uniform position. ``ranges`` holds the samplers'
    ``(min_scale, max_scale, min_aspect, max_aspect)``, one tuple or one row per trial [T,4].
    Float64 throughout (see the box helpers' note)."""
    r = np.broadcast_to(np.asarray(ranges, np.float64), (len(u), 4))
    lo_s, hi_s, lo_a, hi_a = r[:, 0], r[:, 1], r[:, 2], r[:, 3]
    scale = np.where(hi_s > lo_s, lo_s + (hi_s - lo_s) * u[:, 0], lo_s)
    aspect = np.where(hi_a > lo_a, lo_a + (hi_a - lo_a) * u[:, 1], lo_a)
    # Python's x ** 2 (libm pow) as the per-trial code had it: pow and x * x differ in the last bit
    # for about 1 in 1,000 scales, enough to move a crop by a pixel now and then
    s2 = np.array([v ** 2 for v in scale.tolist()], np.float64).reshape(scale.shape)
    aspect = np.minimum(np.maximum(aspect, s2), 1.0 / s2)
    root = np.sqrt(aspect)
    bw, bh = scale * root, scale / root
    x0 = np.where(bw < 1, (1.0 - bw) * u[:, 2], 0.0)
    y0 = np.where(bh < 1, (1.0 - bh) * u[:, 3], 0.0)
    return np.stack([x0, y0, x0 + bw, y0 + bh], axis=1)


def sample_box(sampler, rng, u=None) -> tuple[float, float, float, float]:
    """One SampleBBox: ``sampler`` is a Sampler message or its ``sampler_ranges``; ``u`` four
    uniforms in [0, 1), drawn from ``rng`` when not given."""
    ranges = sampler if isinstance(sampler, tuple) else sampler_ranges(sampler)
    u = rng.random(4) if u is None else u
    return tuple(float(v) for v in sample_boxes(ranges, np.asarray(u, np.float64).reshape(1, 4))[0])


_BOUNDS = (("min_jaccard_overlap", "max_jaccard_overlap"), ("min_sample_coverage", "max_sample_coverage"),
           ("min_object_coverage", "max_object_coverage"))


def constraint_bounds(c) -> tuple[np.ndarray, bool]:
    """A SampleConstraint as [3,2] (lo, hi) bounds on Jaccard, sample coverage and object
    coverage (-inf / inf where unset, which passes every finite value as an unset test does),
    and whether any bound is set at all."""
    bounds = np.array([[float(getattr(c, lo)) if c.HasField(lo) else -np.inf,
                        float(getattr(c, hi)) if c.HasField(hi) else np.inf] for lo, hi in _BOUNDS])
    return bounds, any(c.HasField(f) for pair in _BOUNDS for f in pair)


def accepts(boxes: np.ndarray, objects: np.ndarray, bounds: np.ndarray, bounded: np.ndarray) -> np.ndarray:
    """SatisfySampleConstraint for each box [T,4] against ``objects`` [N,4]: a box without any
    bound (``bounded`` False) is accepted; otherwise some object must pass every test of that
    box's ``bounds`` [T,3,2]. One [T,N] pass: a sampler tries up to 50 boxes per image, and the
    per-box Python loop this replaces was a fifth of the data layer's time."""
    b = boxes[:, None, :]
    o = objects[None, :, :]
    disjoint = (b[..., 0] > o[..., 2]) | (b[..., 2] < o[..., 0]) | (b[..., 1] > o[..., 3]) | (b[..., 3] < o[..., 1])
    iw = np.maximum(np.minimum(o[..., 2], b[..., 2]) - np.maximum(o[..., 0], b[..., 0]), 0.0)
    ih = np.maximum(np.minimum(o[..., 3], b[..., 3]) - np.maximum(o[..., 1], b[..., 1]), 0.0)
    inter = np.where(disjoint, 0.0, iw * ih)
    bsize, osize = box_size(b), box_size(o)
    union = osize + bsize - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        jaccard = np.where(inter > 0, inter / np.where(union > 0, union, 1.0), 0.0)
        sample_cov = np.where(bsize > 0, inter / np.where(bsize > 0, bsize, 1.0), 0.0)
        object_cov = np.where(osize > 0, inter / np.where(osize > 0, osize, 1.0), 0.0)
    lo, hi = bounds[:, None, :, 0], bounds[:, None, :, 1]
    ok = np.ones(inter.shape, bool)
    for k, v in enumerate((jaccard, sample_cov, object_cov)):
        ok &= (v >= lo[..., k]) & (v <= hi[..., k])
    return ~bounded | ok.any(axis=1)


def satisfies_constraint(box, objects: np.ndarray, c) -> bool:
    """SatisfySampleConstraint for one box: no bound set -> accepted; otherwise some object passes
    every configured test (Jaccard, sample coverage, object coverage)."""
    bounds, bounded = constraint_bounds(c)
    return bool(accepts(np.asarray(box, np.float64).reshape(1, 4), np.asarray(objects, np.float64).reshape(-1, 4),
                        bounds[None], np.array([bounded]))[0])


class BatchSamplers:
    """A ``batch_sampler`` list read once (GenerateBatchSamples): each used sampler's ranges,
    constraint bounds, ``max_trials`` and ``max_sample``."""

    def __init__(self, batch_samplers):
        self.samplers = []
        for bs in batch_samplers:
            if not bs.use_original_image:
                continue
            bounds, bounded = constraint_bounds(bs.sample_constraint)
            limit = bs.max_sample if bs.HasField("max_sample") else None
            self.samplers.append((sampler_ranges(bs.sampler), bounds, bounded, int(bs.max_trials), limit))
        trials = [t for *_, t, _ in self.samplers]
        self._ranges = np.repeat(np.array([s[0] for s in self.samplers], np.float64).reshape(-1, 4), trials, axis=0)
        self._bounds = np.repeat(np.array([s[1] for s in self.samplers]).reshape(-1, 3, 2), trials, axis=0)
        self._bounded = np.repeat(np.array([s[2] for s in self.samplers], bool), trials)
        self._ends = np.cumsum(trials)

    def __bool__(self) -> bool:
        return bool(self.samplers)

    def generate(self, objects: np.ndarray, rng) -> list[tuple]:
        """Every sampler's accepted boxes, pooled in sampler order. Each sampler draws all its
        trials' uniforms at once, in sampler order; a sampler stops at ``max_sample`` accepted."""
        if not self.samplers:
            return []
        u = np.concatenate([rng.random((t, 4)) for *_, t, _ in self.samplers])
        boxes = sample_boxes(self._ranges, u)
        ok = accepts(boxes, np.asarray(objects, np.float64).reshape(-1, 4), self._bounds, self._bounded)
        pool, start = [], 0
        for (*_, limit), end in zip(self.samplers, self._ends):
            hits = start + np.flatnonzero(ok[start:end])
            pool.extend(map(tuple, boxes[hits[:limit]].tolist()))
            start = end
        return pool


def generate_batch_samples(objects: np.ndarray, batch_samplers, rng) -> list[tuple]:
    """GenerateBatchSamples: every sampler's accepted boxes, pooled, in sampler order."""
    return BatchSamplers(batch_samplers).generate(objects, rng)


def crop(sample: Sample, box, emit=None, reencoded: bool = False) -> Sample:
    """CropImage: the pixel window of ``box`` (clipped, scaled, truncated), boxes projected onto it.
    ``reencoded``: crop the image's JPEG round trip instead (see ``reencode_window``)."""
    clipped = clip_box(box)
    h, w = sample.image.shape[:2]
    x0, y0 = int(clipped[0] * w), int(clipped[1] * h)
    cw, ch = int((clipped[2] - clipped[0]) * w), int((clipped[3] - clipped[1]) * h)
    cw, ch = max(cw, 1), max(ch, 1)
    if reencoded:
        image = reencode_window(sample.image, x0, y0, x0 + cw, y0 + ch)
    else:
        image = np.ascontiguousarray(sample.image[y0:y0 + ch, x0:x0 + cw])
    return transform_boxes(sample, clipped, emit, image=image)


# -- 4. resize (im_transforms.cpp ApplyResize) ------------------------------------------------------------

def resize(img: np.ndarray, rp, rng) -> np.ndarray:
    """ApplyResize with an interpolation drawn uniformly from ``interp_mode`` (LINEAR if none)."""
    modes = list(rp.interp_mode)
    interp = _INTERP[modes[int(rng.integers(len(modes)))] if len(modes) > 1 else modes[0]] if modes else cv2.INTER_LINEAR
    new_w, new_h = int(rp.width), int(rp.height)
    h, w = img.shape[:2]
    if rp.resize_mode == RP.WARP:
        return cv2.resize(img, (new_w, new_h), interpolation=interp)
    aspect, new_aspect = w / h, new_w / new_h
    if rp.resize_mode == RP.FIT_LARGE_SIZE_AND_PAD:
        pad_value = list(rp.pad_value) or [0.0]
        if len(pad_value) == 1:
            pad_value *= 3
        border = _PAD[rp.pad_mode]
        if aspect > new_aspect:
            height = int(math.floor(new_w / aspect))
            out = cv2.resize(img, (new_w, height), interpolation=interp)
            top = (new_h - height) // 2
            return cv2.copyMakeBorder(out, top, new_h - height - top, 0, 0, border, value=pad_value)
        width = int(math.floor(aspect * new_h))
        out = cv2.resize(img, (width, new_h), interpolation=interp)
        left = (new_w - width) // 2
        return cv2.copyMakeBorder(out, 0, 0, left, new_w - width - left, border, value=pad_value)
    if rp.resize_mode == RP.FIT_SMALL_SIZE:
        if aspect < new_aspect:
            return cv2.resize(img, (new_w, int(math.floor(new_w / aspect))), interpolation=interp)
        return cv2.resize(img, (int(math.floor(aspect * new_h)), new_h), interpolation=interp)
    raise ScratchDetError(f"resize_param: unknown resize_mode {rp.resize_mode}")


def reencode(img: np.ndarray) -> np.ndarray:
    """JPEG round trip at OpenCV's default quality, as Caffe's EncodeCVMatToDatum does."""
    ok, buf = cv2.imencode(".jpg", img)
    if not ok:
        raise ScratchDetError("augment: JPEG re-encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


JPEG_BLOCK = 16   # a 4:2:0 JPEG's macroblock in pixels (8 at 4:4:4, which the same grid covers)


def reencode_window(img: np.ndarray, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """``reencode(img)[y0:y1, x0:x1]`` bit for bit, from the round trip of only the part around the
    window. A JPEG codes each macroblock on its own (the DC prediction between blocks is lossless)
    and the decoder's chroma upsampling reads one neighbouring macroblock; so the window grown to
    the macroblock grid plus one macroblock on each side decodes to the same pixels. The expanded
    canvas is up to 16x the image, and the crop that follows uses a part of it."""
    h, w = img.shape[:2]
    b = JPEG_BLOCK
    gx0, gy0 = max(0, x0 // b * b - b), max(0, y0 // b * b - b)
    gx1, gy1 = min(w, -(-x1 // b) * b + b), min(h, -(-y1 // b) * b + b)
    part = reencode(np.ascontiguousarray(img[gy0:gy1, gx0:gx1]))
    return np.ascontiguousarray(part[y0 - gy0:y1 - gy0, x0 - gx0:x1 - gx0])


# -- the whole pipeline -------------------------------------------------------------------------------

class Augmenter:
    """The per-image work of the AnnotatedData layer for one ``transform_param`` and the layer's
    ``batch_sampler`` list. ``__call__(sample, rng) -> (float32 [3,H,W], Sample)``: the network
    input and the boxes that survived, normalized to the output image."""

    def __init__(self, tp, batch_samplers=(), phase: int = TRAIN, reencode_jpeg: bool = False,
                 source: str = "transform_param"):
        self.tp = tp
        self.batch_samplers = BatchSamplers(batch_samplers)
        self.phase = phase
        self.reencode_jpeg = reencode_jpeg
        if tp.mean_file:
            raise ScratchDetError(f"{source}: mean_file is not supported; give mean_value per channel")
        if tp.force_gray:
            raise ScratchDetError(f"{source}: force_gray is not supported (detection nets take 3 channels)")
        if tp.HasField("noise_param") and tp.noise_param.prob > 0:
            raise ScratchDetError(f"{source}: noise_param is not supported by this data layer")
        means = [float(v) for v in tp.mean_value]
        if len(means) not in (0, 1, 3):
            raise ScratchDetError(f"{source}: mean_value needs 1 or 3 values, got {len(means)}")
        self.mean = tuple(means * 3 if len(means) == 1 else (means or [0.0, 0.0, 0.0]))
        self.emit = tp.emit_constraint if tp.HasField("emit_constraint") else None
        self.resize_param = tp.resize_param if tp.HasField("resize_param") else None
        if self.resize_param is not None:
            rp = self.resize_param
            if rp.height <= 0 or rp.width <= 0:
                raise ScratchDetError(f"{source}: resize_param needs height and width > 0")
            for m in rp.interp_mode:
                if m not in _INTERP:
                    raise ScratchDetError(f"{source}: unknown interp_mode {m}")
        self.crop_hw = (tp.crop_h or tp.crop_size, tp.crop_w or tp.crop_size)
        if bool(self.crop_hw[0]) != bool(self.crop_hw[1]):
            raise ScratchDetError(f"{source}: crop_h and crop_w must be given together")

    def output_hw(self, image_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = image_hw
        if self.resize_param is not None:
            rp = self.resize_param
            if rp.resize_mode == RP.FIT_SMALL_SIZE:
                aspect = w / h
                h, w = ((int(math.floor(rp.width / aspect)), rp.width) if aspect < rp.width / rp.height
                        else (rp.height, int(math.floor(aspect * rp.height))))
            else:
                h, w = rp.height, rp.width
        if self.crop_hw[0]:
            h, w = self.crop_hw
        return int(h), int(w)

    def __call__(self, sample: Sample, rng, jpeg_roundtrip: bool | None = None) -> tuple[np.ndarray, Sample]:
        """``jpeg_roundtrip``: Caffe's re-encoding after distort / expand / crop (default:
        ``reencode_jpeg``)."""
        tp = self.tp
        reencode_jpeg = self.reencode_jpeg if jpeg_roundtrip is None else jpeg_roundtrip
        if tp.HasField("distort_param"):
            img = distort(sample.image, tp.distort_param, rng)
            sample = replace(sample, image=reencode(img) if reencode_jpeg else img)
        expanded_unencoded = False   # Caffe's round trip of the canvas, left for the crop to do
        if tp.HasField("expand_param"):
            expanded = expand(sample, tp.expand_param, self.mean, rng, self.emit)
            expanded_unencoded = expanded is not sample and reencode_jpeg
            sample = expanded
        if self.batch_samplers:
            pool = self.batch_samplers.generate(sample.boxes, rng)
            if pool:
                sample = crop(sample, pool[int(rng.integers(len(pool)))], self.emit, reencoded=expanded_unencoded)
                expanded_unencoded = False
                if reencode_jpeg:
                    sample = replace(sample, image=reencode(sample.image))
        if expanded_unencoded:
            sample = replace(sample, image=reencode(sample.image))
        return self.transform(sample, rng)

    def transform(self, sample: Sample, rng) -> tuple[np.ndarray, Sample]:
        """DataTransformer::Transform(AnnotatedDatum): resize, fixed crop, mirror, mean and scale."""
        tp = self.tp
        img = sample.image
        old_hw = img.shape[:2]
        if self.resize_param is not None:
            img = resize(img, self.resize_param, rng)
        crop_box = UNIT_BOX
        ch, cw = self.crop_hw
        if ch:
            h, w = img.shape[:2]
            if h < ch or w < cw:
                raise ScratchDetError(f"transform_param: crop {ch}x{cw} larger than the image {h}x{w}")
            if self.phase == TRAIN:
                y0, x0 = int(rng.integers(h - ch + 1)), int(rng.integers(w - cw + 1))
            else:
                y0, x0 = (h - ch) // 2, (w - cw) // 2
            img = img[y0:y0 + ch, x0:x0 + cw]
            crop_box = (x0 / w, y0 / h, (x0 + cw) / w, (y0 + ch) / h)
        do_mirror = bool(tp.mirror) and bool(rng.integers(2))
        if do_mirror:
            img = img[:, ::-1]
        out = img.astype(np.float32).transpose(2, 0, 1)
        out = (out - np.asarray(self.mean, np.float32)[:, None, None]) * np.float32(tp.scale)
        boxes = transform_boxes(sample, crop_box, self.emit, do_mirror, self.resize_param, old_hw,
                                image=np.ascontiguousarray(img))
        return np.ascontiguousarray(out, dtype=np.float32), boxes
