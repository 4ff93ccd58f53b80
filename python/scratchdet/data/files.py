"""Small file-system helpers: atomic writes with ordinary permissions (``caffe.io`` has them; the
data, eval and report modules import them from here)."""
from __future__ import annotations

from ..caffe.io import atomic_write_bytes as write_atomic
from ..caffe.io import make_dirs, make_public, remove_stale_temps, temp_dir, write_error

__all__ = ["make_dirs", "make_public", "remove_stale_temps", "temp_dir", "write_atomic", "write_error"]
