"""The embedded synthetic data set: shapes on textured backgrounds, in VOC and COCO formats.

Four classes told apart mainly by shape (circle, square, triangle, cross) and moderately by colour
(each class has a home hue; 20% of objects take any hue). One to four objects per image, most of
them medium or large, about one in seven small (under 32 px); later objects may cover earlier ones,
but never more than about half of one. Boxes are tight around the visible pixels. ``difficult``
marks the heavily occluded (under 60% visible) and the tiny (under 14 px). Images are ~300x300 with
some variation in size and aspect. Everything is drawn from ``numpy.random.default_rng((seed,
index))``, so a seed gives the same bytes every time and image i does not depend on how many images
are made.

Layout written under ``--out`` (a VOCdevkit-like root; ``SYNTH`` plays the role of ``VOC2007``)::

    SYNTH/JPEGImages/000000.jpg  SYNTH/Annotations/000000.xml  SYNTH/ImageSets/Main/{trainval,test}.txt
    annotations/instances_synthetic_{trainval,test}.json      labelmap_synthetic.prototxt
    params.json (what made it)

COCO form: category ids 1..4 = labels 1..4; boxes ``[x, y, w, h]`` in 0-based pixels; difficult
objects have ``iscrowd: 1`` (so COCO evaluation ignores them, and the COCO converter maps them back
to ``difficult``) and a ``difficult`` field.
"""
from __future__ import annotations

import functools
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np
from tqdm import tqdm

from ..errors import ScratchDetError
from . import labelmap as lm
from .files import make_dirs, make_public, remove_stale_temps, temp_dir
from .parallel import ordered_map

FOLDER = "SYNTH"
GENERATOR_VERSION = 1
CLASSES = lm.SYNTHETIC_CLASSES                     # labels 1..4
HOME_HUE = {"circle": 0, "square": 115, "triangle": 60, "cross": 25}   # OpenCV hue, 0..179
TEST_EVERY = 5                                     # image i is a test image when i % 5 == 4
JPEG_QUALITY = 92
SMALL_FRACTION = 0.15
MIN_VISIBLE = 0.45                                 # placements hiding more of an object are refused
DIFFICULT_VISIBLE = 0.6
DIFFICULT_SIZE = 14


@dataclass(frozen=True)
class Profile:
    """How many objects an image gets (``counts`` drawn with probabilities ``count_p``) and the
    share of them drawn small (10-26 px across)."""
    counts: tuple
    count_p: tuple
    small_fraction: float


# "shapes": the embedded default (the demo's set). "small": many small objects, for the mini-paper's
# Table 2 / Figure 3, whose claim is about early downsampling losing small objects.
PROFILES = {"shapes": Profile((1, 2, 3, 4), (0.3, 0.35, 0.2, 0.15), SMALL_FRACTION),
            "small": Profile((2, 3, 4, 5, 6), (0.2, 0.2, 0.2, 0.2, 0.2), 0.6)}
DEFAULT_PROFILE = "shapes"


@dataclass
class SynthObject:
    name: str
    xmin: int            # inclusive 0-based pixel bounds of the visible part
    ymin: int
    xmax: int
    ymax: int
    difficult: bool
    visible: float       # fraction of the shape left visible
    area: int            # visible pixels


# -- drawing ------------------------------------------------------------------------------------------

