"""Caffe layer implementations, one module per family; importing this package registers them all."""
import importlib
import pkgutil

from .base import REGISTRY, Layer, build_layer, register  # noqa: F401

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name != "base":
        importlib.import_module(f"{__name__}.{_mod.name}")
