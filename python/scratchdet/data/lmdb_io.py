"""LMDBs of ``AnnotatedDatum``: the writer convert_annoset's output is reproduced with, and the
reader every other module uses.

Layout (caffe-ssd-spec §4): a directory holding ``data.mdb`` and ``lock.mdb``, the unnamed main DB,
key ``%08d_<image path as in the list>``, value a serialized ``AnnotatedDatum``; records are committed
every 1000 puts and the map size doubles whenever it is full. Training order is byte-wise key order.

The writer builds in a hidden temporary directory beside the target and renames it into place only
when complete, so a failed or interrupted conversion never leaves a partial database behind.
The reader opens its environment lazily, read-only and without the lock file, once per process, so
it can be handed to DataLoader worker processes.
"""
from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Iterator, NamedTuple

import cv2
import lmdb
import numpy as np

from ..caffe.schema import pb
from ..errors import ScratchDetError
from .files import make_dirs, make_public, remove_stale_temps, temp_dir, write_error

COMMIT_EVERY = 1000                 # convert_annoset's transaction size
INITIAL_MAP_SIZE = 1 << 30          # 1 GiB; doubled on MDB_MAP_FULL as the fork does


def record_key(index: int, list_path: str) -> bytes:
    return f"{index:08d}_{list_path}".encode()


class LMDBWriter:
    """Write key/value pairs to a new LMDB at ``path``; the database appears only on ``close()``.

    Use as a context manager: leaving the block by an exception (a signal included) removes the
    temporary directory, also when the final commit itself fails. Temporaries of ``path`` left by
    a killed earlier run are removed first. An existing database at ``path`` is replaced once the
    new one is complete. Write failures (a full disk, ...) are one-line ScratchDetErrors.
    Pages are zero-filled (``meminit``) as Caffe's writer leaves them, so one input gives the same
    bytes on every run.
    """

    def __init__(self, path, map_size: int = INITIAL_MAP_SIZE, commit_every: int = COMMIT_EVERY):
        self.path = Path(path)
        make_dirs(self.path.parent)
        if self.path.exists() and not self.path.is_dir():
            raise ScratchDetError(f"{self.path}: exists and is not a directory")
        remove_stale_temps(self.path)
        self.env = None
        self.tmp = temp_dir(self.path)
        self.map_size = int(map_size)
        self.commit_every = commit_every
        try:
            self.env = lmdb.open(str(self.tmp), map_size=self.map_size, subdir=True, meminit=True)
        except lmdb.Error as exc:
            self.abort()
            raise write_error(exc, self.tmp, "cannot create LMDB") from None
        self.pending: list[tuple[bytes, bytes]] = []
        self.count = 0
        self.grown = 0

    def put(self, key: bytes, value: bytes) -> None:
        self.pending.append((key, value))
        self.count += 1
        if len(self.pending) >= self.commit_every:
            self._commit()

    def _commit(self) -> None:
        while True:
            try:
                with self.env.begin(write=True) as txn:
                    for key, value in self.pending:
                        txn.put(key, value)
                break
            except lmdb.MapFullError:
                # The aborted transaction wrote nothing; grow and replay it.
                self.map_size *= 2
                self.grown += 1
                try:
                    self.env.set_mapsize(self.map_size)
                except lmdb.Error as exc:
                    raise write_error(exc, self.path) from None
            except (lmdb.Error, OSError) as exc:
                raise write_error(exc, self.path) from None
        self.pending.clear()

    def close(self) -> None:
        """Commit the rest and move the finished database to its final path."""
        self._commit()
        try:
            self.env.sync(True)
            self.env.close()
            self.env = None
            make_public(self.tmp)
            if self.path.exists():
                old = temp_dir(self.path, ".old")
                os.replace(self.path, old / "db")
                try:
                    os.replace(self.tmp, self.path)
                except BaseException:       # the old database goes back where it was
                    os.replace(old / "db", self.path)
                    shutil.rmtree(old, ignore_errors=True)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(self.tmp, self.path)
        except (lmdb.Error, OSError) as exc:
            raise write_error(exc, self.path) from None

    def abort(self) -> None:
        env, self.env = self.env, None
        if env is not None:
            try:
                env.close()
            except Exception:  # noqa: BLE001 - a failing close must not keep the temporary alive
                pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.close()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


# -- the data file's header ------------------------------------------------------------------------
# An LMDB data file starts with two meta pages (LMDB's file format, 64-bit build): a 16-byte page
# header, then magic, version, fixed address, map size, the free and main DB records (48 bytes
# each; the free DB's first field holds the page size) and the last used page number and
# transaction id. The newer of the two metas is the database. Mapping a file shorter than its last
# page and reading past the end kills the process with SIGBUS, so readers check first.
LMDB_MAGIC = 0xBEEFC0DE
_PAGE_HEADER = 16
_META = struct.Struct("<IIQQ")        # magic, version, address, map size
_DB = struct.Struct("<IHHQQQQQ")      # pad (page size in the free DB), flags, depth, branch, leaf, overflow, entries, root
_TAIL = struct.Struct("<QQ")          # last page, txn id


