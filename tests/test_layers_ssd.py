"""The SSD layers (PriorBox, MultiBoxLoss, DetectionOutput, DetectionEvaluate) run through the net
interpreter, against plain-loop numpy re-computations of caffe-ssd-spec §2.2-§2.6 written here."""
import math

import numpy as np
import pytest
import torch

from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine.net import Net
from scratchdet.errors import ScratchDetError

RNG = np.random.default_rng(77)
VAR = (0.1, 0.1, 0.2, 0.2)


def one_layer(layer_text: str, inputs: dict, phase=TEST) -> Net:
    head = "".join(f'input: "{name}" input_shape {{ {" ".join(f"dim: {d}" for d in shape)} }}\n'
                   for name, shape in inputs.items())
    return Net(parse_text(head + layer_text, pb.NetParameter), phase, seed=0)


def feed(**arrays):
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in arrays.items()}


PRIOR = """layer { name: "pb" type: "PriorBox" bottom: "f" bottom: "data" top: "pb"
  prior_box_param { min_size: %s max_size: %s aspect_ratio: 2 flip: true clip: false
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 %s } }"""


def test_priorbox_layer_golden_values_and_variances():
    net = one_layer(PRIOR % (30, 60, "step: 8 offset: 0.5"), {"f": (1, 1, 38, 38), "data": (1, 3, 300, 300)})
    out = net.forward(feed(f=np.zeros((1, 1, 38, 38)), data=np.zeros((1, 3, 300, 300))))["pb"].numpy()
    assert out.shape == (1, 2, 38 * 38 * 4 * 4)
    golden = [-0.036667, -0.036667, 0.063333, 0.063333, -0.057377, -0.057377, 0.084044, 0.084044,
              -0.057377, -0.022022, 0.084044, 0.048689, -0.022022, -0.057377, 0.048689, 0.084044]
    np.testing.assert_allclose(out[0, 0, :16], golden, atol=1e-6)
    np.testing.assert_array_equal(out[0, 1].reshape(-1, 4), np.tile(VAR, (38 * 38 * 4, 1)).astype(np.float32))
    # last cell: centre (37.5 * 8) = 300 px
    np.testing.assert_allclose(out[0, 0, -16:-12], [(300 - 15) / 300, (300 - 15) / 300, (300 + 15) / 300, (300 + 15) / 300],
                               atol=1e-6)


def test_priorbox_step_from_image_and_clip():
    net = one_layer(PRIOR.replace("clip: false", "clip: true") % (100, 200, ""), {"f": (1, 1, 2, 3), "data": (1, 3, 200, 300)})
    out = net.forward(feed(f=np.zeros((1, 1, 2, 3)), data=np.zeros((1, 3, 200, 300))))["pb"].numpy()[0, 0].reshape(-1, 4)
    assert out.shape == (2 * 3 * 4, 4)
    assert out.min() >= 0 and out.max() <= 1
    # step = 300/3 = 100 horizontally, 200/2 = 100 vertically: first cell centre (50, 50), side 100
    np.testing.assert_allclose(out[0], [0, 0, 100 / 300, 100 / 200], atol=1e-6)


# -- MultiBoxLoss: an independent loop implementation of §2.4 ----------------------------------------------

def ref_iou(a, b):
    if b[0] > a[2] or b[2] < a[0] or b[1] > a[3] or b[3] < a[1]:
        return 0.0
    iw, ih = min(a[2], b[2]) - max(a[0], b[0]), min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def ref_match(priors, gts, thr):
    P = len(priors)
    idx, ov = [-1] * P, [0.0] * P
    pairs = {}
    for i in range(P):
        for j, g in enumerate(gts):
            o = ref_iou(priors[i], g)
            if o > 1e-6:
                pairs[(i, j)] = o
                ov[i] = max(ov[i], o)
    pool = list(range(len(gts)))
    while pool:
        best, bi, bj = -1.0, -1, -1
        for i in range(P):
            if idx[i] != -1:
                continue
            for j in pool:
                if (i, j) in pairs and pairs[(i, j)] > best:
                    best, bi, bj = pairs[(i, j)], i, j
        if bi < 0:
            break
        idx[bi], ov[bi] = bj, best
        pool.remove(bj)
    for i in range(P):
        if idx[i] != -1:
            continue
        best, bj = -1.0, -1
        for j in range(len(gts)):
            o = pairs.get((i, j), 0.0)
            if o >= thr and o > best:
                best, bj = o, j
        if bj >= 0:
            idx[i], ov[i] = bj, best
    return idx, ov


