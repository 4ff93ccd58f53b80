"""DetectionOutput's ``save_output_param`` (the SSD fork): the detections of a test pass written as
result files, which is how SSD users get VOC ``comp4_det_test_<class>.txt`` files for the devkit
or a COCO results JSON.

What the fork does, and what is kept:
- The layer counts the images it sees; image ``k`` of a pass takes name and (height, width) from
  line ``k`` of ``name_size_file``. After ``num_test_image`` images (default: every line) the
  files are written and the count starts again, so a solver's periodic test passes each rewrite
  them. (Each pass starts at the first name here; the fork carries its count over, which only
  differs when a pass is not ``num_test_image`` images long and then names images wrongly.)
- Each box is clipped to [0, 1] and scaled by the original width and height (OutputBBox without a
  ``resize_param``). Coordinates are rounded to 1/100 pixel and then truncated to integers
  (``static_cast<int>``); x/y are the truncated minimum, and the maximum is written as minimum +
  truncated size, so ``xmax`` can be one pixel less than the scaled corner.
- VOC: one ``<prefix><class name>.txt`` per non-background class (empty when it has none), lines
  ``image score xmin ymin xmax ymax`` in detection order, the score printed as a C++ stream does
  (6 significant digits). COCO: ``<prefix>.json``, ``[{"image_id", "category_id", "bbox": [x, y, w,
  h], "score"}, ...]`` with the category as the label map's name, the box in 1/100 pixel (not
  truncated) and the score to 9 digits; the same values as the fork's file, in plain JSON
  (``json_id`` says where the fork's text is not JSON).

Where this deliberately differs: the fork deletes ``output_directory`` recursively when the layer
is set up and truncates the files at the start of each pass; here the folder is only created and
each file is replaced atomically when its pass is complete, so nothing of a user's is lost. The
fork also writes from any net holding the layer (a deploy net run on a few images silently counts
towards ``num_test_image`` with the test set's names); here only test passes write (the driver
calls ``enable``), never ``scratchdet detect``.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from ...errors import ScratchDetError

FORMATS = ("VOC", "COCO")


def read_name_size(path, where: str) -> list[tuple[str, int, int]]:
    """``name height width`` lines, read as ``infile >> name >> height >> width`` does: stops at the
    first line that does not parse."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise ScratchDetError(f"{where}: cannot read save_output_param.name_size_file {path} ({exc.strerror})") from None
    out = []
    fields = text.split()
    for k in range(0, len(fields) - 2, 3):
        name, h, w = fields[k:k + 3]
        try:
            out.append((name, int(h), int(w)))
        except ValueError:
            break
    if not out:
        raise ScratchDetError(f"{where}: save_output_param.name_size_file {path} holds no 'name height width' line")
    return out


def cpp_float(value: float) -> str:
    """A float as ``std::ostream << float`` prints it: %g with 6 significant digits."""
    return f"{float(np.float32(value)):.6g}"


def scaled_boxes(boxes, heights, widths) -> np.ndarray:
    """OutputBBox without resize_param: normalized boxes [K,4] clipped to [0, 1], times each
    one's original width and height, in float32."""
    b = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), np.float32(0), np.float32(1))
    w, h = np.asarray(widths, np.float32).reshape(-1), np.asarray(heights, np.float32).reshape(-1)
    return b * np.stack([w, h, w, h], axis=1)


def scaled_box(box, height: int, width: int) -> np.ndarray:
    return scaled_boxes(box, [height], [width])[0]


def hundredths_f32(v) -> np.ndarray:
    """``round(v * 100) / 100.`` elementwise in the fork's float arithmetic (C ``round``: halves
    away from 0)."""
    scaled = np.asarray(v, np.float32) * np.float32(100)
    return (np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5)) / np.float32(100)).astype(np.float32)


def hundredths(v) -> float:
    return float(hundredths_f32(v))