def _read_meta(fh, offset: int):
    fh.seek(offset + _PAGE_HEADER)
    raw = fh.read(_META.size + 2 * _DB.size + _TAIL.size)
    if len(raw) < _META.size + 2 * _DB.size + _TAIL.size:
        return None
    magic, version, _addr, _mapsize = _META.unpack_from(raw, 0)
    if magic != LMDB_MAGIC:
        return None
    page_size = _DB.unpack_from(raw, _META.size)[0]
    last_page, txnid = _TAIL.unpack_from(raw, _META.size + 2 * _DB.size)
    return page_size, last_page, txnid


def validate_data_file(data_file) -> None:
    """Raise a one-line ScratchDetError if ``data_file`` is not a whole LMDB data file: not LMDB, or
    shorter than the last page its header names (an interrupted copy or a full disk)."""
    data_file = Path(data_file)
    try:
        size = data_file.stat().st_size
        with open(data_file, "rb") as fh:
            first = _read_meta(fh, 0)
            second = _read_meta(fh, first[0]) if first and 512 <= first[0] <= 1 << 20 else None
    except OSError as exc:
        raise ScratchDetError(f"{data_file}: cannot read ({exc.strerror})") from None
    metas = [m for m in (first, second) if m is not None]
    if not metas:
        what = "empty file" if size == 0 else "no LMDB header (bad magic number)"
        raise ScratchDetError(f"{data_file}: not an LMDB data file ({what})")
    page_size, last_page, _ = max(metas, key=lambda m: m[2])
    if not 512 <= page_size <= 1 << 20 or page_size & (page_size - 1):
        raise ScratchDetError(f"{data_file}: corrupt LMDB header (page size {page_size})")
    needed = (last_page + 1) * page_size
    if size < needed:
        raise ScratchDetError(f"{data_file}: truncated LMDB: the file holds {size} bytes but its header "
                              f"names page {last_page} ({needed} bytes); an interrupted copy or a full disk? "
                              "Copy or rebuild the database")


def parse_record(value: bytes, source: str = "record") -> pb.AnnotatedDatum:
    record = pb.AnnotatedDatum()
    try:
        record.ParseFromString(value)
    except Exception as exc:  # protobuf raises DecodeError (or RuntimeError in some backends)
        raise ScratchDetError(f"{source}: not a serialized AnnotatedDatum ({exc})") from None
    return record


# LMDB refuses to open one database twice in a process, so readers of the same file share one
# environment (keyed by the data file's device and inode: a rebuilt database is a new file). The
# table is emptied in a forked child, which must open its own.
# A reader used in a forked child must have been opened through this module (or not at all) in
# the parent; an environment opened elsewhere in the parent would block the child's open.
_SHARED_ENVS: dict[tuple[int, int], list] = {}
_SHARED_PID: int | None = None


def _acquire_env(path: Path):
    global _SHARED_PID
    if _SHARED_PID != os.getpid():
        # Forked child: the inherited handles are copies it must not use; closing them only unmaps
        # this process's copy (read-only, no lock file), and lets LMDB open the file afresh.
        for env, _count in _SHARED_ENVS.values():
            try:
                env.close()
            except lmdb.Error:
                pass
        _SHARED_ENVS.clear()
        _SHARED_PID = os.getpid()
    try:
        st = os.stat(path / "data.mdb")
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot open LMDB ({exc.strerror})") from None
    slot = (st.st_dev, st.st_ino)
    entry = _SHARED_ENVS.get(slot)
    if entry is None:
        validate_data_file(path / "data.mdb")
        try:
            env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False,
                            max_readers=512, subdir=True)
        except lmdb.Error as exc:
            raise ScratchDetError(f"{path}: cannot open LMDB ({exc})") from None
        entry = _SHARED_ENVS[slot] = [env, 0]
    entry[1] += 1
    return slot, entry[0]


def _release_env(slot) -> None:
    if _SHARED_PID != os.getpid():
        return
    entry = _SHARED_ENVS.get(slot)
    if entry is not None:
        entry[1] -= 1
        if entry[1] <= 0:
            entry[0].close()
            del _SHARED_ENVS[slot]


