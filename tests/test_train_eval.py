"""The solver's detection scoring (Solver::TestDetection): DetectionEvaluate rows from several
forward passes aggregated per label, difficult matches ignored, labels without detections
warned about and counted as 0 in the mean, AP by VOC07's 11-point rule computed here."""
import numpy as np
import pytest

pytest.importorskip("scratchdet.ap", reason="scratchdet/ap.py not present")

from scratchdet.ap import detection_map  # noqa: E402
from scratchdet.engine.score import score_detections  # noqa: E402


def eleven_point(scores_tp, num_pos):
    order = sorted(scores_tp, key=lambda p: -p[0])
    tp = np.cumsum([t for _, t in order])
    fp = np.cumsum([1 - t for _, t in order])
    prec, rec = tp / (tp + fp), tp / num_pos
    return sum(max([p for p, r in zip(prec, rec) if r >= t] or [0]) for t in np.linspace(0, 1, 11)) / 11


def test_detection_rows_aggregate_into_map():
    pass1 = np.array([[-1, 1, 2, -1, -1], [-1, 2, 2, -1, -1], [-1, 3, 0, -1, -1],
                      [0, 1, 0.9, 1, 0], [0, 1, 0.6, 0, 0],        # the second matched a difficult box
                      [1, 1, 0.8, 0, 1]])
    pass2 = np.array([[-1, 1, 1, -1, -1], [-1, 2, 0, -1, -1], [-1, 3, 0, -1, -1],
                      [0, 1, 0.7, 1, 0]])
    warnings = []
    value = score_detections([pass1, pass2], "11point", log=lambda lvl, tag, msg: warnings.append((lvl, msg)),
                             show_per_class=True)
    ap1 = eleven_point([(0.9, 1), (0.8, 0), (0.7, 1)], 3)
    assert ap1 == pytest.approx(6 / 11)
    assert value == pytest.approx(ap1 / 3)
    assert warnings == [("I", "class1: 0.545455"), ("W", "Missing true_pos for label: 2"),
                        ("W", "Missing true_pos for label: 3")]
    mean, per_label = detection_map([pass1, pass2], "11point")
    assert mean == value and per_label[1:] == [(2, None), (3, None)] and per_label[0][1] == pytest.approx(ap1)


def test_perfect_detections_score_one_and_no_rows_score_zero():
    rows = np.array([[-1, 1, 2, -1, -1], [0, 1, 0.9, 1, 0], [0, 1, 0.8, 1, 0]])
    assert detection_map([rows], "11point")[0] == pytest.approx(1.0)
    assert detection_map([rows], "MaxIntegral")[0] == pytest.approx(1.0)
    assert detection_map([np.zeros((0, 5))], "11point") == (0.0, [])
