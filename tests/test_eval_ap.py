"""Average precision: Caffe's ComputeAP (float32, three versions) and the devkit formulas, on
hand-made cases with answers worked out here, and on random rankings against a recomputation
written in this file from the definitions."""
import numpy as np
import pytest

from scratchdet.errors import ScratchDetError
from scratchdet import ap


def pairs(flags, scores=None):
    scores = scores if scores is not None else [1.0 - 0.01 * k for k in range(len(flags))]
    return [(s, f) for s, f in zip(scores, flags)], [(s, 1 - f) for s, f in zip(scores, flags)]


def test_perfect_ranking_scores_one_everywhere():
    tp, fp = pairs([1, 1, 1, 1])
    for version in ap.AP_VERSIONS:
        assert ap.average_precision(tp, fp, 4, version) == pytest.approx(1.0)
    prec, rec = ap.precision_recall(np.array([1, 1, 1, 1]), np.array([0, 0, 0, 0]), 4)
    assert ap.voc07_ap(prec, rec) == pytest.approx(1.0)
    assert ap.voc_all_point_ap(prec, rec) == pytest.approx(1.0)


def test_no_detections_or_no_positives_score_zero():
    for version in ap.AP_VERSIONS:
        assert ap.average_precision([], [], 5, version) == 0.0
        tp, fp = pairs([1, 0])
        assert ap.average_precision(tp, fp, 0, version) == 0.0
    prec, rec = ap.precision_recall(np.zeros(0), np.zeros(0), 3)
    assert ap.voc07_ap(prec, rec) == 0.0 and ap.voc_all_point_ap(prec, rec) == 0.0


def test_three_versions_on_a_small_ranking():
    # tp, fp, tp with 3 positives: prec 1, 1/2, 2/3 at rec 1/3, 1/3, 2/3
    tp, fp = pairs([1, 0, 1])
    # 11 point: t = 0..0.3 -> 1 (4 thresholds), t = 0.4..0.6 -> 2/3 (3), t >= 0.7 -> 0
    assert ap.average_precision(tp, fp, 3, "11point") == pytest.approx((4 + 3 * 2 / 3) / 11, abs=1e-6)
    # envelope: 1 on (0, 1/3], 2/3 on (1/3, 2/3]
    assert ap.average_precision(tp, fp, 3, "MaxIntegral") == pytest.approx(1 / 3 + 2 / 9, abs=1e-6)
    # natural integral: 1 * 1/3 + (2/3) * 1/3 (the fp adds no recall)
    assert ap.average_precision(tp, fp, 3, "Integral") == pytest.approx(1 / 3 + 2 / 9, abs=1e-6)


def test_integral_and_max_integral_differ_when_precision_rises():
    # fp, tp, tp with 2 positives: prec 0, 1/2, 2/3 at rec 0, 1/2, 1
    tp, fp = pairs([0, 1, 1])
    assert ap.average_precision(tp, fp, 2, "Integral") == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3, abs=1e-6)
    assert ap.average_precision(tp, fp, 2, "MaxIntegral") == pytest.approx(2 / 3, abs=1e-6)


def test_equal_scores_keep_their_order_stable_sort():
    tp_a, fp_a = pairs([0, 1], scores=[0.5, 0.5])
    tp_b, fp_b = pairs([1, 0], scores=[0.5, 0.5])
    assert ap.average_precision(tp_a, fp_a, 1, "11point") == pytest.approx(0.5, abs=1e-6)
    assert ap.average_precision(tp_b, fp_b, 1, "11point") == pytest.approx(1.0, abs=1e-6)
    # the input order is not the score order: sorting happens inside
    tp_c, fp_c = pairs([0, 1], scores=[0.2, 0.9])
    assert ap.average_precision(tp_c, fp_c, 1, "11point") == pytest.approx(1.0, abs=1e-6)


def test_caffe_float_recall_misses_the_exact_threshold_the_devkit_hits():
    # 7 hits, 3 misses, 1 hit; 10 positives. Recall 7/10 is 0.69999999 as a float (Caffe), 0.7 as a double.
    flags = [1] * 7 + [0] * 3 + [1]
    tp, fp = pairs(flags)
    caffe = ap.average_precision(tp, fp, 10, "11point")
    # Caffe: t = 0..0.6 -> 1 (7 thresholds), t = 0.7 and 0.8 -> 8/11 (only the rec 0.8 point), t >= 0.9 -> 0
    assert caffe == pytest.approx((7 + 2 * 8 / 11) / 11, abs=1e-6)
    prec, rec = ap.precision_recall(np.array(flags), 1 - np.array(flags), 10)
    # the devkit in double: t = 0..0.7 -> 1 (8 thresholds), t = 0.8 -> 8/11
    assert ap.voc07_ap(prec, rec) == pytest.approx((8 + 8 / 11) / 11, abs=1e-12)


def reference_11point(flags, num_pos):
    """From the definition: mean over t of the best precision at recall >= t."""
    hits = 0
    points = []
    for k, f in enumerate(flags, start=1):
        hits += f
        points.append((hits / num_pos, hits / k))
    total = 0.0
    for j in range(11):
        best = [p for r, p in points if r >= j / 10]
        total += max(best) if best else 0.0
    return total / 11


def reference_all_point(flags, num_pos):
    """Area under the interpolated curve p(r) = max precision at recall >= r, summed over each new
    true positive (recall only rises there)."""
    hits = 0
    points = []
    for k, f in enumerate(flags, start=1):
        hits += f
        points.append((hits / num_pos, hits / k))
    area, prev = 0.0, 0.0
    for r, _ in points:
        if r > prev:
            area += (r - prev) * max(p for rr, p in points if rr >= r)
            prev = r
    return area


@pytest.mark.parametrize("seed", range(6))
def test_random_rankings_match_the_definitions(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 60))
    flags = (rng.random(n) < rng.uniform(0.2, 0.8)).astype(int).tolist()
    num_pos = sum(flags) + int(rng.integers(0, 7))
    if num_pos == 0:
        num_pos = 1
    if num_pos % 10 == 0:   # keep away from the float-vs-double threshold case tested above
        num_pos += 1
    scores = np.sort(rng.random(n))[::-1].tolist()
    order = rng.permutation(n)                      # hand the pairs over shuffled
    tp = [(scores[i], flags[i]) for i in order]
    fp = [(scores[i], 1 - flags[i]) for i in order]
    ref07, ref_all = reference_11point(flags, num_pos), reference_all_point(flags, num_pos)
    assert ap.average_precision(tp, fp, num_pos, "11point") == pytest.approx(ref07, abs=2e-6)
    assert ap.average_precision(tp, fp, num_pos, "MaxIntegral") == pytest.approx(ref_all, abs=2e-6)
    prec, rec = ap.precision_recall(np.array(flags), 1 - np.array(flags), num_pos)
    assert ap.voc07_ap(prec, rec) == pytest.approx(ref07, abs=1e-12)
    assert ap.voc_all_point_ap(prec, rec) == pytest.approx(ref_all, abs=1e-12)


def test_bad_input_is_a_clear_error():
    tp, fp = pairs([1, 0])
    with pytest.raises(ScratchDetError, match="Unknown ap_version"):
        ap.average_precision(tp, fp, 2, "VOC2012")
    with pytest.raises(ScratchDetError, match="2 true-positive pairs but 1"):
        ap.average_precision(tp, fp[:1], 2, "11point")
    with pytest.raises(ScratchDetError, match="only 1 ground-truth"):
        ap.average_precision(*pairs([1, 1]), 1, "11point")
