"""``scratchdet export``: a deploy net and caffemodel as ONNX or TorchScript, BatchNorm folded, checked
against the engine on a random input before anything is written."""
from __future__ import annotations

import numpy as np

from ..backends import export
from ..caffe import io
from ..errors import ScratchDetError


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="deploy.prototxt")
    p.add_argument("--weights", required=True, help=".caffemodel")
    p.add_argument("--format", required=True, choices=export.FORMATS)
    p.add_argument("--out", required=True, help="the file to write (.onnx / .pt)")
    p.add_argument("--dynamic-batch", action="store_true", help="ONNX: symbolic batch axis (default: the prototxt's)")
    p.add_argument("--batch", type=int, default=None, help="batch size of the exported input (default: the prototxt's)")
    p.add_argument("--input-size", default=None, metavar="HxW",
                   help="input height and width (default: the prototxt's); PriorBoxes follow it")
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm/Scale as separate operations")
    p.add_argument("--no-check", action="store_true",
                   help="skip comparing the exported model with the engine on a random input")


def main(args) -> int:
    from ..engine.fold import fold as fold_net
    from ..engine.fold import plan
    size = export.parse_size(args.input_size) if args.input_size else None
    if args.batch is not None and args.batch < 1:
        raise ScratchDetError(f"--batch must be positive, got {args.batch}")
    unfolded = export.load(args.model, args.weights, input_size=size, batch=args.batch, fold=False)
    groups = [] if args.no_fold else plan(unfolded)
    net = fold_net(unfolded) if groups else unfolded
    meta = export.metadata(net, args.model, len(groups))
    data = export.export_bytes(net, meta, args.format, args.dynamic_batch)
    if not args.no_check:             # nothing is written when the export disagrees with the engine
        x = np.random.default_rng(0).normal(0, 50, meta["input_shape"]).astype(np.float32)
        err = export.compare(export.engine_outputs(unfolded, x), export.run_bytes(data, args.format, x, meta["outputs"]), meta["outputs"])
        print(f"check on a random input: largest relative difference from the engine {err:.2e}")
        if not err < 1e-4:
            raise ScratchDetError(f"{args.out}: not written: the export differs from the engine by {err:.2e} (over 1e-4)")
    io.atomic_write_bytes(args.out, data)
    print(f"{args.model} -> {args.out} ({args.format}{', opset %d' % export.OPSET if args.format == 'onnx' else ''}; "
          f"{len(groups)} BatchNorm/Scale/ReLU folds; outputs {', '.join(meta['outputs'])})")
    return 0
