"""Ground truth for VOC-style evaluation: per image, pixel boxes, class names and difficult flags.

Two sources: the devkit's own files (``Annotations/<id>.xml`` + an ``ImageSets`` list), or one of
our test LMDBs (boxes stored normalized by the original size; sizes from the name-size file when
given, else from the decoded image). Pixel coordinates are recovered as ``normalized x size`` and
rounded to 1/1000 pixel, which undoes the float32 storage error of VOC's integer coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import numpy as np

from ..errors import ScratchDetError, plain


@dataclass
class ImageTruth:
    boxes: np.ndarray                     # [N, 4] pixel xmin, ymin, xmax, ymax (devkit: 1-based)
    classes: list[str]
    difficult: np.ndarray                 # [N] bool
    size: tuple[int, int] | None = None   # (height, width) when known

    def of_class(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        keep = np.asarray([c == name for c in self.classes], bool)
        return self.boxes[keep].reshape(-1, 4), self.difficult[keep]


@dataclass
class GroundTruth:
    images: dict[str, ImageTruth] = field(default_factory=dict)   # image id -> truth, in list order
    source: str = ""

    def class_names(self) -> list[str]:
        """Every class name that occurs, sorted."""
        return sorted({c for t in self.images.values() for c in t.classes})


def read_image_set(path) -> list[str]:
    """An ``ImageSets/Main/<set>.txt`` list: the first field of every non-empty line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read the image list ({exc.strerror})") from None
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise ScratchDetError(f"{path}: the image list is empty")
    return ids


def from_voc_xml(annotations_dir, image_ids, progress: bool = False) -> GroundTruth:
    """Parse ``<annotations_dir>/<id>.xml`` for every id (a missing or malformed file is an error
    naming it; the devkit would stop there too)."""
    from ..data.record import BadRecord
    from ..data.voc import parse_xml
    annotations_dir = Path(annotations_dir)
    if not annotations_dir.is_dir():
        raise ScratchDetError(f"{annotations_dir}: no such annotations folder")
    ids = list(image_ids)
    if progress:
        from tqdm import tqdm
        ids = tqdm(ids, desc="annotations", unit="img", leave=False)
    gt = GroundTruth(source=str(annotations_dir))
    for image_id in ids:
        try:
            anno = parse_xml(annotations_dir / f"{image_id}.xml")
        except BadRecord as exc:
            raise ScratchDetError(exc.message) from None
        boxes = np.asarray([[o.xmin, o.ymin, o.xmax, o.ymax] for o in anno.objects], np.float64).reshape(-1, 4)
        bad = np.flatnonzero(~np.isfinite(boxes).all(axis=1))
        if len(bad):   # no detection can match it and its area is undefined: the file is wrong
            o = anno.objects[bad[0]]
            raise ScratchDetError(f"{anno.source}: object {bad[0]} ({o.name}) has a non-finite box "
                                  f"{plain((o.xmin, o.ymin, o.xmax, o.ymax))}")
        size = (anno.height, anno.width) if anno.height and anno.width else None
        gt.images[image_id] = ImageTruth(boxes, [o.name for o in anno.objects],
                                         np.asarray([o.difficult for o in anno.objects], bool), size)
    return gt


def read_name_size(path) -> list[tuple[str, int, int]]:
    """``<name> <height> <width>`` lines (tools/get_image_size output)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read the name-size file ({exc.strerror})") from None
    out = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            name, h, w = fields[0], int(fields[1]), int(fields[2])
        except (IndexError, ValueError):
            raise ScratchDetError(f"{path}:{lineno}: expected '<name> <height> <width>', got {line.strip()[:80]!r}") from None
        if h <= 0 or w <= 0:
            raise ScratchDetError(f"{path}:{lineno}: height and width must be positive ({h} x {w})")
        out.append((name, h, w))
    return out


def image_name_from_key(key: str) -> str:
    """``00000005_VOC2007/JPEGImages/000005.jpg`` -> ``000005`` (the name-size file's names)."""
    path = key.split("_", 1)[1] if "_" in key and key.split("_", 1)[0].isdigit() else key
    return Path(path).stem


def from_lmdb(path, label_names: Mapping[int, str], name_size_file=None, progress: bool = False) -> GroundTruth:
    """Ground truth of a test LMDB, image ids from the name-size file (same order as the records)
    or else from the record keys."""
    from ..data.lmdb_io import AnnotatedLMDB, annotations, decode_image
    db = AnnotatedLMDB(path)
    sizes = read_name_size(name_size_file) if name_size_file else None
    if sizes is not None and len(sizes) != len(db):
        raise ScratchDetError(f"{name_size_file}: {len(sizes)} lines but {path} holds {len(db)} records "
                              "(the name-size file must list the LMDB's images in order)")
    items = enumerate(db)
    if progress:
        from tqdm import tqdm
        items = tqdm(items, total=len(db), desc="ground truth", unit="img", leave=False)
    gt = GroundTruth(source=str(path))
    for index, (key, record) in items:
        if sizes is not None:
            name, height, width = sizes[index]
        else:
            name = image_name_from_key(key)
            height, width = decode_image(record).shape[:2]
        labels, boxes, difficult, _ids = annotations(record)
        classes = []
        for label in labels:
            if int(label) not in label_names:
                raise ScratchDetError(f"{path}: record {key!r} has label {int(label)}, which the label map lacks")
            classes.append(label_names[int(label)])
        pixel = np.round(boxes.astype(np.float64) * np.array([width, height, width, height], np.float64), 3)
        if name in gt.images:
            raise ScratchDetError(f"{path}: image name {name!r} occurs twice (record {key!r})")
        gt.images[name] = ImageTruth(pixel.reshape(-1, 4), classes, difficult.astype(bool), (height, width))
    db.close()
    return gt
