"""Every generated deploy net under ``models/`` exports to ONNX and onnxruntime agrees with the engine
to 1e-4 (relative to each output's scale), at the smallest input size the net accepts from a short
list (the paper-profile nets end in 3x3 valid convolutions down to 1x1 and need at least 257x257).

The fast test takes one net per architecture family: nets whose layers have the same types and
geometry (kernel, stride, pad, group, pooling, permute/flatten/reshape/softmax/concat/eltwise,
PriorBox options) differ only in channel counts, depth or learning rates, which the export does not
look at; that covers all 55 generated deploy nets with 15 exports. ``-m slow`` runs every net.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from scratchdet.backends import export as E
from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST
from scratchdet.caffe.shapes import infer
from scratchdet.engine.fold import fold
from scratchdet.engine.net import Net

from export_nets import picture, randomise  # noqa: E402  (tests/export_nets.py)

pytest.importorskip("onnxruntime")

REPO = Path(__file__).resolve().parents[1]
DEPLOYS = sorted(REPO.glob("models/*/*/deploy.prototxt"))
SIZES = (64, 96, 128, 160, 192, 224, 257, 300)
_PARAMS = {"Permute": "permute_param", "Flatten": "flatten_param", "Reshape": "reshape_param",
           "Softmax": "softmax_param", "Concat": "concat_param", "Eltwise": "eltwise_param",
           "Normalize": "norm_param", "Pooling": "pooling_param"}


def family(param) -> frozenset:
    """The set of layer kinds of a net: type plus the geometry the export translates."""
    kinds = set()
    for lp in param.layer:
        kind = lp.type
        if kind == "Convolution":
            cp = lp.convolution_param
            kind += f" k{list(cp.kernel_size)} s{list(cp.stride)} p{list(cp.pad)} g{cp.group} d{list(cp.dilation)}"
        elif kind == "PriorBox":
            pp = lp.prior_box_param
            kind += f" clip{pp.clip} flip{pp.flip} max{len(pp.max_size)} ar{len(pp.aspect_ratio)}"
        elif kind in _PARAMS:
            kind += " " + str(getattr(lp, _PARAMS[kind])).replace("\n", " ")
        kinds.add(kind)
    return frozenset(kinds)


def representatives() -> list[Path]:
    seen: dict[frozenset, Path] = {}
    for path in DEPLOYS:
        seen.setdefault(family(io.read_net(path)), path)
    return list(seen.values())


def smallest_input(param):
    for size in SIZES:
        resized = E.resize_input(param, size, size, 1)
        try:
            infer(resized)
        except Exception:
            continue
        return resized, size
    raise AssertionError("no input size in SIZES fits the net")


def check(path: Path):
    param, size = smallest_input(io.read_net(path))
    net = Net(param, TEST, source=str(path), seed=1)
    randomise(net, images=2)
    folded = fold(net)
    meta = E.metadata(folded, path, 0)
    data = E.to_onnx(folded, meta).SerializeToString()
    x = picture(size, size, seed=7)
    ref = E.engine_outputs(net, x)
    got = E.run_bytes(data, "onnx", x, meta["outputs"])
    assert meta["outputs"] == ["mbox_loc", "mbox_conf_flatten", "mbox_priorbox"]
    err = E.compare(ref, got, meta["outputs"])
    assert err < 1e-4, f"{path.relative_to(REPO)} at {size}x{size}: {err:.2e}"


def test_the_generated_models_are_there():
    assert len(DEPLOYS) >= 50


@pytest.mark.parametrize("path", representatives(), ids=lambda p: p.parent.name)
def test_every_architecture_family_exports_and_agrees(path):
    check(path)


@pytest.mark.slow
@pytest.mark.parametrize("path", DEPLOYS, ids=lambda p: p.parent.name)
def test_every_deploy_net_exports_and_agrees(path):
    check(path)
