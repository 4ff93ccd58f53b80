"""Small file-system helpers: atomic writes with ordinary permissions (``caffe.io`` has them; the
data, eval and report modules import them from here)."""
from __future__ import annotations

from ..caffe.io import atomic_write_bytes as write_atomic
from ..caffe.io import make_public

__all__ = ["make_public", "write_atomic"]
