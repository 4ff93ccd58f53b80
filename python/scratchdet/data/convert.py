"""convert_annoset: a list of (image, annotation) entries -> an AnnotatedDatum LMDB, with the
bad-input policy every source shares.

Policy: a record that cannot be written (missing/corrupt image, unreadable or empty annotation, size
disagreeing with the image, unknown class, duplicate entry, non-ASCII or blank-containing file name)
is skipped and counted; boxes are clipped to the image or dropped when empty/inverted, with a warning;
non-JPEG, grayscale, CMYK and alpha images are converted to 3-channel BGR and re-encoded as JPEG.
With ``strict=True`` the first skip or box fix fails the whole conversion (no database is written).
The key index counts every list line, skipped ones included, as convert_annoset does.
"""
from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..errors import ScratchDetError
from . import images, lmdb_io
from .files import write_atomic
from .entries import Entry, read_annotation_bytes, shuffled
from .parallel import ordered_map
from .record import STRICT_ISSUES, BadRecord, Issue, RawAnnotation, RawObject, build_datum

LABEL_TYPES = ("xml", "json", "txt")
MAX_PRINTED = 50          # per conversion; the rest are only counted in the summary


@dataclass
class Summary:
    db: str
    total: int = 0
    written: int = 0
    skipped: Counter = field(default_factory=Counter)
    issues: Counter = field(default_factory=Counter)
    sizes: list[tuple[str, int, int]] = field(default_factory=list)   # (name, height, width) of written records
    objects: int = 0
    map_growths: int = 0

    def line(self) -> str:
        skipped = sum(self.skipped.values())
        text = f"{self.db}: wrote {self.written} of {self.total} records ({self.objects} objects), skipped {skipped}"
        if skipped:
            text += " (" + ", ".join(f"{n} {k}" for k, n in sorted(self.skipped.items())) + ")"
        if self.issues:
            text += "; " + ", ".join(f"{n} {k}" for k, n in sorted(self.issues.items()))
        return text


def load_annotation(entry: Entry) -> RawAnnotation | None:
    """Parse the entry's annotation file (or return the parsed one)."""
    ann = entry.annotation
    if ann is None or isinstance(ann, RawAnnotation):
        return ann
    path = Path(ann)
    if entry.label_type == "xml":
        from .voc import parse_xml
        return parse_xml(path)
    if entry.label_type == "json":
        return parse_image_json(path)
    if entry.label_type == "txt":
        return parse_txt(path)
    raise ScratchDetError(f"unknown label type {entry.label_type!r} (choose from {', '.join(LABEL_TYPES)})")


def read_annotation_text(path: Path) -> str:
    data = read_annotation_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRecord("bad annotation", f"{path}: annotation is not UTF-8 text") from None


def parse_image_json(path: Path) -> RawAnnotation:
    """The fork's per-image COCO JSON (``{"image": {height, width}, "annotation": [...]}``)."""
    text = read_annotation_text(path)
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRecord("bad annotation", f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict):
        raise BadRecord("bad annotation", f"{path}: expected a JSON object with 'image' and 'annotation'")
    image = doc.get("image") or {}
    from .coco import coco_objects
    objects = coco_objects(doc.get("annotation", []), str(path))
    return RawAnnotation(str(path), _int_or_none(image.get("width")), _int_or_none(image.get("height")), objects)


def parse_txt(path: Path) -> RawAnnotation:
    """Lines ``label xmin ymin xmax ymax`` in pixels; labels are label-map ids, difficult false."""
    text = read_annotation_text(path)
    objects = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            label = int(parts[0])
            x1, y1, x2, y2 = (np.float32(float(v)) for v in parts[1:5])
            if len(parts) != 5:
                raise ValueError
        except ValueError:
            raise BadRecord("bad annotation", f"{path}:{lineno}: expected 'label xmin ymin xmax ymax', got {line.strip()!r}") from None
        objects.append(RawObject(None, x1, y1, x2, y2, False, label=label))
    return RawAnnotation(str(path), None, None, objects)


