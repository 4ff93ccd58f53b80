"""``scratchdet test``: the TEST phase of a net with trained weights, scored as the solver scores it
(mAP from DetectionEvaluate rows), printed as ``<output> = <value>`` and logged in Caffe's format."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="test.prototxt (with its AnnotatedData and DetectionEvaluate layers)")
    p.add_argument("--weights", help="caffemodel(s), comma-separated; copied by layer name (required "
                                      "unless --backend onnxruntime)")
    p.add_argument("--iterations", type=int, default=None,
                   help="forward passes (default: one pass over the test LMDB)")
    p.add_argument("--gpu", default=None, help="a device id or cpu (default: GPU 0 if present)")
    p.add_argument("--ap-version", default="11point", choices=["11point", "MaxIntegral", "Integral"],
                   help="AP as the solver's ap_version (default 11point, VOC2007)")
    p.add_argument("--eval-type", default="detection", choices=["detection", "classification"])
    p.add_argument("--per-class", action="store_true", help="also log the AP of every class")
    p.add_argument("--backend", choices=["torch", "caffe", "onnxruntime"], default="torch",
                   help="onnxruntime: the layers up to DetectionOutput from an exported --onnx model")
    p.add_argument("--onnx", default=None, help="onnxruntime backend: the .onnx file of `scratchdet export`")
    p.add_argument("--no-fold", action="store_true", help="torch backend: keep BatchNorm/Scale unfolded")
    p.add_argument("--train-model", default=None,
                   help="caffe backend only: the train net Caffe's solver needs (default: train.prototxt beside --model)")
    p.add_argument("--log", default=None, help="also append the log lines to this file")
    p.add_argument("--workers", type=int, default=None, help="data-loading processes")
    p.add_argument("--quiet", action="store_true", help="no log lines on stderr")


def main(args) -> int:
    from ..backends import get
    from ..errors import ScratchDetError
    if args.backend == "onnxruntime" and not args.onnx:
        raise ScratchDetError("--backend onnxruntime needs --onnx F.onnx (from scratchdet export)")
    if args.backend != "onnxruntime" and not args.weights:
        raise ScratchDetError("--weights is required")
    return get(args.backend).test(args)
