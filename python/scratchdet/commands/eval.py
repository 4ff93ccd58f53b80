"""``scratchdet eval``: VOC and COCO metrics from detection files.

    scratchdet eval voc --dets DIR_or_FILES... --annotations VOC2007/Annotations --imageset test.txt
                        [--labelmap F] [--iou 0.5] [--use-difficult] [--json]
    scratchdet eval voc --dets DIR --lmdb data/lmdb/VOC0712_test_lmdb [--name-size F] [--labelmap F]
    scratchdet eval coco --dets results.json --gt instances_minival2014.json [--only-detected-images] [--json]
    scratchdet eval testdev --dets results.json --out DIR --alg NAME [--image-info image_info_test-dev2015.json]
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..errors import ScratchDetError

VOC_LABELMAP = "data/VOC0712/labelmap_voc.prototxt"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="eval_command", metavar="METRIC")
    sub.required = True

    p = sub.add_parser("voc", help="VOC devkit AP per class (11-point VOC2007 and all-point VOC2010+)")
    p.add_argument("--dets", nargs="+", required=True,
                   help="folder(s) of <prefix><class>.txt result files, or the files (lines: image score xmin ymin xmax ymax)")
    p.add_argument("--annotations", help="folder of VOC XML annotations (<id>.xml)")
    p.add_argument("--imageset", help="image list (ImageSets/Main/test.txt) naming the evaluated images")
    p.add_argument("--lmdb", help="instead of XML: the test LMDB holding the ground truth")
    p.add_argument("--name-size", help="with --lmdb: the name-size file listing the LMDB's images in order "
                                       "(default: names from the record keys, sizes from the images)")
    p.add_argument("--labelmap", help=f"label map naming the classes (default: the 20 VOC classes for XML; {VOC_LABELMAP} for --lmdb)")
    p.add_argument("--iou", type=float, default=0.5, help="overlap threshold (default 0.5, VOC)")
    p.add_argument("--use-difficult", action="store_true", help="count difficult objects as positives (the devkit ignores them)")
    p.add_argument("--by-size", nargs="?", const="32,96", metavar="SMALL,LARGE",
                   help="also the mAP of small / medium / large objects: box side sqrt(area) below SMALL, "
                        "up to LARGE, above (pixels of the original image; default COCO's 32,96, which "
                        "suit ~640-pixel images: scale them with yours)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("coco", help="COCO AP, AP50, AP75, APs, APm, APl (pycocotools COCOeval, bbox)")
    p.add_argument("--dets", required=True, help="results JSON: [{image_id, category_id, bbox [x,y,w,h], score}, ...]")
    p.add_argument("--gt", required=True, help="ground truth: COCO instances JSON (e.g. instances_minival2014.json)")
    p.add_argument("--only-detected-images", action="store_true",
                   help="evaluate only the images that have detections (default: every ground-truth image)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")

    p = sub.add_parser("testdev", help="check a results JSON and write the COCO test-dev submission file")
    p.add_argument("--dets", required=True, help="results JSON on the test-dev images")
    p.add_argument("--out", required=True, help="folder for detections_test-dev2015_<alg>_results.json")
    p.add_argument("--alg", required=True, help="algorithm name in the file name, e.g. ScratchDet300")
    p.add_argument("--image-info", help="image_info_test-dev2015.json: image ids are checked against it")


def main(args) -> int:
    return {"voc": _voc, "coco": _coco, "testdev": _testdev}[args.eval_command](args)


def _warn(lines) -> None:
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)


def _voc(args) -> int:
    from ..eval import detfiles, groundtruth, voc
    from ..caffe import io
    progress = not args.quiet and sys.stderr.isatty()
    if args.iou <= 0 or args.iou > 1:
        raise ScratchDetError(f"--iou {args.iou}: must be in (0, 1]")
    labelmap = None
    if args.labelmap:
        labelmap = io.read_labelmap(args.labelmap)
    if args.lmdb:
        if args.annotations or args.imageset:
            raise ScratchDetError("give either --lmdb or --annotations/--imageset, not both")
        if labelmap is None:
            from ..data.files import conventional_file, not_found_note
            found = conventional_file(VOC_LABELMAP)
            if found is None:
                raise ScratchDetError(f"--lmdb needs --labelmap (labels are numbers in the LMDB; {not_found_note(VOC_LABELMAP)})")
            labelmap = io.read_labelmap(found)
        _names, label_names, _display = voc.labelmap_classes(labelmap)
        gt = groundtruth.from_lmdb(args.lmdb, label_names, args.name_size, progress=progress)
    else:
        if not (args.annotations and args.imageset):
            raise ScratchDetError("give --annotations DIR and --imageset FILE (or --lmdb DB)")
        ids = groundtruth.read_image_set(args.imageset)
        gt = groundtruth.from_voc_xml(args.annotations, ids, progress=progress)
    if labelmap is not None:
        classes, _labels, display = voc.labelmap_classes(labelmap)
    else:
        classes, display = voc.default_classes(gt), {}
    warnings: list[str] = []
    # result files are named by class name or (the SSD fork) display name: accept both
    file_names = {**{n: n for n in classes}, **{display.get(n, n): n for n in classes}}
    by_file_name = detfiles.read_det_files(args.dets, list(file_names), warnings)
    dets: dict = {}
    for file_name, class_dets in by_file_name.items():
        name = file_names[file_name]
        if len(class_dets) or name not in dets:
            dets[name] = class_dets
    result = voc.evaluate(dets, gt, classes, args.iou, args.use_difficult)
    result.warnings[:0] = warnings
    by_size = voc.evaluate_by_size(dets, gt, classes, args.iou, args.use_difficult,
                                   _size_sides(args.by_size)) if args.by_size else None
    if args.json:
        out = result.to_dict()
        if by_size:
            out["by_size"] = {name: {"area_range": list(r.area_range), "num_pos": sum(c.num_pos for c in r.classes),
                                     "map_11point": r.map07, "map_all_point": r.map_all,
                                     "classes": [c.to_dict() for c in r.classes]} for name, r in by_size.items()}
        print(json.dumps(_json_safe(out), indent=1))
    else:
        _warn(result.warnings)
        print(f"VOC evaluation: {len(gt.images)} images, {len(classes)} classes, IoU >= {args.iou:g}, "
              f"difficult objects {'counted' if args.use_difficult else 'ignored'}")
        print(result.format_table())
        if by_size:
            print("by object size (COCO's rule: objects and unmatched detections of other sizes ignored; "
                  "a class without objects of a size is left out of that mean):")
            print(voc.format_size_table(by_size))
    return 0


def _json_safe(value):
    """NaN (no objects of a size) and inf (the open upper limit) as null: JSON has neither."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _size_sides(text: str) -> tuple[float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 2:
        raise ScratchDetError(f"--by-size wants two side limits in pixels, SMALL,LARGE (e.g. 32,96), got {text!r}")
    return values


def _coco(args) -> int:
    from ..eval import coco
    results = coco.read_results(args.dets)
    gt = coco.load_ground_truth(args.gt)
    ids = sorted({r["image_id"] for r in results}) if args.only_detected_images else None
    result = coco.evaluate(results, gt, ids)
    if args.json:
        print(json.dumps(result.to_dict(), indent=1))
    else:
        _warn(result.warnings)
        print(f"COCO bbox evaluation: {result.num_images} images, {result.num_dets} detections")
        if result.summary_text:
            print(result.summary_text)
        print(result.format_table())
    return 0


def _testdev(args) -> int:
    from ..eval import coco
    results = coco.read_results(args.dets)
    path, warnings = coco.write_testdev(results, args.out, args.alg, args.image_info)
    _warn(warnings)
    print(f"wrote {path} ({len(results)} detections)")
    return 0
