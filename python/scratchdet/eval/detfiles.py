"""Detections grouped by class, and the VOC devkit's result files ``comp4_det_test_<class>.txt``.

One line per detection, ``<image id> <score> <xmin> <ymin> <xmax> <ymax>`` in pixel coordinates of
the original image (what the SSD fork's DetectionOutput ``save_output_param`` writes in VOC format,
and what the devkit's ``VOCevaldet`` reads). The class is in the file name after the prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from ..data.files import write_atomic
from ..errors import ScratchDetError

DEFAULT_PREFIX = "comp4_det_test_"


@dataclass
class ClassDetections:
    """The detections of one class: image ids, scores [N] and pixel boxes [N, 4] (xmin, ymin, xmax,
    ymax), in file order (the devkit's ranking is a stable sort of this order by score)."""
    images: list[str]
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self):
        self.scores = np.asarray(self.scores, np.float64).reshape(-1)
        self.boxes = np.asarray(self.boxes, np.float64).reshape(-1, 4)
        self.images = [str(i) for i in self.images]
        if not (len(self.images) == len(self.scores) == len(self.boxes)):
            raise ScratchDetError(f"detections: {len(self.images)} image ids, {len(self.scores)} scores and "
                                  f"{len(self.boxes)} boxes (they must be equal)")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> "ClassDetections":
        return cls([], np.zeros(0), np.zeros((0, 4)))


def group_by_class(per_image: Mapping[str, tuple], class_names: Mapping[int, str]) -> dict[str, ClassDetections]:
    """``per_image``: image id -> (labels [N], scores [N], pixel boxes [N, 4]); ``class_names``:
    label -> class name. Returns class name -> ClassDetections (images in the given order)."""
    lists: dict[str, tuple[list, list, list]] = {name: ([], [], []) for name in class_names.values()}
    for image, (labels, scores, boxes) in per_image.items():
        labels = np.asarray(labels).reshape(-1)
        scores = np.asarray(scores, np.float64).reshape(-1)
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        if not (len(labels) == len(scores) == len(boxes)):
            raise ScratchDetError(f"detections of image {image!r}: {len(labels)} labels, {len(scores)} scores, "
                                  f"{len(boxes)} boxes")
        for label, score, box in zip(labels, scores, boxes):
            name = class_names.get(int(label))
            if name is None:
                raise ScratchDetError(f"detections of image {image!r}: label {int(label)} is not in the label map")
            images, sc, bx = lists[name]
            images.append(image)
            sc.append(score)
            bx.append(box)
    return {name: ClassDetections(i, np.asarray(s), np.asarray(b).reshape(-1, 4)) for name, (i, s, b) in lists.items()}


def from_detection_output(rows, names: list[str], sizes: list[tuple[int, int]],
                          class_names: Mapping[int, str]) -> dict[str, ClassDetections]:
    """DetectionOutput rows ``[image, label, score, xmin, ymin, xmax, ymax]`` (normalized) to pixel
    detections by class, as the fork's ``save_output_param`` does: the box is clipped to [0, 1] and
    scaled by the original (height, width) of ``sizes[image]``; rows with label -1 (the layer's
    "nothing detected" filler) are skipped. ``image`` indexes ``names``/``sizes``."""
    rows = np.asarray(rows, np.float64).reshape(-1, 7)
    per_image: dict[str, tuple[list, list, list]] = {}
    for image, label, score, *box in rows:
        if int(label) == -1:
            continue
        k = int(image)
        if not 0 <= k < len(names):
            raise ScratchDetError(f"detection row names image index {k}, but {len(names)} image names were given")
        h, w = sizes[k]
        x0, y0, x1, y1 = np.clip(box, 0.0, 1.0)
        labels, scores, boxes = per_image.setdefault(names[k], ([], [], []))
        labels.append(int(label))
        scores.append(score)
        boxes.append((x0 * w, y0 * h, x1 * w, y1 * h))
    return group_by_class(per_image, class_names)