def voc_boxes(boxes) -> np.ndarray:
    """[K,4] (xmin, ymin, xmax, ymax) integers as the VOC writer prints scaled boxes: rounded to
    1/100 pixel, truncated (``static_cast<int>``); the maximum is the minimum plus the truncated
    size."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    low = hundredths_f32(b[:, :2]).astype(np.int64)
    size = hundredths_f32(b[:, 2:] - b[:, :2]).astype(np.int64)
    return np.concatenate([low, low + size], axis=1)


def voc_box(box) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in voc_boxes(box)[0])


def json_id(name: str):
    """An image name or category name as the COCO file holds it: a number when it is one (COCO's
    ids), else the string. The fork un-quotes every digit string, so a name such as ``000004``
    comes out as the invalid JSON number ``000004``; here it stays a string."""
    return int(name) if name.isdigit() and str(int(name)) == name else name


class DetectionSaver:
    """Collects one test pass of DetectionOutput rows and writes the result files (module doc)."""

    def __init__(self, sp, label_names: dict[int, str], background: int, num_classes: int, where: str):
        self.where = where
        self.directory = Path(sp.output_directory)
        self.prefix = sp.output_name_prefix
        self.format = sp.output_format or "VOC"
        if self.format not in FORMATS:
            raise ScratchDetError(f"{where}: save_output_param.output_format {self.format!r} is not supported "
                                  f"(known: {', '.join(FORMATS)})")
        if sp.HasField("resize_param"):
            raise ScratchDetError(f"{where}: save_output_param.resize_param is not supported (boxes are written "
                                  "in the original image size from name_size_file)")
        self.names = read_name_size(sp.name_size_file, where)
        self._heights = np.array([h for _, h, _ in self.names], np.int64)
        self._widths = np.array([w for _, _, w in self.names], np.int64)
        self.num_test_image = int(sp.num_test_image) if sp.HasField("num_test_image") else len(self.names)
        if not 0 < self.num_test_image <= len(self.names):
            raise ScratchDetError(f"{where}: save_output_param.num_test_image {self.num_test_image} must be in "
                                  f"1..{len(self.names)} (the lines of {sp.name_size_file})")
        self.classes = [(c, label_names[c]) for c in range(num_classes) if c != background and c in label_names]
        missing = [c for c in range(num_classes) if c != background and c not in label_names]
        if missing:
            raise ScratchDetError(f"{where}: label {missing[0]} is not in save_output_param.label_map_file "
                                  f"{sp.label_map_file}")
        self.label_names = label_names
        self.enabled = False
        self.count = 0
        self.pending: list[tuple] = []   # per forward: name index, label, score, pixel box arrays

    @classmethod
    def from_param(cls, dp, num_classes: int, where: str) -> "DetectionSaver | None":
        """The saver a DetectionOutput's parameters ask for, or None (as the fork, no folder, label
        map or name-size file means nothing is saved)."""
        sp = dp.save_output_param
        if not (sp.output_directory and sp.label_map_file and sp.name_size_file):
            return None
        from ...caffe import io
        try:
            labelmap = io.read_labelmap(sp.label_map_file)
        except ScratchDetError as exc:
            raise ScratchDetError(f"{where}: save_output_param.label_map_file: {exc}") from None
        names = {int(item.label): item.name for item in labelmap.item}
        return cls(sp, names, int(dp.background_label_id), num_classes, where)

    def enable(self) -> None:
        self.enabled = True
        self.count = 0
        self.pending = []

    def add(self, rows: np.ndarray, num: int) -> list[Path]:
        """Book one forward's rows ([K, 7], image index within the batch) for its ``num`` images;
        returns the files written when a pass completed."""
        if not self.enabled:
            return []
        rows = np.asarray(rows, np.float32).reshape(-1, 7)
        rows = rows[rows[:, 1] != -1]                      # the "nothing found" filler rows
        rows = rows[np.argsort(rows[:, 0], kind="stable")]  # image order, each image's rows in order
        image = rows[:, 0].astype(np.int64)
        written: list[Path] = []
        start = 0
        while start < num:
            take = min(num - start, self.num_test_image - self.count)   # the images left in this pass
            part = rows[(image >= start) & (image < start + take)]
            name_index = self.count + part[:, 0].astype(np.int64) - start
            self.pending.append((name_index, part[:, 1].astype(np.int64), part[:, 2],
                                 scaled_boxes(part[:, 3:7], self._heights[name_index], self._widths[name_index])))
            self.count += take
            start += take
            if self.count == self.num_test_image:
                written = self.write()
                self.count, self.pending = 0, []
        return written

    def _detections(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The pass's (name index, label, score, pixel box) arrays, in detection order."""
        if not self.pending:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 4), np.float32)
        return tuple(np.concatenate(parts) for parts in zip(*self.pending))

    def write(self) -> list[Path]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            if self.format == "VOC":
                return [self._replace(self.directory / f"{self.prefix}{name}.txt", self._voc_text(label))
                        for label, name in self.classes]
            return [self._replace(self.directory / f"{self.prefix}.json", self._coco_text())]
        except OSError as exc:
            raise ScratchDetError(f"{self.where}: cannot write detections to {self.directory} "
                                  f"({exc.strerror or exc})") from None

    def _voc_text(self, label: int) -> str:
        names, labels, scores, boxes = self._detections()
        mine = labels == label
        return "".join(f"{self.names[k][0]} {cpp_float(score)} {x0} {y0} {x1} {y1}\n"
                       for k, score, (x0, y0, x1, y1) in zip(names[mine].tolist(), scores[mine].tolist(),
                                                             voc_boxes(boxes[mine]).tolist()))

    def _coco_text(self) -> str:
        names, labels, scores, boxes = self._detections()
        # 1/100 pixel and 9 digits: the values the fork's float32 fields hold
        xywh = hundredths_f32(np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)).tolist()
        dets = [{"image_id": json_id(self.names[k][0]), "category_id": json_id(self.label_names[label]),
                 "bbox": [round(v, 2) for v in box], "score": float(f"{np.float32(score):.9g}")}
                for k, label, score, box in zip(names.tolist(), labels.tolist(), scores.tolist(), xywh)]
        return json.dumps(dets, indent=1) + "\n"

    @staticmethod
    def _replace(path: Path, text: str) -> Path:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
