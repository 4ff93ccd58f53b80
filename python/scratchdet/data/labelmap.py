"""SSD label maps (text ``LabelMap``): load, look names up, check for duplicates.

convert_annoset matches ``LabelMapItem.name`` against the XML ``<name>`` (VOC) or the JSON
``category_id`` written as a string (COCO); ``--check_label`` makes duplicate names fatal.
"""
from __future__ import annotations

from ..caffe import io
from ..caffe.schema import pb
from ..errors import ScratchDetError

BACKGROUND_NAME = "none_of_the_above"   # item 0 of every SSD label map

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
SYNTHETIC_CLASSES = ("circle", "square", "triangle", "cross")


def load(path) -> pb.LabelMap:
    labelmap = io.read_labelmap(path)
    if not labelmap.item:
        raise ScratchDetError(f"{path}: label map has no items")
    return labelmap


def make(names, display_names=None) -> pb.LabelMap:
    """A label map as SSD writes them: background at 0, then ``names`` as labels 1..K."""
    labelmap = pb.LabelMap()
    labelmap.item.add(name=BACKGROUND_NAME, label=0, display_name="background")
    for i, name in enumerate(names):
        labelmap.item.add(name=str(name), label=i + 1,
                          display_name=str(display_names[i] if display_names else name))
    return labelmap


def check(labelmap: pb.LabelMap, source: str = "label map") -> None:
    """Duplicate names or labels make the name<->label mapping ambiguous: fatal (``--check_label``)."""
    seen_names: dict[str, int] = {}
    seen_labels: dict[int, str] = {}
    for item in labelmap.item:
        if item.name in seen_names:
            raise ScratchDetError(f"{source}: duplicate name {item.name!r} (labels {seen_names[item.name]} and {item.label})")
        if item.label in seen_labels:
            raise ScratchDetError(f"{source}: duplicate label {item.label} (names {seen_labels[item.label]!r} and {item.name!r})")
        seen_names[item.name] = item.label
        seen_labels[item.label] = item.name


def name_to_label(labelmap: pb.LabelMap, check_label: bool = False, source: str = "label map") -> dict[str, int]:
    """Name -> label. Without ``check_label`` a later duplicate name wins, as in the fork's MapNameToLabel."""
    if check_label:
        check(labelmap, source)
    return {item.name: item.label for item in labelmap.item}


def label_to_display_name(labelmap: pb.LabelMap) -> dict[int, str]:
    return {item.label: (item.display_name or item.name) for item in labelmap.item}


def write(labelmap: pb.LabelMap, path) -> None:
    io.write_text(labelmap, path)
