"""``scratchdet detect``: draw the detections of a deploy net on images, with a choice of backend:
the engine on a deploy prototxt and caffemodel (``torch``, default), or a model from
``scratchdet export`` in onnxruntime (``--model F.onnx``). Where the transform comes from is
``engine.detect``'s docstring."""
from __future__ import annotations

from pathlib import Path


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
    parser.add_argument("--scale", type=float, help="multiply the mean-subtracted pixels by this (default: "
                                                    "the transform prototxt's scale, else 1)")
    parser.add_argument("--swap-rb", action="store_true", help="feed the net R,G,B instead of B,G,R "
                                                                 "(nets trained on RGB input)")
    parser.add_argument("--transform-from", metavar="PROTOTXT",
                        help="take mean, scale and label map from this prototxt's (TEST) data layer "
                             "(default: test.prototxt beside --model)")
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="onnxruntime: --model is an .onnx file from `scratchdet export`")
    parser.add_argument("--no-fold", action="store_true", help="torch backend: keep BatchNorm/Scale unfolded")


def main(args) -> int:
    if args.backend == "onnxruntime":
        from ..backends import onnxruntime_backend
        return onnxruntime_backend.detect(args)
    from ..caffe import io
    from ..engine import detect
    io.make_dirs(args.out, "--out folder")     # before minutes of loading: fail fast
    net = detect.load_net(args)
    return detect.run_images(args, lambda image, transform: detect.detect(net, image, transform),
                             detect.companion_transform(Path(args.model)))
