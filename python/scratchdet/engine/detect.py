"""``scratchdet detect``: run a deploy net on images and draw its detections.

Each image is resized to the net's input (bilinear, as the SSD test transform's WARP resize),
mean-subtracted and scaled as the deploy net's companion ``test.prototxt`` transforms its data
(or ``--mean``), run through the net, and the DetectionOutput rows (image, label, score, xmin,
ymin, xmax, ymax in [0, 1]) with score >= ``--threshold`` are drawn on the original image with
their class names from the label map. One line per detection is printed.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..caffe import io
from ..caffe.netstate import TEST
from ..errors import ScratchDetError

DEFAULT_MEAN = (104.0, 117.0, 123.0)
WRITABLE = {".png", ".jpg", ".jpeg", ".bmp"}


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="deploy.prototxt (Input + network + DetectionOutput)")
    parser.add_argument("--weights", help=".caffemodel (required with the engine)")
    parser.add_argument("--labelmap", help="LabelMap prototxt for class names (default: the one the "
                                           "companion test.prototxt names, if any)")
    parser.add_argument("--threshold", type=float, default=0.5, help="minimum score drawn (default 0.5)")
    parser.add_argument("--mean", help="B,G,R mean to subtract (default: the companion test.prototxt's "
                                       "mean_value, else 104,117,123)")
    parser.add_argument("--out", required=True, help="folder for the drawn images")
    parser.add_argument("--gpu", default="cpu", help="'cpu' (default) or a CUDA device id")
    parser.add_argument("images", nargs="+", help="image files")


@dataclass
class Transform:
    mean: tuple[float, ...] = DEFAULT_MEAN
    scale: float = 1.0
    labelmap: str | None = None


def companion_transform(model: Path) -> Transform:
    """Mean, scale and label map of the TEST data layer in ``test.prototxt`` beside ``model``."""
    test = model.with_name("test.prototxt")
    if not test.is_file() or test.resolve() == model.resolve():
        return Transform()
    param = io.read_net(test)
    out = Transform()
    for lp in param.layer:
        if lp.HasField("transform_param") and lp.transform_param.mean_value:
            values = tuple(float(v) for v in lp.transform_param.mean_value)
            out.mean = values * 3 if len(values) == 1 else values
            out.scale = float(lp.transform_param.scale)
        if lp.annotated_data_param.label_map_file and not out.labelmap:
            out.labelmap = lp.annotated_data_param.label_map_file
        save = lp.detection_output_param.save_output_param
        if save.label_map_file and not out.labelmap:
            out.labelmap = save.label_map_file
    return out


def parse_mean(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ScratchDetError(f"--mean must be numbers separated by commas, got {text!r}") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise ScratchDetError(f"--mean needs 1 or 3 values (B,G,R), got {len(values)}")
    return values


def label_names(path) -> dict[int, str]:
    labelmap = io.read_labelmap(path)
    return {int(item.label): item.display_name or item.name for item in labelmap.item}


def preprocess(image: np.ndarray, height: int, width: int, mean, scale: float = 1.0) -> np.ndarray:
    """HxWx3 BGR uint8 -> [1, 3, height, width] float32: bilinear resize, minus mean, times scale."""
    import cv2
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    data = (resized.astype(np.float32) - np.asarray(mean, np.float32)) * np.float32(scale)
    return np.ascontiguousarray(data.transpose(2, 0, 1)[None])


def color_for(label: int) -> tuple[int, int, int]:
    """A fixed, well-separated BGR colour per class id."""
    r, g, b = colorsys.hsv_to_rgb((label * 0.618034) % 1.0, 0.85, 0.95)
    return int(b * 255), int(g * 255), int(r * 255)


def pixel_box(row, w: int, h: int) -> tuple[int, int, int, int]:
    x1 = int(round(np.clip(row[3], 0, 1) * (w - 1)))
    y1 = int(round(np.clip(row[4], 0, 1) * (h - 1)))
    x2 = int(round(np.clip(row[5], 0, 1) * (w - 1)))
    y2 = int(round(np.clip(row[6], 0, 1) * (h - 1)))
    return x1, y1, x2, y2


def draw(image: np.ndarray, rows: np.ndarray, names: dict[int, str]) -> np.ndarray:
    import cv2
    out = image.copy()
    h, w = out.shape[:2]
    thickness = max(1, round(min(h, w) / 300))
    for row in rows:
        label = int(row[1])
        x1, y1, x2, y2 = pixel_box(row, w, h)
        color = color_for(label)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        text = f"{names.get(label, str(label))}: {row[2]:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, 1)
        ty = max(y1, th + base)
        cv2.rectangle(out, (x1, ty - th - base), (x1 + tw, ty), color, -1)
        cv2.putText(out, text, (x1, ty - base), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


def _input_blob(net) -> tuple[str, tuple[int, ...]]:
    for layer in net.layers:
        if layer.lp.type == "Input":
            shape = layer.shapes[0]
            if len(shape) != 4 or shape[1] != 3:
                raise ScratchDetError(f"{net.source}: the first input {layer.lp.top[0]!r} is {list(shape)}, "
                                      "expected [N, 3, H, W]")
            return layer.lp.top[0], shape
    raise ScratchDetError(f"{net.source}: no Input layer (give a deploy prototxt)")


def _output_blob(net) -> str:
    for layer in net.layers:
        if layer.lp.type == "DetectionOutput":
            return layer.lp.top[0]
    raise ScratchDetError(f"{net.source}: no DetectionOutput layer (give a deploy prototxt)")


def detect(net, image: np.ndarray, transform: Transform) -> np.ndarray:
    """Detection rows [K, 7] of one BGR image (rows with label -1, Caffe's 'none', dropped)."""
    name, shape = _input_blob(net)
    data = preprocess(image, shape[2], shape[3], transform.mean, transform.scale)
    with torch.no_grad():
        blobs = net.forward({name: torch.from_numpy(data)})
    rows = blobs[_output_blob(net)].detach().float().cpu().numpy().reshape(-1, 7)
    return rows[rows[:, 1] >= 0]


def load_net(args):
    """The deploy net of ``args.model`` with ``args.weights``, BatchNorm/Scale folded for inference
    unless ``args.no_fold``."""
    from .caffemodel import load_caffemodel
    from .fold import fold
    from .net import Net
    from .timing import device_of

    if not args.weights:
        raise ScratchDetError("--weights is required (a .caffemodel for --model)")
    model = Path(args.model)
    net = Net(io.read_net(model), TEST, source=str(model), seed=0)
    load_caffemodel(net, args.weights)
    if not getattr(args, "no_fold", False):
        net = fold(net)
    net.to(device_of(args.gpu))
    _output_blob(net)
    return net


def main(args) -> int:
    net = load_net(args)
    return run_images(args, lambda image, transform: detect(net, image, transform),
                      companion_transform(Path(args.model)))


def run_images(args, detect_one, transform: Transform) -> int:
    """Detect, print and draw every image of ``args.images`` with ``detect_one(image, transform)``
    (rows as ``detect`` returns them): the loop every backend of ``scratchdet detect`` shares."""
    import cv2

    if args.mean:
        transform.mean = parse_mean(args.mean)
    labelmap = args.labelmap or transform.labelmap
    names = {}
    if labelmap:
        if args.labelmap or Path(labelmap).is_file():
            names = label_names(labelmap)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ScratchDetError(f"{path}: cannot read the image")
        rows = detect_one(image, transform)
        rows = rows[rows[:, 2] >= args.threshold]
        h, w = image.shape[:2]
        for row in rows:
            x1, y1, x2, y2 = pixel_box(row, w, h)
            print(f"{path}\t{names.get(int(row[1]), int(row[1]))}\t{row[2]:.4f}\t{x1} {y1} {x2} {y2}")
        ext = Path(path).suffix.lower()
        ext = ext if ext in WRITABLE else ".png"
        ok, encoded = cv2.imencode(ext, draw(image, rows, names))
        if not ok:
            raise ScratchDetError(f"{path}: cannot encode the drawn image as {ext}")
        target = out_dir / (Path(path).stem + ext)
        io.atomic_write_bytes(target, encoded.tobytes())
        print(f"{path}: {len(rows)} detection(s) -> {target}")
    return 0
