"""The ``AnnotatedData`` layer: batches of augmented images and their boxes from an LMDB of
``AnnotatedDatum`` records (caffe-ssd-spec §3).

Tops: ``data`` [N, 3, H, W] float and ``label`` [1, 1, G, 8] with rows (item_id, group_label,
instance_id, xmin, ymin, xmax, ymax, difficult) in batch order, or one row of -1 when the batch
has no box. Records with no annotation type (and no ``anno_type`` in the layer) give Caffe's
classification label instead: ``label`` [N] from ``datum.label``.

The stream: sample ``j`` of this process is record ``(j * world + rank) mod len`` in key order, the
way Caffe's cursor walks the database (wrapping at the end) and deals records round-robin to the
GPUs. Its augmentation draws come from a generator seeded by ``(seed, global sample index)``, so a
batch depends on nothing but its position: any number of worker processes give the same stream,
and a resumed run continues it exactly (``seek``). Unlike Caffe, the TEST phase starts from the
first record at every test pass (the trainer seeks to 0), so each pass scores the same images.
An optional ``shuffle`` (off by default; Caffe never shuffles) visits records in a per-epoch
permutation drawn from the seed instead of key order.

Encoded records go through Caffe's JPEG round trips after distort, expand and crop (see
``data.augment``), the test nets' identity crop included. ``SCRATCHDET_JPEG_ROUNDTRIP=0`` turns
them off: faster, and the pixels are the stored ones, but no longer what Caffe's layer gives.
"""
from __future__ import annotations

import itertools
import os
import signal

import numpy as np
import torch

from ...caffe.netstate import TRAIN
from ...caffe.schema import pb
from ...data.augment import Augmenter, Sample
from ...data.lmdb_io import AnnotatedLMDB, annotations, decode_image
from ...errors import ScratchDetError
from .base import Layer, register

EMPTY_LABEL_ROW = (-1.0,) * 8


def jpeg_roundtrip_default() -> bool:
    env = os.environ.get("SCRATCHDET_JPEG_ROUNDTRIP", "1").strip().lower()
    if env not in ("0", "1", "false", "true", "no", "yes", "off", "on"):
        raise ScratchDetError(f"SCRATCHDET_JPEG_ROUNDTRIP={env!r}: use 1 (Caffe's re-encoding, the default) or 0")
    return env in ("1", "true", "yes", "on")


def default_workers() -> int:
    """Prefetch processes when nothing says otherwise: half the cores (the net's forward and
    backward use the rest), at most 4; ``SCRATCHDET_DATA_WORKERS`` overrides."""
    env = os.environ.get("SCRATCHDET_DATA_WORKERS")
    if env is not None:
        try:
            return max(0, int(env))
        except ValueError:
            raise ScratchDetError(f"SCRATCHDET_DATA_WORKERS={env!r} is not a number") from None
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class BatchSource(torch.utils.data.Dataset):
    """Batch ``b`` of one process's stream, built from scratch: what each worker runs."""

    def __init__(self, db: AnnotatedLMDB, augmenter: Augmenter, batch_size: int, rich: bool,
                 seed: int = 0, rank: int = 0, world: int = 1, shuffle: bool = False,
                 out_hw: tuple[int, int] | None = None, name: str = "data"):
        self.db, self.augmenter, self.batch_size, self.rich = db, augmenter, batch_size, rich
        self.seed, self.rank, self.world, self.shuffle = int(seed), rank, world, shuffle
        self.out_hw = out_hw
        self.name = name
        self.jpeg_roundtrip = jpeg_roundtrip_default()
        self._n = len(db)
        self._perm_epoch, self._perm = None, None

    def __len__(self) -> int:  # the stream is endless; DataLoader only needs a sampler
        return 1 << 62

    def record_index(self, g: int) -> int:
        if not self.shuffle:
            return g % self._n
        epoch, k = divmod(g, self._n)
        if self._perm_epoch != epoch:
            self._perm = np.random.default_rng([self.seed, 0x5EED, epoch]).permutation(self._n)
            self._perm_epoch = epoch
        return int(self._perm[k])

    def sample(self, j: int) -> tuple[np.ndarray, Sample | int]:
        """Sample ``j`` of this process's stream: (CHW float32 image, surviving boxes or class label)."""
        g = j * self.world + self.rank
        index = self.record_index(g)
        record = self.db.get(index)
        try:
            image = decode_image(record)
        except ScratchDetError as exc:
            raise ScratchDetError(f"{self.db.path}: record {index} ({self.db.key(index)}): {exc}") from None
        rng = np.random.default_rng([self.seed, g])
        if not self.rich:
            out, _ = self.augmenter.transform(Sample.make(image), rng)
            return out, int(record.datum.label)
        labels, boxes, difficult, ids = annotations(record)
        if not np.isfinite(boxes).all():
            # NaN/inf corners pass every comparison unnoticed and surface as a loss without a
            # gradient many layers later: name the record instead
            k = int(np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0])
            raise ScratchDetError(f"{self.db.path}: record {index} ({self.db.key(index)}): box {k} of label "
                                  f"{int(labels[k])} has non-finite coordinates {tuple(float(v) for v in boxes[k])}; "
                                  "fix or drop the record (scratchdet data check lists them)")
        out, kept = self.augmenter(Sample.make(image, labels, boxes, difficult, ids), rng,
                                   jpeg_roundtrip=self.jpeg_roundtrip and record.datum.encoded)
        if self.out_hw is not None and out.shape[1:] != tuple(self.out_hw):
            raise ScratchDetError(f"layer {self.name!r}: record {index} gives a {out.shape[1]}x{out.shape[2]} "
                                  f"image, the layer's shape is {self.out_hw[0]}x{self.out_hw[1]}")
        return out, kept

    def __getitem__(self, b: int) -> tuple[torch.Tensor, torch.Tensor]:
        items = [self.sample(b * self.batch_size + i) for i in range(self.batch_size)]
        data = torch.from_numpy(np.stack([img for img, _ in items]))
        if not self.rich:
            return data, torch.tensor([lab for _, lab in items], dtype=torch.float32)
        rows = []
        for item_id, (_, s) in enumerate(items):
            for k in range(len(s)):
                rows.append((item_id, s.labels[k], s.instance_ids[k], *s.boxes[k], float(s.difficult[k])))
        if not rows:
            rows = [EMPTY_LABEL_ROW]
        label = torch.tensor(rows, dtype=torch.float32).reshape(1, 1, len(rows), 8)
        return data, label


