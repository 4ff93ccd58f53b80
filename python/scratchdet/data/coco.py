"""MS COCO: instance JSON files -> entries for the converter.

Sets (as the fork's ``data/coco`` scripts split them): 2014 layout -- trainval35k = train2014 +
valminusminival2014 (shuffled with a fixed seed), minival2014 (JSON order); 2017 layout -- train2017
(shuffled), val2017. Category ids are mapped through the COCO label map, whose item names are the
category ids as strings; crowd boxes become ``difficult`` (the fork stores ``iscrowd`` there).
Boxes: ``xmax = x + w``, ``ymax = y + h`` in float32, as ``ReadJSONToAnnotatedDatum`` computes them.
The minival name-size file uses the numeric image id as the name (``get_image_size --name_id_file``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path, PurePosixPath

import numpy as np

from ..datasets import DATASETS
from ..errors import ScratchDetError
from . import labelmap as lm
from .entries import Entry, shuffled
from .record import BadRecord, RawAnnotation, RawObject

_COCO = DATASETS["coco"]   # the paper's COCO sets are the 2014 layout's
# set -> (LMDB folder, [(annotation set, image folder)], shuffle, name-size file or None)
COCO_SETS = {
    "2014": {
        "trainval35k": (_COCO.train_lmdb, [("train2014", "train2014"), ("valminusminival2014", "val2014")], True, None),
        "minival": (_COCO.test_lmdb, [("minival2014", "val2014")], False, PurePosixPath(_COCO.name_size).name),
    },
    "2017": {
        "train2017": ("coco_train2017_lmdb", [("train2017", "train2017")], True, None),
        "val2017": ("coco_val2017_lmdb", [("val2017", "val2017")], False, "val2017_name_size.txt"),
    },
}


def find_annotation_file(root, ann_set: str) -> Path:
    root = Path(root)
    for cand in (root / "annotations" / f"instances_{ann_set}.json", root / f"instances_{ann_set}.json"):
        if cand.is_file():
            return cand
    raise ScratchDetError(f"{root}/annotations/instances_{ann_set}.json: not found")


def find_image_dir(root, folder: str) -> str:
    """Image folder relative to root: ``<folder>`` or ``images/<folder>``."""
    root = Path(root)
    for rel in (folder, f"images/{folder}"):
        if (root / rel).is_dir():
            return rel
    raise ScratchDetError(f"{root}/{folder}: image folder not found (also looked in {root}/images/{folder})")


def detect_year(root) -> str:
    root = Path(root)
    for year, probe in (("2014", "minival2014"), ("2017", "val2017")):
        try:
            find_annotation_file(root, probe)
            return year
        except ScratchDetError:
            pass
    raise ScratchDetError(f"{root}: no instances_minival2014.json or instances_val2017.json "
                          "(in annotations/ or the root); is this a COCO root?")


def load_instances(path) -> dict:
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            doc = json.load(fh)
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read ({exc.strerror})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ScratchDetError(f"{path}: invalid JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("annotations"), list):
        raise ScratchDetError(f"{path}: not a COCO instances file (needs 'images' and 'annotations' lists)")
    return doc


def coco_objects(annotations, source: str) -> list[RawObject]:
    """COCO annotation dicts -> objects named by category id; malformed ones raise BadRecord."""
    if not isinstance(annotations, list):
        raise BadRecord("bad annotation", f"{source}: 'annotation' is not a list")
    objects = []
    for i, ann in enumerate(annotations):
        try:
            bbox = ann["bbox"]
            x, y, w, h = (np.float32(float(v)) for v in bbox)
            name = str(ann["category_id"])
        except (KeyError, TypeError, ValueError):
            raise BadRecord("bad annotation", f"{source}: annotation {i} needs 'category_id' and a 4-number 'bbox'") from None
        objects.append(RawObject(name, x, y, np.float32(x + w), np.float32(y + h), bool(ann.get("iscrowd", 0))))
    return objects


def labelmap_from_categories(categories) -> "lm.pb.LabelMap":
    """SSD's labelmap_coco.prototxt: category ids ascending -> labels 1..K, names = ids as strings."""
    cats = sorted({int(c["id"]): c.get("name", str(c["id"])) for c in categories}.items())
    return lm.make([str(cid) for cid, _ in cats], [name for _, name in cats])