def format_line(image: str, score: float, box) -> str:
    # score with 6 significant digits as the fork's iostream writes it; boxes to 0.1 pixel
    x0, y0, x1, y1 = (float(v) for v in box)
    return f"{image} {float(score):.6g} {x0:.1f} {y0:.1f} {x1:.1f} {y1:.1f}"


def write_class_file(path, dets: ClassDetections) -> None:
    text = "".join(format_line(i, s, b) + "\n" for i, s, b in zip(dets.images, dets.scores, dets.boxes))
    write_atomic(Path(path), text.encode())


def write_det_files(out_dir, dets: Mapping[str, ClassDetections], prefix: str = DEFAULT_PREFIX) -> list[Path]:
    """One ``<prefix><class>.txt`` per class (empty files for classes without detections)."""
    out_dir = Path(out_dir)
    paths = []
    for name, class_dets in dets.items():
        path = out_dir / f"{prefix}{name}.txt"
        write_class_file(path, class_dets)
        paths.append(path)
    return paths


def read_class_file(path) -> ClassDetections:
    """Parse one result file; a malformed line is an error naming the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read ({exc.strerror})") from None
    images, scores, boxes = [], [], []
    for lineno, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise ScratchDetError(f"{path}:{lineno}: expected 'image score xmin ymin xmax ymax', got {line.strip()[:80]!r}")
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise ScratchDetError(f"{path}:{lineno}: score and box must be numbers, got {line.strip()[:80]!r}") from None
        if not all(np.isfinite(values)):
            raise ScratchDetError(f"{path}:{lineno}: score or box is not finite ({line.strip()[:80]!r})")
        images.append(fields[0])
        scores.append(values[0])
        boxes.append(values[1:])
    return ClassDetections(images, np.asarray(scores), np.asarray(boxes).reshape(-1, 4))


def class_of_file(path, class_names: Iterable[str]) -> str | None:
    """The class a result file holds: the longest class name its stem ends with."""
    stem = Path(path).stem
    matches = [name for name in class_names if stem.endswith(name)]
    return max(matches, key=len) if matches else None


def read_det_files(sources: Iterable, class_names: Iterable[str],
                   warnings: list[str] | None = None) -> dict[str, ClassDetections]:
    """Result files for the given classes from folders (their ``*.txt`` files named after a class;
    others are skipped with a warning) and/or files (which must name a class). Classes without a
    file get no detections; two files for one class are an error."""
    class_names = list(class_names)
    sources = [Path(s) for s in sources]
    files: list[tuple[Path, bool]] = []          # (path, given explicitly)
    for src in sources:
        if src.is_dir():
            files.extend((p, False) for p in sorted(src.iterdir()) if p.suffix == ".txt")
        elif src.is_file():
            files.append((src, True))
        else:
            raise ScratchDetError(f"{src}: no such detection file or folder")
    example = f"{DEFAULT_PREFIX}{class_names[0] if class_names else 'CLASS'}.txt"
    out: dict[str, ClassDetections] = {}
    seen: dict[str, Path] = {}
    for path, explicit in files:
        name = class_of_file(path, class_names)
        if name is None:
            if explicit:
                raise ScratchDetError(f"{path}: the file name ends with no class of the label map "
                                      f"(expected e.g. {example})")
            if warnings is not None:
                warnings.append(f"{path}: skipped (its name ends with no class of the label map)")
            continue
        if name in seen:
            raise ScratchDetError(f"two detection files for class {name!r}: {seen[name]} and {path}")
        seen[name] = path
        out[name] = read_class_file(path)
    if not out:
        raise ScratchDetError(f"no detection files named after a class (e.g. {example}) in "
                              f"{', '.join(str(s) for s in sources)}")
    for name in class_names:
        out.setdefault(name, ClassDetections.empty())
    return out
