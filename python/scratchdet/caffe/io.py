"""Read and write Caffe's files: text prototxts (net, solver, label map) and binary protos.

Every reader turns protobuf's exceptions into a one-line ``ScratchDetError`` naming the file,
line and field; every writer writes a temporary file and renames it, so a failed write never
leaves a partial file behind.
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
    return text_format.MessageToString(msg, float_format=".9g")


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
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
