"""Data layers: SSD's AnnotatedData for training (the full SSD300 augmentation, caffe-ssd-spec §3
"Reference SSD300 train transform") and testing, and the deploy net's input."""
from __future__ import annotations

from .netspec import L, NetSpec

MEAN_BGR = (104, 117, 123)
INTERP_ALL = ["LINEAR", "AREA", "NEAREST", "CUBIC", "LANCZOS4"]


def ssd_batch_samplers() -> list[dict]:
    """The original image once, then six 0.3-1.0 scale / 0.5-2.0 aspect crops, each accepted
    when some object has IoU >= 0.1, 0.3, 0.5, 0.7, 0.9 (or <= 1.0) with it."""
    crop = {"min_scale": 0.3, "max_scale": 1.0, "min_aspect_ratio": 0.5, "max_aspect_ratio": 2.0}
    samplers = [{"sampler": {}, "max_trials": 1, "max_sample": 1}]
    for overlap in (0.1, 0.3, 0.5, 0.7, 0.9):
        samplers.append({"sampler": dict(crop), "sample_constraint": {"min_jaccard_overlap": overlap},
                         "max_trials": 50, "max_sample": 1})
    samplers.append({"sampler": dict(crop), "sample_constraint": {"max_jaccard_overlap": 1.0},
                     "max_trials": 50, "max_sample": 1})
    return samplers


def train_transform(height: int, width: int, force_color: bool = False) -> dict:
    tp = {
        "mirror": True, "mean_value": list(MEAN_BGR),
        "resize_param": {"prob": 1, "resize_mode": "WARP", "height": height, "width": width,
                         "interp_mode": list(INTERP_ALL)},
        "distort_param": {"brightness_prob": 0.5, "brightness_delta": 32, "contrast_prob": 0.5,
                          "contrast_lower": 0.5, "contrast_upper": 1.5, "hue_prob": 0.5, "hue_delta": 18,
                          "saturation_prob": 0.5, "saturation_lower": 0.5, "saturation_upper": 1.5,
                          "random_order_prob": 0.0},
        "expand_param": {"prob": 0.5, "max_expand_ratio": 4.0},
        "emit_constraint": {"emit_type": "CENTER"},
    }
    if force_color:
        tp["force_color"] = True
    return tp


def test_transform(height: int, width: int, force_color: bool = False) -> dict:
    tp = {"mean_value": list(MEAN_BGR),
          "resize_param": {"prob": 1, "resize_mode": "WARP", "height": height, "width": width,
                           "interp_mode": ["LINEAR"]}}
    if force_color:
        tp["force_color"] = True
    return tp


def annotated_data(net: NetSpec, train: bool, source: str, batch_size: int, height: int, width: int,
                   label_map_file: str, force_color: bool = False) -> None:
    """``net.data``, ``net.label`` from an LMDB of AnnotatedDatum (layer name ``data``), included in
    the TRAIN or TEST phase. The test layer has one empty batch_sampler, as SSD's generator writes
    it (it yields the whole image)."""
    transform = train_transform(height, width, force_color) if train else test_transform(height, width, force_color)
    net.data, net.label = L.AnnotatedData(
        name="data", ntop=2, include={"phase": "TRAIN" if train else "TEST"},
        transform_param=transform,
        data_param={"source": source, "batch_size": batch_size, "backend": "LMDB"},
        annotated_data_param={"label_map_file": label_map_file,
                              "batch_sampler": ssd_batch_samplers() if train else [{}]})


def to_deploy(test_net, height: int, width: int, name: str):
    """SSD's deploy net: the test net without its first (AnnotatedData) and last
    (DetectionEvaluate) layer, fed by ``input: "data"`` with shape 1x3xHxW."""
    from scratchdet.caffe.schema import pb
    deploy = pb.NetParameter()
    deploy.CopyFrom(test_net)
    del deploy.layer[0]
    if deploy.layer and deploy.layer[-1].type == "DetectionEvaluate":
        del deploy.layer[-1]
    deploy.name = name
    deploy.input.append("data")
    deploy.input_shape.add().dim.extend([1, 3, height, width])
    return deploy