def _int_or_none(v):
    """A declared size as an int; None (use the image's) for missing, non-numeric or non-finite values."""
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError):
        return None


LMDB_MAX_KEY = 511      # bytes; LMDB's compiled-in key size limit


def check_file_name(list_path: str) -> None:
    if not list_path.isascii():
        raise BadRecord("bad file name", f"{list_path!r}: non-ASCII file name (Caffe tools and list files expect ASCII)")
    if any(c.isspace() for c in list_path):
        raise BadRecord("bad file name", f"{list_path!r}: file name contains whitespace (list files are space separated)")
    if len(list_path.encode()) + 9 > LMDB_MAX_KEY:
        raise BadRecord("bad file name", f"{list_path[:60]}...: path too long for an LMDB key ({LMDB_MAX_KEY} bytes at most)")


def process_entry(entry: Entry, name_to_label: dict[str, int]):
    """-> (serialized record, issues, (height, width), object count); raises BadRecord, and only
    BadRecord: whatever else one record raises (an OpenCV limit, an overflow in an odd field) makes
    that record bad, never the conversion."""
    try:
        return _process_entry(entry, name_to_label)
    except BadRecord:
        raise
    except Exception as exc:  # noqa: BLE001 - the per-record boundary: one record never aborts a run
        detail = " ".join(str(exc).split())[:200] or "no detail"
        raise BadRecord("bad record", f"{entry.list_path}: cannot convert this record "
                                      f"({type(exc).__name__}: {detail})") from None


def _process_entry(entry: Entry, name_to_label: dict[str, int]):
    if entry.problem is not None:
        raise entry.problem
    check_file_name(entry.list_path)
    anno = load_annotation(entry)
    declared = (anno.width, anno.height) if anno is not None and anno.width and anno.height else None
    image = images.load_image(entry.image_path, entry.list_path, declared)
    record, issues = build_datum(image, anno, name_to_label)
    n_objects = sum(len(g.annotation) for g in record.annotation_group)
    if anno is not None and not anno.objects:
        issues.append(Issue("no objects", f"{anno.source}: no objects (written as a negative image)"))
    return record.SerializeToString(), issues, (image.height, image.width), n_objects


def _outcome(entry: Entry, name_to_label):
    try:
        return True, process_entry(entry, name_to_label)
    except BadRecord as exc:
        return False, exc


def _results(entries: Sequence[Entry], name_to_label, jobs: int):
    """(ok, result or BadRecord) per entry, in order; ``jobs`` > 1 spreads them over processes."""
    if jobs <= 1:
        for entry in entries:
            yield _outcome(entry, name_to_label)
        return
    yield from ordered_map(functools.partial(_outcome, name_to_label=name_to_label), entries, jobs,
                           describe=lambda chunk: f"{chunk[0].list_path} .. {chunk[-1].list_path}")