def _worker_init(_worker_id: int) -> None:
    # Ctrl-C reaches the whole process group: the trainer snapshots and stops, and needs its
    # workers alive for the rest of the iteration; they end with the loader.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)    # not the CLI's handler: a worker just ends
    # each worker works on whole batches: keep torch single-threaded in it. (Not cv2.setNumThreads:
    # reconfiguring the OpenCV thread pool inherited through fork() can hang the worker.)
    torch.set_num_threads(1)


@register("AnnotatedData")
class AnnotatedDataLayer(Layer):
    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        dp, tp, adp = lp.data_param, lp.transform_param, lp.annotated_data_param
        where = f"layer {lp.name!r} (AnnotatedData)"
        if not dp.source:
            raise ScratchDetError(f"{where}: data_param.source is not set")
        if dp.backend != pb.DataParameter.LMDB:
            raise ScratchDetError(f"{where}: data_param.backend must be LMDB ({dp.source})")
        if dp.batch_size <= 0:
            raise ScratchDetError(f"{where}: data_param.batch_size must be > 0")
        if len(lp.top) not in (1, 2):
            raise ScratchDetError(f"{where}: needs 1 or 2 tops (data, label), has {len(lp.top)}")
        self.db = AnnotatedLMDB(dp.source)
        if len(self.db) == 0:
            raise ScratchDetError(f"{where}: {dp.source} holds no records")
        first = self.db.get(0)
        self.rich = first.HasField("type") or adp.HasField("anno_type")
        self.augmenter = Augmenter(tp, adp.batch_sampler, phase, source=f"{where} transform_param")
        self.batch_size = int(dp.batch_size)
        if tp.HasField("resize_param") and tp.resize_param.resize_mode == pb.ResizeParameter.FIT_SMALL_SIZE:
            self.batch_size = 1     # images differ in size (as Caffe forces)
        self.out_hw = tuple(top_shapes[0][2:4]) if top_shapes and len(top_shapes[0]) == 4 else None
        # the box label blob is read by MultiBoxLoss / DetectionEvaluate on the host: keeping it
        # there spares a device round trip (and a sync) per batch
        self.host_tops = (1,) if self.rich else ()
        self.seed, self.rank, self.world = 0, 0, 1
        self.shuffle = False
        self.workers = default_workers()
        self.position = 0          # samples of this process's stream consumed
        self._iter = None
        self._loader = None

    # -- stream control (the trainer calls these) ---------------------------------------------------
    def configure(self, seed: int | None = None, rank: int | None = None, world: int | None = None,
                  workers: int | None = None, shuffle: bool | None = None) -> None:
        """Seed, DDP shard (TRAIN only: every TEST rank reads the whole set) and worker count."""
        if seed is not None:
            self.seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        if rank is not None and self.phase == TRAIN:
            self.rank = rank
        if world is not None and self.phase == TRAIN:
            self.world = world
        if workers is not None:
            self.workers = workers
        if shuffle is not None:
            self.shuffle = shuffle
        self.close()

    def seek(self, position: int) -> None:
        """Continue the stream at sample ``position`` (a multiple of the batch size)."""
        if position % self.batch_size:
            raise ScratchDetError(f"layer {self.name!r}: stream position {position} is not a multiple "
                                  f"of the batch size {self.batch_size}")
        self.close()
        self.position = position

    def source(self) -> BatchSource:
        return BatchSource(self.db, self.augmenter, self.batch_size, self.rich, self.seed, self.rank,
                           self.world, self.shuffle, self.out_hw, self.name)

    def _start(self) -> None:
        first = self.position // self.batch_size
        src = self.source()
        if self.workers <= 0:
            self._iter = (src[b] for b in itertools.count(first))
            return
        self._loader = torch.utils.data.DataLoader(
            src, batch_size=None, sampler=itertools.count(first), num_workers=self.workers,
            worker_init_fn=_worker_init, prefetch_factor=2, persistent_workers=False)
        self._iter = iter(self._loader)

    def close(self) -> None:
        """Stop prefetching (worker processes end); the next forward restarts at ``position``."""
        self._iter = None
        self._loader = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # -- running ------------------------------------------------------------------------------------
    def forward(self, *bottoms):
        if self._iter is None:
            self._start()
        try:
            data, label = next(self._iter)
        except ScratchDetError as exc:
            # a worker's error arrives with its traceback in the message: keep the one line
            lines = [ln for ln in str(exc).splitlines() if ln.strip()]
            last = lines[-1] if lines else str(exc)
            self.close()
            raise ScratchDetError(last.split("ScratchDetError: ", 1)[-1]) from None
        self.position += self.batch_size
        device = self._device()
        data = data.to(device, non_blocking=True)
        if len(self.lp.top) == 1:
            return (data,)
        return data, (label if 1 in self.host_tops else label.to(device, non_blocking=True))

    def _device(self) -> torch.device:
        return getattr(self, "device", None) or torch.device("cpu")
