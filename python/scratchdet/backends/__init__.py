"""Training/testing backends behind ``scratchdet train`` and ``scratchdet test``: ``torch`` (this
project's engine), ``caffe`` (an installed Caffe SSD binary run on the same files) and
``onnxruntime`` (test only: a model from ``scratchdet export``)."""
from __future__ import annotations

import importlib

from ..errors import ScratchDetError

BACKENDS = {"torch": "scratchdet.backends.torch_backend", "caffe": "scratchdet.backends.caffe_backend",
            "onnxruntime": "scratchdet.backends.onnxruntime_backend"}


def get(name: str):
    """The backend module: exposes ``train(args) -> int`` and ``test(args) -> int``."""
    if name not in BACKENDS:
        raise ScratchDetError(f"unknown backend {name!r} (torch, caffe or onnxruntime)")
    return importlib.import_module(BACKENDS[name])
