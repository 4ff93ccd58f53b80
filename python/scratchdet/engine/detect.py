"""Running a deploy net on images and drawing its detections (``scratchdet detect``).

Each image is resized to the net's input (bilinear, as the SSD test transform's WARP resize),
mean-subtracted and scaled as the TEST data layer of a prototxt transforms its data, run through
the net, and the DetectionOutput rows (image, label, score, xmin, ymin, xmax, ymax in [0, 1]) with
score >= ``--threshold`` are drawn on the original image with their class names from the label map.
One line per detection is printed.

Where the transform comes from, in order: ``--mean`` / ``--scale`` / ``--swap-rb`` on the command
line (each overrides one value), the data layer of ``--transform-from PROTOTXT``, else of
``test.prototxt`` beside the deploy net, else Caffe SSD's defaults (mean 104,117,123, scale 1, BGR).
One line on stderr says which, because a wrong transform gives plausible-looking garbage
(MobileNet-SSD wants scale 0.007843 and mean 127.5). ``--mean`` is in the net's input channel order
(B,G,R; R,G,B with ``--swap-rb``, as OpenCV's ``blobFromImage``).

A JPEG without its end-of-image marker (a cut download) decodes with its lower part grey: it is
drawn as decoded, with a warning naming the file.
"""
from __future__ import annotations

import colorsys
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..caffe import io
from ..caffe.netstate import TEST
from ..errors import ScratchDetError

DEFAULT_MEAN = (104.0, 117.0, 123.0)
WRITABLE = {".png", ".jpg", ".jpeg", ".bmp"}


@dataclass
class Transform:
    mean: tuple[float, ...] = DEFAULT_MEAN
    scale: float = 1.0
    labelmap: str | None = None
    swap_rb: bool = False
    source: str = "Caffe SSD's defaults"


def _is_test_layer(lp) -> bool:
    return any(rule.HasField("phase") and rule.phase == TEST for rule in lp.include)


def transform_of(path: Path) -> Transform:
    """Mean, scale and label map of the data layer in ``path`` (the TEST-phase one where a file has
    both phases); values the layer does not set keep Caffe SSD's defaults."""
    param = io.read_net(path)
    out = Transform(source=str(path))
    layers = [lp for lp in param.layer if lp.HasField("transform_param")]
    layers.sort(key=lambda lp: not _is_test_layer(lp))
    if layers:
        tp = layers[0].transform_param
        if tp.mean_value:
            values = tuple(float(v) for v in tp.mean_value)
            out.mean = values * 3 if len(values) == 1 else values
        elif tp.mean_file:
            raise ScratchDetError(f"{path}: transform_param mean_file {tp.mean_file!r} is not supported by "
                                  "detect: give --mean B,G,R")
        if tp.HasField("scale"):
            out.scale = float(tp.scale)
    for lp in param.layer:
        if lp.annotated_data_param.label_map_file and not out.labelmap:
            out.labelmap = lp.annotated_data_param.label_map_file
        save = lp.detection_output_param.save_output_param
        if save.label_map_file and not out.labelmap:
            out.labelmap = save.label_map_file
    return out


def companion_transform(model: Path) -> Transform:
    """The transform of ``test.prototxt`` beside ``model``, else the defaults."""
    test = model.with_name("test.prototxt")
    if not test.is_file() or test.resolve() == model.resolve():
        return Transform(source=f"Caffe SSD's defaults (no test.prototxt beside {model})")
    return transform_of(test)


def resolve_transform(args, default: Transform) -> tuple[Transform, str]:
    """The transform ``args`` ask for (``--transform-from``, else ``default``: the companion
    test.prototxt's, or what an exported model carries), and the one line that says where each value
    came from."""
    if getattr(args, "transform_from", None):
        src = Path(args.transform_from)
        if not src.is_file():
            raise ScratchDetError(f"--transform-from {src}: no such file")
        transform = transform_of(src)
    else:
        transform = default
    given = []
    if args.mean:
        transform.mean = parse_mean(args.mean)
        given.append("--mean")
    if getattr(args, "scale", None) is not None:
        if not (np.isfinite(args.scale) and args.scale > 0):
            raise ScratchDetError(f"--scale must be a positive number, got {args.scale:g}")
        transform.scale = float(args.scale)
        given.append("--scale")
    if getattr(args, "swap_rb", False):
        transform.swap_rb = True
        given.append("--swap-rb")
    mean = ",".join(f"{v:g}" for v in transform.mean)
    line = (f"transform: mean {mean}, scale {transform.scale:g}, {'RGB' if transform.swap_rb else 'BGR'} input; "
            f"from {transform.source}" + (f", overridden by {' '.join(given)}" if given else ""))
    return transform, line


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


def preprocess(image: np.ndarray, height: int, width: int, mean, scale: float = 1.0,
               swap_rb: bool = False) -> np.ndarray:
    """HxWx3 BGR uint8 -> [1, 3, height, width] float32: bilinear resize, (B,G,R -> R,G,B when
    ``swap_rb``), minus mean, times scale."""
    import cv2
    resized = cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if swap_rb:
        resized = resized[:, :, ::-1]
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
    data = preprocess(image, shape[2], shape[3], transform.mean, transform.scale, transform.swap_rb)
    with torch.no_grad():
        blobs = net.forward({name: torch.from_numpy(data)})
    rows = blobs[_output_blob(net)].detach().float().cpu().numpy().reshape(-1, 7)
    return rows[rows[:, 1] >= 0]


def read_image(path) -> np.ndarray:
    """A BGR image; a JPEG cut short is read (its lower part grey) with a warning naming it."""
    import cv2

    from ..data.images import JPEG_MAGIC, jpeg_is_complete
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read the image ({exc.strerror})") from None
    # imread, not imdecode: OpenCV's file reader keeps what a cut JPEG holds, its buffer reader does not
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise ScratchDetError(f"{path}: cannot decode the image (empty, corrupt or not an image)")
    if data.startswith(JPEG_MAGIC) and not jpeg_is_complete(data):
        print(f"warning: {path}: truncated JPEG (no end-of-image marker): its missing part is drawn grey "
              "and detections there mean nothing", file=sys.stderr)
    return image


def load_net(args):
    """The deploy net of ``args.model`` with ``args.weights``, BatchNorm/Scale folded for inference
    unless ``args.no_fold``."""
    from .caffemodel import load_caffemodel
    from .fold import fold
    from .malloc import keep_freed_memory
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
    keep_freed_memory()
    _output_blob(net)
    return net


def run_images(args, detect_one, default: Transform) -> int:
    """Detect, print and draw every image of ``args.images`` with ``detect_one(image, transform)``
    (rows as ``detect`` returns them), the transform resolved from ``default`` and the flags: the
    loop every backend of ``scratchdet detect`` shares."""
    import cv2

    out_dir = io.make_dirs(args.out, "--out folder")
    transform, where = resolve_transform(args, default)
    print(f"scratchdet detect: {where}", file=sys.stderr)
    labelmap = args.labelmap or transform.labelmap
    names = {}
    if labelmap:
        if args.labelmap or Path(labelmap).is_file():
            names = label_names(labelmap)
    for path in args.images:
        image = read_image(path)
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
