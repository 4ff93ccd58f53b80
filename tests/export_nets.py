"""Nets and weights shared by the export tests: a small MobileNet-style SSD, random weights with
realistic BatchNorm statistics, a test picture."""
from __future__ import annotations

import copy

import numpy as np
import torch

from scratchdet.backends import export as E


def conv_block(name, bottom, n, k=3, s=1, p=1, group=1, bias=False, bn=True, relu=True):
    text = (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}" convolution_param {{ '
            f'num_output: {n} kernel_size: {k} stride: {s} pad: {p} group: {group} bias_term: {str(bias).lower()} '
            f'weight_filler {{ type: "xavier" }} }} }}\n')
    if bn:
        text += (f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" }}\n'
                 f'layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}" '
                 f'scale_param {{ bias_term: true }} }}\n')
    if relu:
        text += f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'
    return text


def mobilenet_prototxt(size=96, classes=4) -> str:
    """A MobileNet-SSD in miniature: depthwise (group = channels) 3x3 + pointwise 1x1 blocks with
    BatchNorm/Scale/ReLU, two detection maps with SSD heads, PriorBox, DetectionOutput."""
    text = f'name: "mini_mobilenet_ssd"\ninput: "data"\ninput_shape {{ dim: 1 dim: 3 dim: {size} dim: {size} }}\n'
    text += conv_block("conv0", "data", 16, s=2)
    bottom, c = "conv0", 16
    for i, (n, s) in enumerate([(32, 2), (32, 1), (64, 2), (64, 2)], 1):
        text += conv_block(f"conv{i}/dw", bottom, c, s=s, group=c)
        text += conv_block(f"conv{i}", f"conv{i}/dw", n, k=1, p=0)
        bottom, c = f"conv{i}", n
    # priors per cell: 1 + aspect ratios (no flip) + 1 per max_size
    heads = [("conv3", "min_size: 30 aspect_ratio: 2.0", 2), ("conv4", "min_size: 60 max_size: 90 aspect_ratio: 2.0 aspect_ratio: 3.0", 4)]
    for name, sizes, priors in heads:
        text += conv_block(f"{name}_mbox_loc", name, priors * 4, bias=True, bn=False, relu=False)
        text += conv_block(f"{name}_mbox_conf", name, priors * classes, bias=True, bn=False, relu=False)
        for kind in ("loc", "conf"):
            text += (f'layer {{ name: "{name}_mbox_{kind}_perm" type: "Permute" bottom: "{name}_mbox_{kind}" '
                     f'top: "{name}_mbox_{kind}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                     f'layer {{ name: "{name}_mbox_{kind}_flat" type: "Flatten" bottom: "{name}_mbox_{kind}_perm" '
                     f'top: "{name}_mbox_{kind}_flat" flatten_param {{ axis: 1 }} }}\n')
        text += (f'layer {{ name: "{name}_mbox_priorbox" type: "PriorBox" bottom: "{name}" bottom: "data" '
                 f'top: "{name}_mbox_priorbox" prior_box_param {{ {sizes} flip: false '
                 f'clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 offset: 0.5 }} }}\n')
    for kind, axis in (("loc", 1), ("conf", 1), ("priorbox", 2)):
        bottoms = " ".join(f'bottom: "{h}_mbox_{kind}{"" if kind == "priorbox" else "_flat"}"' for h, _, _ in heads)
        text += f'layer {{ name: "mbox_{kind}" type: "Concat" {bottoms} top: "mbox_{kind}" concat_param {{ axis: {axis} }} }}\n'
    text += (f'layer {{ name: "mbox_conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "mbox_conf_reshape" '
             f'reshape_param {{ shape {{ dim: 0 dim: -1 dim: {classes} }} }} }}\n'
             'layer { name: "mbox_conf_softmax" type: "Softmax" bottom: "mbox_conf_reshape" top: "mbox_conf_softmax" '
             'softmax_param { axis: 2 } }\n'
             'layer { name: "mbox_conf_flatten" type: "Flatten" bottom: "mbox_conf_softmax" top: "mbox_conf_flatten" '
             'flatten_param { axis: 1 } }\n'
             'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" bottom: "mbox_conf_flatten" '
             f'bottom: "mbox_priorbox" top: "detection_out" detection_output_param {{ num_classes: {classes} '
             'share_location: true background_label_id: 0 nms_param { nms_threshold: 0.45 top_k: 100 } '
             'code_type: CENTER_SIZE keep_top_k: 50 confidence_threshold: 0.01 } }\n')
    return text


def randomise(net, seed=0, images=4):
    """Weights a trained net could have: random convolutions rescaled, in one pass over a few
    pictures, so that each output has standard deviation 1 (class-score heads 3, for spread-out
    scores; box heads 0.3, for finite boxes); Scale parameters away from (1, 0); BatchNorm
    statistics from the same pass (1x1 maps need more than one picture), perturbed and stored
    with a scale factor != 1."""
    g = torch.Generator().manual_seed(seed)
    name, shape = E.input_blob(net)
    x = torch.from_numpy(np.concatenate([picture(shape[2], shape[3], seed=k) for k in range(images)]))
    bns = [layer for layer in net.layers if layer.lp.type == "BatchNorm"]
    with torch.no_grad():
        for layer in net.layers:
            blobs = layer.blobs()
            kind = layer.lp.type
            if kind == "Scale":
                for b in blobs:
                    b.copy_(torch.empty(b.shape).uniform_(0.6, 1.4, generator=g) if b is layer.scale
                            else torch.empty(b.shape).uniform_(-0.2, 0.2, generator=g))
            elif kind == "Convolution":
                blobs[0].copy_(torch.empty(blobs[0].shape).normal_(0, (2.0 / blobs[0][0].numel()) ** 0.5, generator=g))
                if len(blobs) > 1:
                    blobs[1].copy_(torch.empty(blobs[1].shape).uniform_(-0.1, 0.1, generator=g))
            elif kind == "Normalize":
                blobs[0].copy_(torch.empty(blobs[0].shape).uniform_(5, 20, generator=g))
        for layer in bns:
            layer.use_global_stats = False
        values: dict = {}
        for i, layer in enumerate(net.layers):
            outs = net.forward_layer(i, values, {name: x})
            if layer.lp.type == "Convolution":
                target = 3.0 if "conf" in layer.name else 0.3 if "loc" in layer.name else 1.0
                k = target / max(float(outs[0].std()), 1e-6)
                for b in layer.blobs():
                    b.mul_(k)
                for t, o in zip(layer.lp.top, outs):
                    values[t] = o * k
        for layer in bns:
            layer.use_global_stats = True
            c, s = layer.mean_sum.numel(), 3.0
            layer.mean_sum.add_(torch.empty(c).uniform_(-0.1, 0.1, generator=g)).mul_(s)
            layer.var_sum.mul_(torch.empty(c).uniform_(0.7, 1.4, generator=g)).mul_(s)
            layer.factor.fill_(s)


def picture(h, w, seed=0):
    """A preprocessed input [1, 3, h, w]: shapes on a gradient, mean subtracted."""
    import cv2
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = np.linspace(40, 220, w, dtype=np.uint8)[None, :, None]
    rng = np.random.default_rng(seed)
    for _ in range(4):
        x, y = (int(v) for v in rng.integers(0, min(h, w), 2))
        cv2.rectangle(img, (x, y), (x + w // 4, y + h // 5), tuple(int(v) for v in rng.integers(0, 255, 3)), -1)
    return (img.astype(np.float32) - np.float32([104, 117, 123])).transpose(2, 0, 1)[None].copy()


def float64_copy(net):
    """``net`` in float64: the reference both float32 nets are measured against."""
    ref = copy.deepcopy(net)
    aliases = []            # blobs are also plain attributes (layer.weight, layer.mean_sum): keep them in step
    for layer in ref.layers:
        for name in layer._blob_names:
            t = getattr(layer, name)
            aliases += [(layer, k, name) for k, v in vars(layer).items() if v is t]
    ref.double()
    for layer, k, name in aliases:
        object.__setattr__(layer, k, getattr(layer, name))
    return ref


def assert_same_detections(ours, theirs, tol):
    """The same set of detections, in any order: every row of each has a row of the other with
    the same image and label and score and corners within ``tol``."""
    ours, theirs = np.asarray(ours).reshape(-1, 7), np.asarray(theirs).reshape(-1, 7)
    assert len(ours) == len(theirs)

    def unmatched(a, b):
        lost = []
        for row in a:
            same = b[(b[:, 0] == row[0]) & (b[:, 1] == row[1]) & (np.abs(b[:, 2] - row[2]) <= tol)]
            if not len(same) or (np.abs(same[:, 3:] - row[3:]) / np.maximum(1, np.abs(row[3:]))).max(1).min() > tol:
                lost.append(row)
        return lost
    assert not unmatched(ours, theirs) and not unmatched(theirs, ours)