def ref_multibox(loc, conf, priors, labels, C, neg_ratio=3.0, thr=0.5, neg_ov=0.5):
    """(loss, loc grad, conf grad, positives, negatives) in float64 loops."""
    N, P = conf.shape[0], len(priors)
    loc = loc.reshape(N, P, 4).astype(np.float64)
    conf = conf.reshape(N, P, C).astype(np.float64)
    rows = labels.reshape(-1, 8)
    lse = np.log(np.exp(conf).sum(2, keepdims=True))
    logp = conf - lse
    matches, pos_total = [], 0
    for n in range(N):
        g = rows[rows[:, 0] == n]
        if len(g) == 0:
            matches.append(None)
            continue
        idx, ov = ref_match(priors, g[:, 3:7], thr)
        matches.append((g, idx, ov))
        pos_total += sum(1 for i in idx if i > -1)
    Z = max(pos_total, 1)
    loss, gl, gc = 0.0, np.zeros_like(loc), np.zeros_like(conf)
    negs = []
    for n, m in enumerate(matches):
        if m is None:
            negs.append([])
            continue
        g, idx, ov = m
        pos = [i for i in range(P) if idx[i] > -1]
        elig = [i for i in range(P) if idx[i] == -1 and ov[i] < neg_ov]
        elig.sort(key=lambda i: logp[n, i, 0])             # largest -log p(bg) first
        neg = elig[:min(int(len(pos) * neg_ratio), len(elig))]
        negs.append(sorted(neg))
        for i in pos:
            gt = g[idx[i], 3:7]
            p = priors[i]
            pw, ph = p[2] - p[0], p[3] - p[1]
            pcx, pcy = (p[0] + p[2]) / 2, (p[1] + p[3]) / 2
            gw, gh = gt[2] - gt[0], gt[3] - gt[1]
            t = [((gt[0] + gt[2]) / 2 - pcx) / pw / VAR[0], ((gt[1] + gt[3]) / 2 - pcy) / ph / VAR[1],
                 math.log(gw / pw) / VAR[2], math.log(gh / ph) / VAR[3]]
            for k in range(4):
                d = loc[n, i, k] - t[k]
                loss += (0.5 * d * d if abs(d) < 1 else abs(d) - 0.5) / Z
                gl[n, i, k] = (d if abs(d) < 1 else np.sign(d)) / Z
            lab = int(g[idx[i], 1])
            loss += -logp[n, i, lab] / Z
            gc[n, i] = np.exp(logp[n, i]) / Z
            gc[n, i, lab] -= 1 / Z
        for i in neg:
            loss += -logp[n, i, 0] / Z
            gc[n, i] = np.exp(logp[n, i]) / Z
            gc[n, i, 0] -= 1 / Z
    return loss, gl.reshape(N, -1), gc.reshape(N, -1), pos_total, negs


MBOX = """layer { name: "pb" type: "PriorBox" bottom: "f" bottom: "data" top: "pb"
  prior_box_param { min_size: 60 max_size: 150 aspect_ratio: 2 flip: true variance: 0.1 variance: 0.1
                    variance: 0.2 variance: 0.2 } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "pb" bottom: "label"
  top: "mbox_loss" include { phase: TRAIN }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 num_classes: %d
    share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true
    background_label_id: 0 use_difficult_gt: true neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE }
  loss_param { normalization: VALID } }"""


def _mbox_case(C=4, H=5, W=5, N=3):
    P = H * W * 4
    label = np.array([[0, 1, 0, 0.10, 0.10, 0.40, 0.45, 0], [0, 3, 1, 0.50, 0.55, 0.95, 0.90, 0],
                      [0, 2, 2, 0.30, 0.30, 0.36, 0.34, 1],     # tiny and difficult: matched by the bipartite pass
                      [2, 2, 0, 0.05, 0.60, 0.60, 0.98, 0]], dtype=np.float32)   # image 1 has no gt
    shapes = {"f": (N, 1, H, W), "data": (N, 3, 300, 300), "loc": (N, P * 4), "conf": (N, P * C),
              "label": (1, 1, len(label), 8)}
    arrays = dict(f=np.zeros(shapes["f"]), data=np.zeros(shapes["data"]),
                  loc=RNG.standard_normal(shapes["loc"]) * 0.5, conf=RNG.standard_normal(shapes["conf"]) * 2,
                  label=label.reshape(1, 1, -1, 8))
    return shapes, arrays, label, P


