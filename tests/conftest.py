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


def _binary(env_var: str, name: str) -> str | None:
    given = os.environ.get(env_var)
    if given:
        return given if Path(given).is_file() and os.access(given, os.X_OK) else None
    return shutil.which(name)


def _runs(exe: str) -> str | None:
    """None when the binary starts; otherwise why not (a missing runtime library, say)."""
    try:
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except OSError as e:
        return f"{exe}: {e}"
    out = r.stdout + r.stderr
    if "error while loading shared libraries" in out or "not found" in out.splitlines()[0:1]:
        return f"{exe} does not start: {out.strip().splitlines()[-1]}"
    return None


@pytest.fixture(scope="session")
def caffe_bin() -> str:
    exe = _binary("CAFFE_BIN", "caffe")
    if exe is None:
        pytest.skip("caffe_ref: no real Caffe SSD binary (set CAFFE_BIN=/path/to/caffe)")
    why = _runs(exe)
    if why:
        pytest.skip(f"caffe_ref: {why}")
    return exe


@pytest.fixture(scope="session")
def convert_annoset_bin() -> str:
    exe = _binary("CONVERT_ANNOSET", "convert_annoset")
    if exe is None:
        pytest.skip("caffe_ref: no convert_annoset binary (set CONVERT_ANNOSET=/path/to/convert_annoset)")
    why = _runs(exe)
    if why:
        pytest.skip(f"caffe_ref: {why}")
    return exe



@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (report.skipped and os.environ.get("CAFFE_REF_REQUIRED") == "1"
            and item.get_closest_marker("caffe_ref") is not None):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"CAFFE_REF_REQUIRED=1 but the caffe_ref test skipped: {reason}"
