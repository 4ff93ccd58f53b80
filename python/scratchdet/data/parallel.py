"""An ordered map over worker processes that a signal stops cleanly: the converters' and the
synthetic set's worker pool.

Not ``multiprocessing.Pool``: its workers share one task-queue lock, and a worker killed while
holding it (Ctrl-C or SIGTERM sent to the whole process group) makes ``Pool.terminate`` wait
forever; a worker that takes the KeyboardInterrupt itself prints a traceback. Here each worker has
its own pipe, ignores SIGINT (the parent acts on it) and dies at once on SIGTERM; chunk ``k`` goes
to worker ``k % jobs`` and results are read back in order; on any exit of the consumer (an
exception, a signal, an early ``close()``) the workers are killed and reaped.
"""
from __future__ import annotations

import multiprocessing
import signal
from typing import Callable, Iterator, Sequence

from ..errors import ScratchDetError

CHUNK = 8               # items per message to a worker
IN_FLIGHT = 2           # chunks queued per worker


def _worker_loop(conn, others, fn) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # the parent's ends of every pipe and the other workers' ends: closed, so a parent that dies
    # (even by SIGKILL) leaves this worker an end of file, and it exits
    for other in others:
        other.close()
    while True:
        try:
            chunk = conn.recv()
        except (EOFError, OSError):
            return
        conn.send([fn(item) for item in chunk])


def _send(conn, chunk) -> None:
    try:
        conn.send(chunk)
    except OSError:       # the worker died: reading its next result says how, in order
        pass


def ordered_map(fn: Callable, items: Sequence, jobs: int,
                describe: Callable[[list], str] = lambda chunk: f"{len(chunk)} items") -> Iterator:
    """``fn(item)`` for each item, in order, computed by ``jobs`` forked worker processes."""
    ctx = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() \
        else multiprocessing.get_context()
    chunks = [list(items[i:i + CHUNK]) for i in range(0, len(items), CHUNK)]
    jobs = max(1, min(jobs, len(chunks)))
    pipes, procs = [], []
    try:
        pipes = [ctx.Pipe() for _ in range(jobs)]
        for k in range(jobs):
            others = [parent for parent, _ in pipes] + [child for j, (_, child) in enumerate(pipes) if j != k]
            proc = ctx.Process(target=_worker_loop, args=(pipes[k][1], others, fn), daemon=True)
            proc.start()
            procs.append(proc)
        for _, child in pipes:
            child.close()
        sent = min(len(chunks), jobs * IN_FLIGHT)
        for k in range(sent):
            _send(pipes[k % jobs][0], chunks[k])
        for k, chunk in enumerate(chunks):
            try:
                results = pipes[k % jobs][0].recv()
            except (EOFError, OSError):
                procs[k % jobs].join(1)
                code = procs[k % jobs].exitcode
                how = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
                raise ScratchDetError(f"a worker process died ({how}) on {describe(chunk)}") from None
            if sent < len(chunks):
                _send(pipes[sent % jobs][0], chunks[sent])
                sent += 1
            yield from results
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join()
        for parent, child in pipes:
            parent.close()
            child.close()
