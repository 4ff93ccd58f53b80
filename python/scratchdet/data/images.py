"""Read an image file into the bytes an SSD ``Datum`` stores, validating it on the way.

convert_annoset keeps the original file bytes when the file is a JPEG with a .jpg/.jpeg name and no
resize is asked for; anything else is decoded as 3-channel BGR (Caffe's ``force_color``) and
re-encoded with ``cv::imencode(".jpg")``. Unlike the fork we also re-encode grayscale and CMYK JPEGs,
because the AnnotatedData layer checks the channel count of the decoded image and a 1-channel JPEG
stored as is breaks a training run hours in.

EXIF orientation (a camera's "rotate on display" tag): OpenCV's ``imread`` and, since 4.x, Python's
``imdecode`` turn the pixels; the fork's data layer (``imdecode`` of OpenCV <= 4.6, checked with the
real build) does not, so Caffe trains on the stored pixels, against boxes that a VOC annotation gives
in stored pixels too (its ``<size>`` is the stored size; convert_annoset only warns "inconsistent
image height/width" because its ``imread`` saw the rotated size). We keep what Caffe trains on and
make it unambiguous: the stored pixels, with the orientation tag removed so that no decoder turns
them, and say so naming the file. Only when the annotation's size is the *displayed* size (the boxes
were drawn on the turned image) do we store the turned pixels instead, re-encoded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .record import BadRecord

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# SOF markers carry the frame header (size, component count); C4/C8/CC are not frames.
_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


@dataclass
class StoredImage:
    data: bytes              # what goes into Datum.data (always an encoded JPEG here)
    height: int
    width: int
    channels: int            # always 3: what cv::imread(color) gives
    reencoded: str | None    # why the original bytes were not kept, or None
    note: str | None = None  # something the user must hear about this image (EXIF orientation)


def exif_orientation(data: bytes) -> tuple[int, int, int] | None:
    """``(orientation, start, end)`` of a JPEG's EXIF APP1 segment holding an orientation tag
    other than 1, or None. Only the segments before the first scan are read."""
    pos, n = 2, len(data)
    while pos + 4 <= n and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xE1 and data[pos + 4:pos + 10] == b"Exif\0\0":
            value = _tiff_orientation(data[pos + 10:pos + 2 + length])
            return (value, pos, pos + 2 + length) if value not in (None, 1) else None
        pos += 2 + length
    return None


def _tiff_orientation(tiff: bytes) -> int | None:
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return None
    order = "little" if tiff[:2] == b"II" else "big"
    ifd = int.from_bytes(tiff[4:8], order)
    if ifd + 2 > len(tiff):
        return None
    count = int.from_bytes(tiff[ifd:ifd + 2], order)
    for k in range(count):
        e = ifd + 2 + 12 * k
        if e + 12 > len(tiff):
            return None
        if int.from_bytes(tiff[e:e + 2], order) == 0x0112:
            return int.from_bytes(tiff[e + 8:e + 10], order)
    return None


def jpeg_components(data: bytes) -> int | None:
    """Number of colour components in a JPEG's frame header (1 gray, 3 YCbCr/RGB, 4 CMYK/YCCK)."""
    pos = 2
    n = len(data)
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:            # fill byte
            pos += 1
            continue
        if marker in (0x01,) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        if marker == 0xDA or marker == 0xD9:     # scan data or end before any frame header
            return None
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker in _SOF_MARKERS:
            return data[pos + 9] if pos + 9 < n else None
        pos += 2 + length
    return None


def jpeg_is_complete(data: bytes) -> bool:
    """A JPEG whose main image was cut short has no end-of-image marker after its last scan.

    Inside entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so 0xFFD9 after
    the last 0xFFDA can only be the real end (an EXIF thumbnail's markers come before the main scan).
    """
    last_scan = data.rfind(b"\xff\xda")
    return last_scan >= 0 and data.rfind(b"\xff\xd9") > last_scan


def _ext_matches_jpeg(path: str) -> bool:
    return Path(path).suffix.lower() in (".jpg", ".jpeg")