def _background(rng, h: int, w: int) -> np.ndarray:
    """A two-colour gradient, low-frequency blotches, fine noise and a few faint stripes."""
    c0 = rng.uniform(40, 215, 3)
    c1 = np.clip(c0 + rng.uniform(-90, 90, 3), 0, 255)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * xx / w + np.sin(angle) * yy / h)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]
    coarse = rng.normal(0, 1, (max(h // 24, 2), max(w // 24, 2), 3)).astype(np.float32)
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(8, 22)
    img += rng.normal(0, rng.uniform(3, 9), (h, w, 3)).astype(np.float32)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(0, 5))):     # faint straight stripes: texture, not objects
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        shade = tuple(int(v) for v in np.clip(img[p1[1], p1[0]].astype(int) + rng.integers(-35, 36, 3), 0, 255))
        cv2.line(img, p1, p2, shade, int(rng.integers(1, 4)), cv2.LINE_AA)
    return img


def _shape_polygon(name: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray | None:
    """Vertices of the shape (None for the circle), ``size`` = its nominal width in pixels."""
    if name == "circle":
        return None
    if name == "square":
        r = size / 2
        pts = np.array([[-r, -r], [r, -r], [r, r], [-r, r]])
    elif name == "triangle":
        r = size / math.sqrt(3)               # circumradius of an equilateral triangle of side ``size``
        pts = np.array([[r * math.cos(a), r * math.sin(a)] for a in np.deg2rad([-90, 30, 150])])
        pts[:, 1] += r / 4                    # centre the box rather than the centroid
    elif name == "cross":
        r, t = size / 2, size / 6
        pts = np.array([[-t, -r], [t, -r], [t, -t], [r, -t], [r, t], [t, t], [t, r], [-t, r],
                        [-t, t], [-r, t], [-r, -t], [-t, -t]])
    else:  # pragma: no cover
        raise ValueError(name)
    c, s = math.cos(angle), math.sin(angle)
    rot = pts @ np.array([[c, s], [-s, c]])
    return rot + np.array([cx, cy])


def _draw(canvas: np.ndarray, name: str, cx, cy, size, angle, color, line_type) -> None:
    poly = _shape_polygon(name, cx, cy, size, angle)
    shift = 4                                 # sub-pixel vertex precision
    if poly is None:
        cv2.circle(canvas, (int(round(cx * 16)), int(round(cy * 16))), int(round(size / 2 * 16)), color, -1, line_type, shift)
    else:
        cv2.fillPoly(canvas, [np.round(poly * 16).astype(np.int32)], color, line_type, shift)


def _color(rng, name: str, bg_mean: np.ndarray) -> tuple[int, int, int]:
    hue = HOME_HUE[name] if rng.random() > 0.2 else int(rng.integers(0, 180))
    hue = int((hue + rng.integers(-8, 9)) % 180)
    sat, val = int(rng.integers(140, 256)), int(rng.integers(120, 256))
    bgr = cv2.cvtColor(np.uint8([[[hue, sat, val]]]), cv2.COLOR_HSV2BGR)[0, 0].astype(int)
    if np.abs(bgr - bg_mean).sum() < 120:     # too close to what is behind: flip brightness
        val = 60 if val > 150 else 250
        bgr = cv2.cvtColor(np.uint8([[[hue, sat, val]]]), cv2.COLOR_HSV2BGR)[0, 0].astype(int)
    return tuple(int(v) for v in bgr)


def profile_of(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ScratchDetError(f"unknown synthetic profile {name!r} (one of {', '.join(PROFILES)})") from None


def render(seed: int, index: int, profile: str = DEFAULT_PROFILE) -> tuple[np.ndarray, list[SynthObject]]:
    """Image ``index`` of the set made with ``seed`` and ``profile``: BGR uint8 image and its objects."""
    spec = profile_of(profile)
    rng = np.random.default_rng((seed, index))
    if rng.random() < 0.5:
        h = w = 300
    else:
        w, h = int(rng.integers(240, 361)), int(rng.integers(240, 361))
    img = _background(rng, h, w)
    owner = np.full((h, w), -1, np.int16)            # which object each pixel shows
    full_area: list[int] = []
    names: list[str] = []
    n_objects = int(rng.choice(list(spec.counts), p=list(spec.count_p)))
    for _ in range(n_objects):
        name = CLASSES[int(rng.integers(0, len(CLASSES)))]
        if rng.random() < spec.small_fraction:
            size = rng.uniform(10, 26)
        else:
            size = math.exp(rng.uniform(math.log(36), math.log(0.55 * min(h, w))))
        angle = math.radians(rng.uniform(-20, 20) if name != "triangle" else rng.uniform(-40, 40))
        for _trial in range(30):
            margin = size * 0.75
            cx = rng.uniform(margin, max(w - margin, margin + 1))
            cy = rng.uniform(margin, max(h - margin, margin + 1))
            mask = np.zeros((h, w), np.uint8)
            _draw(mask, name, cx, cy, size, angle, 1, cv2.LINE_8)
            if mask.sum() < 16:
                continue
            covered = np.bincount(owner[mask.astype(bool)].clip(-1) + 1, minlength=len(names) + 1)[1:]
            visible_after = [(np.count_nonzero(owner == j) - covered[j]) / full_area[j] for j in range(len(names))]
            if all(v >= MIN_VISIBLE for v in visible_after):
                break
        else:
            continue                                  # no room for this one without hiding another
        region = owner == -1
        bg_mean = img[mask.astype(bool) & region].mean(axis=0) if (mask.astype(bool) & region).any() else img.reshape(-1, 3).mean(0)
        color = _color(rng, name, bg_mean)
        _draw(img, name, cx, cy, size, angle, color, cv2.LINE_AA)
        if rng.random() < 0.4:                        # a darker rim on some shapes
            rim = tuple(int(c * 0.45) for c in color)
            poly = _shape_polygon(name, cx, cy, size, angle)
            if poly is None:
                cv2.circle(img, (int(round(cx * 16)), int(round(cy * 16))), int(round(size / 2 * 16)), rim, 2 if size > 30 else 1, cv2.LINE_AA, 4)
            else:
                cv2.polylines(img, [np.round(poly * 16).astype(np.int32)], True, rim, 2 if size > 30 else 1, cv2.LINE_AA, 4)
        owner[mask.astype(bool)] = len(names)
        full_area.append(int(mask.sum()))
        names.append(name)
    # light shading noise over everything so shapes are not perfectly flat
    img = np.clip(img.astype(np.float32) + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    img = cv2.GaussianBlur(img, (3, 3), 0.6)

    objects = []
    for j, name in enumerate(names):
        ys, xs = np.nonzero(owner == j)
        if len(xs) == 0:
            continue
        visible = len(xs) / full_area[j]
        x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
        tiny = max(x1 - x0 + 1, y1 - y0 + 1) < DIFFICULT_SIZE
        objects.append(SynthObject(name, x0, y0, x1, y1, bool(visible < DIFFICULT_VISIBLE or tiny), float(visible), len(xs)))
    return img, objects


# -- files --------------------------------------------------------------------------------------------

def voc_xml(image_id: str, width: int, height: int, objects: list[SynthObject]) -> str:
    """VOC annotation: 1-based inclusive pixel corners, as the VOC devkit writes them."""
    parts = [f"<annotation>\n\t<folder>{FOLDER}</folder>\n\t<filename>{escape(image_id)}.jpg</filename>\n"
             f"\t<source>\n\t\t<database>scratchdet synthetic shapes</database>\n\t</source>\n"
             f"\t<size>\n\t\t<width>{width}</width>\n\t\t<height>{height}</height>\n\t\t<depth>3</depth>\n\t</size>\n"
             f"\t<segmented>0</segmented>\n"]
    for o in objects:
        parts.append(f"\t<object>\n\t\t<name>{o.name}</name>\n\t\t<pose>Unspecified</pose>\n\t\t<truncated>0</truncated>\n"
                     f"\t\t<difficult>{int(o.difficult)}</difficult>\n\t\t<bndbox>\n"
                     f"\t\t\t<xmin>{o.xmin + 1}</xmin>\n\t\t\t<ymin>{o.ymin + 1}</ymin>\n"
                     f"\t\t\t<xmax>{o.xmax + 1}</xmax>\n\t\t\t<ymax>{o.ymax + 1}</ymax>\n\t\t</bndbox>\n\t</object>\n")
    parts.append("</annotation>\n")
    return "".join(parts)


def image_id(index: int) -> str:
    return f"{index:06d}"


def is_test(index: int) -> bool:
    return index % TEST_EVERY == TEST_EVERY - 1


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def generate(out, images: int = 600, seed: int = 0, quiet: bool = False, jobs: int = 1,
             profile: str = DEFAULT_PROFILE) -> dict:
    """Write the data set to ``out`` (replacing an earlier synthetic set there); returns statistics.

    The tree is built in a temporary folder beside ``out`` and renamed into place when complete.
    ``jobs`` worker processes render images; the bytes do not depend on it.
    """
    profile_of(profile)
    if images < 2:
        raise ScratchDetError(f"--images {images}: need at least 2 (one trainval and one test image)")
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "params.json").is_file())):
        raise ScratchDetError(f"{out}: exists and is not a synthetic data folder (no params.json); refusing to overwrite")
    make_dirs(out.parent)
    remove_stale_temps(out)
    tmp = temp_dir(out)
    try:
        stats = _generate_into(tmp, images, seed, quiet, jobs, profile)
        make_public(tmp)
        if out.exists():
            old = temp_dir(out, ".old")
            os.replace(out, old / "set")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return stats


def render_files(seed: int, index: int, profile: str = DEFAULT_PROFILE) -> tuple[bytes, int, int, list[SynthObject]]:
    """Image ``index`` as JPEG bytes, with its height, width and objects."""
    img, objects = render(seed, index, profile)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    return buf.tobytes(), img.shape[0], img.shape[1], objects


def _rendered(seed: int, n_images: int, jobs: int, profile: str = DEFAULT_PROFILE):
    if jobs <= 1 or n_images < 50:
        for index in range(n_images):
            yield render_files(seed, index, profile)
        return
    yield from ordered_map(functools.partial(render_files, seed, profile=profile), range(n_images), jobs,
                           describe=lambda chunk: f"synthetic images {chunk[0]}..{chunk[-1]}")


def _generate_into(root: Path, n_images: int, seed: int, quiet: bool, jobs: int = 1,
                   profile: str = DEFAULT_PROFILE) -> dict:
    base = root / FOLDER
    split_ids = {"trainval": [], "test": []}
    coco = {s: {"info": {"description": f"scratchdet synthetic shapes, seed {seed}"},
                "images": [], "annotations": [],
                "categories": [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]}
            for s in split_ids}
    stats = {"images": n_images, "objects": 0, "difficult": 0, "small": 0, "medium": 0, "large": 0,
             "per_class": {n: 0 for n in CLASSES}}
    ann_id = 1
    rendered = tqdm(_rendered(seed, n_images, jobs, profile), total=n_images, desc="synthetic", unit="img",
                    disable=True if quiet else None)
    for index, (jpeg, h, w, objects) in enumerate(rendered):
        iid = image_id(index)
        split = "test" if is_test(index) else "trainval"
        split_ids[split].append(iid)
        _write(base / "JPEGImages" / f"{iid}.jpg", jpeg)
        _write(base / "Annotations" / f"{iid}.xml", voc_xml(iid, w, h, objects).encode())
        coco[split]["images"].append({"id": index, "file_name": f"{iid}.jpg", "width": w, "height": h})
        for o in objects:
            bw, bh = o.xmax - o.xmin + 1, o.ymax - o.ymin + 1
            coco[split]["annotations"].append({
                "id": ann_id, "image_id": index, "category_id": CLASSES.index(o.name) + 1,
                "bbox": [o.xmin, o.ymin, bw, bh], "area": o.area, "iscrowd": int(o.difficult),
                "difficult": int(o.difficult),
                "segmentation": [[o.xmin, o.ymin, o.xmin + bw, o.ymin, o.xmin + bw, o.ymin + bh, o.xmin, o.ymin + bh]]})
            ann_id += 1
            stats["objects"] += 1
            stats["difficult"] += int(o.difficult)
            stats["per_class"][o.name] += 1
            area = bw * bh
            stats["small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"] += 1
    sets = base / "ImageSets" / "Main"
    for split, ids in split_ids.items():
        _write(sets / f"{split}.txt", ("\n".join(ids) + "\n").encode())
        _write(root / "annotations" / f"instances_synthetic_{split}.json",
               json.dumps(coco[split], separators=(",", ":")).encode())
    lm.write(lm.make(CLASSES), root / "labelmap_synthetic.prototxt")
    params = {"generator": "scratchdet.data.synthetic", "version": GENERATOR_VERSION, "images": n_images, "seed": seed}
    if profile != DEFAULT_PROFILE:      # the default's params.json stays as earlier versions wrote it
        params["profile"] = profile
    _write(root / "params.json", json.dumps(params, indent=1).encode())
    stats["trainval"], stats["test"] = len(split_ids["trainval"]), len(split_ids["test"])
    return stats
