"""SSD training augmentation per core, decode included, on the same images: ours (the
AnnotatedData layer's per-image work: JPEG decode, distort, expand, the 7 batch samplers' crop with
Caffe's JPEG round trips, 300x300 resize, mirror, mean) against torchvision's SSD recipe
(``torchvision.transforms.v2`` as its detection references train SSD300: photometric distort,
zoom-out onto the mean, IoU crop, flip, then resize to 300x300 and the mean subtracted), printed
as a table.

    python bench/bench_augment.py [--images 200] [--rounds 3]

ssd.pytorch, the peer the speed issue names, is not a package; torchvision's recipe is the same
algorithm (SSD's) from an installed library. One thread each, interleaved rounds, medians.
Runs on a synthetic LMDB in a temporary folder; nothing is left behind.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from google.protobuf import text_format

from scratchdet.caffe.netstate import TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.data.augment import Augmenter, Sample
from scratchdet.data.lmdb_io import AnnotatedLMDB, annotations, decode_image

from prototxt_gen.data_layers import ssd_batch_samplers, train_transform
from prototxt_gen.netspec import assign

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_lmdb  # noqa: E402

MEAN = (104.0, 117.0, 123.0)


def ours(reencode_jpeg: bool):
    lp = pb.LayerParameter()
    assign(lp, "transform_param", train_transform(300, 300))
    assign(lp.annotated_data_param, "batch_sampler", ssd_batch_samplers())
    aug = Augmenter(lp.transform_param, lp.annotated_data_param.batch_sampler, TRAIN, reencode_jpeg=reencode_jpeg)

    def run(records, seed: int) -> None:
        for k, rec in enumerate(records):
            labels, boxes, difficult, ids = annotations(rec)
            aug(Sample.make(decode_image(rec), labels, boxes, difficult, ids), np.random.default_rng([seed, k]))
    return run


def torchvision_recipe():
    from torchvision import tv_tensors
    from torchvision.transforms import v2 as T
    chain = T.Compose([T.RandomPhotometricDistort(p=0.5), T.RandomZoomOut(fill=list(MEAN), side_range=(1.0, 4.0)),
                       T.RandomIoUCrop(), T.RandomHorizontalFlip(p=0.5), T.Resize((300, 300), antialias=False),
                       T.SanitizeBoundingBoxes()])
    mean = torch.tensor(MEAN).view(3, 1, 1)

    def run(records, seed: int) -> None:
        torch.manual_seed(seed)
        for rec in records:
            labels, boxes, _, _ = annotations(rec)
            img = decode_image(rec)                      # the same decoder as ours (OpenCV, BGR)
            h, w = img.shape[:2]
            image = tv_tensors.Image(torch.from_numpy(img).permute(2, 0, 1))
            bb = tv_tensors.BoundingBoxes(torch.from_numpy(boxes * np.float32([w, h, w, h])), format="XYXY",
                                          canvas_size=(h, w))
            out, target = chain(image, {"boxes": bb, "labels": torch.from_numpy(labels.astype(np.int64))})
            out.float() - mean
    return run


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        peer = torchvision_recipe()
    except ImportError:
        peer = None
        print("torchvision is not installed (make bench installs it): the peer row is skipped", file=sys.stderr)
    pipelines = {"ours": ours(True), "ours, no JPEG round trips": ours(False), "torchvision": peer}
    times: dict[str, list[float]] = {name: [] for name in pipelines}
    with tempfile.TemporaryDirectory(prefix="bench_augment.") as tmp:
        db = AnnotatedLMDB(make_lmdb(Path(tmp), args.images))
        records = [db.get(i) for i in range(len(db))]
        db.close()
        for r in range(args.rounds + 1):                    # round 0 warms up
            for name, fn in pipelines.items():
                if fn is None:
                    continue
                start = time.perf_counter()
                fn(records, r)
                if r:
                    times[name].append(time.perf_counter() - start)
    rate = {k: len(records) / statistics.median(v) for k, v in times.items() if v}
    print(f"SSD training augmentation, 1 thread, decode included, {len(records)} synthetic images, "
          f"median of {args.rounds} interleaved rounds ({os.cpu_count()} CPUs)")
    print(f"{'pipeline':<44} {'images/s':>9} {'ours / peer':>12}")
    peer_rate = rate.get("torchvision")
    for name, label in (("ours", "ours (Caffe SSD, its JPEG round trips)"),
                        ("ours, no JPEG round trips", "ours, SCRATCHDET_JPEG_ROUNDTRIP=0"),
                        ("torchvision", "torchvision.transforms.v2 SSD recipe")):
        if name in rate:
            ratio = f"{rate[name] / peer_rate:>12.2f}" if peer_rate and name != "torchvision" else ""
            print(f"{label:<44} {rate[name]:>9.1f} {ratio}")
    print("goal: ours / peer >= 1.5 per core (speed issue); the peers re-encode nothing, Caffe does three times")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
