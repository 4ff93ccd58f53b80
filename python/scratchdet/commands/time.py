"""``scratchdet time``: forward and backward time per layer, printed as ``caffe time`` prints it
(the loop and its rules are ``engine.timing``'s)."""
from __future__ import annotations

from ..caffe import glog, io
from ..caffe.netstate import PHASES
from ..engine import timing


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="net prototxt (train, test or deploy)")
    parser.add_argument("--weights", help="optional .caffemodel to load first")
    parser.add_argument("--iterations", type=int, default=50, help="timed iterations (default 50)")
    parser.add_argument("--phase", choices=sorted(PHASES), default="TRAIN", help="net phase (default TRAIN, as caffe time)")
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--stage", action="append", default=[], help="NetState stage (repeatable)")
    parser.add_argument("--gpu", default="cpu", help="'cpu' (default) or a CUDA device id")
    parser.add_argument("--data", choices=("random", "real"), default="random",
                        help="replace data layers by random inputs of their shape (default) or read them")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights and random inputs")


def main(args) -> int:
    from ..engine.caffemodel import load_caffemodel
    from ..engine.net import Net

    phase = PHASES[args.phase]
    device = timing.device_of(args.gpu)
    param = io.read_net(args.model)
    box_tops: list[str] = []
    if args.data == "random":
        param, box_tops = timing.replace_data_layers(param, phase, args.level, args.stage, args.model)
    net = Net(param, phase, level=args.level, stages=tuple(args.stage), source=args.model, seed=args.seed)
    if args.weights:
        load_caffemodel(net, args.weights)
    net.to(device)
    for layer in net.layers:
        if hasattr(layer, "configure"):         # data layers read on this device
            layer.device = device
    inputs = timing.random_inputs(net, box_tops, timing.num_classes(param), args.seed)
    print(glog.line("I", timing.TAG, glog.use_device_message(device.index if device.type == "cuda" else None)), flush=True)
    timing.benchmark(net, inputs, args.iterations, device, log=lambda m: print(glog.line("I", timing.TAG, m), flush=True))
    return 0
