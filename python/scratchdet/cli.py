"""The ``scratchdet`` command. Each subcommand is a module of ``scratchdet.commands`` with
``add_arguments(parser)`` and ``main(args) -> int``; modules load only when used."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys

from .errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED, ScratchDetError

# name -> (module, one-line help)
COMMANDS = {
    "run": ("scratchdet.commands.run", "run a whole experiment (data, gen, train, test, compare, plot); --dry-run prints it"),
    "mini-paper": ("scratchdet.commands.mini_paper", "the paper's Table 1 and Table 2 / Figure 3 claims at CPU scale, over seeds"),
    "gen": ("scratchdet.commands.gen", "emit train/test/deploy/solver prototxts and train.sh for paper variants"),
    "summary": ("scratchdet.commands.summary", "per-layer shapes, parameters, priors and multiply-adds of a prototxt"),
    "data": ("scratchdet.commands.data", "build and check SSD AnnotatedDatum LMDBs (voc, coco, synthetic, check)"),
    "train": ("scratchdet.commands.train", "train from a solver.prototxt as `caffe train` does"),
    "test": ("scratchdet.commands.test", "score a test net: mAP as the solver reports it"),
    "detect": ("scratchdet.commands.detect", "draw detections of a deploy net on images"),
    "export": ("scratchdet.commands.export", "a deploy net and caffemodel as ONNX or TorchScript (BatchNorm folded)"),
    "time": ("scratchdet.commands.time", "forward/backward time per layer, as `caffe time`"),
    "eval": ("scratchdet.commands.eval", "VOC and COCO metrics from detection files"),
    "compare": ("scratchdet.commands.compare", "score card: paper number vs this run, from logs"),
    "plot": ("scratchdet.commands.plot", "loss, lr, mAP and Figure 1 panels from logs, as PNG"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scratchdet", description="ScratchDet on Caffe SSD formats: generate, convert, train, test, score.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if "--help" in sys.argv or "-h" in sys.argv or (len(sys.argv) > 1 and sys.argv[1] == name):
            try:
                importlib.import_module(module).add_arguments(p)
            except ModuleNotFoundError as exc:
                if exc.name and module.startswith(exc.name):
                    p.set_defaults(_missing=True)
                else:
                    raise
    return parser


def _plain_numpy_repr() -> None:
    """numpy 2 writes a scalar's repr as ``np.float32(236.0)``; a message that puts one in a tuple or
    uses ``!r`` would show that. Messages should format numbers with ``errors.plain``; this makes any
    that do not read ``236.0`` instead."""
    try:
        import numpy as np
        np.set_printoptions(legacy="1.25")
    except (ImportError, ValueError, TypeError):   # numpy 1.x: already plain
        pass


def _install_registry() -> None:
    """The score card and plots name variants and their paper numbers from the generators' registry;
    report/ sits below prototxt_gen, so the top layer hands it down (loaded here, as the commands are,
    only when used)."""
    from prototxt_gen import registry
    from .report import variants
    variants.install_registry(registry)


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:])
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    if getattr(args, "_missing", False):
        print(f"scratchdet: error: '{args.command}' is not available in this build", file=sys.stderr)
        return EXIT_BAD_INPUT
    _plain_numpy_repr()
    if args.command in ("compare", "plot"):
        _install_registry()
    old_term = _install_sigterm()
    try:
        return int(importlib.import_module(args._module).main(args) or 0)
    except ScratchDetError as exc:
        print(f"scratchdet {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        # the file system said no where no module turned it into a message: still one line
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"scratchdet {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"scratchdet {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Terminated:
        print(f"scratchdet {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return EXIT_TERMINATED
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


class Terminated(BaseException):
    """SIGTERM (``timeout``, SLURM, ``kill``): unwinds like Ctrl-C, so temporaries are removed."""


def _raise_terminated(signum, frame):
    raise Terminated()


def _install_sigterm():
    try:
        return signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:        # not the main thread (embedded use): leave signals alone
        return None


if __name__ == "__main__":
    sys.exit(main())
