""".caffemodel and .solverstate files (caffe-ssd-spec §7, §5.4).

A ``.caffemodel`` is one binary ``NetParameter`` (``Net.to_proto``); loading copies blobs by layer
name (``Net.copy_from``), V1 ``layers`` files included. A ``.solverstate`` is one binary
``SolverState``. Files are written through a temporary file and renamed; unreadable, truncated or
foreign files give a one-line error naming the file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..caffe import io
from ..caffe.blobs import array_to_blob
from ..caffe.schema import pb
from ..errors import ScratchDetError


def _check_format(path) -> None:
    if str(path).endswith(".h5"):
        raise ScratchDetError(f"{path}: HDF5 snapshots are not supported (use snapshot_format: BINARYPROTO)")


def read_caffemodel(path) -> "pb.NetParameter":
    """The NetParameter of a ``.caffemodel``; a file with no layer entries is rejected (a binary
    parse of a wrong file can succeed and hold nothing)."""
    _check_format(path)
    param = io.read_binary(path, pb.NetParameter)
    if not param.layer and not param.layers:
        raise ScratchDetError(f"{path}: not a .caffemodel (no layers in it)")
    return param


def save_caffemodel(net, path, write_diff: bool = False) -> None:
    _check_format(path)
    io.atomic_write_bytes(path, net.to_proto(write_diff=write_diff).SerializeToString())


def load_caffemodel(net, path) -> list[str]:
    """Copy the weights of ``path`` into ``net`` by layer name; returns the file's layers that the
    net does not have (Caffe logs them as "Ignoring source layer"). Unlike Caffe, a file none of
    whose weighted layers is in the net is an error: it is the wrong file for this net."""
    param = read_caffemodel(path)
    ignored = net.copy_from(param, str(path))
    layers = list(param.layer) or list(param.layers)
    with_blobs = [lp.name for lp in layers if lp.blobs]
    net_with_blobs = [layer.name for layer in net.layers if layer.blobs()]
    if with_blobs and net_with_blobs and set(with_blobs) <= set(ignored):
        raise ScratchDetError(f"{path}: no layer with weights matches a layer of the net by name "
                              f"(file: {', '.join(with_blobs[:3])}{', ...' if len(with_blobs) > 3 else ''}; "
                              f"net: {', '.join(net_with_blobs[:3])}{', ...' if len(net_with_blobs) > 3 else ''})")
    return ignored


def read_solverstate(path) -> "pb.SolverState":
    _check_format(path)
    state = io.read_binary(path, pb.SolverState)
    if not state.HasField("iter"):
        raise ScratchDetError(f"{path}: not a .solverstate (no iteration number in it)")
    return state


def make_solverstate(*, iter: int, learned_net: str, history=(), current_step: int = 0,
                     minimum_loss: float = 1e38, iter_last_event: int = 0) -> "pb.SolverState":
    """A SolverState from plain values; ``history`` holds arrays (or BlobProtos) in the net's
    parameter order."""
    state = pb.SolverState(iter=int(iter), learned_net=str(learned_net), current_step=int(current_step),
                           minimum_loss=float(minimum_loss), iter_last_event=int(iter_last_event))
    for h in history:
        state.history.append(h if isinstance(h, pb.BlobProto) else array_to_blob(np.asarray(h)))
    return state


def write_solverstate(path, state=None, **fields) -> None:
    """Write ``state`` (a SolverState) or one made from ``fields`` (see ``make_solverstate``)."""
    _check_format(path)
    if state is None:
        state = make_solverstate(**fields)
    elif fields:
        raise ScratchDetError("write_solverstate: give a SolverState or fields, not both")
    io.atomic_write_bytes(Path(path), state.SerializeToString())