class AnnotatedLMDB:
    """Read-only view of an AnnotatedDatum LMDB: ``len()``, iteration in key order yielding
    ``(key, AnnotatedDatum)``, random access ``get(index)`` / ``key(index)`` / ``raw(index)``.

    The environment is opened on first use in each process (never inherited through fork) with
    ``readonly=True, lock=False`` so many worker processes can read one database.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not (self.path / "data.mdb").is_file():
            what = "does not exist" if not self.path.exists() else "has no data.mdb (not an LMDB directory)"
            raise ScratchDetError(f"{self.path}: {what}")
        self._env = None
        self._slot = None
        self._pid = None
        self._keys: list[bytes] | None = None

    # -- environment, once per process ----------------------------------------------------------
    @property
    def env(self) -> lmdb.Environment:
        if self._env is None or self._pid != os.getpid():
            self._slot, self._env = _acquire_env(self.path)
            self._pid = os.getpid()
        return self._env

    def __getstate__(self):
        return {"path": self.path, "_env": None, "_pid": None, "_slot": None, "_keys": self._keys}

    def __setstate__(self, state):
        self.__dict__.update(state)

    def close(self) -> None:
        if self._env is not None and self._pid == os.getpid():
            _release_env(self._slot)
        self._env = self._slot = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # -- access ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        if self._keys is not None:
            return len(self._keys)
        return self.env.stat()["entries"]

    def keys(self) -> list[str]:
        return [k.decode() for k in self._key_list()]

    def _key_list(self) -> list[bytes]:
        if self._keys is None:
            with self.env.begin(buffers=False) as txn:
                self._keys = list(txn.cursor().iternext(keys=True, values=False))
        return self._keys

    def key(self, index: int) -> str:
        return self._key_list()[index].decode()

    def raw(self, index: int) -> bytes:
        key = self._key_list()[index]
        with self.env.begin(buffers=False) as txn:
            value = txn.get(key)
        if value is None:
            raise ScratchDetError(f"{self.path}: key {key.decode()!r} vanished (database changed while open?)")
        return value

    def get(self, index: int) -> pb.AnnotatedDatum:
        return parse_record(self.raw(index), f"{self.path}: record {index} ({self.key(index)})")

    __getitem__ = get

    def item(self, index: int) -> tuple[str, pb.AnnotatedDatum]:
        return self.key(index), self.get(index)

    def iter_raw(self) -> Iterator[tuple[str, bytes]]:
        with self.env.begin(buffers=False) as txn:
            for key, value in txn.cursor():
                yield key.decode(), value

    def __iter__(self) -> Iterator[tuple[str, pb.AnnotatedDatum]]:
        for key, value in self.iter_raw():
            yield key, parse_record(value, f"{self.path}: record {key}")

    def __repr__(self) -> str:
        return f"AnnotatedLMDB({str(self.path)!r})"


# -- record helpers ---------------------------------------------------------------------------------

class Box(NamedTuple):
    label: int
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    difficult: bool
    instance_id: int


def decode_image(datum) -> np.ndarray:
    """HxWx3 uint8 BGR from a ``Datum`` or ``AnnotatedDatum`` (encoded or raw CHW), as the data
    layer decodes with force_color: the stored pixels, an EXIF orientation tag ignored as the
    fork's ``imdecode`` ignores it (its boxes are in stored pixels)."""
    if isinstance(datum, pb.AnnotatedDatum):
        datum = datum.datum
    if datum.encoded:
        image = cv2.imdecode(np.frombuffer(datum.data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if image is None:
            raise ScratchDetError("datum: encoded image cannot be decoded (corrupt data)")
        return image
    c, h, w = datum.channels, datum.height, datum.width
    if len(datum.data) != c * h * w or c not in (1, 3):
        raise ScratchDetError(f"datum: raw data of {len(datum.data)} bytes does not match channels {c} x height {h} x width {w}")
    image = np.frombuffer(datum.data, np.uint8).reshape(c, h, w).transpose(1, 2, 0)
    if c == 1:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


def annotations(record: pb.AnnotatedDatum) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(labels int32 [N], boxes float32 [N,4] normalized xmin,ymin,xmax,ymax, difficult bool [N],
    instance_ids int32 [N])`` in stored order (groups, then annotations within a group)."""
    labels, boxes, difficult, ids = [], [], [], []
    for group in record.annotation_group:
        for ann in group.annotation:
            b = ann.bbox
            labels.append(group.group_label)
            boxes.append((b.xmin, b.ymin, b.xmax, b.ymax))
            difficult.append(b.difficult)
            ids.append(ann.instance_id)
    return (np.asarray(labels, np.int32), np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(difficult, bool), np.asarray(ids, np.int32))


def annotation_boxes(record: pb.AnnotatedDatum) -> list[Box]:
    """The same content as ``annotations`` as a list of ``Box`` tuples."""
    return [Box(g.group_label, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax, a.bbox.difficult, a.instance_id)
            for g in record.annotation_group for a in g.annotation]
