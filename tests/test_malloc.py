"""engine.malloc: with glibc's thresholds raised, memory freed in one training step is reused by
the next instead of being returned to the kernel and faulted back in. Counted in minor page
faults of a child process that frees and reallocates step-sized blocks, as torch does."""
import json
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's mallopt")

CHILD = """
import json, resource, sys
import numpy as np
from scratchdet.engine.malloc import keep_freed_memory
done = keep_freed_memory() if sys.argv[1] == "keep" else False
def step(k):
    # activations of 4-28 MiB in a changing order, as a net's layers allocate them
    blocks = [np.ones(((k + i) % 7 + 1) << 20, np.float32) for i in range(7)]
    return sum(float(b[::4096].sum()) for b in blocks)
step(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for k in range(20):
    step(k)
print(json.dumps({"set": done, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def faults(mode: str) -> dict:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, env=env, check=True)
    return json.loads(out.stdout)


def test_freed_step_memory_is_reused_not_faulted_back():
    default, kept = faults("default"), faults("keep")
    assert kept["set"] is True
    # default glibc maps blocks above its (moving) threshold anew and trims the heap's top
    assert default["faults"] > 20 * 2_000
    assert kept["faults"] < default["faults"] / 20


def test_the_users_own_setting_wins(monkeypatch):
    from scratchdet.engine import malloc
    monkeypatch.setattr(malloc, "_done", False)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert malloc.keep_freed_memory() is False