def entries_for(root, parts, json_cache: dict | None = None, stream=None) -> tuple[list[Entry], list]:
    """Entries for (annotation set, image folder) parts, and the categories seen.

    Bad image entries (not an object, no ``id`` / ``file_name``, a ``file_name`` leaving the image
    folder) become skipped records named by their position; annotations that are not objects or
    point at an image id absent from ``images`` are left out with one warning line per kind.
    """
    root = Path(root)
    stream = stream or sys.stderr
    entries, categories = [], []
    json_cache = {} if json_cache is None else json_cache
    for ann_set, folder in parts:
        path = find_annotation_file(root, ann_set)
        doc = json_cache.get(path) or load_instances(path)
        json_cache[path] = doc
        categories.extend(c for c in (doc.get("categories") or []) if isinstance(c, dict))
        image_dir = find_image_dir(root, folder)
        by_image: dict = {}
        not_objects = []
        for i, ann in enumerate(doc["annotations"]):
            if isinstance(ann, dict):
                key = ann.get("image_id")
                by_image.setdefault(key if isinstance(key, (int, str, float, type(None))) else repr(key), []).append(ann)
            else:
                not_objects.append(i)
        if not_objects:
            print(f"warning: {path.name}: {len(not_objects)} annotation entr{'y is' if len(not_objects) == 1 else 'ies are'} "
                  f"not JSON objects (annotations[{not_objects[0]}]{', ...' if len(not_objects) > 1 else ''}); ignored",
                  file=stream)
        seen = set()
        for i, img in enumerate(doc["images"]):
            where = f"{path.name} images[{i}]"
            image_id = img.get("id") if isinstance(img, dict) else None
            file_name = img.get("file_name") if isinstance(img, dict) else None
            problem = _image_entry_problem(img, image_id, file_name, where)
            if problem is not None:
                entries.append(Entry(f"{image_dir}/<{where}>", "", None, "json", str(image_id), problem))
                continue
            list_path = f"{image_dir}/{file_name}"
            source = f"{path.name} image {image_id}"
            if image_id in seen:
                problem = BadRecord("duplicate", f"{source}: image id {image_id} appears more than once")
            seen.add(image_id)
            try:
                objects = coco_objects(by_image.get(image_id, []), source)
            except BadRecord as exc:
                problem, objects = problem or exc, []
            anno = RawAnnotation(source, _int(img.get("width")), _int(img.get("height")), objects)
            entries.append(Entry(list_path, str(root / list_path), anno, "json", str(image_id), problem))
        orphans = [k for k in by_image if k not in seen]
        if orphans:
            n = sum(len(by_image[k]) for k in orphans)
            print(f"warning: {path.name}: {n} annotation{'s point' if n != 1 else ' points'} at image id"
                  f"{'s' if len(orphans) != 1 else ''} not in 'images' ({', '.join(repr(k) for k in orphans[:3])}"
                  f"{', ...' if len(orphans) > 3 else ''}); ignored", file=stream)
    return entries, categories


def _image_entry_problem(img, image_id, file_name, where: str) -> BadRecord | None:
    if not isinstance(img, dict):
        return BadRecord("bad image entry", f"{where}: not a JSON object ({str(img)[:60]})")
    if image_id is None or isinstance(image_id, (dict, list)):
        return BadRecord("bad image entry", f"{where}: no usable 'id' ({str(img)[:80]})")
    if not isinstance(file_name, str) or not file_name.strip():
        return BadRecord("bad image entry", f"{where} (id {image_id}): no 'file_name'")
    parts = PurePosixPath(file_name.replace("\\", "/")).parts
    if file_name.startswith(("/", "\\")) or ".." in parts:
        return BadRecord("bad file name", f"{where} (id {image_id}): file_name {file_name!r} leaves the image folder")
    return None


def _int(v):
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return None


def build_sets(root, year: str | None = None, seed: int = 0, only: list[str] | None = None):
    """-> (year, {set name: entries}, categories) for the sets in ``only`` (default: every set of the
    layout); only their annotation files are read, so a missing train JSON does not stop val2017."""
    year = year or detect_year(root)
    if year not in COCO_SETS:
        raise ScratchDetError(f"COCO year {year!r}: choose 2014 (trainval35k/minival) or 2017 (train2017/val2017)")
    for name in only or []:
        if name not in COCO_SETS[year]:
            raise ScratchDetError(f"--sets: unknown COCO {year} set {name!r} (choose from {', '.join(COCO_SETS[year])})")
    out, categories, cache = {}, [], {}
    for name, (_, parts, shuffle, _) in COCO_SETS[year].items():
        if only is not None and name not in only:
            continue
        entries, cats = entries_for(root, parts, cache)
        categories.extend(cats)
        out[name] = shuffled(entries, seed) if shuffle else entries
    return year, out, categories