def convert(entries: Sequence[Entry], db_path, name_to_label: dict[str, int], *, strict: bool = False,
            jobs: int = 1, map_size: int = lmdb_io.INITIAL_MAP_SIZE, desc: str | None = None,
            stream=None, quiet: bool = False) -> Summary:
    """Write ``entries`` (in order) to a new LMDB at ``db_path``; returns the summary."""
    stream = stream or sys.stderr
    db_path = Path(db_path)
    summary = Summary(str(db_path), total=len(entries))
    printed = 0

    def note(text: str) -> None:
        nonlocal printed
        if quiet:
            return
        printed += 1
        if printed <= MAX_PRINTED:
            tqdm.write(text, file=stream)
        elif printed == MAX_PRINTED + 1:
            tqdm.write(f"{db_path.name}: further problems are only counted in the summary", file=stream)

    seen: set[str] = set()
    with lmdb_io.LMDBWriter(db_path, map_size=map_size) as writer:
        bar = tqdm(total=len(entries), desc=desc or db_path.name, unit="img", disable=None if not quiet else True,
                   file=stream, dynamic_ncols=True)
        results = _results(_dedup(entries, seen), name_to_label, jobs)
        try:
            for index, (entry, (ok, result)) in enumerate(zip(entries, results)):
                bar.update(1)
                if not ok:
                    if strict:
                        raise ScratchDetError(f"{result.message} [--strict: no database written]")
                    summary.skipped[result.kind] += 1
                    note(f"skipped: {result.message}")
                    continue
                value, issues, (h, w), n_objects = result
                for issue in issues:
                    if strict and issue.kind in STRICT_ISSUES:
                        raise ScratchDetError(f"{issue.message} [--strict: no database written]")
                    summary.issues[issue.kind] += 1
                    if issue.kind not in ("re-encoded image", "no objects"):
                        note(f"warning: {issue.message}")
                writer.put(lmdb_io.record_key(index, entry.list_path), value)
                summary.written += 1
                summary.objects += n_objects
                summary.sizes.append((entry.name or Path(entry.list_path).stem, h, w))
        finally:
            results.close()       # stops the pool now (also on Ctrl-C / SIGTERM), before the writer cleans up
            bar.close()
        if summary.written == 0:
            raise ScratchDetError(f"{db_path}: no record could be written ({summary.line()}); no database written")
    summary.map_growths = writer.grown
    return summary


def _dedup(entries: Sequence[Entry], seen: set[str]) -> list[Entry]:
    """The second occurrence of an image path in one list is a duplicate id: flag it."""
    out = []
    for entry in entries:
        if entry.problem is None and entry.list_path in seen:
            entry = Entry(entry.list_path, entry.image_path, None, entry.label_type, entry.name,
                          BadRecord("duplicate", f"{entry.list_path}: listed more than once (duplicate id)"))
        seen.add(entry.list_path)
        out.append(entry)
    return out


# -- list files and name-size files ------------------------------------------------------------------

def read_list(list_file, root, label_type: str = "xml") -> list[Entry]:
    """A convert_annoset list: ``<image> <annotation>`` per line, both relative to ``root``."""
    list_file, root = Path(list_file), Path(root)
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ScratchDetError(f"{list_file}: cannot read list ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ScratchDetError(f"{list_file}: list is not UTF-8 text") from None
    entries = []
    for lineno, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) == 1:
            entries.append(Entry(parts[0], str(root / parts[0]), None, label_type))
        elif len(parts) == 2:
            if parts[1].lstrip("-").isdigit():
                raise ScratchDetError(f"{list_file}:{lineno}: '<image> <int label>' is a classification list; "
                                      "detection lists have '<image> <annotation file>'")
            entries.append(Entry(parts[0], str(root / parts[0]), str(root / parts[1]), label_type))
        else:
            raise ScratchDetError(f"{list_file}:{lineno}: expected '<image> <annotation>', got {len(parts)} fields "
                                  "(file names cannot contain spaces)")
    if not entries:
        raise ScratchDetError(f"{list_file}: empty list")
    return entries


def write_list(entries: Iterable[Entry], path, root) -> None:
    root = Path(root)
    lines = []
    for e in entries:
        anno = e.annotation if isinstance(e.annotation, str) else None
        rel = Path(anno).relative_to(root).as_posix() if anno else ""
        lines.append(f"{e.list_path} {rel}".rstrip())
    write_atomic(path, ("\n".join(lines) + "\n").encode())


def write_name_size(sizes: Iterable[tuple[str, int, int]], path) -> None:
    """``tools/get_image_size`` output: ``<name> <height> <width>`` per written test record."""
    write_atomic(path, "".join(f"{n} {h} {w}\n" for n, h, w in sizes).encode())


def print_summary(summary: Summary, stream=None) -> None:
    print(summary.line(), file=stream or sys.stdout, flush=True)
