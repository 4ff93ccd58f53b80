"""Training/testing backends behind ``scratchdet train`` and ``scratchdet test``: ``torch`` (this
project's engine) and ``caffe`` (an installed Caffe SSD binary run on the same files)."""
from __future__ import annotations

import importlib

from ..errors import ScratchDetError

BACKENDS = {"torch": "scratchdet.backends.torch_backend", "caffe": "scratchdet.backends.caffe_backend"}


def get(name: str):
    """The backend module: exposes ``train(args) -> int`` and ``test(args) -> int``."""
    if name not in BACKENDS:
        raise ScratchDetError(f"unknown backend {name!r} (torch or caffe)")
    return importlib.import_module(BACKENDS[name])