def test_multibox_loss_value_and_gradients_equal_loop_reference():
    C = 4
    shapes, arrays, label, P = _mbox_case(C)
    net = one_layer(MBOX % C, shapes, TRAIN)
    inputs = feed(**arrays)
    inputs["loc"].requires_grad_(True)
    inputs["conf"].requires_grad_(True)
    blobs = net.forward(inputs)
    loss = net.total_loss(blobs)
    loss.backward()
    priors = blobs["pb"].numpy()[0, 0].reshape(-1, 4).astype(np.float64)
    ref_loss, ref_gl, ref_gc, n_pos, negs = ref_multibox(arrays["loc"], arrays["conf"], priors, label, C)
    assert n_pos >= 4 and net.layer("mbox_loss").last_num_matches == n_pos
    assert len(negs[1]) == 0                                  # an image without gt gives no negatives
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-5)
    np.testing.assert_allclose(inputs["loc"].grad.numpy(), ref_gl, atol=1e-6)
    np.testing.assert_allclose(inputs["conf"].grad.numpy(), ref_gc, atol=1e-6)
    # the selected negatives are exactly the conf rows with a gradient that are not positives
    grad_rows = np.abs(inputs["conf"].grad.numpy().reshape(3, P, C)).sum(2) > 0
    for n in (0, 2):
        assert set(np.flatnonzero(grad_rows[n])) >= set(negs[n])


def test_multibox_mining_count_is_three_negatives_per_positive():
    C = 4
    shapes, arrays, label, P = _mbox_case(C)
    net = one_layer(MBOX % C, shapes, TRAIN)
    inputs = feed(**arrays)
    inputs["conf"].requires_grad_(True)
    loss = net.total_loss(net.forward(inputs))
    loss.backward()
    priors = net.forward(feed(**arrays))["pb"].numpy()[0, 0].reshape(-1, 4).astype(np.float64)
    rows = np.abs(inputs["conf"].grad.numpy().reshape(3, P, C)).sum(2) > 0
    for n in (0, 2):
        g = label[label[:, 0] == n]
        idx, ov = ref_match(priors, g[:, 3:7], 0.5)
        n_pos = sum(1 for i in idx if i > -1)
        eligible = sum(1 for i in range(P) if idx[i] == -1 and ov[i] < 0.5)
        assert rows[n].sum() == n_pos + min(3 * n_pos, eligible)
    assert rows[1].sum() == 0


def test_multibox_normalization_modes_and_propagate_down_default():
    C = 4
    shapes, arrays, label, P = _mbox_case(C)
    valid = float(one_layer(MBOX % C, shapes, TRAIN).forward(feed(**arrays))["mbox_loss"])
    n_pos = one_layer(MBOX % C, shapes, TRAIN)
    n_pos.forward(feed(**arrays))
    m = n_pos.layer("mbox_loss").last_num_matches
    for mode, z in (("BATCH_SIZE", 3), ("FULL", 3 * P), ("NONE", 1)):
        net = one_layer((MBOX % C).replace("normalization: VALID", f"normalization: {mode}"), shapes, TRAIN)
        assert float(net.forward(feed(**arrays))["mbox_loss"]) == pytest.approx(valid * m / z, rel=1e-5)
    net = one_layer(MBOX % C, shapes, TRAIN)
    cfg = net.layer_config([layer.name for layer in net.layers].index("mbox_loss"))
    assert list(cfg.propagate_down) == [True, True, False, False]


def test_multibox_loss_rejects_background_label_in_data():
    C = 4
    shapes, arrays, label, P = _mbox_case(C)
    arrays["label"] = arrays["label"].copy()
    arrays["label"][0, 0, 0, 1] = 0
    with pytest.raises(ScratchDetError, match="background label"):
        one_layer(MBOX % C, shapes, TRAIN).forward(feed(**arrays))


# -- DetectionOutput ---------------------------------------------------------------------------------------

