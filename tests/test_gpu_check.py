"""bench/gpu_check.sh --dry: the GPU readiness table's code paths on the CPU (demo net, batch 2,
2 iterations), every row run and checked, as CI can run it without a GPU."""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROWS = ["train fp32 (faithful) b2", "train channels_last b2", "train amp bf16 b2", "train tf32 b2",
        "train compile b2", "data layer 0 workers", "data layer 1 workers", "train fp32 + data layer",
        "host syncs / iteration", "inference b1", "inference b2", "torchrun 1 process"]


def test_gpu_check_dry_runs_every_row_and_fast_paths_match_the_faithful_loss():
    env = dict(os.environ, OMP_NUM_THREADS="1", GPU_CHECK_TIMEOUT="170")
    r = subprocess.run(["bash", str(REPO / "bench" / "gpu_check.sh"), "--dry", "--budget", "150"],
                       capture_output=True, text=True, timeout=200, env=env, cwd=REPO)
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert "FAILED" not in out and "SKIPPED" not in out, out
    lines = out.splitlines()
    for row in ROWS:
        assert any(line.startswith(row) for line in lines), f"row {row!r} missing:\n{out}"
    # same weights, same batches: the first loss of a fast path is the faithful one up to rounding
    diffs = {}
    for line in lines:
        m = re.match(r"train (\S+(?: bf16)?) b2 .*step 1 ([0-9.e+-]+), step (\d+) ([0-9.e+-]+)", line)
        if m:
            diffs[m.group(1)] = float(m.group(2))
    assert set(diffs) == {"channels_last", "amp bf16", "tf32", "compile"}, out
    for name, d in diffs.items():
        assert d < (5e-2 if name == "amp bf16" else 1e-3), (name, d, out)
    faithful = next(line for line in lines if line.startswith("train fp32 (faithful)"))
    first, last = (float(v) for v in re.search(r"loss (\S+) -> (\S+)", faithful).groups())
    assert first > 0 and last > 0
