"""scratchdet.boxes against the spec's golden values and plain-loop re-computations (caffe-ssd-spec §2.1-§2.4)."""
import math

import numpy as np
import pytest

from scratchdet import boxes as bx


def loop_iou(a, b):
    """JaccardOverlap written out as the spec states it, one pair at a time (float64)."""
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_jaccard_matches_loop_and_touching_is_zero():
    rng = np.random.default_rng(0)
    a = np.sort(rng.random((7, 2, 2)), axis=1).transpose(0, 2, 1).reshape(7, 4)[:, [0, 2, 1, 3]]
    b = np.sort(rng.random((5, 2, 2)), axis=1).transpose(0, 2, 1).reshape(5, 4)[:, [0, 2, 1, 3]]
    got = bx.jaccard(a, b)
    want = np.array([[loop_iou(x, y) for y in b] for x in a])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert bx.jaccard([[0, 0, 0.5, 0.5]], [[0.5, 0, 1, 0.5]])[0, 0] == 0      # touching edge
    assert bx.jaccard([[0, 0, 0.5, 0.5]], [[0, 0, 0.5, 0.5]])[0, 0] == pytest.approx(1.0)


def test_pixel_jaccard_uses_plus_one():
    # two 10x10-pixel boxes (0..9) offset by 5 pixels: inter 5x10=50, union 150
    assert bx.jaccard([[0, 0, 9, 9]], [[5, 0, 14, 9]], normalized=False)[0, 0] == pytest.approx(50 / 150)


def test_golden_priors_ssd300_conv4_3():
    ars = [1.0, 2.0, 0.5]
    p = bx.prior_boxes(38, 38, 300, 300, 8.0, 8.0, [30], [60], ars)
    assert p.shape == (38 * 38 * 4, 4)
    golden = [(-0.036667, -0.036667, 0.063333, 0.063333), (-0.057377, -0.057377, 0.084044, 0.084044),
              (-0.057377, -0.022022, 0.084044, 0.048689), (-0.022022, -0.057377, 0.048689, 0.084044)]
    np.testing.assert_allclose(p[:4], golden, atol=1e-6)
    # second cell moves right by one step (8 px) only
    np.testing.assert_allclose(p[4:8, [0, 2]] - p[:4, [0, 2]], 8 / 300, atol=1e-6)
    np.testing.assert_allclose(p[4:8, [1, 3]], p[:4, [1, 3]], atol=0)


def test_encode_decode_center_size_by_hand_and_round_trip():
    prior = np.array([[0.1, 0.2, 0.3, 0.6]], dtype=np.float32)
    var = np.array([[0.1, 0.1, 0.2, 0.2]], dtype=np.float32)
    gt = np.array([[0.15, 0.1, 0.45, 0.5]], dtype=np.float32)
    t = bx.encode(prior, var, gt)
    # prior centre (0.2, 0.4) size (0.2, 0.4); gt centre (0.3, 0.3) size (0.3, 0.4)
    want = [(0.3 - 0.2) / 0.2 / 0.1, (0.3 - 0.4) / 0.4 / 0.1, math.log(0.3 / 0.2) / 0.2, math.log(1.0) / 0.2]
    np.testing.assert_allclose(t[0], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bx.decode(prior, var, t), gt, atol=1e-6)
    for code in (bx.CORNER, bx.CORNER_SIZE):
        for vit in (False, True):
            np.testing.assert_allclose(bx.decode(prior, var, bx.encode(prior, var, gt, code, vit), code, vit), gt, atol=1e-6)


def test_bipartite_matches_a_gt_below_threshold_and_per_prediction_the_rest():
    priors = np.array([[0.0, 0.0, 0.2, 0.2],     # overlaps gt0 a little (IoU 0.25)
                       [0.5, 0.5, 1.0, 1.0],     # equals gt1
                       [0.55, 0.5, 1.0, 1.0],    # IoU 0.9 with gt1
                       [0.6, 0.6, 0.9, 0.9],     # IoU 0.36 with gt1
                       [0.0, 0.6, 0.1, 0.7]],    # overlaps nothing
                      dtype=np.float32)
    gt = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 1.0, 1.0]], dtype=np.float32)
    idx, ov = bx.match(priors, gt, 0.5, bx.PER_PREDICTION)
    assert idx.tolist() == [0, 1, 1, -1, -1]
    want = [loop_iou(priors[0], gt[0]), 1.0, loop_iou(priors[2], gt[1]), loop_iou(priors[3], gt[1]), 0.0]
    np.testing.assert_allclose(ov, want, rtol=1e-6)
    assert ov[0] < 0.5                                # matched by the bipartite pass though below 0.5
    idx_b, _ = bx.match(priors, gt, 0.5, bx.BIPARTITE)
    assert idx_b.tolist() == [0, 1, -1, -1, -1]


def test_bipartite_is_greedy_on_the_global_maximum_and_ties_keep_the_first_prior():
    priors = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], dtype=np.float32)
    gt = np.array([[0, 0, 1, 1], [0, 0, 0.5, 1]], dtype=np.float32)
    idx, ov = bx.match(priors, gt, 0.99, bx.BIPARTITE)
    # both priors tie on gt0 (IoU 1); the first prior takes it, the second gets gt1 (IoU 0.5)
    assert idx.tolist() == [0, 1]
    assert ov.tolist() == pytest.approx([1.0, 0.5])


def test_cross_boundary_priors_are_ignored():
    priors = np.array([[-0.1, 0, 0.5, 0.5], [0, 0, 0.5, 0.5]], dtype=np.float32)
    idx, _ = bx.match(priors, [[0, 0, 0.5, 0.5]], 0.5, bx.PER_PREDICTION, ignore_cross_boundary=True)
    assert idx.tolist() == [-2, 0]


def loop_nms(boxes, scores, thr, top_k, score_thr):
    cand = [i for i in range(len(scores)) if scores[i] > score_thr]
    cand.sort(key=lambda i: -scores[i])                  # Python's sort is stable, like the CPU path
    cand = cand[:top_k] if top_k > -1 else cand
    kept = []
    for i in cand:
        if all(loop_iou(boxes[i], boxes[j]) <= thr for j in kept):
            kept.append(i)
    return kept


def test_nms_matches_loop_with_top_k_limiting_candidates():
    rng = np.random.default_rng(3)
    xy = rng.random((60, 2)) * 0.7
    wh = rng.random((60, 2)) * 0.3 + 0.02
    boxes = np.concatenate([xy, xy + wh], 1).astype(np.float32)
    scores = rng.random(60).astype(np.float32)
    for thr, top_k, st in ((0.45, 400, 0.01), (0.3, 10, 0.2), (0.7, -1, 0.0)):
        got = bx.nms(boxes, scores, thr, top_k, score_threshold=st).tolist()
        assert got == loop_nms(boxes.astype(np.float64), scores, thr, top_k, st)


def test_nms_adaptive_eta_lowers_the_threshold_after_each_keep():
    boxes = np.array([[0, 0, 1, 1], [0.5, 0, 1.5, 1], [1.4, 0, 2.4, 1], [1.7, 0, 2.7, 1]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=np.float32)
    # IoUs of neighbours: b0-b1 1/3, b1-b2 0.1/1.9, b2-b3 0.7/1.3 = 0.538
    assert bx.nms(boxes, scores, 0.6).tolist() == [0, 1, 2, 3]
    # eta 0.9: after keeping b0 the threshold is 0.54, after b1 0.486, after b2 0.5 limit stops -> 0.486 < 0.538
    assert bx.nms(boxes, scores, 0.6, eta=0.9).tolist() == [0, 1, 2]
