"""``scratchdet data check DB``: what an AnnotatedDatum LMDB holds, and every record the SSD data
layer would choke on or silently misread.

Box sizes use COCO's pixel-area rule on the original image (the datum's height x width): small
< 32^2 <= medium < 96^2 <= large.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from ..caffe.schema import pb
from ..datasets import DATASETS
from ..errors import plain
from . import labelmap as lm
from .files import conventional_file, not_found_note
from .lmdb_io import AnnotatedLMDB

KEY_FORM = re.compile(r"^\d{8}_\S+$")
SMALL, MEDIUM = 32 ** 2, 96 ** 2
EPS = 1e-6


@dataclass
class CheckReport:
    path: str
    records: int = 0
    objects: int = 0
    difficult: int = 0
    empty_records: int = 0
    per_class: Counter = field(default_factory=Counter)          # label -> objects
    per_class_difficult: Counter = field(default_factory=Counter)
    per_class_images: Counter = field(default_factory=Counter)   # label -> records containing it
    sizes: Counter = field(default_factory=Counter)              # small/medium/large
    min_hw: tuple[int, int] | None = None
    max_hw: tuple[int, int] | None = None
    invalid: list[tuple[str, str]] = field(default_factory=list)  # (key, problem)
    label_names: dict[int, str] = field(default_factory=dict)
    labelmap_source: str | None = None

    @property
    def ok(self) -> bool:
        return not self.invalid


LABELMAP_BY_NAME = (("voc", DATASETS["voc07"].label_map), ("coco", DATASETS["coco"].label_map),
                    ("synthetic", DATASETS["synthetic"].label_map))


def guess_labelmap(db_path) -> tuple[Path | None, str]:
    """The conventional label map for a conventionally named LMDB (looked for in the current folder,
    then in this checkout), and a note saying what was found or why none."""
    name = Path(db_path).name.lower()
    for pattern, rel in LABELMAP_BY_NAME:
        if pattern in name:
            path = conventional_file(rel)
            return path, (f"{path} (from the LMDB's name)" if path else not_found_note(rel))
    return None, f"none guessed from the name {Path(db_path).name!r} (it names no VOC, COCO or synthetic set)"


def check_record(key: str, value: bytes, valid_labels: set[int] | None, decode: bool, report: CheckReport) -> None:
    problems = []
    if not KEY_FORM.match(key):
        problems.append("key is not of the form %08d_<image path>")
    record = pb.AnnotatedDatum()
    try:
        record.ParseFromString(value)
    except Exception as exc:
        report.invalid.append((key, f"not a serialized AnnotatedDatum ({exc})"))
        return
    if not record.HasField("type"):
        problems.append("type not set: the AnnotatedData layer would read classification labels, not boxes")
    datum = record.datum
    h, w = datum.height, datum.width
    if not record.HasField("datum") or not datum.data:
        problems.append("no image data")
    elif decode:
        if datum.encoded:
            image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_UNCHANGED)
            if image is None:
                problems.append("image data cannot be decoded")
            else:
                ch = 1 if image.ndim == 2 else image.shape[2]
                if image.shape[:2] != (h, w):
                    problems.append(f"datum says {h}x{w} (HxW) but the image decodes to {image.shape[0]}x{image.shape[1]}")
                if ch != 3:
                    problems.append(f"image decodes to {ch} channel(s), not 3 (fails without force_color)")
        elif len(datum.data) != datum.channels * h * w:
            problems.append(f"raw data of {len(datum.data)} bytes != channels {datum.channels} x {h} x {w}")
    if h > 0 and w > 0:
        report.min_hw = (h, w) if report.min_hw is None else (min(report.min_hw[0], h), min(report.min_hw[1], w))
        report.max_hw = (h, w) if report.max_hw is None else (max(report.max_hw[0], h), max(report.max_hw[1], w))
    else:
        problems.append(f"bad image size {h}x{w}")

    seen_groups = set()
    n = 0
    for group in record.annotation_group:
        label = group.group_label
        if label in seen_groups:
            problems.append(f"label {label} has more than one annotation group")
        seen_groups.add(label)
        if label <= 0:
            problems.append(f"group label {label} (0 is background; labels start at 1)")
        elif valid_labels is not None and label not in valid_labels:
            problems.append(f"group label {label} is not in the label map")
        report.per_class_images[label] += 1
        for i, ann in enumerate(group.annotation):
            n += 1
            if ann.instance_id != i:
                problems.append(f"label {label}: instance ids are not 0,1,2,... (annotation {i} has {ann.instance_id})")
            b = ann.bbox
            box = (b.xmin, b.ymin, b.xmax, b.ymax)
            if not all(np.isfinite(box)):
                problems.append(f"label {label} box {i}: non-finite coordinates {plain(box)}")
                continue
            if min(box) < -EPS or max(box) > 1 + EPS:
                problems.append(f"label {label} box {i}: outside [0,1] {plain(box)}")
            if b.xmax <= b.xmin or b.ymax <= b.ymin:
                problems.append(f"label {label} box {i}: empty or inverted {plain(box)}")
                continue
            report.objects += 1
            report.per_class[label] += 1
            if b.difficult:
                report.difficult += 1
                report.per_class_difficult[label] += 1
            area = (b.xmax - b.xmin) * w * (b.ymax - b.ymin) * h
            report.sizes["small" if area < SMALL else "medium" if area < MEDIUM else "large"] += 1
    if n == 0:
        report.empty_records += 1
    for p in problems:
        report.invalid.append((key, p))


def check_db(path, labelmap_path=None, decode: bool = True, quiet: bool = False) -> CheckReport:
    db = AnnotatedLMDB(path)
    report = CheckReport(str(path))
    note = str(labelmap_path)
    if not labelmap_path:
        labelmap_path, note = guess_labelmap(path)
        if not labelmap_path:
            note += ": classes shown as '?' (give --labelmap)"
    report.labelmap_source = note
    valid_labels = None
    if labelmap_path:
        labelmap = lm.load(labelmap_path)
        report.label_names = lm.label_to_display_name(labelmap)
        valid_labels = {item.label for item in labelmap.item if item.label > 0}
    for key, value in tqdm(db.iter_raw(), total=len(db), desc=f"check {Path(path).name}", unit="rec",
                           disable=True if quiet else None):
        report.records += 1
        check_record(key, value, valid_labels, decode, report)
    db.close()
    return report


def format_report(r: CheckReport) -> str:
    lines = [f"{r.path}: {r.records} records"]
    if r.min_hw:
        lines.append(f"image sizes (HxW): {r.min_hw[0]}..{r.max_hw[0]} x {r.min_hw[1]}..{r.max_hw[1]}")
    lines.append(f"objects: {r.objects} ({r.difficult} difficult), records without objects: {r.empty_records}")
    if r.labelmap_source:
        lines.append(f"label map: {r.labelmap_source}")
    labels = sorted(set(r.per_class) | set(r.per_class_images))
    lines.append(f"classes: {len(labels)}")
    width = max([len(r.label_names.get(lbl, str(lbl))) for lbl in labels] + [5])
    lines.append(f"  {'label':>5}  {'class':<{width}}  {'objects':>8}  {'difficult':>9}  {'images':>7}")
    for lbl in labels:
        lines.append(f"  {lbl:>5}  {r.label_names.get(lbl, '?'):<{width}}  {r.per_class[lbl]:>8}  "
                     f"{r.per_class_difficult[lbl]:>9}  {r.per_class_images[lbl]:>7}")
    total = max(sum(r.sizes.values()), 1)
    lines.append("box sizes (COCO area rule on the original image): " + ", ".join(
        f"{k} {r.sizes[k]} ({100.0 * r.sizes[k] / total:.1f}%)" for k in ("small", "medium", "large")))
    lines.append(f"invalid records: {len({k for k, _ in r.invalid})}")
    for key, problem in r.invalid:
        lines.append(f"  invalid: {key}: {problem}")
    return "\n".join(lines)
