"""A variant -> its files: train/test/deploy nets, solver and train.sh.

``build_variant(variant, **overrides)`` returns the messages (and the script text);
``write_variant(variant, out_dir, **overrides)`` writes them to ``out_dir/<dataset>/<id>/``, each
file through a temporary file and a rename. Overrides (all optional):

* where things are: ``lmdb_dir`` (default ``data/lmdb``), ``train_source``, ``test_source`` (LMDB
  paths), ``label_map``, ``name_size_file``, ``num_test_image``, ``model_dir`` (where the
  prototxts live, for the solver's paths; ``write_variant`` sets it), ``run_dir`` (snapshots, log
  and detection files; default ``runs/<dataset>/<id>``);
* the solver: ``base_lr``, ``max_iter`` (without ``stepvalue`` the steps scale with it),
  ``stepvalue``, ``test_interval``, ``test_iter``, ``snapshot``, ``display``, ``random_seed``;
* batches: ``batch`` (per GPU), ``test_batch``, ``iter_size``, ``gpus``;
* demo nets only: ``input_size``, ``width`` (channel multiplier), ``sources`` (detection maps);
* ``profile``: ``paper`` or ``released`` picks that twin of a ScratchDet300 variant.
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from google.protobuf import text_format

from scratchdet.caffe import shapes
from scratchdet.caffe.io import atomic_write_bytes
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.datasets import LMDB_DIR
from scratchdet.errors import ScratchDetError

from . import registry
from .backbones import resnet, vgg_ssd
from .data_layers import annotated_data, to_deploy
from .head import OutputSpec, PriorSpec, detection_layers, multibox_head, multibox_loss, ssd_prior_sizes
from .jobs import train_script
from .netspec import NetSpec
from .variants.base import Arch, Variant
from .solver import Schedule, SolverSpec, solver_param

FILES = ("train.prototxt", "test.prototxt", "deploy.prototxt", "solver.prototxt", "train.sh")

_PATH_KEYS = {"lmdb_dir", "train_source", "test_source", "label_map", "name_size_file", "num_test_image",
              "model_dir", "run_dir"}
_SOLVER_KEYS = {"base_lr", "max_iter", "stepvalue", "test_interval", "test_iter", "snapshot", "display",
                "random_seed"}
_BATCH_KEYS = {"batch", "test_batch", "iter_size", "gpus"}
_ARCH_KEYS = {"input_size", "width", "sources"}
OVERRIDES = _PATH_KEYS | _SOLVER_KEYS | _BATCH_KEYS | _ARCH_KEYS | {"profile"}
PROFILES = ("paper", "released")


def _fail(variant: Variant, problem: str):
    raise ScratchDetError(f"variant {variant.id}: {problem}")


def _positive_int(variant, key, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(variant, f"{key} must be an integer >= {minimum}, got {value!r}")
    return value


def resolve(variant: Variant, **overrides) -> Variant:
    """The variant with ``overrides`` applied (a new Variant; the registry's is unchanged)."""
    unknown = sorted(set(overrides) - OVERRIDES)
    if unknown:
        _fail(variant, f"unknown override {unknown[0]!r} (known: {', '.join(sorted(OVERRIDES))})")
    o = {k: v for k, v in overrides.items() if v is not None}
    v = _with_profile(variant, o.pop("profile")) if "profile" in o else variant
    arch_keys = _ARCH_KEYS & set(o)
    if arch_keys:
        if not v.arch.scalable:
            _fail(v, f"{sorted(arch_keys)[0]} can only be changed for the demo nets "
                     "(paper nets are fixed at 300x300, 38/19/10/5/3/1)")
        size = _positive_int(v, "input_size", o.get("input_size", v.arch.input_size), 8)
        sources = _positive_int(v, "sources", o.get("sources", v.arch.sources), 3)
        width = o.get("width", v.arch.width)
        if not isinstance(width, (int, float)) or not 0 < width <= 8:
            _fail(v, f"width must be a number in (0, 8], got {width!r}")
        v = dataclasses.replace(v, arch=v.arch.rescale(size, float(width), sources))
    s = v.schedule
    if {"base_lr", "max_iter", "stepvalue"} & set(o):
        base_lr = o.get("base_lr", s.base_lr)
        if not isinstance(base_lr, (int, float)) or not base_lr > 0:
            _fail(v, f"base_lr must be > 0, got {base_lr!r}")
        max_iter = _positive_int(v, "max_iter", o.get("max_iter", s.max_iter))
        if "stepvalue" in o:
            steps = tuple(int(x) for x in o["stepvalue"])
        elif max_iter != s.max_iter:   # keep the schedule's shape
            steps = tuple(max(1, round(x * max_iter / s.max_iter)) for x in s.stepvalue)
        else:
            steps = s.stepvalue
        if any(b <= a for a, b in zip(steps, steps[1:])):
            _fail(v, f"stepvalue must be increasing, got {list(steps)}")
        v = dataclasses.replace(v, schedule=Schedule(float(base_lr), steps, max_iter, s.source + " (overridden)",
                                                     s.gamma))
    repl = {}
    for key, field_name in (("batch", "batch_per_gpu"), ("test_batch", "test_batch"), ("iter_size", "iter_size"),
                            ("gpus", "gpus"), ("test_interval", "test_interval"), ("snapshot", "snapshot"),
                            ("display", "display")):
        if key in o:
            repl[field_name] = _positive_int(v, key, o[key], 0 if key == "snapshot" else 1)
    if "random_seed" in o:
        repl["random_seed"] = int(o["random_seed"])
    return dataclasses.replace(v, **repl) if repl else v


def _with_profile(variant: Variant, profile) -> Variant:
    """The ``paper`` / ``released`` twin of a ScratchDet300 variant."""
    if profile not in PROFILES:
        _fail(variant, f"unknown profile {profile!r} (one of {', '.join(PROFILES)})")
    if variant.profile == profile:
        return variant
    twin = registry.VARIANTS.get(variant.twin) if variant.twin else None
    if twin is None or twin.profile != profile:
        _fail(variant, f"has no {profile!r} profile (only the ScratchDet300 variants have both)")
    return twin


# -- nets ----------------------------------------------------------------------------------------------

def _backbone(net: NetSpec, arch: Arch):
    if arch.vgg is not None:
        return vgg_ssd(net, net.data, arch.vgg)
    return resnet(net, net.data, arch.resnet, unit_strides=arch.unit_strides)


def _priors(variant: Variant, arch: Arch, maps: list[int]) -> PriorSpec:
    n = len(maps)
    min_ratio, max_ratio, first = variant.data.prior_ratios
    mins, maxs = ssd_prior_sizes(arch.input_size, n, min_ratio, max_ratio, first)
    if arch.steps is not None:
        steps = tuple(arch.steps)
    else:   # input size over map size: the stride, as SSD300's 8, 16, 32, 64 (and 100, 300)
        steps = tuple(arch.input_size / h for h in maps)
    if len(arch.aspect_ratios) != n:
        _fail(variant, f"{n} detection sources but {len(arch.aspect_ratios)} aspect-ratio sets")
    # Caffe truncates sizes to int (OpenCV does not): write integers so both agree
    return PriorSpec(tuple(float(int(m)) for m in mins), tuple(float(int(m)) for m in maxs),
                     tuple(arch.aspect_ratios), steps)


def _source_maps(variant: Variant, arch: Arch) -> list[int]:
    """Detection map sizes of the backbone at the variant's input, from Caffe's shape rules."""
    net = NetSpec()
    from .netspec import L
    net.data = L.Input(input_param={"shape": [{"dim": [1, 3, arch.input_size, arch.input_size]}]})
    sources = _backbone(net, arch)   # every source is a named top, so it is emitted
    try:
        ns = shapes.infer(net.to_proto(), source=f"variant {variant.id}")
    except ScratchDetError as exc:
        _fail(variant, f"impossible at {arch.input_size}x{arch.input_size}: {exc}")
    maps = []
    for src in sources:
        shape = ns.blobs[src.name]
        if shape[2] < 1 or shape[3] < 1:
            _fail(variant, f"source {src.name} would be {shape[2]}x{shape[3]}")
        if shape[2] != shape[3]:
            _fail(variant, f"source {src.name} is not square ({shape[2]}x{shape[3]})")
        maps.append(shape[2])
    if arch.maps is not None and tuple(maps) != tuple(arch.maps):
        _fail(variant, f"detection maps came out {maps}, expected {list(arch.maps)}")
    if arch.scalable and any(b >= a for a, b in zip(maps, maps[1:])):
        # halving blocks stop at 1x1: more sources than the input can give
        _fail(variant, f"{len(maps)} sources need a larger input than {arch.input_size}x{arch.input_size} "
                       f"(maps would be {maps})")
    return maps


def _net(variant: Variant, arch: Arch, priors: PriorSpec, phase: str, data_source: str, batch: int,
         label_map: str, out: OutputSpec | None) -> pb.NetParameter:
    net = NetSpec()
    size = arch.input_size
    annotated_data(net, phase == "train", data_source, batch, size, size, label_map, variant.data.force_color)
    sources = _backbone(net, arch)
    mbox = multibox_head(net, net.data, sources, variant.data.num_classes, priors, arch.bn_head,
                         arch.normalizations, small_init=arch.head_small_init, unit_stride=arch.unit_strides)
    if phase == "train":
        multibox_loss(net, mbox, net.label, variant.data.num_classes, variant.data.use_difficult_gt)
    else:
        detection_layers(net, mbox, net.label, out)
    return net.to_proto(f"{variant.id}_{phase}")


def build_variant(variant: Variant | str, **overrides) -> dict:
    """``{"train.prototxt": NetParameter, "test.prototxt": ..., "deploy.prototxt": ...,
    "solver.prototxt": SolverParameter, "train.sh": str}`` for a variant (or its id)."""
    if isinstance(variant, str):
        variant = registry.get(variant)
    paths = {k: overrides.pop(k) for k in list(overrides) if k in _PATH_KEYS and overrides[k] is not None}
    test_iter_override = overrides.pop("test_iter", None)
    v = resolve(variant, **overrides)
    arch, data = v.arch, v.data
    lmdb_dir = str(paths.get("lmdb_dir", LMDB_DIR)).rstrip("/") or "."
    train_source = str(paths.get("train_source", f"{lmdb_dir}/{data.train_lmdb}"))
    test_source = str(paths.get("test_source", f"{lmdb_dir}/{data.test_lmdb}"))
    label_map = str(paths.get("label_map", data.label_map))
    name_size = str(paths.get("name_size_file", data.name_size))
    num_test = _positive_int(v, "num_test_image", paths.get("num_test_image", data.num_test_image))
    model_dir = str(paths.get("model_dir", f"models/{data.folder}/{v.id}")).rstrip("/")
    run_dir = str(paths.get("run_dir", f"runs/{data.folder}/{v.id}")).rstrip("/")

    maps = _source_maps(v, arch)
    priors = _priors(v, arch, maps)
    out = OutputSpec(data.num_classes, label_map, name_size, num_test,
                     output_directory=f"{run_dir}/{data.results}", output_name_prefix=data.output_prefix,
                     output_format=data.output_format, evaluate=data.in_training_test)
    train = _net(v, arch, priors, "train", train_source, v.batch_per_gpu, label_map, None)
    test = _net(v, arch, priors, "test", test_source, v.test_batch, label_map, out)
    deploy = to_deploy(test, arch.input_size, arch.input_size, f"{v.id}_deploy")
    for net, phase in ((train, TRAIN), (test, TEST)):
        try:
            shapes.infer(net, phase, source=f"variant {v.id}")
        except ScratchDetError as exc:
            _fail(v, str(exc))

    test_iter = test_iter_override or math.ceil(num_test / v.test_batch)
    spec = SolverSpec(
        train_net=f"{model_dir}/train.prototxt",
        test_net=f"{model_dir}/test.prototxt" if data.in_training_test else None,
        test_iter=_positive_int(v, "test_iter", test_iter), test_interval=v.test_interval, schedule=v.schedule,
        iter_size=v.iter_size, snapshot=v.snapshot, snapshot_prefix=f"{run_dir}/{v.id}", display=v.display,
        debug_info=v.debug_info, random_seed=v.random_seed)
    gpus = ",".join(str(i) for i in range(v.gpus))
    script = train_script(v.id, v.title, model_dir, run_dir, gpus,
                          weights_hint=v.pretrained)
    return {"train.prototxt": train, "test.prototxt": test, "deploy.prototxt": deploy,
            "solver.prototxt": solver_param(spec), "train.sh": script}


def render(files: dict) -> dict[str, bytes]:
    """File name -> bytes as written (text format for the messages)."""
    out = {}
    for name, content in files.items():
        text = content if isinstance(content, str) else text_format.MessageToString(content)
        out[name] = text.encode()
    return out


def render_variant(variant: Variant | str, out_dir="models", **overrides) -> tuple[Path, dict[str, bytes]]:
    """(folder, file name -> bytes) of a variant as ``write_variant`` would write it."""
    if isinstance(variant, str):
        variant = registry.get(variant)
    if overrides.get("profile") is not None:   # the twin's files go to the twin's folder
        variant = _with_profile(variant, overrides.pop("profile"))
    folder = Path(out_dir) / variant.dataset / variant.id
    overrides.setdefault("model_dir", folder.as_posix())
    return folder, render(build_variant(variant, **overrides))


def write_rendered(folder: Path, rendered: dict[str, bytes]) -> Path:
    for name, data in rendered.items():
        atomic_write_bytes(folder / name, data)
    (folder / "train.sh").chmod(0o755)
    return folder


def write_variant(variant: Variant | str, out_dir="models", **overrides) -> Path:
    """Write the variant's files to ``out_dir/<dataset>/<id>/`` and return that folder. The
    solver's net paths point there (``out_dir`` as given, relative to where training runs).
    Everything is built before anything is written."""
    return write_rendered(*render_variant(variant, out_dir, **overrides))
