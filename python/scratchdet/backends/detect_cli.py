"""``scratchdet detect`` with a choice of backend: the engine on a deploy prototxt and caffemodel
(``torch``, default), or a model from ``scratchdet export`` in onnxruntime (``--model F.onnx``).
The flags are ``engine.detect``'s plus these two."""
from __future__ import annotations

from ..engine import detect as engine_detect


def add_arguments(parser) -> None:
    engine_detect.add_arguments(parser)
    parser.add_argument("--backend", choices=["torch", "onnxruntime"], default="torch",
                        help="onnxruntime: --model is an .onnx file from `scratchdet export`")
    parser.add_argument("--no-fold", action="store_true", help="torch backend: keep BatchNorm/Scale unfolded")


def main(args) -> int:
    if args.backend == "onnxruntime":
        from . import onnxruntime_backend
        return onnxruntime_backend.detect(args)
    return engine_detect.main(args)
