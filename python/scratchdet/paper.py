"""The paper's numbers as data, each with where it comes from.

Values are VOC2007-test mAP in percent unless ``metric`` says otherwise; ``None`` means the paper
reports non-convergence ("NAN"). Sources: ``shared/reference/ScratchDet-paper.md`` (Tables 1-2,
Figure 3 caption, §4.2.2, Figure 5-6 captions); numbers the paper text here lacks come from the
secondary sources listed in ``scratchdet-released-code.md`` §9 and are marked ``secondary``.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ScratchDetError

NAN = None  # the paper's "NAN": training did not converge


@dataclass(frozen=True)
class PaperResult:
    key: str            # stable id, e.g. "table1/scratch_bn_both/lr0.05"
    source: str         # where in the paper, e.g. "Table 1, lr 0.05, column 4"
    metric: str         # "VOC07 mAP", "VOC12 mAP", "COCO AP", "FPS" ...
    value: float | None
    secondary: bool = False   # True when the number is not in the paper text we hold

    @property
    def is_nan(self) -> bool:
        return self.value is None


# Table 1: six configurations (rows of check marks, read from the text of §3.1 / §4.2.1) x three lrs.
TABLE1_CONFIGS = (
    ("scratch_nobn", "scratch, no BN"),
    ("scratch_bn_head", "scratch, BN in head"),
    ("scratch_bn_backbone", "scratch, BN in backbone"),
    ("scratch_bn_both", "scratch, BN in backbone and head"),
    ("pretrained_vgg16", "pretrained VGG16, no BN"),
    ("pretrained_vgg16bn_bn_both", "pretrained VGG16-BN, BN in backbone and head"),
)
TABLE1_LRS = (0.001, 0.01, 0.05)
_TABLE1 = {  # config -> mAP at lr 0.001, 0.01, 0.05
    "scratch_nobn": (67.6, NAN, NAN),
    "scratch_bn_head": (71.0, 75.6, NAN),
    "scratch_bn_backbone": (72.8, 77.8, 78.0),
    "scratch_bn_both": (71.8, 77.3, 78.7),
    "pretrained_vgg16": (77.1, 76.9, NAN),
    "pretrained_vgg16bn_bn_both": (77.6, 78.2, 75.5),
}

# Table 2: ResNet-18 first conv layer (with / without downsampling) x root block; (FPS, mAP).
TABLE2_ROWS = (
    # (downsample, root convs, kernel, fps, mAP)
    (True, 1, 7, 59.5, 73.1),
    (True, 1, 3, 62.9, 73.2),
    (True, 2, 3, 58.1, 74.9),
    (True, 3, 3, 54.5, 75.4),
    (False, 1, 7, 37.0, 77.6),
    (False, 1, 3, 37.2, 77.8),
    (False, 2, 3, 31.5, 78.1),
    (False, 3, 3, 26.9, 78.5),
    (False, 4, 3, 24.3, 78.4),
    (False, 5, 3, 21.8, 78.5),
)

# Figure 3 caption: the four ResNet-18 nets on VOC07 test (07+12 training).
FIGURE3 = (("resnet18", 73.1), ("resnet18_a", 75.3), ("resnet18_b", 77.6), ("root_resnet18", 78.5))


def table1_key(config: str, lr: float) -> str:
    return f"table1/{config}/lr{lr:g}"


def table2_key(downsample: bool, convs: int, kernel: int) -> str:
    return f"table2/{'ds' if downsample else 'nods'}/{convs}x{kernel}x{kernel}"


def _build() -> dict[str, PaperResult]:
    out: dict[str, PaperResult] = {}

    def add(r: PaperResult) -> None:
        out[r.key] = r

    for col, (config, label) in enumerate(TABLE1_CONFIGS, start=1):
        for lr, value in zip(TABLE1_LRS, _TABLE1[config]):
            add(PaperResult(table1_key(config, lr), f"Table 1, lr {lr:g}, {label}", "VOC07 mAP", value))
    for row, (ds, convs, kernel, fps, value) in enumerate(TABLE2_ROWS, start=1):
        where = f"Table 2, row {row} ({'with' if ds else 'without'} downsample, {convs}: {kernel}x{kernel})"
        add(PaperResult(table2_key(ds, convs, kernel), where, "VOC07 mAP", value))
        add(PaperResult(table2_key(ds, convs, kernel) + "/fps", where + ", P40 GPU", "FPS", fps))
    for name, value in FIGURE3:
        add(PaperResult(f"figure3/{name}", f"Figure 3 caption, {name}", "VOC07 mAP", value))
    add(PaperResult("scratchdet300/voc07", "§4.2.2 and §4.2.3 (Table 3): Root-ResNet-34, 07+12", "VOC07 mAP", 80.4))
    add(PaperResult("rootres18/voc07", "Table 2 row 8 / §4.2.2: Root-ResNet-18, 07+12", "VOC07 mAP", 78.5))
    add(PaperResult("scratchdet300/voc12_07++12+coco", "Figure 5 caption: 07++12+COCO training",
                    "VOC12 mAP", 82.1))
    # The 07++12-only VOC2012 number is in the paper's Table 4, which our copy lost: no entry,
    # so a VOC12 run is reported without a paper value rather than against a guessed one.
    add(PaperResult("scratchdet300/coco", "Figure 6 caption: COCO test-dev, trainval35k", "COCO AP", 32.7))
    for metric, value in (("AP50", 52.0), ("AP75", 34.9), ("APs", 13.0), ("APm", 35.6), ("APl", 49.0)):
        add(PaperResult(f"scratchdet300/coco/{metric}", "Table 5 via a secondary source (peers-and-users.md)",
                        f"COCO {metric}", value, secondary=True))
    add(PaperResult("scratchdet300/voc07/fps", "Table 3 via a secondary source (17.8 fps)", "FPS", 17.8,
                    secondary=True))
    return out


RESULTS: dict[str, PaperResult] = _build()


def lookup(key: str) -> PaperResult:
    try:
        return RESULTS[key]
    except KeyError:
        raise ScratchDetError(f"no paper result {key!r}; known keys start with "
                              f"{sorted({k.split('/')[0] for k in RESULTS})}") from None
