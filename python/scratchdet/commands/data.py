"""``scratchdet data``: build SSD AnnotatedDatum LMDBs from VOC, COCO, the synthetic set or a
convert_annoset list, and check them.

    scratchdet data voc --devkit data/VOCdevkit --out data/lmdb [--voc12]   (07++12: + VOC2012 test)
    scratchdet data coco --root data/coco --out data/lmdb [--year 2014|2017]
    scratchdet data synthetic --out data/synthetic --images 600 --seed 0 [--lmdb data/lmdb]
    scratchdet data convert --root DIR --list FILE --out DB [--label-type xml|json|txt] [--labelmap F]
    scratchdet data check DB [--labelmap F]
    scratchdet data labelmap FILE
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..datasets import DATASETS
from ..errors import ScratchDetError

# the defaults are the data-set catalog's files (the nets are generated to read these paths)
VOC_LABELMAP = DATASETS["voc07"].label_map
COCO_LABELMAP = DATASETS["coco"].label_map
SYNTHETIC_LABELMAP = DATASETS["synthetic"].label_map
VOC_NAME_SIZE = DATASETS["voc07"].name_size
VOC12_NAME_SIZE = DATASETS["voc12"].name_size
COCO_NAME_SIZE_DIR = str(Path(DATASETS["coco"].name_size).parent)
SYNTHETIC_NAME_SIZE = DATASETS["synthetic"].name_size
PARALLEL_MIN = 200          # below this many images a worker pool costs more than it saves


def _default_jobs() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def _common(p, strict=True, jobs=True):
    if strict:
        p.add_argument("--strict", action="store_true",
                       help="fail the whole conversion on the first bad record or box fix (default: skip and count)")
    if jobs:
        p.add_argument("--jobs", type=int, default=_default_jobs(), help="worker processes (default: CPUs, at most 8)")
    p.add_argument("--map-size", type=int, default=1 << 30, help="initial LMDB map size in bytes (doubles when full)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-record messages")


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SOURCE")
    sub.required = True

    p = sub.add_parser("voc", help="VOCdevkit -> VOC0712 trainval/test (and 07++12) LMDBs + test_name_size.txt")
    p.add_argument("--devkit", required=True, help="VOCdevkit folder holding VOC2007/ (and VOC2012/)")
    p.add_argument("--out", default="data/lmdb", help="folder for the LMDBs (default data/lmdb)")
    p.add_argument("--voc12", action="store_true",
                   help="also build the 07++12 sets: VOC0712Plus_trainval_lmdb and, when VOC2012/ImageSets/Main/test.txt "
                        "is there (VOC2012test.tar), VOC2012_test_lmdb (images, no annotations) with its name-size file")
    p.add_argument("--sets", default=None,
                   help="comma list of trainval,test,plus,test12 (default trainval,test[,plus[,test12]])")
    p.add_argument("--years", default="2007,2012", help="VOC years that may be used (default 2007,2012)")
    p.add_argument("--labelmap", default=None, help=f"label map (default {VOC_LABELMAP}, else the 20 VOC classes)")
    p.add_argument("--name-size", default=VOC_NAME_SIZE, help=f"VOC2007 test name-size file (default {VOC_NAME_SIZE}, relative to the current folder as the "
                        "generated test.prototxt names it)")
    p.add_argument("--voc12-name-size", default=VOC12_NAME_SIZE,
                   help=f"VOC2012 test name-size file (default {VOC12_NAME_SIZE}); its list test.txt goes beside it")
    p.add_argument("--lists-dir", default=None,
                   help="where to write the VOC2007/0712 list files (default: the --name-size file's folder)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the training lists (default 0)")
    p.add_argument("--skip-existing", action="store_true", help="keep LMDBs that already exist instead of rebuilding")
    _common(p)

    p = sub.add_parser("coco", help="COCO instances JSON -> trainval35k/minival (or train2017/val2017) LMDBs")
    p.add_argument("--root", required=True, help="COCO root: annotations/instances_*.json and train2014/, val2014/ (or images/...)")
    p.add_argument("--out", default="data/lmdb", help="folder for the LMDBs (default data/lmdb)")
    p.add_argument("--year", choices=("2014", "2017"), default=None, help="layout (default: detected from the annotation files)")
    p.add_argument("--sets", default=None, help="comma list of sets to build (default all of the layout)")
    p.add_argument("--labelmap", default=None, help=f"label map (default {COCO_LABELMAP}, else built from the categories)")
    p.add_argument("--name-size-dir", default=COCO_NAME_SIZE_DIR, help=f"folder for <set>_name_size.txt (default {COCO_NAME_SIZE_DIR}, relative to the current folder)")
    p.add_argument("--seed", type=int, default=0, help="shuffle seed of the training list (default 0)")
    p.add_argument("--skip-existing", action="store_true", help="keep LMDBs that already exist instead of rebuilding")
    _common(p)

    p = sub.add_parser("synthetic", help="make the synthetic shapes set (VOC + COCO formats); --lmdb also converts it")
    p.add_argument("--out", required=True, help="folder for the data set (e.g. data/synthetic)")
    p.add_argument("--images", type=int, default=600, help="number of images (default 600; every 5th is a test image)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0); a seed always gives the same bytes")
    p.add_argument("--profile", default="shapes", choices=("shapes", "small"),
                   help="shapes (default: 1-4 objects, 15%% small) or small (2-6 objects, 60%% small: the mini-paper's Table 2 set)")
    p.add_argument("--lmdb", default=None, help="also build synthetic_trainval_lmdb and synthetic_test_lmdb in this folder")
    p.add_argument("--name-size", default=SYNTHETIC_NAME_SIZE, help=f"test name-size file (default {SYNTHETIC_NAME_SIZE}, relative to the current folder)")
    _common(p, strict=False)

    p = sub.add_parser("convert", help="convert_annoset: a list of '<image> <annotation>' lines -> one LMDB")
    p.add_argument("--root", required=True, help="folder the list's paths are relative to")
    p.add_argument("--list", required=True, help="list file: '<image> <annotation>' per line")
    p.add_argument("--out", required=True, help="LMDB to write")
    p.add_argument("--label-type", choices=("xml", "json", "txt"), default="xml", help="annotation format (default xml)")
    p.add_argument("--labelmap", default=None, help="label map (required for xml/json)")
    p.add_argument("--check-label", "--check_label", action="store_true", help="duplicate names/labels in the label map are fatal")
    p.add_argument("--shuffle", action="store_true", help="shuffle the list (with --seed) before writing")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name-size", default=None, help="also write '<stem> <height> <width>' per written record")
    _common(p)

    p = sub.add_parser("check", help="record count, classes, objects per class, box sizes and invalid records of an LMDB")
    p.add_argument("db", help="LMDB folder")
    p.add_argument("--labelmap", default=None, help="label map for class names (default: guessed from the LMDB name, "
                                                    "looked for in the current folder, then in this checkout)")
    p.add_argument("--no-decode", action="store_true", help="do not decode the images (faster, fewer checks)")

    p = sub.add_parser("labelmap", help="check a label map for duplicate names and labels and print it")
    p.add_argument("file")


def main(args) -> int:
    cmd = args.data_command
    if cmd == "check":
        return _check(args)
    if cmd == "labelmap":
        return _labelmap(args)
    if getattr(args, "jobs", 1) < 1:
        raise ScratchDetError(f"--jobs {args.jobs}: must be at least 1")
    return {"voc": _voc, "coco": _coco, "synthetic": _synthetic, "convert": _convert}[cmd](args)


def _check(args) -> int:
    from ..data.check import check_db, format_report
    if not Path(args.db).exists():
        raise ScratchDetError(f"{args.db}: does not exist")
    report = check_db(args.db, args.labelmap, decode=not args.no_decode)
    print(format_report(report))
    return 0 if report.ok else 1


def _labelmap(args) -> int:
    from ..data import labelmap as lm
    labelmap = lm.load(args.file)
    lm.check(labelmap, args.file)
    for item in labelmap.item:
        print(f"{item.label:>4}  {item.name}  ({item.display_name})")
    print(f"{args.file}: {len(labelmap.item)} items, names and labels unique")
    return 0


def _resolve_labelmap(explicit, default, fallback, what):
    """An explicit label map must exist; the conventional one is used if present, else ``fallback()``."""
    from ..data import labelmap as lm
    from ..data.files import conventional_file, not_found_note
    if explicit:
        return lm.load(explicit), explicit
    found = conventional_file(default)
    if found is not None:
        return lm.load(found), str(found)
    print(f"note: {not_found_note(default)}; using the built-in {what} label map", file=sys.stderr)
    return fallback(), f"built-in {what}"


def _run(entries, db, name_to_label, args, desc=None):
    from ..data.convert import convert, print_summary
    jobs = args.jobs if len(entries) >= PARALLEL_MIN else 1
    summary = convert(entries, db, name_to_label, strict=getattr(args, "strict", False), jobs=jobs,
                      map_size=args.map_size, desc=desc, quiet=args.quiet)
    print_summary(summary)
    return summary


def _voc(args) -> int:
    from ..data import labelmap as lm
    from ..data import voc
    from ..data.convert import write_list, write_name_size
    years = tuple(y.strip() for y in args.years.split(",") if y.strip())
    if args.sets:
        sets = [s.strip() for s in args.sets.split(",")]
    else:
        sets = ["trainval", "test"] + (["plus"] if args.voc12 else [])
        if args.voc12 and "2012" in years:
            if voc.image_set_path(args.devkit, "2012", "test").is_file():
                sets.append("test12")
            else:
                print(f"note: {voc.image_set_path(args.devkit, '2012', 'test')} not found: VOC2012_test_lmdb and "
                      f"{args.voc12_name_size} not built ({voc.VOC2012_TEST_HINT})", file=sys.stderr)
    for s in sets:
        if s not in voc.VOC_SETS:
            raise ScratchDetError(f"--sets: unknown VOC set {s!r} (choose from {', '.join(voc.VOC_SETS)})")
    voc.check_devkit(args.devkit, sorted({y for s in sets if s not in voc.UNANNOTATED
                                          for y, _ in voc.VOC_SETS[s][1] if y in years}))
    labelmap, source = _resolve_labelmap(args.labelmap, VOC_LABELMAP, lambda: lm.make(lm.VOC_CLASSES), "VOC")
    name_to_label = lm.name_to_label(labelmap, check_label=True, source=source)
    lists = voc.build_lists(args.devkit, sets, seed=args.seed, years=years)
    name_sizes = {"test": args.name_size, "test12": args.voc12_name_size}
    lists_dir = Path(args.lists_dir or Path(args.name_size).parent)
    for name, entries in lists.items():
        db = Path(args.out) / voc.VOC_SETS[name][0]
        if args.skip_existing and (db / "data.mdb").is_file():
            print(f"{db}: exists, kept (--skip-existing)")
            continue
        folder = Path(args.voc12_name_size).parent if name == "test12" else lists_dir
        write_list(entries, folder / voc.LIST_NAMES[name], args.devkit)
        summary = _run(entries, db, name_to_label, args)
        if name in name_sizes:
            write_name_size(summary.sizes, name_sizes[name])
            print(f"{name_sizes[name]}: {len(summary.sizes)} test images")
    return 0


def _coco(args) -> int:
    from ..data import coco
    from ..data import labelmap as lm
    from ..data.convert import write_name_size
    only = [s.strip() for s in args.sets.split(",") if s.strip()] if args.sets else None
    year, sets, categories = coco.build_sets(args.root, args.year, seed=args.seed, only=only)
    wanted = list(sets)
    labelmap, source = _resolve_labelmap(args.labelmap, COCO_LABELMAP,
                                         lambda: coco.labelmap_from_categories(categories), "COCO (from the categories)")
    name_to_label = lm.name_to_label(labelmap, check_label=True, source=source)
    for name in wanted:
        folder, _, _, name_size = coco.COCO_SETS[year][name]
        db = Path(args.out) / folder
        if args.skip_existing and (db / "data.mdb").is_file():
            print(f"{db}: exists, kept (--skip-existing)")
            continue
        summary = _run(sets[name], db, name_to_label, args)
        if name_size:
            path = Path(args.name_size_dir) / name_size
            write_name_size(summary.sizes, path)
            print(f"{path}: {len(summary.sizes)} images")
    return 0


def _synthetic(args) -> int:
    from ..data import labelmap as lm
    from ..data import synthetic, voc
    from ..data.convert import write_list, write_name_size
    stats = synthetic.generate(args.out, args.images, args.seed, quiet=args.quiet, jobs=args.jobs,
                               profile=args.profile)
    total = max(stats["objects"], 1)
    print(f"{args.out}: {stats['images']} images ({stats['trainval']} trainval, {stats['test']} test), "
          f"{stats['objects']} objects ({stats['difficult']} difficult; "
          + ", ".join(f"{k} {100.0 * stats[k] / total:.0f}%" for k in ("small", "medium", "large")) + ")")
    if not args.lmdb:
        return 0
    labelmap = lm.make(synthetic.CLASSES)
    _warn_if_labelmap_differs(labelmap)
    name_to_label = lm.name_to_label(labelmap, check_label=True)
    args.strict = True        # our own data: any problem is a bug, not bad input
    for split, db_name in (("trainval", "synthetic_trainval_lmdb"), ("test", "synthetic_test_lmdb")):
        entries = voc.entries_for(args.out, [("", split)], folder_of=lambda _y: synthetic.FOLDER)
        write_list(entries, Path(args.out) / f"{split}.txt", args.out)
        summary = _run(entries, Path(args.lmdb) / db_name, name_to_label, args)
        if split == "test":
            write_name_size(summary.sizes, args.name_size)
            print(f"{args.name_size}: {len(summary.sizes)} test images")
    return 0


def _warn_if_labelmap_differs(labelmap) -> None:
    from ..data import labelmap as lm
    from ..data.files import conventional_file
    path = conventional_file(SYNTHETIC_LABELMAP)
    if path is None:
        return
    try:
        committed = lm.load(path)
    except ScratchDetError:
        return
    pairs = lambda m: [(i.name, i.label) for i in m.item]  # noqa: E731
    if pairs(committed) != pairs(labelmap):
        print(f"warning: {SYNTHETIC_LABELMAP} differs from the generator's classes {pairs(labelmap)}", file=sys.stderr)


def _convert(args) -> int:
    from ..data import labelmap as lm
    from ..data.convert import read_list, write_name_size
    from ..data.entries import shuffled
    if args.label_type in ("xml", "json") and not args.labelmap:
        raise ScratchDetError(f"--label-type {args.label_type} needs --labelmap (class names -> labels)")
    name_to_label = {}
    if args.labelmap:
        name_to_label = lm.name_to_label(lm.load(args.labelmap), check_label=args.check_label, source=args.labelmap)
    entries = read_list(args.list, args.root, args.label_type)
    if args.shuffle:
        entries = shuffled(entries, args.seed)
    summary = _run(entries, args.out, name_to_label, args)
    if args.name_size:
        write_name_size(summary.sizes, args.name_size)
        print(f"{args.name_size}: {len(summary.sizes)} images")
    return 0
