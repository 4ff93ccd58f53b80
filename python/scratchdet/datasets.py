"""The data sets, one entry each: what the nets read (LMDB names, label map, name-size file, test
image count, result-file format), where the raw data lives, and the commands that fetch it and
convert it to LMDBs.

The variant registry (``prototxt_gen``), the pipeline (``scratchdet run``) and the VOC / COCO
converters (``data/voc.py``, ``data/coco.py``) all read these facts here. Paths are relative to the
repository root; LMDB names are folders under the LMDB dir (``data/lmdb`` unless told otherwise).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

LMDB_DIR = "data/lmdb"

VOC_URLS = (
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
)
COCO_URLS = (
    "http://images.cocodataset.org/zips/train2014.zip",
    "http://images.cocodataset.org/zips/val2014.zip",
    "http://images.cocodataset.org/annotations/annotations_trainval2014.zip",
    # minival2014 / valminusminival2014 split files, as SSD's data/coco/README describes
    "https://dl.dropboxusercontent.com/s/o43o90bna78omob/instances_minival2014.json.zip",
    "https://dl.dropboxusercontent.com/s/s3tw5zcg7395368/instances_valminusminival2014.json.zip",
)
_VOC_DOWNLOAD = tuple(f"wget -c {u} -P {{parent}} && tar -xf {{parent}}/{u.rsplit('/', 1)[1]} -C {{parent}}"
                      for u in VOC_URLS)


@dataclass(frozen=True)
class DataSpec:
    """A training/test set: as the nets see it, and how to make it."""
    key: str
    folder: str                   # models/<folder>/<id>, runs/<folder>/<id>
    num_classes: int
    label_map: str
    train_lmdb: str               # under the LMDB dir
    test_lmdb: str
    name_size: str
    num_test_image: int
    prior_ratios: tuple           # (min_ratio, max_ratio, (first min %, first max %)) of SSD's rule, per data set
    use_difficult_gt: bool = True
    force_color: bool = False
    output_format: str = "VOC"
    output_prefix: str = "comp4_det_test_"
    results: str = "results"      # under the run folder
    in_training_test: bool = True  # False: the test set has no ground truth (evaluation server)
    description: str = ""
    # the raw data and the conversion
    raw_env: str = ""             # variable naming the raw data folder
    raw_default: str = ""
    raw_marker: str = ""          # a path inside the raw folder that must exist
    build: tuple[str, ...] = ()   # the `scratchdet` argv converting raw -> LMDBs ({raw}, {lmdb}, {images})
    download: tuple[str, ...] = ()  # shell lines that fetch the raw data ({raw}, {parent}), shown to the user

    @property
    def lmdbs(self) -> tuple[str, ...]:
        """The LMDBs a training run needs: the train set, and the test set when the test net scores it
        (07++12's test set is the evaluation server's, made separately)."""
        return (self.train_lmdb, self.test_lmdb) if self.in_training_test else (self.train_lmdb,)

    def raw_folder(self, given: str | None = None) -> str:
        """The raw data folder: ``given``, else the environment variable, else the default."""
        return given or os.environ.get(self.raw_env) or self.raw_default

    def build_argv(self, **values) -> list[str]:
        """The conversion command with its placeholders filled."""
        return [arg.format(**values) for arg in self.build]


DATASETS = {
    "voc07": DataSpec(
        "voc07", "VOC0712", 21, "data/VOC0712/labelmap_voc.prototxt", "VOC0712_trainval_lmdb",
        "VOC0712_test_lmdb", "data/VOC0712/test_name_size.txt", 4952, (20, 90, (10, 20)),
        results="results/VOC2007/Main",
        description="VOC2007+2012 trainval (16,551 images), VOC2007 test (4,952)",
        raw_env="VOC_ROOT", raw_default="data/VOCdevkit", raw_marker="VOC2007/Annotations",
        build=("scratchdet", "data", "voc", "--devkit", "{raw}", "--out", "{lmdb}"), download=_VOC_DOWNLOAD),
    # 07++12 trains on VOC2007 test too, so nothing is left to test on during training: the test
    # net writes comp4 files for VOC2012 test (10,991 images) for the evaluation server.
    "voc12": DataSpec(
        "voc12", "VOC0712Plus", 21, "data/VOC0712/labelmap_voc.prototxt",
        "VOC0712Plus_trainval_lmdb", "VOC2012_test_lmdb", "data/VOC0712Plus/test_name_size.txt",
        10991, (20, 90, (10, 20)), results="results/VOC2012/Main", in_training_test=False,
        description="VOC2007 trainval+test + VOC2012 trainval (07++12), VOC2012 test on the server",
        raw_env="VOC_ROOT", raw_default="data/VOCdevkit", raw_marker="VOC2012/Annotations",
        build=("scratchdet", "data", "voc", "--devkit", "{raw}", "--voc12", "--skip-existing", "--out", "{lmdb}"),
        download=_VOC_DOWNLOAD + (
            "# optional, for the VOC2012 test LMDB (comp4 submissions): VOC2012test.tar from the PASCAL "
            "evaluation server (registration), extracted into {parent}",)),
    "coco": DataSpec(
        "coco", "coco", 81, "data/coco/labelmap_coco.prototxt", "coco_trainval35k_lmdb",
        "coco_minival_lmdb", "data/coco/minival2014_name_size.txt", 5000, (15, 90, (7, 15)),
        use_difficult_gt=False, force_color=True, output_format="COCO",
        output_prefix="detections_minival_ssd300_results",
        description="COCO trainval35k, minival2014 (5,000 images) for testing",
        raw_env="COCO_ROOT", raw_default="data/coco", raw_marker="annotations",
        build=("scratchdet", "data", "coco", "--root", "{raw}", "--out", "{lmdb}"),
        download=tuple(f"wget -c {u} -P {{raw}} && unzip -q -o {{raw}}/{u.rsplit('/', 1)[1]} -d {{raw}}"
                       for u in COCO_URLS)),
    "synthetic": DataSpec(
        "synthetic", "synthetic", 5, "data/labelmap_synthetic.prototxt", "synthetic_trainval_lmdb",
        "synthetic_test_lmdb", "data/synthetic_test_name_size.txt", 300, (20, 90, (10, 20)),
        results="results/Main",
        description="the embedded synthetic shapes (1500 images: 1200 trainval, 300 test)",
        raw_env="SYNTH_ROOT", raw_default="data/synthetic", raw_marker="SYNTH/ImageSets",
        build=("scratchdet", "data", "synthetic", "--out", "{raw}", "--images", "{images}", "--seed", "0",
               "--lmdb", "{lmdb}")),
}
