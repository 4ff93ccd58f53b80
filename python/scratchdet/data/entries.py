"""The list entries every data source hands to the converter (``convert.py``), and the helpers the
sources share with it. Its own module so that the sources (``voc.py``, ``coco.py``) and the converter
that calls them import it one way, with no cycle between ``convert`` and the sources.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from .record import BadRecord, RawAnnotation


@dataclass
class Entry:
    """One list line. ``annotation`` is a parsed annotation, a path to an annotation file of
    ``label_type``, or None (no annotation: a record without groups). ``problem`` lets a source flag
    an entry it already knows is bad (duplicate id, ...), so it is counted like any other skip."""
    list_path: str                       # image path as written in the list: the key's suffix
    image_path: str                      # file to read
    annotation: RawAnnotation | str | None = None
    label_type: str = "xml"
    name: str = ""                       # first column of the name-size file (stem or image id)
    problem: BadRecord | None = None


def read_annotation_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadRecord("missing annotation", f"{path}: annotation file not found") from None
    except OSError as exc:
        raise BadRecord("bad annotation", f"{path}: cannot read annotation ({exc.strerror})") from None
    if not data.strip():
        raise BadRecord("bad annotation", f"{path}: empty annotation file")
    return data


def shuffled(entries: list[Entry], seed: int) -> list[Entry]:
    """The fork shuffles training lists (perl's List::Util shuffle, unseeded); we fix the seed."""
    out = list(entries)
    random.Random(seed).shuffle(out)
    return out
