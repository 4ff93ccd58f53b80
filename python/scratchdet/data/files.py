"""Small file-system helpers: atomic writes with ordinary permissions (``caffe.io`` has them; the
data, eval and report modules import them from here), and where the conventional data files are."""
from __future__ import annotations

from pathlib import Path

from ..caffe.io import atomic_write_bytes as write_atomic
from ..caffe.io import make_dirs, make_public, remove_stale_temps, temp_dir, write_error

__all__ = ["make_dirs", "make_public", "remove_stale_temps", "temp_dir", "write_atomic", "write_error",
           "REPO_ROOT", "conventional_file", "not_found_note"]

# the checkout this package runs from (python/scratchdet/data/files.py -> the repo root), if it is one
_ROOT = Path(__file__).resolve().parents[3]
REPO_ROOT: Path | None = _ROOT if (_ROOT / "data").is_dir() and (_ROOT / "python" / "scratchdet").is_dir() else None


def conventional_file(relative) -> Path | None:
    """A conventional repo-relative data file (``data/VOC0712/labelmap_voc.prototxt``): in the current
    folder if it is there (as Caffe's scripts expect), else in this checkout; None if in neither."""
    here = Path(relative)
    if here.is_file() or here.is_absolute():
        return here if here.is_file() else None
    if REPO_ROOT is not None and (REPO_ROOT / here).is_file():
        return REPO_ROOT / here
    return None


def not_found_note(relative) -> str:
    """Where ``conventional_file`` looked, for a message."""
    where = "the current folder" + (f" or {REPO_ROOT}" if REPO_ROOT is not None else "")
    return f"{relative} not found in {where}"
