"""COCO detection metrics: results JSON in, pycocotools' ``COCOeval`` (bbox) out.

Results are COCO's list of ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` with
``w = xmax - xmin`` (no +1; COCO boxes are continuous), as the SSD fork's DetectionOutput writes
them in COCO format. SSD's COCO label map names each label by its COCO category id ("1".."90"),
so label -> category id is ``int(item.name)``.

``evaluate`` runs ``COCOeval`` exactly as pycocotools documents it (evaluate, accumulate,
summarize) and returns its 12 summary numbers, named, plus per-category AP at IoU .50:.95 read from
the accumulated precision array (mean over IoU thresholds and recall points of the valid entries,
area "all", 100 detections: what ``summarize`` averages over categories).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..data.files import write_atomic
from ..errors import ScratchDetError

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
TESTDEV_NAME = "detections_test-dev2015_{alg}_results.json"   # the evaluation server's naming


@dataclass
class COCOResult:
    stats: dict[str, float]                           # STAT_NAMES -> value (fraction, -1 = undefined)
    per_class: dict[str, float] = field(default_factory=dict)   # category name -> AP .50:.95
    num_images: int = 0
    num_dets: int = 0
    summary_text: str = ""                            # pycocotools' own summarize() print-out
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"metric": "coco_bbox", "stats": dict(self.stats), "per_class": dict(self.per_class),
                "num_images": self.num_images, "num_dets": self.num_dets, "warnings": list(self.warnings)}

    def format_table(self) -> str:
        lines = []
        if self.per_class:
            width = max(len(n) for n in self.per_class)
            lines.append(f"{'category':<{width}}  {'AP':>6}")
            lines += [f"{name:<{width}}  {_pct(v):>6}" for name, v in self.per_class.items()]
            lines.append("")
        lines.append("  ".join(f"{k}={_pct(self.stats[k])}" for k in STAT_NAMES[:6]))
        lines.append("  ".join(f"{k}={_pct(self.stats[k])}" for k in STAT_NAMES[6:]))
        return "\n".join(lines)


def _pct(v: float) -> str:
    return "n/a" if v < 0 else f"{100 * v:.1f}"


# -- results JSON ---------------------------------------------------------------------------------

def category_ids(labelmap, background_label: int = 0) -> dict[int, int]:
    """label -> COCO category id from an SSD COCO label map (item names are the category ids)."""
    out = {}
    for item in labelmap.item:
        if item.label == background_label:
            continue
        try:
            out[item.label] = int(item.name)
        except ValueError:
            raise ScratchDetError(f"label map item {item.label} ({item.name!r}): a COCO label map names each "
                                  "label by its numeric COCO category id") from None
    return out


def image_id_from_name(name: str) -> int:
    """``COCO_val2014_000000000139`` or ``000000000139.jpg`` -> 139 (the last run of digits)."""
    import re
    digits = re.findall(r"\d+", Path(str(name)).stem)
    if not digits:
        raise ScratchDetError(f"image name {name!r} holds no numeric COCO image id")
    return int(digits[-1])


def to_results(per_image: Mapping, label_to_category: Mapping[int, int],
               image_ids: Mapping[str, int] | None = None) -> list[dict]:
    """``per_image``: image name -> (labels [N], scores [N], pixel boxes [N, 4] xmin,ymin,xmax,ymax).
    Image ids come from ``image_ids`` or else from the image name's digits."""
    results = []
    for name, (labels, scores, boxes) in per_image.items():
        image_id = image_ids[name] if image_ids is not None else image_id_from_name(name)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        for label, score, (x0, y0, x1, y1) in zip(np.asarray(labels).reshape(-1), np.asarray(scores).reshape(-1), boxes):
            if int(label) not in label_to_category:
                raise ScratchDetError(f"detections of image {name!r}: label {int(label)} has no COCO category id")
            results.append({"image_id": int(image_id), "category_id": label_to_category[int(label)],
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)})
    return results


def write_results(results: list[dict], path, decimals: int | None = None) -> Path:
    """Write a results JSON (atomically). ``decimals`` rounds boxes and scores (smaller files)."""
    if decimals is not None:
        results = [dict(r, bbox=[round(v, decimals) for v in r["bbox"]], score=round(r["score"], decimals + 3))
                   for r in results]
    path = Path(path)
    write_atomic(path, json.dumps(results, separators=(",", ":")).encode())
    return path


def read_results(path) -> list[dict]:
    """A results JSON, checked entry by entry (the first bad entry is named)."""
    path = Path(path)
    data = _load_json(path, "detections")
    if not isinstance(data, list):
        raise ScratchDetError(f"{path}: a COCO results file is a JSON list of detections, got {type(data).__name__}")
    for i, det in enumerate(data):
        check_result(det, f"{path}: entry {i}")
    return data


def check_result(det, where: str) -> None:
    if not isinstance(det, dict):
        raise ScratchDetError(f"{where}: not an object")
    for key in ("image_id", "category_id", "bbox", "score"):
        if key not in det:
            raise ScratchDetError(f"{where}: no {key!r}")
    if not isinstance(det["image_id"], int) or not isinstance(det["category_id"], int):
        raise ScratchDetError(f"{where}: image_id and category_id must be integers")
    bbox = det["bbox"]
    if (not isinstance(bbox, list) or len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox)
            or not all(math.isfinite(v) for v in bbox)):
        raise ScratchDetError(f"{where}: bbox must be 4 finite numbers [x, y, width, height], got {bbox!r}")
    if bbox[2] < 0 or bbox[3] < 0:
        raise ScratchDetError(f"{where}: bbox width and height must not be negative ({bbox!r})")
    if not isinstance(det["score"], (int, float)) or not math.isfinite(det["score"]):
        raise ScratchDetError(f"{where}: score must be a finite number")