def encode_jpeg(image: np.ndarray) -> bytes:
    """cv::imencode(".jpg") with OpenCV's default quality (95), as the fork re-encodes."""
    ok, buf = cv2.imencode(".jpg", image)
    if not ok:  # pragma: no cover - OpenCV always encodes a valid uint8 BGR image
        raise RuntimeError("cv2.imencode failed")
    return buf.tobytes()


def to_bgr8(image: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Any decoded image -> 3-channel uint8 BGR the way cv::imread(IMREAD_COLOR) would produce it."""
    notes = []
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
        notes.append("16-bit")
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
        notes.append(f"{image.dtype} pixels")
    if image.ndim == 2 or image.shape[2] == 1:
        image = cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
        notes.append("grayscale")
    elif image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)   # alpha dropped, as imread(color) does
        notes.append("alpha channel dropped")
    return image, notes


def _decode(data: bytes, flags: int, path) -> np.ndarray | None:
    """cv2.imdecode; OpenCV's own refusals (a header claiming more than its pixel limit, ...) raise
    cv2.error, which becomes a bad record naming the file."""
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error as exc:
        lines = [ln for ln in str(exc).splitlines() if ln.strip()]
        detail = lines[-1].strip() if lines else "no detail"
        raise BadRecord("corrupt image", f"{path}: OpenCV refuses to decode it ({detail})") from None


def load_image(path, list_path: str | None = None, declared: tuple[int, int] | None = None) -> StoredImage:
    """Read, validate and prepare one image; problems raise ``BadRecord`` naming the file.
    ``declared`` is the annotation's (width, height), which says how EXIF orientation is read."""
    path = Path(path)
    name = list_path or str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadRecord("missing image", f"{path}: image file not found") from None
    except OSError as exc:
        raise BadRecord("unreadable image", f"{path}: cannot read image ({exc.strerror})") from None
    if not data:
        raise BadRecord("corrupt image", f"{path}: empty image file")

    if data.startswith(JPEG_MAGIC):
        if not jpeg_is_complete(data):
            raise BadRecord("corrupt image", f"{path}: truncated JPEG (no end-of-image marker)")
        image = _decode(data, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION, path)
        if image is None:
            raise BadRecord("corrupt image", f"{path}: corrupt JPEG (OpenCV cannot decode it)")
        components = jpeg_components(data)
        h, w = image.shape[:2]
        exif = exif_orientation(data)
        note = None
        if exif is not None:
            orientation, start, end = exif
            shown = _decode(data, cv2.IMREAD_COLOR, path)
            if declared is not None and shown is not None and shown.shape[:2] != (h, w) \
                    and tuple(declared) == (shown.shape[1], shown.shape[0]):
                note = (f"{path}: EXIF orientation {orientation}: the annotation's size {declared[0]}x{declared[1]} is "
                        "the displayed image's, so the turned pixels are stored (re-encoded)")
                h, w = shown.shape[:2]
                return StoredImage(encode_jpeg(shown), h, w, 3, "EXIF-oriented JPEG", note)
            note = (f"{path}: EXIF orientation {orientation} ignored: pixels and boxes stay as stored ({w}x{h}), "
                    "as Caffe's data layer reads them; the tag is removed so no decoder turns the image")
            data = data[:start] + data[end:]
        if components == 3 and _ext_matches_jpeg(name):
            return StoredImage(data, h, w, 3, None, note)
        if components == 3:
            why = f"JPEG data with a {Path(name).suffix or 'missing'} extension"
        elif components == 1:
            why = "grayscale JPEG"
        elif components == 4:
            why = "CMYK JPEG"
        else:
            why = "JPEG with an unreadable frame header"
        return StoredImage(encode_jpeg(image), h, w, 3, why, note)

    image = _decode(data, cv2.IMREAD_UNCHANGED, path)
    if image is None or image.size == 0:
        raise BadRecord("corrupt image", f"{path}: corrupt or unsupported image (OpenCV cannot decode it)")
    kind = "PNG" if data.startswith(PNG_MAGIC) else f"{path.suffix.lstrip('.').upper() or 'non-JPEG'} image"
    image, notes = to_bgr8(image)
    why = kind + (f" ({', '.join(notes)})" if notes else "")
    h, w = image.shape[:2]
    return StoredImage(encode_jpeg(np.ascontiguousarray(image)), h, w, 3, why)
