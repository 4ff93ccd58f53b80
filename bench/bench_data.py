"""Data tools throughput: synthetic generation, LMDB conversion (images/s) and reading (records/s,
decoded images/s), printed as a table.

    python bench/bench_data.py [--images 300] [--jobs 1,2]

Works in a temporary folder; nothing is left behind.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from scratchdet.data import convert as cv
from scratchdet.data import labelmap as lm
from scratchdet.data import synthetic, voc
from scratchdet.data.lmdb_io import AnnotatedLMDB, annotations, decode_image


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--jobs", default="1,2", help="comma list of worker counts for the conversion")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_data.") as tmp:
        tmp = Path(tmp)
        _, t = timed(lambda: synthetic.generate(tmp / "synthetic", args.images, seed=0, quiet=True))
        rows.append(("synthetic generation", args.images, t, "images"))
        entries = voc.entries_for(tmp / "synthetic", [("", "trainval"), ("", "test")], folder_of=lambda _y: synthetic.FOLDER)
        labels = lm.name_to_label(lm.make(synthetic.CLASSES))
        for jobs in (int(j) for j in args.jobs.split(",")):
            db = tmp / f"db_{jobs}"
            _, t = timed(lambda: cv.convert(entries, db, labels, jobs=jobs, quiet=True))
            rows.append((f"conversion to LMDB, {jobs} job(s)", len(entries), t, "images"))
        db = AnnotatedLMDB(tmp / f"db_{args.jobs.split(',')[0]}")
        n, t = timed(lambda: sum(1 for _ in db.iter_raw()))
        rows.append(("read raw records", n, t, "records"))
        n, t = timed(lambda: sum(len(annotations(rec)[0]) >= 0 for _, rec in db))
        rows.append(("read + parse + annotations", n, t, "records"))
        n, t = timed(lambda: sum(decode_image(rec).shape[0] > 0 for _, rec in db))
        rows.append(("read + parse + decode image", n, t, "images"))
        idx = list(range(len(db)))[::-1]
        n, t = timed(lambda: sum(db.get(i).datum.height > 0 for i in idx))
        rows.append(("random access get(i)", n, t, "records"))
        db.close()
    print(f"data tools throughput ({os.cpu_count()} CPUs, {sys.platform})")
    print(f"{'step':<34} {'count':>7} {'seconds':>9} {'per second':>12}")
    for name, count, seconds, unit in rows:
        print(f"{name:<34} {count:>7} {seconds:>9.3f} {count / seconds:>8.0f} {unit}/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
