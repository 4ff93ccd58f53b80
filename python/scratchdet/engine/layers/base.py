"""The contract every engine layer follows.

A layer is built from its ``LayerParameter``, the net phase, and the bottom/top shapes that
``scratchdet.caffe.shapes`` inferred. It owns its parameter blobs in Caffe's order (what a
``.caffemodel`` stores for it): learnable ones as ``nn.Parameter``, others (BatchNorm's
statistics) as buffers. ``forward(*bottoms)`` returns a tuple with one tensor per top.
"""
from __future__ import annotations

import torch
from torch import nn

from ...errors import ScratchDetError

REGISTRY: dict[str, type["Layer"]] = {}


def register(*type_names: str):
    def deco(cls):
        for name in type_names:
            REGISTRY[name] = cls
        return cls
    return deco


class Layer(nn.Module):
    #: loss layers contribute ``loss_weight`` (default 1 on the first top) to the net's loss
    is_loss = False
    #: Caffe's default propagate_down for each bottom when the prototxt gives none (None = all true)
    default_propagate_down: tuple[bool, ...] | None = None
    #: tops of a layer without bottoms that stay on the host (small blobs only the host reads)
    host_tops: tuple[int, ...] = ()

    def __init__(self, lp, phase: int, bottom_shapes: list[tuple], top_shapes: list[tuple]):
        super().__init__()
        self.lp = lp
        self.name = lp.name
        self.phase = phase
        self.bottom_shapes = bottom_shapes
        self.top_shapes = top_shapes
        self._blob_names: list[str] = []
        self._blob_learnable: list[bool] = []

    # -- parameter blobs -------------------------------------------------------------------
    def add_blob(self, shape, learnable: bool = True) -> torch.Tensor:
        """Create parameter blob number ``len(blobs)`` (zeros; ``fill`` initialises it)."""
        name = f"blob{len(self._blob_names)}"
        data = torch.zeros(tuple(shape), dtype=torch.float32)
        if learnable:
            self.register_parameter(name, nn.Parameter(data))
        else:
            self.register_buffer(name, data)
        self._blob_names.append(name)
        self._blob_learnable.append(learnable)
        return getattr(self, name)

    def _apply(self, fn, *args, **kwargs):
        # Layers keep their blobs under readable names too (``self.mean_sum = self.add_blob(...)``).
        # ``Module.to`` replaces buffers with new tensors (parameters keep their identity), which would
        # leave such a name on the old device: re-point every alias at the converted blob.
        before = {n: getattr(self, n) for n in self._blob_names}
        aliases = [(attr, n) for attr, v in vars(self).items() if isinstance(v, torch.Tensor)
                   for n, t in before.items() if v is t]
        out = super()._apply(fn, *args, **kwargs)
        for attr, n in aliases:
            object.__setattr__(self, attr, getattr(self, n))
        return out

    def blobs(self) -> list[torch.Tensor]:
        return [getattr(self, n) for n in self._blob_names]

    def blob_learnable(self, i: int) -> bool:
        return self._blob_learnable[i]

    def param_mults(self, i: int) -> tuple[float, float]:
        """(lr_mult, decay_mult) of blob ``i``: from the prototxt's ``param`` or Caffe's 1, 1."""
        if not self._blob_learnable[i]:
            return 0.0, 0.0
        if i < len(self.lp.param):
            spec = self.lp.param[i]
            return float(spec.lr_mult), float(spec.decay_mult)
        return 1.0, 1.0

    def fill(self, generator: torch.Generator) -> None:
        """Initialise blobs with the layer's fillers (default: nothing to fill)."""

    # -- running ---------------------------------------------------------------------------
    def forward(self, *bottoms: torch.Tensor) -> tuple[torch.Tensor, ...]:  # pragma: no cover
        raise NotImplementedError

    @property
    def where(self) -> str:
        """How messages name this layer (also handed to the shared shape rules)."""
        return f"layer {self.name!r} ({self.lp.type})"

    def error(self, message: str) -> ScratchDetError:
        return ScratchDetError(f"{self.where}: {message}")


def build_layer(lp, phase: int, bottom_shapes, top_shapes) -> Layer:
    cls = REGISTRY.get(lp.type)
    if cls is None:
        raise ScratchDetError(f"layer {lp.name!r}: type {lp.type!r} is not supported by the torch engine")
    return cls(lp, phase, bottom_shapes, top_shapes)
