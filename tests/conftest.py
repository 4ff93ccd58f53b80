"""Shared test plumbing: the real SSD Caffe as a referee (``pytest -m caffe_ref``).

The binaries come from ``CAFFE_BIN`` / ``CONVERT_ANNOSET``, else ``caffe`` / ``convert_annoset`` on the
PATH. Without them the ``caffe_ref`` tests skip with the reason. With ``CAFFE_REF_REQUIRED=1`` (set by
``.ci/run`` when it finds a build) a skipped ``caffe_ref`` test fails the run instead, so a CI that has
the referee cannot pass without asking it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def _referee(env_var: str, name: str) -> str:
    """The binary named by ``env_var`` (else ``name`` on the PATH), or skip saying why it cannot be used."""
    given = os.environ.get(env_var)
    exe = given if given else shutil.which(name)
    if exe is None or not (Path(exe).is_file() and os.access(exe, os.X_OK)):
        pytest.skip(f"caffe_ref: no {name} binary (set {env_var}=/path/to/{name})"
                    + (f"; {env_var}={given} is not an executable file" if given else ""))
    try:
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        pytest.skip(f"caffe_ref: {exe}: {e}")
    # 127: the loader (or the shared build's wrapper) found a runtime library missing
    if r.returncode == 127 or "error while loading shared libraries" in r.stderr:
        pytest.skip(f"caffe_ref: {exe} does not start: {(r.stderr.strip().splitlines() or ['exit 127'])[-1]}")
    return exe


@pytest.fixture(scope="session")
def caffe_bin() -> str:
    return _referee("CAFFE_BIN", "caffe")


@pytest.fixture(scope="session")
def convert_annoset_bin() -> str:
    return _referee("CONVERT_ANNOSET", "convert_annoset")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CAFFE_REF_REQUIRED") == "1"
            and item.get_closest_marker("caffe_ref") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CAFFE_REF_REQUIRED=1 but the caffe_ref test skipped: {reason}"
