"""Test passes of the torch engine: Caffe's ``Solver::Test`` / ``Solver::TestDetection`` (caffe-ssd-spec
§2.6, §5.5), used by the Trainer every ``test_interval`` and by ``scratchdet test`` (``score``).

A pass runs the TEST net ``iterations`` times from the start of its data and aggregates the
DetectionEvaluate rows of every width-5 output into mAP (``ap.detection_map``, Caffe's float32
ComputeAP), or averages every output element ("classification"); the ``Test net output`` lines are
logged as the solver logs them.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..ap import detection_map
from ..caffe import glog, io
from ..caffe.netstate import TEST
from ..errors import ScratchDetError
from .debug_info import DebugPass
from .malloc import keep_freed_memory


# -- the net's data and detection layers -----------------------------------------------------------------

def data_layers(net):
    from .layers.annotated_data import AnnotatedDataLayer
    return [layer for layer in net.layers if isinstance(layer, AnnotatedDataLayer)]


def detection_output_layers(net):
    from .layers.ssd import DetectionOutput
    return [layer for layer in net.layers if isinstance(layer, DetectionOutput)]


def images_per_forward(net) -> int:
    layers = data_layers(net)
    return layers[0].batch_size if layers else 1


# -- test passes --------------------------------------------------------------------------------------

def score_detections(rows_per_pass: list[np.ndarray], ap_version: str, log=None,
                     show_per_class: bool = False) -> float:
    """Solver::TestDetection for one output blob (``ap.detection_map``) with its log lines: a warning
    for each label without detections, and ``classN: ap`` per label when ``show_per_class``."""
    value, per_label = detection_map(rows_per_pass, ap_version)
    if log:
        for label, ap in per_label:
            if ap is None:
                log("W", glog.MISSING_TP, glog.missing_tp_message(label))
            elif show_per_class:
                log("I", glog.PER_CLASS, glog.per_class_message(label, ap))
    return value


def distinct_test_images(net, iterations: int) -> int:
    """How many different records a test pass of ``iterations`` reads: its images, or the whole
    database when the pass is longer and wraps around to the first record (as Caffe's cursor does)."""
    images = iterations * images_per_forward(net)
    layers = data_layers(net)
    db = getattr(layers[0], "db", None) if layers else None
    return min(images, len(db)) if db is not None else images


@torch.no_grad()
def _check_name_sizes(net, images: int) -> None:
    """A name_size_file gives image ``k`` of a pass its size (DetectionEvaluate) or name
    (save_output_param): one shorter than the pass would silently wrap around to its first line
    and score or name later images with earlier images' sizes. Each pass starts at line 1, as it
    starts at the first record. ``images``: the distinct records a pass reads (a pass longer than its
    database wraps both together)."""
    from .layers.ssd import DetectionEvaluate
    for layer in net.layers:
        if isinstance(layer, DetectionEvaluate) and layer.sizes:
            layer.count = 0
            if len(layer.sizes) < images:
                path = layer.lp.detection_evaluate_param.name_size_file
                raise ScratchDetError(f"layer {layer.lp.name!r}: name_size_file {path} has {len(layer.sizes)} images "
                                      f"but a test pass scores {images} different images; "
                                      "rebuild it with the test LMDB (scratchdet data ... writes both)")
    for layer in detection_output_layers(net):
        sp = layer.lp.detection_output_param.save_output_param
        if sp.output_directory and sp.label_map_file and sp.name_size_file and not sp.HasField("num_test_image"):
            from .layers.detection_save import read_name_size
            names = read_name_size(sp.name_size_file, f"layer {layer.lp.name!r}")
            if len(names) < images:
                raise ScratchDetError(f"layer {layer.lp.name!r}: save_output_param.name_size_file {sp.name_size_file} "
                                      f"has {len(names)} images but a test pass writes {images} different images; "
                                      "rebuild it with the test LMDB")


def run_test(net, iterations: int, eval_type: str = "detection", ap_version: str = "11point",
             log=None, show_per_class: bool = False, compute_loss: bool = False,
             progress: bool = False, debug_info: bool = False) -> dict[str, float]:
    """Run ``net`` (TEST phase) ``iterations`` times from the start of its data and score it:
    mAP per width-5 output (eval_type "detection") or the mean of every output element
    ("classification", as Solver::Test). Returns {output name: value} in output order; with ``log``
    also logs ``Test loss`` (``compute_loss``) and the ``Test net output`` lines as the solver does,
    and with ``debug_info`` each pass's forward debug lines (Caffe's test nets print them too)."""
    for layer in data_layers(net):
        layer.seek(0)
    _check_name_sizes(net, distinct_test_images(net, iterations))
    saving = [layer for layer in detection_output_layers(net) if layer.enable_saving()]
    outputs = list(net.output_names)
    collected: dict[str, list] = {name: [] for name in outputs}
    loss_total = 0.0
    steps = range(iterations)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="test", unit="batch", leave=False)
    blobs = None
    for _ in steps:
        blobs = DebugPass(net, log).forward() if debug_info and log else net.forward()
        if compute_loss:
            loss_total += float(net.total_loss(blobs))
        for name in outputs:
            collected[name].append(blobs[name].detach().float().cpu().numpy())
    for layer in data_layers(net):
        layer.close()
    for layer in saving:
        layer.saver = None               # a later forward outside a test pass writes nothing
    # loss weights are the net's, the same every pass: read them once from the last one
    loss_weights = {name: w for name, w, _ in net.loss_outputs(blobs)} if blobs is not None else {}
    results: dict[str, float] = {}
    blob_of: dict[str, str] = {}          # result key -> output blob (a key per element in "classification")
    if eval_type == "detection":
        for name in outputs:
            first = collected[name][0] if collected[name] else np.zeros((0, 5))
            if first.shape[-1] != 5:
                raise ScratchDetError(f"test net output {name!r} has width {first.shape[-1]}; eval_type "
                                      f"'detection' needs DetectionEvaluate outputs of width 5")
            results[name] = score_detections([r.reshape(-1, 5) for r in collected[name]], ap_version, log,
                                             show_per_class)
    else:
        for name in outputs:
            arrays = [r.reshape(-1) for r in collected[name]]
            mean = np.mean(np.stack(arrays), axis=0) if arrays else np.zeros(0)
            for k, v in enumerate(mean):
                key = name if mean.size == 1 else f"{name}[{k}]"
                results[key] = float(v)
                blob_of[key] = name
    if log:
        if compute_loss:
            log("I", glog.TEST_OUTPUT, glog.test_loss_message(loss_total / max(iterations, 1)))
        for k, (key, value) in enumerate(results.items()):
            weight = loss_weights.get(blob_of.get(key, key), 0.0)
            log("I", glog.TEST_OUTPUT, glog.output_message("Test", k, key, value, weight))
    return results