def _load_json(path: Path, what: str):
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read the {what} ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ScratchDetError(f"{path}: the {what} file is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScratchDetError(f"{path}: malformed JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None


def load_ground_truth(path):
    """pycocotools' ``COCO`` for an instances JSON, quietly, with a clear error for bad files."""
    from pycocotools.coco import COCO
    path = Path(path)
    data = _load_json(path, "ground truth")
    if not isinstance(data, dict) or not all(k in data for k in ("images", "annotations", "categories")):
        raise ScratchDetError(f"{path}: a COCO ground-truth file needs 'images', 'annotations' and 'categories'")
    gt = COCO()
    gt.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            gt.createIndex()
        except (KeyError, TypeError) as exc:
            raise ScratchDetError(f"{path}: malformed COCO ground truth ({type(exc).__name__}: {exc})") from None
    return gt


# -- evaluation -------------------------------------------------------------------------------------

def evaluate(results: list[dict], gt, image_ids: Iterable[int] | None = None) -> COCOResult:
    """COCOeval (bbox) of ``results`` against ``gt`` (a pycocotools COCO, or a path to an instances
    JSON). ``image_ids`` restricts the evaluation (default: every ground-truth image)."""
    from pycocotools.cocoeval import COCOeval
    if not hasattr(gt, "getImgIds"):
        gt = load_ground_truth(gt)
    warnings = []
    known_images = set(gt.getImgIds())
    stray = sorted({r["image_id"] for r in results} - known_images)
    if stray:
        raise ScratchDetError(f"detections name image id {stray[0]}, which is not in the ground truth "
                              f"({len(stray)} such id(s); wrong ground-truth file?)")
    known_cats = set(gt.getCatIds())
    stray_cats = sorted({r["category_id"] for r in results} - known_cats)
    if stray_cats:
        warnings.append(f"category ids not in the ground truth are ignored: {stray_cats[:10]}")
    ids = sorted(known_images if image_ids is None else set(image_ids))
    if not results:
        warnings.append("no detections: every AP is 0")
        return COCOResult({k: 0.0 for k in STAT_NAMES}, {}, len(ids), 0, "", warnings)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            dt = gt.loadRes([dict(r) for r in results])     # loadRes adds keys: give it copies
            coco_eval = COCOeval(gt, dt, "bbox")
            coco_eval.params.imgIds = ids
            coco_eval.evaluate()
            coco_eval.accumulate()
            coco_eval.summarize()
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            # pycocotools indexes the ground truth's fields directly (iscrowd, area, bbox, ...)
            raise ScratchDetError(f"COCO evaluation failed on malformed ground truth or detections "
                                  f"({type(exc).__name__}: {exc})") from None
    stats = {name: float(v) for name, v in zip(STAT_NAMES, coco_eval.stats)}
    summary = "\n".join(line for line in out.getvalue().splitlines() if "Average" in line)
    return COCOResult(stats, per_category_ap(coco_eval, gt), len(ids), len(results), summary, warnings)


def per_category_ap(coco_eval, gt) -> dict[str, float]:
    """AP @[.50:.95] per category, area all, maxDets 100 (-1 where the category has no ground truth)."""
    precision = coco_eval.eval["precision"]             # [T, R, K, A, M]
    out = {}
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]
        valid = p[p > -1]
        name = gt.cats.get(cat_id, {}).get("name", str(cat_id))
        out[name] = float(valid.mean()) if valid.size else -1.0
    return out


def write_testdev(results: list[dict], out_dir, alg: str, image_info=None) -> tuple[Path, list[str]]:
    """The test-dev submission file ``detections_test-dev2015_<alg>_results.json``: entries checked,
    boxes rounded to 0.01 pixel and scores to 5 decimals (the server limits upload size). With the
    test-dev image list (``image_info_test-dev2015.json``) every image id must belong to it."""
    warnings = []
    if not alg or any(c in alg for c in "/\\ _"):
        raise ScratchDetError(f"test-dev algorithm name {alg!r}: a non-empty word without '/', '_' or spaces")
    for i, det in enumerate(results):
        check_result(det, f"detection {i}")
    if image_info is not None:
        info = _load_json(Path(image_info), "test-dev image list")
        if not isinstance(info, dict) or "images" not in info:
            raise ScratchDetError(f"{image_info}: an image-info file needs an 'images' list")
        allowed = {img["id"] for img in info["images"] if isinstance(img, dict) and "id" in img}
        stray = sorted({r["image_id"] for r in results} - allowed)
        if stray:
            raise ScratchDetError(f"detections name image id {stray[0]}, which is not in {image_info} "
                                  f"({len(stray)} such id(s))")
        missing = len(allowed - {r["image_id"] for r in results})
        if missing:
            warnings.append(f"{missing} test-dev image(s) have no detections")
    path = Path(out_dir) / TESTDEV_NAME.format(alg=alg)
    write_results(results, path, decimals=2)
    return path, warnings
