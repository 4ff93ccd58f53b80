"""``BlobProto`` <-> numpy, with Caffe's reading rules (caffe-ssd-spec §7).

Reading: the legacy ``num/channels/height/width`` fields, when any is present, give a 4-D shape;
otherwise ``shape.dim`` (none = a 0-axis blob holding one value). Values come from ``double_data``
when it is non-empty, else ``data``; the count must match the shape. Writing: ``shape`` then
packed float32 ``data`` in C order; a 0-axis blob is written with no ``shape`` field, as
``Blob::ToProto`` does.
"""
from __future__ import annotations

import math

import numpy as np

from ..errors import ScratchDetError
from .schema import pb

_LEGACY = ("num", "channels", "height", "width")


def has_legacy_shape(blob) -> bool:
    return any(blob.HasField(f) for f in _LEGACY)


def blob_shape(blob) -> tuple[int, ...]:
    """The shape Caffe's ``Blob::FromProto`` gives this proto."""
    if has_legacy_shape(blob):
        return tuple(int(getattr(blob, f)) for f in _LEGACY)
    return tuple(int(d) for d in blob.shape.dim)


def legacy_dims(shape) -> tuple[int, int, int, int]:
    """``Blob::LegacyShape(-4..-1)``: the shape right-aligned into 4 axes, missing leading axes 1."""
    shape = tuple(shape)
    return tuple([1] * (4 - len(shape)) + list(shape))  # type: ignore[return-value]


def shape_matches(blob, shape) -> bool:
    """``Blob::ShapeEquals``: legacy protos compare right-aligned (1x1x1xN equals [N])."""
    shape = tuple(int(d) for d in shape)
    if has_legacy_shape(blob):
        return len(shape) <= 4 and legacy_dims(shape) == blob_shape(blob)
    return blob_shape(blob) == shape


def blob_to_array(blob, where: str = "blob") -> np.ndarray:
    """The blob's values as a float32 array of its shape (``double_data`` is narrowed, as Caffe's
    float net does)."""
    shape = blob_shape(blob)
    if any(d < 0 for d in shape):
        raise ScratchDetError(f"{where}: negative dimension in shape {shape}")
    count = math.prod(shape)
    if len(blob.double_data):
        values = np.asarray(blob.double_data, dtype=np.float64)
    else:
        values = np.asarray(blob.data, dtype=np.float32)
    if values.size != count:
        raise ScratchDetError(f"{where}: holds {values.size} values, its shape {list(shape)} needs {count}")
    return values.astype(np.float32, copy=False).reshape(shape)


def array_to_blob(arr, *, diff=None, double: bool = False) -> "pb.BlobProto":
    """A ``BlobProto`` as Caffe writes it: ``shape`` (absent for 0-axis), packed ``data`` in C order
    (``double_data`` when ``double``), and ``diff``/``double_diff`` only when given."""
    arr = np.asarray(arr)
    blob = pb.BlobProto()
    if arr.ndim:
        blob.shape.dim.extend(int(d) for d in arr.shape)
    dtype = "<f8" if double else "<f4"
    flat = np.ascontiguousarray(arr, dtype=dtype).reshape(-1)
    _append_packed(blob, 8 if double else 5, flat)
    if diff is not None:
        d = np.ascontiguousarray(diff, dtype=dtype).reshape(-1)
        if d.size != flat.size:
            raise ScratchDetError(f"blob diff has {d.size} values, data has {flat.size}")
        _append_packed(blob, 9 if double else 6, d)
    return blob


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        if not n:
            out.append(low)
            return bytes(out)
        out.append(low | 0x80)


def _append_packed(blob, field_number: int, values: np.ndarray) -> None:
    # Packed repeated floats are the little-endian values behind a (field, length) header: letting
    # protobuf parse that is ~10x faster than extending the repeated field from a Python list.
    if not values.size:
        return
    raw = values.tobytes()
    blob.MergeFromString(_varint(field_number << 3 | 2) + _varint(len(raw)) + raw)
