"""PASCAL VOC: read a ``VOCdevkit`` tree, build SSD's lists, parse the XML annotations.

Lists as the fork's ``data/VOC0712/create_list.sh`` builds them, lines
``VOC2007/JPEGImages/000005.jpg VOC2007/Annotations/000005.xml`` relative to the devkit:
trainval = VOC2007 trainval + VOC2012 trainval, shuffled (with a fixed seed here; the fork's perl
shuffle is unseeded); test = VOC2007 test in ImageSets order; 07++12 ("VOC0712Plus") = VOC2007
trainval + VOC2007 test + VOC2012 trainval, shuffled. ``test_name_size.txt`` lists the test images.

The 07++12 test set is VOC2012 test (``VOC2012test.tar`` from the evaluation server, extracted into
the same ``VOC2012/`` folder; ``ImageSets/Main/test.txt``, 10,991 images), whose annotations are not
public: as the SSD/RefineDet ``data/VOC0712Plus`` scripts do, its list is the images in ImageSets
order and ``VOC2012_test_lmdb`` holds them with no annotation groups; its name-size file is
``data/VOC0712Plus/test_name_size.txt``. The test net only writes comp4 files for the server.
"""
from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..datasets import DATASETS
from ..errors import ScratchDetError
from .entries import Entry, read_annotation_bytes, shuffled
from .record import BadRecord, RawAnnotation, RawObject

_VOC07, _VOC12 = DATASETS["voc07"], DATASETS["voc12"]
# set name -> (LMDB folder, [(year, image set)], shuffle)
VOC_SETS = {
    "trainval": (_VOC07.train_lmdb, [("2007", "trainval"), ("2012", "trainval")], True),
    "test": (_VOC07.test_lmdb, [("2007", "test")], False),
    "plus": (_VOC12.train_lmdb, [("2007", "trainval"), ("2007", "test"), ("2012", "trainval")], True),
    "test12": (_VOC12.test_lmdb, [("2012", "test")], False),
}
LIST_NAMES = {"trainval": "trainval.txt", "test": "test.txt", "plus": "trainval_plus.txt", "test12": "test.txt"}
UNANNOTATED = {"test12"}        # sets without public annotations: records with no annotation groups
VOC2012_TEST_HINT = ("VOC2012 test is not part of VOCtrainval_11-May-2012.tar: download VOC2012test.tar from "
                     "the PASCAL VOC evaluation server (registration needed) and extract it beside VOC2012 trainval")


def parse_xml(path) -> RawAnnotation:
    """A VOC annotation: declared size and objects (name, difficult, integer pixel ``bndbox``)."""
    path = Path(path)
    data = read_annotation_bytes(path)
    try:
        root = ET.fromstring(data)     # bytes: the XML declaration's encoding is honoured
    except ET.ParseError as exc:
        raise BadRecord("bad annotation", f"{path}: malformed XML ({exc})") from None
    if root.tag != "annotation":
        raise BadRecord("bad annotation", f"{path}: root element is <{root.tag}>, expected <annotation>")
    size = root.find("size")
    width = _size(size, "width", path)
    height = _size(size, "height", path)
    objects = []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise BadRecord("bad annotation", f"{path}: object {i} has no <name>")
        difficult = (obj.findtext("difficult") or "0").strip() == "1"
        box = obj.find("bndbox")
        if box is None:
            raise BadRecord("bad annotation", f"{path}: object {i} ({name}) has no <bndbox>")
        coords = []
        for tag in ("xmin", "ymin", "xmax", "ymax"):
            v = _number(box.findtext(tag), path, f"object {i} bndbox/{tag}")
            if v is None:
                raise BadRecord("bad annotation", f"{path}: object {i} ({name}) has no bndbox/{tag}")
            coords.append(np.float32(v))
        objects.append(RawObject(name, *coords, difficult))
    return RawAnnotation(str(path), width, height, objects)


def _number(text, path, what):
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            raise BadRecord("bad annotation", f"{path}: {what} is not a number ({text.strip()!r})") from None


def _size(size, tag, path):
    """``<size><width>`` / ``<height>`` as an int; None when absent. ``1e999``, ``nan`` or a size
    beyond any image (int() of them raises) make the record bad, not the conversion."""
    if size is None:
        return None
    v = _number(size.findtext(tag), path, f"size/{tag}")
    if v is None:
        return None
    try:
        usable = math.isfinite(float(v)) and abs(v) < 1 << 31
    except OverflowError:        # an integer literal beyond any float
        usable = False
    if not usable:
        raise BadRecord("bad annotation", f"{path}: size/{tag} is not a usable image size ({size.findtext(tag).strip()!r})")
    return int(v)


def image_set_path(devkit, year: str, image_set: str, folder: str | None = None) -> Path:
    return Path(devkit) / (folder or f"VOC{year}") / "ImageSets" / "Main" / f"{image_set}.txt"


def read_image_set(devkit, year: str, image_set: str, folder: str | None = None) -> list[str]:
    path = image_set_path(devkit, year, image_set, folder)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        hint = VOC2012_TEST_HINT if (year, image_set) == ("2012", "test") else f"is {devkit} a VOCdevkit with VOC{year}?"
        raise ScratchDetError(f"{path}: image set not found ({hint})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ScratchDetError(f"{path}: cannot read image set ({exc})") from None
    ids = [line.split()[0] for line in lines if line.strip()]
    if not ids:
        raise ScratchDetError(f"{path}: empty image set")
    return ids


def entries_for(devkit, parts, folder_of=lambda year: f"VOC{year}", annotated: bool = True) -> list[Entry]:
    """List entries of ``parts`` ([(year, image set)]); ``annotated`` False: images only."""
    devkit = Path(devkit)
    entries = []
    for year, image_set in parts:
        folder = folder_of(year)
        for image_id in read_image_set(devkit, year, image_set, folder):
            image_rel = f"{folder}/JPEGImages/{image_id}.jpg"
            anno = str(devkit / folder / "Annotations" / f"{image_id}.xml") if annotated else None
            entries.append(Entry(image_rel, str(devkit / image_rel), anno, "xml", image_id))
    return entries


def build_lists(devkit, sets=("trainval", "test"), seed: int = 0, years=("2007", "2012")) -> dict[str, list[Entry]]:
    """Set name -> entries in key order. ``years`` limits which VOC years may be used."""
    out = {}
    for name in sets:
        _, parts, shuffle = VOC_SETS[name]
        parts = [(y, s) for y, s in parts if y in years]
        if not parts:
            raise ScratchDetError(f"VOC set {name!r} needs VOC years {sorted({y for y, _ in VOC_SETS[name][1]})}, "
                                  f"but --years allows only {','.join(years)}")
        entries = entries_for(devkit, parts, annotated=name not in UNANNOTATED)
        out[name] = shuffled(entries, seed) if shuffle else entries
    return out


def check_devkit(devkit, years) -> None:
    devkit = Path(devkit)
    if not devkit.is_dir():
        raise ScratchDetError(f"{devkit}: VOCdevkit folder not found")
    for year in years:
        if not (devkit / f"VOC{year}" / "Annotations").is_dir():
            raise ScratchDetError(f"{devkit}/VOC{year}/Annotations: not found (download and extract VOC{year}, "
                                  f"or pass --years without {year})")
