"""``scratchdet train``: train from a solver.prototxt as ``caffe train`` does (same flags, same log
lines), on this project's torch engine or on an installed Caffe SSD binary."""
from __future__ import annotations


def add_arguments(p) -> None:
    p.add_argument("--solver", required=True, help="solver.prototxt (net paths in it are relative to the current directory)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--weights", help="caffemodel(s) to start from, comma-separated; copied by layer name")
    start.add_argument("--snapshot", help="a .solverstate to resume from (iteration, history, weights)")
    p.add_argument("--gpu", default=None,
                   help="0,1,2,3 | all | cpu (default: GPU 0 if present, else CPU); more GPUs than present: "
                        "the per-GPU batch is kept and iter_size raised")
    p.add_argument("--backend", choices=["torch", "caffe"], default="torch",
                   help="torch (this engine) or caffe (a Caffe SSD binary from CAFFE_BIN or PATH)")
    p.add_argument("--log", default=None, help="log file (default: train.log beside the snapshot prefix)")
    p.add_argument("--max-iter", type=int, default=None, help="override the solver's max_iter")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: the solver's random_seed, else random)")
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading processes per training process (default: half the cores, at most 4)")
    p.add_argument("--sigint-effect", choices=["snapshot", "stop", "none"], default="snapshot",
                   help="what Ctrl-C does: snapshot and stop (default), stop, or nothing")
    p.add_argument("--quiet", action="store_true", help="log to the file only, not to stderr")
    p.add_argument("--fast", default=None,
                   help="opt-in faster paths, not Caffe's arithmetic (torch backend): comma-separated "
                        "channels_last, amp (bfloat16 autocast), tf32, compile[=backend]")


def main(args) -> int:
    from ..backends import get
    return get(args.backend).train(args)
