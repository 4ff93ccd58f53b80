"""Read and write Caffe's files: text prototxts (net, solver, label map) and binary protos.

Every reader turns protobuf's exceptions into a one-line ``ScratchDetError`` naming the file,
line and field; every writer writes a temporary file and renames it, so a failed write never
leaves a partial file behind. ``tempfile`` makes private temporaries (0600 files, 0700 folders);
``make_public`` gives what is renamed into place the modes a plain open/mkdir would (by the umask).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from google.protobuf import message as pb_message
from google.protobuf import text_format

from ..errors import ScratchDetError
from .schema import pb

# Caffe reads binary protos with a 2 GB total-bytes limit; we accept anything that fits in memory.


def parse_text(text: str, message_type, source: str = "<string>"):
    """Parse a text-format message; unknown fields and bad values are errors, as in Caffe."""
    msg = message_type()
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as exc:
        raise ScratchDetError(f"{source}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ScratchDetError(f"{source}: not a text prototxt ({exc.reason})") from None
    return msg


def read_text(path, message_type):
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ScratchDetError(f"{path}: not a text prototxt (binary data; is it a .caffemodel?)") from None
    return parse_text(text, message_type, str(path))


def to_text(msg) -> str:
    """Text format as Caffe reads it. protobuf prints a float field with the fewest digits that
    parse back to the same float32 (``0.1``, ``1e-10``, ``20.0``) and a double with ``repr``, so
    every value round-trips exactly."""
    return text_format.MessageToString(msg)


def umask() -> int:
    """The process umask, read without changing it where the system allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_public(path) -> None:
    """Give ``path`` (and, for a folder, everything inside) the modes a plain open/mkdir would."""
    path = Path(path)
    mask = umask()
    if path.is_dir():
        os.chmod(path, 0o777 & ~mask)
        for sub in path.rglob("*"):
            os.chmod(sub, (0o777 if sub.is_dir() else 0o666) & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename; the
    file gets the modes a plain open would give it (0666 less the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        make_public(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(msg, path) -> None:
    atomic_write_bytes(path, to_text(msg).encode())


def read_binary(path, message_type):
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScratchDetError(f"{path}: cannot read ({exc.strerror})") from None
    return parse_binary(data, message_type, str(path))


def parse_binary(data: bytes, message_type, source: str = "<bytes>"):
    msg = message_type()
    if not data:
        raise ScratchDetError(f"{source}: empty file")
    try:
        msg.ParseFromString(data)
    except (pb_message.DecodeError, RuntimeError, ValueError) as exc:
        raise ScratchDetError(
            f"{source}: not a valid binary {message_type.DESCRIPTOR.name} "
            f"(truncated or corrupt: {exc})") from None
    return msg


def write_binary(msg, path) -> None:
    atomic_write_bytes(path, msg.SerializeToString())


def read_net(path):
    return read_text(path, pb.NetParameter)


def read_solver(path):
    return read_text(path, pb.SolverParameter)


def read_labelmap(path):
    return read_text(path, pb.LabelMap)
