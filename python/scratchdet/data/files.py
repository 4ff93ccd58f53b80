"""Small file-system helpers: atomic writes with ordinary permissions.

``tempfile`` creates private (0600 files / 0700 folders) temporaries; a database or list renamed
into place from one would stay unreadable to other users, so we reset the mode by the umask.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..caffe.io import atomic_write_bytes


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def make_public(path) -> None:
    """Give ``path`` (and, for a folder, everything inside) the modes a plain mkdir/open would."""
    path = Path(path)
    mask = _umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for sub in path.rglob("*"):
            os.chmod(sub, (0o777 if sub.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def write_atomic(path, data: bytes) -> None:
    atomic_write_bytes(path, data)
    make_public(path)