DETOUT = """layer { name: "pb" type: "PriorBox" bottom: "f" bottom: "data" top: "pb"
  prior_box_param { min_size: 60 max_size: 150 aspect_ratio: 2 flip: true variance: 0.1 variance: 0.1
                    variance: 0.2 variance: 0.2 } }
layer { name: "det" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "pb" top: "det"
  detection_output_param { num_classes: %d share_location: true background_label_id: 0
    nms_param { nms_threshold: %s top_k: %d } code_type: CENTER_SIZE keep_top_k: %d confidence_threshold: %s } }"""


def ref_detout(loc, conf, priors, C, nms_thr, top_k, keep_top_k, conf_thr):
    N, P = conf.shape[0], len(priors)
    loc = loc.reshape(N, P, 4).astype(np.float64)
    conf = conf.reshape(N, P, C)
    out = []
    for n in range(N):
        dec = []
        for i, p in enumerate(priors):
            pw, ph = p[2] - p[0], p[3] - p[1]
            cx = VAR[0] * loc[n, i, 0] * pw + (p[0] + p[2]) / 2
            cy = VAR[1] * loc[n, i, 1] * ph + (p[1] + p[3]) / 2
            w, h = math.exp(VAR[2] * loc[n, i, 2]) * pw, math.exp(VAR[3] * loc[n, i, 3]) * ph
            dec.append((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2))
        found = []
        for c in range(1, C):
            cand = sorted((i for i in range(P) if conf[n, i, c] > conf_thr), key=lambda i: -conf[n, i, c])[:top_k]
            kept = []
            for i in cand:
                if all(ref_iou(dec[i], dec[j]) <= nms_thr for j in kept):
                    kept.append(i)
            found += [(conf[n, i, c], c, i) for i in kept]
        if keep_top_k > -1 and len(found) > keep_top_k:
            found = sorted(found, key=lambda t: -t[0])[:keep_top_k]
        found.sort(key=lambda t: (t[1], -t[0]))
        out += [[n, c, s, *dec[i]] for s, c, i in found]
    return np.asarray(out, dtype=np.float64).reshape(-1, 7)


@pytest.mark.parametrize("nms_thr,top_k,keep,conf_thr", [(0.45, 400, 200, 0.01), (0.3, 5, 7, 0.2)])
def test_detection_output_equals_loop_reference(nms_thr, top_k, keep, conf_thr):
    C, H, W, N = 4, 5, 5, 2
    P = H * W * 4
    conf = RNG.random((N, P, C)).astype(np.float32) ** 3
    conf /= conf.sum(2, keepdims=True)
    shapes = {"f": (N, 1, H, W), "data": (N, 3, 300, 300), "loc": (N, P * 4), "conf": (N, P * C)}
    net = one_layer(DETOUT % (C, nms_thr, top_k, keep, conf_thr), shapes)
    loc = RNG.standard_normal((N, P * 4)).astype(np.float32)
    blobs = net.forward(feed(f=np.zeros(shapes["f"]), data=np.zeros(shapes["data"]), loc=loc, conf=conf.reshape(N, -1)))
    got = blobs["det"].numpy()
    priors = blobs["pb"].numpy()[0, 0].reshape(-1, 4).astype(np.float64)
    want = ref_detout(loc, conf, priors, C, nms_thr, top_k, keep, conf_thr)
    assert got.shape == (1, 1, len(want), 7) and len(want) > 0
    np.testing.assert_allclose(got[0, 0], want, atol=2e-6)


def test_detection_output_empty_batch_gives_minus_one_rows():
    C, H, W, N = 3, 2, 2, 2
    P = H * W * 4
    shapes = {"f": (N, 1, H, W), "data": (N, 3, 300, 300), "loc": (N, P * 4), "conf": (N, P * C)}
    net = one_layer(DETOUT % (C, 0.45, 10, 5, 0.9), shapes)
    conf = np.full((N, P * C), 1 / C, dtype=np.float32)
    got = net.forward(feed(f=np.zeros(shapes["f"]), data=np.zeros(shapes["data"]), loc=np.zeros((N, P * 4)), conf=conf))["det"]
    want = np.full((N, 7), -1, dtype=np.float32)
    want[:, 0] = [0, 1]
    np.testing.assert_array_equal(got.numpy()[0, 0], want)