# -- `scratchdet test`: one scoring pass of a test net -------------------------------------------------

def one_pass_iterations(net) -> int:
    """Forward passes that read every record of the test net's data once."""
    layers = data_layers(net)
    if not layers:
        raise ScratchDetError("the test net has no AnnotatedData layer; give --iterations")
    layer = layers[0]
    return max(1, math.ceil(len(layer.db) / layer.batch_size))


def score(model: str, weights: str | None, iterations: int | None = None, *, device: str = "cpu",
          eval_type: str = "detection", ap_version: str = "11point", log=None, workers: int | None = None,
          seed: int = 0, level: int = 0, stages: tuple[str, ...] = (), show_per_class: bool = False,
          progress: bool = True, fold: bool = False) -> dict[str, float]:
    """The TEST phase of ``model`` with ``weights`` (comma-separated caffemodels, copied by layer
    name), scored as the solver scores it. ``iterations`` defaults to one pass over the data.
    ``fold``: BatchNorm/Scale folded into the convolutions first (engine.fold; the same scores,
    faster; ``scratchdet test`` asks for it unless --no-fold)."""
    from .caffemodel import load_caffemodel
    keep_freed_memory()
    from .fold import fold as fold_net
    from .net import Net
    net = Net(io.read_net(model), TEST, level=level, stages=stages, source=model, seed=seed)
    for path in [w for w in (weights or "").split(",") if w]:
        load_caffemodel(net, path)
    if fold:
        net = fold_net(net)
        if torch.device(device).type == "cpu":
            net.set_micro_batch(1)    # the same scores; a batch's activations stay in the caches
    return score_net(net, iterations, device=device, eval_type=eval_type, ap_version=ap_version, log=log,
                     workers=workers, seed=seed, show_per_class=show_per_class, progress=progress)


def score_net(net, iterations: int | None = None, *, device: str = "cpu", eval_type: str = "detection",
              ap_version: str = "11point", log=None, workers: int | None = None, seed: int = 0,
              show_per_class: bool = False, progress: bool = True) -> dict[str, float]:
    """``score`` of a test net already built (its data layers are configured here)."""
    net.to(torch.device(device))
    for layer in data_layers(net):
        layer.device = torch.device(device)
        layer.configure(seed=seed, workers=workers)
    n = iterations if iterations is not None else one_pass_iterations(net)
    if log:
        log("I", glog.TESTING, glog.testing_message(0, 0))
    return run_test(net, n, eval_type, ap_version, log=log, show_per_class=show_per_class, progress=progress)
