"""Read and write Caffe's files: text prototxts (net, solver, label map) and binary protos.

Every reader turns protobuf's exceptions into a one-line ``ScratchDetError`` naming the file,
line and field; every writer writes a temporary file and renames it, so a failed write never
leaves a partial file behind. ``tempfile`` makes private temporaries (0600 files, 0700 folders);
``make_public`` gives what is renamed into place the modes a plain open/mkdir would (by the umask).
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
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


def mount_point(path) -> Path:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def disk_full(exc: BaseException | None, path) -> bool:
    """Whether a failed write at ``path`` is a full disk: ENOSPC/EDQUOT, or (LMDB reports a failed
    page write as a bare I/O error) less than 1 MiB left on its file system."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if exc is not None and "No space left" in str(exc):
        return True
    if isinstance(exc, OSError) and exc.errno not in (None, errno.EIO):
        return False
    try:
        return shutil.disk_usage(mount_point(path)).free < (1 << 20)
    except OSError:
        return False


def write_error(exc: BaseException, path, what: str = "cannot write") -> ScratchDetError:
    """A failed write as one line: "no space left on device MOUNT (PATH)" or the OS's reason."""
    if disk_full(exc, path):
        return ScratchDetError(f"no space left on device {mount_point(path)} (writing {path}); "
                               "what was half written is removed")
    reason = getattr(exc, "strerror", None) or " ".join(str(exc).split()) or type(exc).__name__
    return ScratchDetError(f"{path}: {what} ({reason})")


def make_dirs(folder, what: str = "output folder") -> Path:
    """``mkdir -p`` with a one-line error (a path under a regular file, a read-only parent, ...)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ScratchDetError(f"{folder}: cannot create the {what}: a file of that name exists") from None
    except OSError as exc:
        raise ScratchDetError(f"{folder}: cannot create the {what} ({exc.strerror})") from None
    return folder


# Temporaries beside a target are named ``.<target>.<pid>.<random><suffix>``: a later run removes
# those whose process is gone (a SIGKILL, a power cut) and leaves a live run's alone.
TEMP_SUFFIXES = (".tmp", ".old")


def temp_dir(target, suffix: str = ".tmp") -> Path:
    """A private folder beside ``target`` to build it in (renamed into place when complete)."""
    target = Path(target)
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=suffix, dir=target.parent))
    except OSError as exc:
        raise write_error(exc, target.parent, "cannot create a folder in") from None


def _owner_alive(name: str, target_name: str) -> bool:
    pid = name[len(target_name) + 2:].split(".", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True          # exists, owned by someone else
    return True


def remove_stale_temps(target, stream=None) -> int:
    """Remove ``.<target>.*.tmp`` / ``.old`` left beside ``target`` by a killed run; says so in one
    line. Returns how many were removed."""
    target = Path(target)
    removed, size = [], 0
    try:
        candidates = list(target.parent.glob(f".{target.name}.*"))
    except OSError:
        return 0
    for cand in candidates:
        if not cand.name.endswith(TEMP_SUFFIXES) or _owner_alive(cand.name, target.name):
            continue
        try:
            size += sum(f.stat().st_size for f in cand.rglob("*") if f.is_file()) if cand.is_dir() else cand.stat().st_size
            shutil.rmtree(cand) if cand.is_dir() and not cand.is_symlink() else cand.unlink()
        except OSError:
            continue
        removed.append(cand.name)
    if removed:
        print(f"note: removed {len(removed)} temporary file(s) of {target} left by an interrupted run "
              f"({size / 1e6:.1f} MB: {', '.join(sorted(removed)[:3])}{', ...' if len(removed) > 3 else ''})",
              file=stream or sys.stderr)
    return len(removed)


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename; the
    file gets the modes a plain open would give it (0666 less the umask). A failed write (full
    disk, unwritable folder) is a one-line ScratchDetError and leaves nothing behind."""
    path = Path(path)
    make_dirs(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        make_public(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise write_error(exc, path) from None
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