# -- DetectionEvaluate -------------------------------------------------------------------------------------

EVAL = """layer { name: "ev" type: "DetectionEvaluate" bottom: "det" bottom: "label" top: "ev"
  detection_evaluate_param { num_classes: 4 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false %s } }"""


def test_detection_evaluate_rows_by_hand(tmp_path):
    gt = np.array([[0, 1, 0, 0.1, 0.1, 0.5, 0.5, 0],
                   [0, 1, 1, 0.6, 0.6, 0.9, 0.9, 1],        # difficult
                   [1, 2, 0, 0.2, 0.2, 0.4, 0.4, 0],
                   [1, 3, 1, 0.0, 0.0, 1.0, 1.0, 0]], dtype=np.float32)
    det = np.array([[0, 1, 0.7, 0.1, 0.1, 0.5, 0.52],       # duplicate of gt0 (lower score) -> fp
                    [0, 1, 0.9, 0.1, 0.1, 0.5, 0.5],        # tp
                    [0, 1, 0.8, 0.6, 0.6, 0.9, 0.9],        # matches the difficult gt -> ignored (0, 0)
                    [0, 1, 0.6, 0.7, 0.0, 0.9, 0.2],        # no overlap -> fp
                    [0, 2, 0.5, 0.2, 0.2, 0.4, 0.4],        # class without gt in image 0 -> fp
                    [1, 2, 0.4, 0.2, 0.2, 0.4, 0.41]], dtype=np.float32)     # tp
    net = one_layer(EVAL % "", {"det": (1, 1, len(det), 7), "label": (1, 1, len(gt), 8)})
    out = net.forward(feed(det=det.reshape(1, 1, -1, 7), label=gt.reshape(1, 1, -1, 8)))["ev"].numpy()[0, 0]
    want = [[-1, 1, 1, -1, -1], [-1, 2, 1, -1, -1], [-1, 3, 1, -1, -1],
            [0, 1, 0.9, 1, 0], [0, 1, 0.8, 0, 0], [0, 1, 0.7, 0, 1], [0, 1, 0.6, 0, 1],
            [0, 2, 0.5, 0, 1], [1, 2, 0.4, 1, 0]]
    np.testing.assert_allclose(out, np.asarray(want, dtype=np.float32), atol=1e-7)


def test_detection_evaluate_pixel_sizes_use_plus_one_iou(tmp_path):
    # 100x100 image: gt 0..49 px; detection shifted by 25 px. Normalized IoU = 0.5*1/(1.5) = 1/3 -> fp;
    # in pixels with +1: boxes [0,50]x[0,50] and [25,75]x[0,50]: inter 26*51, each 51*51 -> 0.34 -> fp too;
    # a 5-px shift: normalized 0.45/0.55 = 0.818; pixel (46*51)/(2*51*51-46*51) = 0.8214
    sizes = tmp_path / "ns.txt"
    sizes.write_text("img0 100 100\n")
    gt = np.array([[0, 1, 0, 0.0, 0.0, 0.5, 0.5, 0]], dtype=np.float32)
    det = np.array([[0, 1, 0.9, 0.05, 0.0, 0.55, 0.5]], dtype=np.float32)
    net = one_layer(EVAL % f'name_size_file: "{sizes}"', {"det": (1, 1, 1, 7), "label": (1, 1, 1, 8)})
    out = net.forward(feed(det=det.reshape(1, 1, 1, 7), label=gt.reshape(1, 1, 1, 8)))["ev"].numpy()[0, 0]
    assert out[-1].tolist() == pytest.approx([0, 1, 0.9, 1, 0])
    layer = net.layer("ev")
    assert layer.count == 0                                   # one line, wrapped after one image
    from scratchdet import boxes as bx
    assert bx.jaccard(det[:, 3:7] * 100, gt[:, 3:7] * 100, normalized=False)[0, 0] == pytest.approx(46 * 51 / (2 * 51 * 51 - 46 * 51), rel=1e-5)


def test_detection_evaluate_missing_name_size_file_is_one_line_error(tmp_path):
    with pytest.raises(ScratchDetError, match="name_size_file"):
        one_layer(EVAL % f'name_size_file: "{tmp_path}/none.txt"', {"det": (1, 1, 1, 7), "label": (1, 1, 1, 8)})
