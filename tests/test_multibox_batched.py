"""MultiBoxLoss batched across images on the net's device against the per-image numpy code it
replaced (kept here verbatim in its decisions as the reference): loss, gradients and match counts
on random batches with varied gt counts, difficult boxes, an image without gt, duplicate gt boxes
(IoU ties) and every option the engine supports."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from scratchdet import boxes as bx
from scratchdet.caffe.io import parse_text
from scratchdet.caffe.netstate import TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.engine.layers.losses import clamped_log_prob
from scratchdet.engine.net import Net

_MB = pb.MultiBoxLossParameter


def _split_priors_np(priors):
    arr = priors.detach().to("cpu", torch.float32).numpy().reshape(2, -1, 4)
    return arr[0], arr[1]


def ground_truth_np(label, num, background, use_difficult, where):
    rows = label.detach().to("cpu", torch.float32).numpy().reshape(-1, 8)
    out = []
    for i in range(num):
        r = rows[rows[:, 0] == i]
        if len(r) and (r[:, 1].astype(np.int64) == background).any():
            raise where.error("Found background label in the dataset.")
        diff = r[:, 7] > 0
        if not use_difficult:
            r, diff = r[~diff], diff[~diff]
        out.append((r[:, 1].astype(np.int64), r[:, 3:7].astype(np.float32), diff))
    return out


def old_match(self, priors, gts):
    out = []
    for labels, gboxes, _ in gts:
        if len(labels) == 0:
            out.append(None)
            continue
        out.append(bx.match(priors, gboxes, float(self.p.overlap_threshold), int(self.p.match_type),
                            bool(self.p.ignore_cross_boundary_bbox)))
    return out


def old_pos_labels(self, labels):
    if self.p.map_object_to_agnostic:
        return np.full_like(labels, self.bg + 1)
    return labels


def old_multibox(self, loc, conf, priors, label):
    """MultiBoxLoss.forward as it was before the batched version (verbatim in its decisions)."""
    mp = self.p
    loc, conf = loc.float(), conf.float()       # no-ops but under the opt-in mixed precision
    num = loc.shape[0]
    c = self.num_classes
    prior_boxes, variances = _split_priors_np(priors)
    n_p = len(prior_boxes)
    loc_classes = 1 if mp.share_location else c
    loc = loc.reshape(num, n_p, loc_classes, 4)
    conf = conf.reshape(num, n_p, c)
    gts = ground_truth_np(label, num, self.bg, bool(mp.use_difficult_gt), self)
    matches = old_match(self, prior_boxes, gts)
    # per image with gt: (positive prior indices, their matched gt indices), found once
    positives = [None if m is None else (np.flatnonzero(m[0] > -1), m[0][m[0] > -1]) for m in matches]
    num_matches = sum(len(p[0]) for p in positives if p is not None)

    # -- mining: rank every prior by its softmax/logistic loss against the bg label ---------
    neg_sel: list[np.ndarray] = []
    if self.mining == _MB.MAX_NEGATIVE:
        target = torch.full((num, n_p), self.bg, dtype=torch.long, device=conf.device)
        for i, p in enumerate(positives):
            if p is not None:
                lab = old_pos_labels(self, gts[i][0][p[1]])
                target[i, torch.from_numpy(p[0]).to(conf.device)] = torch.from_numpy(lab).to(conf.device)
        with torch.no_grad():
            if mp.conf_loss_type == _MB.SOFTMAX:
                logp = torch.log_softmax(conf.float(), dim=2).gather(2, target[..., None])[..., 0]
                rank = -clamped_log_prob(logp)
            else:
                onehot = torch.nn.functional.one_hot(target, c).float()
                rank = torch.nn.functional.binary_cross_entropy_with_logits(
                    conf.float(), onehot, reduction="none").sum(2)
        rank = rank.cpu().numpy()
        for i, m in enumerate(matches):
            if m is None:
                neg_sel.append(np.zeros(0, dtype=np.int64))
                continue
            index, overlap = m
            eligible = np.flatnonzero((index == -1) & (overlap < np.float32(mp.neg_overlap)))
            n_pos = len(positives[i][0])
            n_sel = min(int(n_pos * float(np.float32(mp.neg_pos_ratio))), len(eligible))
            order = np.argsort(-rank[i, eligible], kind="stable")[:n_sel]
            neg_sel.append(np.sort(eligible[order]))

    z = self._normalizer(num, n_p, num_matches)
    loss = loc.new_zeros(())
    # -- localization ---------------------------------------------------------------------
    if self.use_loc and num_matches > 0:
        img_idx, prior_idx, cls_idx, targets = [], [], [], []
        for i, p in enumerate(positives):
            if p is None:
                continue
            pos, g = p
            img_idx.append(np.full(len(pos), i))
            prior_idx.append(pos)
            cls_idx.append(np.zeros(len(pos), dtype=np.int64) if mp.share_location else gts[i][0][g])
            targets.append(gts[i][1][g])
        img_idx, prior_idx, cls_idx = (np.concatenate(a) for a in (img_idx, prior_idx, cls_idx))
        gt_boxes = np.concatenate(targets)
        enc = bx.encode(prior_boxes[prior_idx], variances[prior_idx], gt_boxes, int(mp.code_type),
                        bool(mp.encode_variance_in_target))
        dev = loc.device
        pred = loc[torch.from_numpy(img_idx).to(dev), torch.from_numpy(prior_idx).to(dev),
                   torch.from_numpy(cls_idx).to(dev)]
        tgt = torch.from_numpy(np.ascontiguousarray(enc, dtype=np.float32)).to(pred.device)
        if mp.bp_inside:
            outside = torch.from_numpy((gt_boxes < 0) | (gt_boxes > 1)).to(pred.device)
            pred = torch.where(outside, tgt, pred)
        if mp.encode_variance_in_target:
            v = torch.from_numpy(variances[prior_idx]).to(pred.device)
            pred, tgt = pred / v, tgt / v
        d = pred - tgt
        if mp.loc_loss_type == _MB.SMOOTH_L1:
            a = d.abs()
            loc_loss = torch.where(a < 1, 0.5 * d * d, a - 0.5).sum()
        else:
            loc_loss = 0.5 * (d * d).sum()
        loss = loss + float(mp.loc_weight) * loc_loss / z
    # -- confidence -----------------------------------------------------------------------
    if self.use_conf:
        rows_img, rows_prior, rows_label = [], [], []
        for i, p in enumerate(positives):
            if self.mining == _MB.NONE:
                lab = np.full(n_p, self.bg, dtype=np.int64)
                if p is not None:
                    lab[p[0]] = old_pos_labels(self, gts[i][0][p[1]])
                rows_img.append(np.full(n_p, i))
                rows_prior.append(np.arange(n_p))
                rows_label.append(lab)
                continue
            if p is None:
                continue
            pos, neg = p[0], neg_sel[i]
            rows_img.append(np.full(len(pos) + len(neg), i))
            rows_prior.append(np.concatenate([pos, neg]))
            rows_label.append(np.concatenate([old_pos_labels(self, gts[i][0][p[1]]),
                                              np.full(len(neg), self.bg, dtype=np.int64)]))
        if rows_img and sum(len(r) for r in rows_img):
            ri, rp, rl = (torch.from_numpy(np.concatenate(a).astype(np.int64)) for a in (rows_img, rows_prior, rows_label))
            logits = conf[ri.to(conf.device), rp.to(conf.device)]
            rl = rl.to(conf.device)
            if mp.conf_loss_type == _MB.SOFTMAX:
                conf_loss = -clamped_log_prob(torch.log_softmax(logits, dim=1).gather(1, rl[:, None])[:, 0]).sum()
            else:
                onehot = torch.nn.functional.one_hot(rl, c).to(logits.dtype)
                conf_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, onehot, reduction="sum")
            loss = loss + conf_loss / z
        return loss, num_matches


NET = """layer { name: "f" type: "Input" top: "f" input_param { shape { dim: %(n)d dim: 1 dim: 6 dim: 6 } } }
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: %(n)d dim: 3 dim: 300 dim: 300 } } }
layer { name: "pb" type: "PriorBox" bottom: "f" bottom: "data" top: "pb"
  prior_box_param { min_size: 60 max_size: 150 aspect_ratio: 2 flip: true %(clip)s
                    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "loc" type: "Input" top: "loc" input_param { shape { dim: %(n)d dim: %(nloc)d } } }
layer { name: "conf" type: "Input" top: "conf" input_param { shape { dim: %(n)d dim: %(nconf)d } } }
layer { name: "label" type: "Input" top: "label" input_param { shape { dim: 1 dim: 1 dim: %(g)d dim: 8 } } }
layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "loc" bottom: "conf" bottom: "pb" bottom: "label"
  top: "mbox_loss" propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  multibox_loss_param { num_classes: %(c)d background_label_id: 0 %(opts)s }
  loss_param { normalization: %(norm)s } }"""

BASE = ("loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1 share_location: true "
        "match_type: PER_PREDICTION overlap_threshold: 0.5 use_prior_for_matching: true use_difficult_gt: true "
        "neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE mining_type: MAX_NEGATIVE")
CASES = [
    (BASE, "VALID", False),
    (BASE.replace("overlap_threshold: 0.5", "overlap_threshold: 0.3"), "VALID", False),
    (BASE.replace("use_difficult_gt: true", "use_difficult_gt: false"), "VALID", False),
    (BASE.replace("PER_PREDICTION", "BIPARTITE") + " ignore_cross_boundary_bbox: true", "BATCH_SIZE", False),
    (BASE.replace("SOFTMAX", "LOGISTIC").replace("SMOOTH_L1", "L2").replace("loc_weight: 1", "loc_weight: 0.5"), "FULL", True),
    (BASE.replace("share_location: true", "share_location: false").replace("mining_type: MAX_NEGATIVE",
                                                                         "mining_type: NONE"), "NONE", False),
    (BASE + " bp_inside: true encode_variance_in_target: true map_object_to_agnostic: true", "VALID", True),
    (BASE.replace("CENTER_SIZE", "CORNER").replace("neg_pos_ratio: 3", "neg_pos_ratio: 1.7"), "VALID", False),
]


@pytest.mark.parametrize("opts,norm,clip", CASES)
def test_batched_multibox_loss_equals_the_per_image_code(opts, norm, clip):
    rng = np.random.default_rng(len(opts) + len(norm))
    n, c = 4, 5
    boxes = []
    for item, count in ((0, 3), (1, 0), (2, 5), (3, 1)):      # image 1 has no gt
        for k in range(count):
            x0, y0 = rng.uniform(-0.1, 0.7, 2)
            w, h = rng.uniform(0.05, 0.5, 2)
            boxes.append([item, rng.integers(1, c), k, x0, y0, x0 + w, y0 + h, float(rng.random() < 0.3)])
    # the same box twice with other classes: IoU ties in the bipartite and the per-prediction pass
    a, b = 2.5 / 6 - 0.175, 2.5 / 6 + 0.175           # centred on a prior cell: several priors overlap it
    boxes += [[2, 1, 7, a, a, b, b, 0.0], [2, 3, 8, a, a, b, b, 0.0]]
    label = np.asarray(boxes, dtype=np.float32)[rng.permutation(len(boxes))]
    text = NET % dict(n=n, c=c, g=len(label), opts=opts, norm=norm, clip="clip: true" if clip else "",
                      nloc=6 * 6 * 4 * 4 * (1 if "share_location: true" in opts else c), nconf=6 * 6 * 4 * c)
    net = Net(parse_text(text, pb.NetParameter), TRAIN, seed=0)
    loss_layer = net.layer("mbox_loss")
    n_loc = net.blob_shapes["loc"][1]
    loc = torch.from_numpy(rng.standard_normal((n, n_loc)).astype(np.float32) * 0.5)
    patterns = rng.standard_normal((3, c)).astype(np.float32) * 2     # few distinct rows: mining ties
    conf = torch.from_numpy(patterns[rng.integers(0, 3, (n, 6 * 6 * 4))].reshape(n, -1))
    feed = {"f": torch.zeros(n, 1, 6, 6), "data": torch.zeros(n, 3, 300, 300), "label": torch.from_numpy(label).reshape(1, 1, -1, 8)}
    grads = []
    results = []
    for use_old in (False, True):
        lc, cf = loc.clone().requires_grad_(True), conf.clone().requires_grad_(True)
        blobs = net.forward(dict(feed, loc=lc, conf=cf))
        if use_old:
            loss, matches = old_multibox(loss_layer, lc, cf, blobs["pb"], feed["label"])
        else:
            loss, matches = blobs["mbox_loss"], loss_layer.last_num_matches
        loss.backward()
        results.append((float(loss.detach()), matches))
        grads.append((lc.grad.clone(), cf.grad.clone()))
    (new, new_m), (old, old_m) = results
    assert new_m == old_m and old_m > 0
    assert new == pytest.approx(old, rel=2e-6, abs=1e-7)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert (grads[0][1].reshape(n, -1).abs().sum(1)[1] == 0) == ("MAX_NEGATIVE" in opts)  # no gt: no rows mined


@pytest.mark.parametrize("opts,norm,clip", [CASES[0], CASES[4], CASES[5]])
def test_a_batch_without_any_box_gives_caffes_loss(opts, norm, clip):
    """Every crop of a small batch can lose every object; the label blob is then the single
    filler row. Caffe matches nothing: with mining no row is mined and the loss is 0; without
    mining every prior is a background row. The per-image code is the reference."""
    n, c = 2, 5
    label = torch.tensor([[-1.0] * 8]).reshape(1, 1, 1, 8)
    text = NET % dict(n=n, c=c, g=1, opts=opts, norm=norm, clip="clip: true" if clip else "",
                      nloc=6 * 6 * 4 * 4 * (1 if "share_location: true" in opts else c), nconf=6 * 6 * 4 * c)
    net = Net(parse_text(text, pb.NetParameter), TRAIN, seed=0)
    rng = np.random.default_rng(0)
    loc = torch.from_numpy(rng.standard_normal((n, net.blob_shapes["loc"][1])).astype(np.float32))
    conf = torch.from_numpy(rng.standard_normal((n, 6 * 6 * 4 * c)).astype(np.float32))
    feed = {"f": torch.zeros(n, 1, 6, 6), "data": torch.zeros(n, 3, 300, 300), "label": label}
    lc, cf = loc.clone().requires_grad_(True), conf.clone().requires_grad_(True)
    blobs = net.forward(dict(feed, loc=lc, conf=cf))
    blobs["mbox_loss"].backward()
    old, matches = old_multibox(net.layer("mbox_loss"), loc, conf, blobs["pb"], label)
    assert net.layer("mbox_loss").last_num_matches == matches == 0
    assert float(blobs["mbox_loss"].detach()) == pytest.approx(float(old.detach()), rel=2e-6, abs=1e-7)
    assert (float(old.detach()) == 0.0) == ("MAX_NEGATIVE" in opts)
    assert torch.all(lc.grad == 0)
