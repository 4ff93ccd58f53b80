"""DetectionOutput's batched torch path against the per-image, per-class numpy loop it replaced
(kept here as the reference, verbatim in its decisions), on random inputs full of score ties."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from google.protobuf import text_format

from scratchdet import boxes as bx
from scratchdet.caffe.netstate import TEST
from scratchdet.caffe.schema import pb
from scratchdet.engine.layers.ssd import DetectionOutput


def old_detect(layer, loc, conf, priors, variances):
    """The loop implementation DetectionOutput had before (numpy, one image and class at a time)."""
    rows = []
    for i in range(loc.shape[0]):
        per_class = []
        decoded_by_loc = {}
        for c in range(layer.num_classes):
            if c == layer.bg:
                continue
            li = 0 if layer.share_location else c
            if li not in decoded_by_loc:
                decoded_by_loc[li] = bx.decode(priors, variances, loc[i, :, li], layer.code_type, layer.var_in_target)
            decoded = decoded_by_loc[li]
            scores = conf[i, :, c]
            keep = bx.nms(decoded, scores, layer.nms_threshold, layer.top_k, layer.eta, layer.conf_threshold)
            per_class.append((c, keep, scores[keep], decoded[keep]))
        total = sum(len(k) for _, k, _, _ in per_class)
        if layer.keep_top_k > -1 and total > layer.keep_top_k:
            flat = [(s, c, j) for c, keep, sc, _ in per_class for j, s in enumerate(sc)]
            order = sorted(range(len(flat)), key=lambda k: -flat[k][0])[:layer.keep_top_k]
            chosen: dict[int, list[int]] = {}
            for k in order:
                chosen.setdefault(flat[k][1], []).append(flat[k][2])
            per_class = [(c, keep[chosen[c]], sc[chosen[c]], dec[chosen[c]])
                         for c, keep, sc, dec in per_class if c in chosen]
        for c, keep, sc, dec in per_class:
            for j in range(len(keep)):
                rows.append([i, c, sc[j], *dec[j]])
    if not rows:
        out = np.full((loc.shape[0], 7), -1, dtype=np.float32)
        out[:, 0] = np.arange(loc.shape[0])
        return out
    return np.asarray(rows, dtype=np.float32)


def layer_for(num_classes, n, n_p, *, nms=0.45, top_k=None, keep_top_k=-1, conf=None, eta=1.0, share=True,
              code="CENTER_SIZE", var_in_target=False, bg=0):
    text = (f'name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "pb" top: "det" '
            f'detection_output_param {{ num_classes: {num_classes} share_location: {str(share).lower()} '
            f'background_label_id: {bg} nms_param {{ nms_threshold: {nms} eta: {eta} '
            + (f'top_k: {top_k} ' if top_k is not None else '') + '} '
            f'code_type: {code} keep_top_k: {keep_top_k} variance_encoded_in_target: {str(var_in_target).lower()} '
            + (f'confidence_threshold: {conf} ' if conf is not None else '') + '}')
    lp = text_format.Parse(text, pb.LayerParameter())
    loc_classes = 1 if share else num_classes
    return DetectionOutput(lp, TEST, [(n, n_p * loc_classes * 4), (n, n_p * num_classes), (1, 2, n_p * 4)],
                           [(1, 1, 1, 7)])


CASES = [
    dict(),                                                            # top_k unset: every candidate
    dict(top_k=40, keep_top_k=30, conf=0.3),
    dict(top_k=10, keep_top_k=12, conf=0.0, nms=0.3),
    dict(top_k=60, keep_top_k=-1, conf=0.25, eta=0.8, nms=0.7),        # adaptive threshold
    dict(top_k=25, keep_top_k=20, conf=0.1, share=False, bg=2),
    dict(top_k=30, keep_top_k=25, conf=0.2, code="CORNER", var_in_target=True),
    dict(top_k=30, keep_top_k=5, conf=0.2, code="CORNER_SIZE"),
    dict(top_k=5, keep_top_k=7, conf=1.0),                             # nothing passes: -1 rows
]


@pytest.mark.parametrize("case", CASES)
def test_batched_detection_output_equals_the_loop(case):
    rng = np.random.default_rng(len(str(case)))
    n, n_p, num_classes = 3, 120, 5
    layer = layer_for(num_classes, n, n_p, **case)
    centers = rng.integers(0, 6, (n_p, 2)) / 6 + 0.08
    sizes = rng.choice([0.1, 0.2, 0.3], (n_p, 2))
    priors = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).astype(np.float32)
    variances = np.tile(np.float32([0.1, 0.1, 0.2, 0.2]), (n_p, 1))
    loc_classes = 1 if case.get("share", True) else num_classes
    loc = rng.choice(np.float32([-1, -0.5, 0, 0.5, 1]), (n, n_p, loc_classes, 4)).astype(np.float32)
    if case.get("code") in ("CORNER", "CORNER_SIZE"):
        loc *= np.float32(0.05)
    # scores on a coarse grid: many exact ties inside a class and across classes
    conf = (rng.integers(0, 9, (n, n_p, num_classes)) / 8).astype(np.float32)
    want = old_detect(layer, loc, conf, priors, variances)
    got = layer.detect(torch.from_numpy(loc), torch.from_numpy(conf), torch.from_numpy(priors),
                       torch.from_numpy(variances)).numpy()
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(got[:, :3], want[:, :3])            # image, label, score: exact
    np.testing.assert_allclose(got[:, 3:], want[:, 3:], rtol=1e-6, atol=1e-6)
    if case.get("conf") != 1.0:
        assert len(want) > n and len(np.unique(want[:, 2])) < len(want) / 2     # ties were there


def test_nms_keep_matches_the_numpy_nms_on_chains_of_overlaps():
    """Boxes sliding by small steps: long suppression chains, the fixed point's hard case."""
    rng = np.random.default_rng(3)
    for eta in (1.0, 0.9):
        x = np.cumsum(rng.uniform(0.0, 0.08, 64)).astype(np.float32)
        boxes = np.stack([x, x * 0, x + 0.3, x * 0 + 0.3], 1).astype(np.float32)
        scores = np.linspace(1, 0.1, 64).astype(np.float32)
        want = bx.nms(boxes, scores, 0.5, eta=eta)
        keep = bx.nms_keep_t(torch.from_numpy(boxes)[None], torch.ones(1, 64, dtype=torch.bool), 0.5, eta)[0]
        assert np.flatnonzero(keep.numpy()).tolist() == want.tolist()


def test_overlap_t_equals_jaccard_on_finite_boxes_with_touching_and_inverted_ones():
    rng = np.random.default_rng(5)
    grid = np.float32([0, 0.25, 0.5, 0.75, 1])            # shared edges: touching boxes, exact ties
    a = rng.choice(grid, (40, 4)).astype(np.float32)      # some inverted, some empty
    b = np.concatenate([a[:10], rng.uniform(0, 1, (30, 4)).astype(np.float32)])
    want = bx.jaccard(a, b)
    got = bx.overlap_t(torch.from_numpy(a)[None], torch.from_numpy(b)[None])[0].numpy()
    same = np.isfinite(got)
    np.testing.assert_array_equal(got[same], want[same])
    assert (want[~same] == 0).all()                        # NaN only where both sizes are 0
    for t in (0.0, 0.3, 0.5):
        np.testing.assert_array_equal(got > t, want > t)
