"""One LMDB record: an image plus its parsed annotation -> ``AnnotatedDatum``, as convert_annoset
builds it (``ReadRichImageToAnnotatedDatum`` in the SSD fork's ``util/io.cpp``).

The fork's rules kept here: ``datum.label = -1``, ``encoded = true``, channels/height/width of the
decoded image; ``type = BBOX`` set explicitly (the data layer tests its presence); one
AnnotationGroup per label in order of first appearance, ``instance_id`` 0,1,2... within a group (set
explicitly, so it is serialized even when 0); box corners divided by the annotation's declared image
size in float32 arithmetic (``static_cast<float>(xmin) / width``), no -1 adjustment; ``difficult``
always set. Where the fork only warned (boxes outside the image, inverted boxes) we clip or drop and
report; where it aborted (unknown class name) we skip the record and report.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..caffe.schema import pb
from ..errors import plain


class BadRecord(Exception):
    """A record that cannot be written. ``kind`` is the summary bucket, ``message`` names the file."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __reduce__(self):  # travels between worker processes
        return BadRecord, (self.kind, self.message)


@dataclass
class Issue:
    """Something fixed or worth knowing about a record that was still written."""
    kind: str
    message: str


# Issues that lose or change annotation information: ``--strict`` turns them into failures. Format
# conversions ("re-encoded image") and images without objects are legitimate data and never fail.
STRICT_ISSUES = {"clipped box", "dropped box", "no size"}


@dataclass
class RawObject:
    """One object as its annotation file gives it: pixel corners (float32), class name or label."""
    name: str | None
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool = False
    label: int | None = None        # set instead of ``name`` for txt annotations (label ids)


@dataclass
class RawAnnotation:
    source: str                      # annotation file (or JSON file + image id) for messages
    width: int | None                # declared image size; None when the file has none
    height: int | None
    objects: list[RawObject] = field(default_factory=list)


def _f32(v) -> np.float32:
    return np.float32(v)


def build_datum(image, anno: RawAnnotation | None, name_to_label: dict[str, int]) -> tuple[pb.AnnotatedDatum, list[Issue]]:
    """``image`` is an ``images.StoredImage``; ``anno`` None means "no annotation file" (no groups)."""
    issues: list[Issue] = []
    record = pb.AnnotatedDatum()
    datum = record.datum
    datum.channels = image.channels
    datum.height = image.height
    datum.width = image.width
    datum.data = image.data
    datum.label = -1
    datum.encoded = True
    record.type = pb.AnnotatedDatum.BBOX
    if image.note:
        issues.append(Issue("EXIF orientation", image.note))
    if image.reencoded:
        issues.append(Issue("re-encoded image", f"{anno.source if anno else 'image'}: {image.reencoded}; stored as a 3-channel JPEG"))
    if anno is None:
        return record, issues

    width, height = anno.width, anno.height
    if not width or not height or width <= 0 or height <= 0:
        issues.append(Issue("no size", f"{anno.source}: no image size in the annotation; using the image's {image.width}x{image.height}"))
        width, height = image.width, image.height
    elif (width, height) != (image.width, image.height):
        raise BadRecord("size mismatch", f"{anno.source}: annotation size {width}x{height} disagrees with the image's {image.width}x{image.height}")

    unknown = sorted({o.name for o in anno.objects if o.label is None and o.name not in name_to_label})
    if unknown:
        raise BadRecord("unknown class", f"{anno.source}: unknown class name{'s' if len(unknown) > 1 else ''} "
                                         f"{', '.join(repr(u) for u in unknown)} (not in the label map)")

    groups: dict[int, pb.AnnotationGroup] = {}
    fw, fh = _f32(width), _f32(height)
    for i, obj in enumerate(anno.objects):
        box = (obj.xmin, obj.ymin, obj.xmax, obj.ymax)
        what = f"{anno.source}: object {i} ({obj.name if obj.label is None else obj.label})"
        if not all(np.isfinite(box)):
            issues.append(Issue("dropped box", f"{what}: non-finite box {_fmt(box)}; dropped"))
            continue
        if obj.xmin > obj.xmax or obj.ymin > obj.ymax:
            issues.append(Issue("dropped box", f"{what}: inverted box {_fmt(box)}; dropped"))
            continue
        clipped = (max(obj.xmin, 0), max(obj.ymin, 0), min(obj.xmax, width), min(obj.ymax, height))
        if clipped[0] >= clipped[2] or clipped[1] >= clipped[3]:
            where = "zero-area" if obj.xmin == obj.xmax or obj.ymin == obj.ymax else "outside the image"
            issues.append(Issue("dropped box", f"{what}: {where} box {_fmt(box)}; dropped"))
            continue
        if clipped != box:
            issues.append(Issue("clipped box", f"{what}: box {_fmt(box)} exceeds the {width}x{height} image; clipped to {_fmt(clipped)}"))
        label = obj.label if obj.label is not None else name_to_label[obj.name]
        group = groups.get(label)
        if group is None:
            group = groups[label] = record.annotation_group.add()
            group.group_label = label
        ann = group.annotation.add()
        ann.instance_id = len(group.annotation) - 1
        bb = ann.bbox
        bb.xmin = _f32(clipped[0]) / fw
        bb.ymin = _f32(clipped[1]) / fh
        bb.xmax = _f32(clipped[2]) / fw
        bb.ymax = _f32(clipped[3]) / fh
        bb.difficult = bool(obj.difficult)
    return record, issues


def _fmt(box) -> str:
    return plain(box)
