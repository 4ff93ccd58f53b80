"""The ``caffe`` backend: runs an installed Caffe SSD binary (weiliu89/caffe, branch ssd) on the same
prototxts, LMDBs and flags. The binary is ``$CAFFE_BIN`` or ``caffe`` on the PATH.

What Caffe's command line cannot say is written into a copy of the solver beside the log
(``solver.caffe.prototxt``): a CPU run (``solver_mode: CPU``), ``--max-iter``, ``--seed``, and the
raised ``iter_size`` when fewer GPUs are present than asked for. Caffe's output (glog on stderr)
is copied to the log file line by line. Caffe does not stop on a NaN loss; this backend does, with
the same "Training diverged" line as the torch engine, so both are recorded as NAN.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..caffe import glog, io
from ..engine import distributed as D
from ..errors import EXIT_DIVERGED, ScratchDetError



def find_caffe() -> str:
    env = os.environ.get("CAFFE_BIN")
    if env:
        if not (Path(env).is_file() and os.access(env, os.X_OK)):
            raise ScratchDetError(f"CAFFE_BIN={env}: not an executable file")
        return env
    found = shutil.which("caffe")
    if not found:
        raise ScratchDetError("--backend caffe: no Caffe binary found; set CAFFE_BIN=/path/to/build/tools/caffe "
                              "or put `caffe` (the SSD fork, weiliu89/caffe branch ssd) on the PATH, "
                              "or use --backend torch")
    return found


def _log_path(args, sp) -> Path | None:
    if args.log:
        return Path(args.log)
    if getattr(sp, "snapshot_prefix", ""):
        return Path(sp.snapshot_prefix).parent / "train.log"
    return None


def run_caffe(cmd: list[str], log_path: Path | None, quiet: bool = False, append: bool = False) -> tuple[int, str | None]:
    """Run ``cmd`` with glog to stderr, copy every line to stderr and the log; stop it at the first
    non-finite loss. Returns (exit status, the diverged line or None)."""
    env = dict(os.environ, GLOG_logtostderr="1")
    fh = None
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(log_path, "a" if append else "w", encoding="utf-8")
    diverged = None
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                errors="replace", bufsize=1)
    except OSError as exc:
        if fh:
            fh.close()
        raise ScratchDetError(f"cannot run {cmd[0]}: {exc.strerror}") from None
    try:
        for line in proc.stdout:
            for out in (None if quiet else sys.stderr, fh):
                if out is not None:
                    out.write(line)
                    out.flush()
            m = glog.is_nonfinite_loss(line)
            if m and diverged is None:
                diverged = glog.line("E", glog.OURS, glog.diverged_message(int(m.group(1)), glog.number(m.group(3))))
                for out in (None if quiet else sys.stderr, fh):
                    if out is not None:
                        out.write(diverged + "\n")
                        out.flush()
                proc.terminate()
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(2)     # Caffe's --sigint_effect snapshot does the rest
        rc = proc.wait()
    finally:
        if fh:
            fh.close()
    return rc, diverged


def _solver_copy(args, sp, placement: D.Placement, where: Path) -> str:
    changed = False
    if placement.devices == ["cpu"]:
        sp.solver_mode = type(sp).CPU
        changed = True
    if placement.iter_size_factor > 1:
        sp.iter_size = sp.iter_size * placement.iter_size_factor
        changed = True
    if args.max_iter is not None:
        sp.max_iter = args.max_iter
        changed = True
    if args.seed is not None:
        sp.random_seed = args.seed
        changed = True
    if not changed:
        return args.solver
    path = where / "solver.caffe.prototxt"
    io.write_text(sp, path)
    return str(path)


def _gpu_flag(placement: D.Placement) -> list[str]:
    if placement.devices == ["cpu"]:
        return []
    return ["--gpu=" + ",".join(d.split(":")[1] for d in placement.devices)]


def train(args) -> int:
    exe = find_caffe()
    sp = io.read_solver(args.solver)
    placement = D.place(args.gpu)
    log_path = _log_path(args, sp)
    where = log_path.parent if log_path else Path(args.solver).parent
    solver = _solver_copy(args, sp, placement, where)
    if placement.note:
        print(f"scratchdet train: {placement.note}", file=sys.stderr)
    cmd = [exe, "train", f"--solver={solver}"]
    if args.weights:
        cmd.append(f"--weights={args.weights}")
    if args.snapshot:
        cmd.append(f"--snapshot={args.snapshot}")
    cmd += _gpu_flag(placement)
    cmd.append(f"--sigint_effect={args.sigint_effect}")
    rc, diverged = run_caffe(cmd, log_path, getattr(args, "quiet", False), append=bool(args.snapshot))
    if diverged:
        print("scratchdet train: training diverged (non-finite loss); recorded as NAN", file=sys.stderr)
        return EXIT_DIVERGED
    if rc != 0:
        raise ScratchDetError(f"caffe train exited with status {rc}" + (f" (log: {log_path})" if log_path else ""))
    return 0


def test(args) -> int:
    """mAP as score_ssd_pascal.py gets it: ``caffe train`` on a solver with max_iter 0 and one test."""
    exe = find_caffe()
    train_model = args.train_model or str(Path(args.model).with_name("train.prototxt"))
    if not Path(train_model).is_file():
        raise ScratchDetError(f"--backend caffe needs a train net for Caffe's solver: {train_model} does not "
                              "exist (give --train-model)")
    from ..caffe.schema import pb
    sp = pb.SolverParameter(train_net=train_model, base_lr=0.0, lr_policy="fixed", max_iter=0, display=0,
                            test_interval=1, test_initialization=True, snapshot_after_train=False,
                            eval_type=args.eval_type, ap_version=args.ap_version,
                            show_per_class_result=args.per_class)
    sp.test_net.append(args.model)
    if args.iterations is None:
        raise ScratchDetError("--backend caffe: give --iterations (test_iter: images / test batch size)")
    sp.test_iter.append(args.iterations)
    placement = D.place(args.gpu)
    if placement.devices == ["cpu"]:
        sp.solver_mode = type(sp).CPU
    import tempfile
    with tempfile.TemporaryDirectory(prefix="scratchdet_caffe_test_") as tmp:
        solver = Path(tmp) / "solver.prototxt"
        io.write_text(sp, solver)
        cmd = [exe, "train", f"--solver={solver}", f"--weights={args.weights}"] + _gpu_flag(placement)[:1]
        out_lines: list[str] = []
        log_path = Path(args.log) if args.log else Path(tmp) / "test.log"
        rc, _ = run_caffe(cmd, log_path, getattr(args, "quiet", False))
        out_lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    if rc != 0:
        raise ScratchDetError(f"caffe exited with status {rc}")
    found = [m for m in (glog.TEST_OUTPUT_RE.search(line) for line in out_lines) if m]
    for m in found:
        print(f"{m.group(2)} = {m.group(3)}")
    if not found:
        raise ScratchDetError("caffe printed no 'Test net output' line")
    return 0
