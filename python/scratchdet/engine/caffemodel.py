""".caffemodel and .solverstate files (caffe-ssd-spec §7, §5.4): the one home of both formats.

A ``.caffemodel`` is one binary ``NetParameter``: ``net_to_proto`` makes it from a Net (each layer's
configuration as Caffe's set-up leaves it, the Split layers Caffe inserts, the blobs) and
``copy_trained_layers`` is ``CopyTrainedLayersFrom`` (blobs copied by layer name, V1 ``layers``
files included); ``Net.to_proto``/``Net.copy_from`` call them. A ``.solverstate`` is one binary
``SolverState``. Files are written through a temporary file and renamed; unreadable, truncated or
foreign files give a one-line error naming the file.

Why here and not in ``caffe/``: the protobuf-only part (reading a file into a message, making a
SolverState) is a few lines over ``caffe/io`` and ``caffe/schema``, which already hold the format
itself; what is particular to these two files is their exchange with a torch Net and the solver's
history, so reading, writing and the copy into a Net stay together in the engine rather than
splitting one format over two layers again. Nothing below the engine reads or writes them.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from ..caffe import io
from ..caffe.blobs import array_to_blob, blob_shape, blob_to_array, shape_matches
from ..caffe.schema import pb
from ..caffe.upgrade import insert_splits, upgrade_v1
from ..errors import ScratchDetError

log = logging.getLogger(__name__)


# -- a Net's content as a NetParameter and back --------------------------------------------------------

def layer_config(net, i: int):
    """Layer ``i``'s LayerParameter as Caffe's set-up leaves it: phase set, BatchNorm's three
    ``param {lr_mult: 0}``, a loss layer's ``loss_weight: 1``, a layer's default
    ``propagate_down`` (MultiBoxLoss: true, true, false, false)."""
    layer = net.layers[i]
    lp = pb.LayerParameter()
    lp.CopyFrom(layer.lp)
    del lp.blobs[:]
    if not lp.HasField("phase"):
        lp.phase = net.phase
    if lp.type == "BatchNorm":
        if len(lp.param) == 3:
            del lp.param[:]
        while len(lp.param) < 3:
            lp.param.add(lr_mult=0)
    if not lp.loss_weight and lp.top and net.loss_weights(layer.name)[0]:
        lp.loss_weight.append(1.0)     # a loss layer's default weight, written back by its set-up
    default = getattr(layer, "default_propagate_down", None)
    if default is not None and not lp.propagate_down:
        lp.propagate_down.extend(bool(v) for v in default)
    return lp


def net_to_proto(net, write_diff: bool = False):
    """The NetParameter a ``.caffemodel`` holds: the net's name and one layer per layer of
    Caffe's net (Split layers included) with its blobs."""
    configured = pb.NetParameter(name=net.name)
    for i in range(len(net.layers)):
        configured.layer.append(net.layer_config(i))
    out = insert_splits(configured)
    j = 0
    for lp in out.layer:
        if j < len(net.layers) and lp.name == net.layers[j].name and lp.type == net.layers[j].lp.type:
            layer = net.layers[j]
            j += 1
        else:           # a Split that insert_splits added
            lp.phase = net.phase
            continue
        for t in layer.blobs():
            data = t.detach().cpu().numpy()
            diff = None
            if write_diff:
                grad = t.grad
                diff = grad.detach().cpu().numpy() if grad is not None else np.zeros_like(data)
            lp.blobs.append(array_to_blob(data, diff=diff))
    return out


@torch.no_grad()
def copy_trained_layers(net, net_param, source: str = "caffemodel") -> list[str]:
    """CopyTrainedLayersFrom: blobs of every source layer whose name is a layer of this net.
    Blob count and shapes must match (legacy 4-D shapes compare right-aligned); all layers are
    checked before anything is copied. Returns the names of source layers ignored."""
    param = upgrade_v1(net_param)
    by_name = {layer.name: i for i, layer in enumerate(net.layers)}
    ignored, plan = [], []
    for src in param.layer:
        index = by_name.get(src.name)
        if index is None:
            ignored.append(src.name)
            continue
        layer = net.layers[index]
        targets = layer.blobs()
        if len(src.blobs) != len(targets):
            raise ScratchDetError(f"{source}: layer {src.name!r}: incompatible number of blobs: the file has "
                                  f"{len(src.blobs)}, the net's {layer.lp.type} layer has {len(targets)}")
        for k, (blob, t) in enumerate(zip(src.blobs, targets)):
            if not shape_matches(blob, t.shape):
                raise ScratchDetError(f"{source}: layer {src.name!r}: cannot copy param {k} weights; shape mismatch: "
                                      f"source {list(blob_shape(blob))}, target {list(t.shape)}")
            plan.append((t, blob_to_array(blob, f"{source}: layer {src.name!r} blob {k}")))
    for t, values in plan:
        t.copy_(torch.from_numpy(values).reshape(t.shape).to(t.device))
    for name in ignored:
        log.info("Ignoring source layer %s", name)
    return ignored


# -- the files --------------------------------------------------------------------------------------------

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
