"""The SSD fork's detection layers (caffe-ssd-spec §2.2-§2.6): PriorBox, MultiBoxLoss,
DetectionOutput and DetectionEvaluate. Box arithmetic, matching and NMS come from
``scratchdet.boxes``; MultiBoxLoss and DetectionOutput take their discrete decisions (matches,
mined negatives, NMS survivors) for the whole batch at once on the net's device, in float32 with
Caffe's tie rules, and the losses are torch expressions so autograd gives Caffe's gradients."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import torch

from ... import boxes as bx
from ...caffe.schema import pb
from ...caffe.shapes import prior_box_counts
from .base import Layer, register
from .losses import clamped_log_prob, normalization_mode

_MB = pb.MultiBoxLossParameter
_MODE = pb.LossParameter


def ground_truth_padded(label: torch.Tensor, num: int, background: int, use_difficult: bool, where):
    """GetGroundTruth for the whole batch: (labels [N, G] int64, boxes [N, G, 4] float32, valid
    [N, G] bool) numpy arrays from the [1, 1, G', 8] label blob, each image's boxes in blob order
    and padded to the largest count G; rows with item_id -1 are padding. (The label blob is small
    and stays on the host, so this costs no device sync.)"""
    rows = label.detach().to("cpu", torch.float32).numpy().reshape(-1, 8)
    item = rows[:, 0]
    rows = rows[(item >= 0) & (item < num) & (item == np.floor(item))]
    if len(rows) and (rows[:, 1].astype(np.int64) == background).any():
        raise where.error("Found background label in the dataset.")
    if not use_difficult:
        rows = rows[~(rows[:, 7] > 0)]
    item = rows[:, 0].astype(np.int64)
    order = np.argsort(item, kind="stable")
    rows, item = rows[order], item[order]
    counts = np.bincount(item, minlength=num)
    g = max(int(counts.max()) if num else 0, 1)   # a batch without any box still has a (padding) column to gather
    slot = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    labels = np.zeros((num, g), dtype=np.int64)
    boxes = np.zeros((num, g, 4), dtype=np.float32)
    valid = np.zeros((num, g), dtype=bool)
    labels[item, slot] = rows[:, 1].astype(np.int64)
    boxes[item, slot] = rows[:, 3:7]
    valid[item, slot] = True
    return labels, boxes, valid


@register("PriorBox")
class PriorBox(Layer):
    """Prior boxes and variances of one feature map, [1, 2, H*W*num_priors*4]."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        pp = lp.prior_box_param
        self.aspect_ratios, self.per_cell = prior_box_counts(pp)
        if len(pp.variance) == 4:
            self.variance = [float(v) for v in pp.variance]
        elif len(pp.variance) == 1:
            self.variance = [float(pp.variance[0])] * 4
        elif not pp.variance:
            self.variance = [0.1] * 4
        else:
            raise self.error(f"needs 1 or 4 variance values, got {len(pp.variance)}")
        if any(v <= 0 for v in self.variance):
            raise self.error("variance must be positive")
        if pp.HasField("img_size") and (pp.HasField("img_h") or pp.HasField("img_w")):
            raise self.error("give either img_size or img_h/img_w")
        if pp.HasField("step") and (pp.HasField("step_h") or pp.HasField("step_w")):
            raise self.error("give either step or step_h/step_w")
        self._cache: dict[tuple, torch.Tensor] = {}

    def compute(self, height: int, width: int, img_h: int, img_w: int) -> np.ndarray:
        pp = self.lp.prior_box_param
        if pp.HasField("img_size"):
            img_h = img_w = int(pp.img_size)
        elif pp.HasField("img_h") or pp.HasField("img_w"):
            img_h, img_w = int(pp.img_h), int(pp.img_w)
        if pp.HasField("step"):
            step_h = step_w = float(pp.step)
        elif pp.HasField("step_h") or pp.HasField("step_w"):
            step_h, step_w = float(pp.step_h), float(pp.step_w)
        else:
            step_h = float(np.float32(img_h) / np.float32(height))
            step_w = float(np.float32(img_w) / np.float32(width))
        priors = bx.prior_boxes(height, width, img_h, img_w, step_h, step_w, list(pp.min_size),
                                list(pp.max_size), self.aspect_ratios, float(pp.offset), bool(pp.clip))
        var = np.tile(np.asarray(self.variance, dtype=np.float32), (len(priors), 1))
        return np.stack([priors.reshape(-1), var.reshape(-1)])[None]

    def forward(self, feature, image):
        key = (tuple(feature.shape[2:]), tuple(image.shape[2:]), feature.device)
        if key not in self._cache:
            arr = self.compute(int(feature.shape[2]), int(feature.shape[3]), int(image.shape[2]), int(image.shape[3]))
            self._cache[key] = torch.from_numpy(arr).to(feature.device)
        return (self._cache[key],)


@register("MultiBoxLoss")
class MultiBoxLoss(Layer):
    """Matching, hard negative mining and loc (smooth L1 / L2) + conf (softmax / logistic) loss,
    normalized as ``loss_param`` says; only terms whose propagate_down is true are added."""

    is_loss = True
    default_propagate_down = (True, True, False, False)

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        mp = lp.multibox_loss_param
        if not mp.HasField("num_classes"):
            raise self.error("multibox_loss_param.num_classes is required")
        self.p = mp
        self.num_classes = int(mp.num_classes)
        self.bg = int(mp.background_label_id)
        self.mining = int(mp.mining_type)
        if mp.HasField("do_neg_mining"):
            if mp.do_neg_mining != (self.mining != _MB.NONE):
                raise self.error("do_neg_mining disagrees with mining_type")
        if self.mining != _MB.NONE and not mp.share_location:
            raise self.error("negative mining needs share_location: true")
        if self.mining == _MB.HARD_EXAMPLE:
            raise self.error("mining_type HARD_EXAMPLE is not supported by the torch engine (SSD uses MAX_NEGATIVE)")
        if not mp.use_prior_for_matching:
            raise self.error("use_prior_for_matching: false is not supported by the torch engine")
        if mp.HasField("nms_param") and mp.nms_param.nms_threshold > 0 and self.mining == _MB.MAX_NEGATIVE:
            raise self.error("nms_param in mining is not supported by the torch engine")
        self.mode = normalization_mode(lp.loss_param)
        pd = list(lp.propagate_down) or list(self.default_propagate_down)
        if len(pd) > 2 and (pd[2] or pd[3]):
            raise self.error("cannot backpropagate to prior boxes or labels")
        self.use_loc, self.use_conf = bool(pd[0]), bool(pd[1])
        self._num_matches = torch.zeros((), dtype=torch.long)

    @property
    def last_num_matches(self) -> int:
        """Positives of the last forward (read on demand: a host sync on a GPU)."""
        return int(self._num_matches)

    def forward(self, loc, conf, priors, label):
        """Every image at once on the net's device: no per-image loop, and no host sync when the
        label blob is on the host (the AnnotatedData layer keeps it there)."""
        mp = self.p
        num = loc.shape[0]
        c = self.num_classes
        loc, conf = loc.float(), conf.float()       # no-ops but under the opt-in mixed precision
        dev = loc.device
        pv = priors.detach().float().reshape(2, -1, 4)
        prior_boxes, variances = pv[0], pv[1]
        n_p = prior_boxes.shape[0]
        loc_classes = 1 if mp.share_location else c
        loc = loc.reshape(num, n_p, loc_classes, 4)
        conf = conf.reshape(num, n_p, c)
        gt_labels, gt_boxes, gt_valid = (torch.from_numpy(a).to(dev, non_blocking=True) for a in
                                         ground_truth_padded(label, num, self.bg, bool(mp.use_difficult_gt), self))
        has_gt = gt_valid.any(1)                                             # [N]
        index, overlap = bx.match_t(prior_boxes, gt_boxes, gt_valid, float(mp.overlap_threshold),
                                    int(mp.match_type), bool(mp.ignore_cross_boundary_bbox))
        pos = index > -1                                                     # [N, P]
        gt_of = index.clamp(min=0)
        matched_label = torch.gather(gt_labels, 1, gt_of)                    # [N, P] (valid where pos)
        pos_label = torch.full_like(matched_label, self.bg + 1) if mp.map_object_to_agnostic else matched_label
        self._num_matches = pos.sum()
        z = self._normalizer_t(num, n_p, self._num_matches)

        # per-prior confidence loss against each prior's target (positive label, else background)
        target = torch.where(pos, pos_label, torch.full_like(pos_label, self.bg))
        if mp.conf_loss_type == _MB.SOFTMAX:
            logp = torch.log_softmax(conf, dim=2).gather(2, target[..., None])[..., 0]
            conf_per = -clamped_log_prob(logp)                               # [N, P]
        else:
            onehot = torch.nn.functional.one_hot(target, c).to(conf.dtype)
            conf_per = torch.nn.functional.binary_cross_entropy_with_logits(conf, onehot, reduction="none").sum(2)

        # -- mining: the most lossy eligible negatives, neg_pos_ratio per positive --------------------
        if self.mining == _MB.MAX_NEGATIVE:
            eligible = (index == -1) & (overlap < float(np.float32(mp.neg_overlap))) & has_gt[:, None]
            rank = torch.where(eligible, conf_per.detach(), conf_per.new_full((), -math.inf))
            n_sel = torch.minimum((pos.sum(1).double() * float(np.float32(mp.neg_pos_ratio))).floor().long(),
                                  eligible.sum(1))
            order = bx.top_desc_t(rank, n_p)                                 # ties: lower prior first
            chosen = torch.arange(n_p, device=dev)[None, :] < n_sel[:, None]
            neg = torch.zeros_like(pos).scatter_(1, order, chosen)
            rows = pos | neg
        else:
            rows = torch.ones_like(pos)

        loss = loc.new_zeros(())
        # -- localization -------------------------------------------------------------------------
        if self.use_loc:
            cls_idx = torch.zeros_like(index) if mp.share_location else matched_label
            pred = torch.gather(loc, 2, cls_idx[:, :, None, None].expand(num, n_p, 1, 4))[:, :, 0]   # [N, P, 4]
            gt_box = torch.gather(gt_boxes, 1, gt_of[..., None].expand(num, n_p, 4))                   # [N, P, 4]
            safe_gt = torch.where(pos[..., None], gt_box, prior_boxes.expand(num, n_p, 4))
            tgt = bx.encode(prior_boxes.expand(num, n_p, 4), variances.expand(num, n_p, 4), safe_gt,
                            int(mp.code_type), bool(mp.encode_variance_in_target))
            if mp.bp_inside:
                pred = torch.where((gt_box < 0) | (gt_box > 1), tgt, pred)
            if mp.encode_variance_in_target:
                pred, tgt = pred / variances, tgt / variances
            d = pred - tgt
            if mp.loc_loss_type == _MB.SMOOTH_L1:
                a = d.abs()
                per = torch.where(a < 1, 0.5 * d * d, a - 0.5)
            else:
                per = 0.5 * d * d
            loc_loss = torch.where(pos[..., None], per, per.new_zeros(())).sum()
            loss = loss + float(mp.loc_weight) * loc_loss / z
        # -- confidence -----------------------------------------------------------------------------
        if self.use_conf:
            conf_loss = torch.where(rows, conf_per, conf_per.new_zeros(())).sum()
            loss = loss + conf_loss / z
        return (loss,)

    def _normalizer_t(self, num: int, n_p: int, num_matches: torch.Tensor):
        if self.mode == _MODE.VALID:
            return num_matches.clamp(min=1).to(torch.float32)
        return self._normalizer(num, n_p, 0)

    def _normalizer(self, num: int, n_p: int, num_matches: int) -> float:
        if self.mode == _MODE.FULL:
            z = num * n_p
        elif self.mode == _MODE.VALID:
            z = num_matches
        elif self.mode == _MODE.BATCH_SIZE:
            z = num
        else:
            z = 1
        return float(max(z, 1))


@register("DetectionOutput")
class DetectionOutput(Layer):
    """Decode, per-class NMS (top_k candidates), keep_top_k over classes: rows
    [image, label, score, xmin, ymin, xmax, ymax], [1, 1, K, 7]."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        dp = lp.detection_output_param
        if not dp.HasField("num_classes"):
            raise self.error("detection_output_param.num_classes is required")
        self.num_classes = int(dp.num_classes)
        self.bg = int(dp.background_label_id)
        nms = dp.nms_param
        self.nms_threshold = float(nms.nms_threshold)
        self.top_k = int(nms.top_k) if nms.HasField("top_k") else -1
        self.eta = float(nms.eta)
        if self.nms_threshold < 0:
            raise self.error("nms_threshold must be non-negative")
        if not 0 < self.eta <= 1:
            raise self.error("eta must be in (0, 1]")
        self.conf_threshold = float(dp.confidence_threshold) if dp.HasField("confidence_threshold") else None
        self.keep_top_k = int(dp.keep_top_k)
        self.code_type = int(dp.code_type)
        self.var_in_target = bool(dp.variance_encoded_in_target)
        self.share_location = bool(dp.share_location)
        self.saver = None              # result files of test passes: see enable_saving
        self.clip = bool(dp.clip)      # not the SSD fork's: OpenCV's (see caffe.proto)
        if dp.HasField("clip"):
            print(f"warning: {self.where}: detection_output_param.clip is not an SSD fork field (newer forks, "
                  f"OpenCV); {'decoded boxes are clipped to [0, 1] before NMS, as OpenCV does' if self.clip else 'false: no effect'}",
                  file=sys.stderr)

    def enable_saving(self) -> bool:
        """Write ``save_output_param``'s result files from now on (test passes only; see
        detection_save). False when the parameters ask for none."""
        from .detection_save import DetectionSaver
        self.saver = DetectionSaver.from_param(self.lp.detection_output_param, self.num_classes, self.where)
        if self.saver is not None:
            self.saver.enable()
        return self.saver is not None

    def detect(self, loc: torch.Tensor, conf: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor) -> torch.Tensor:
        """Rows [K, 7] for a batch given loc [N, P, L, 4], conf [N, P, C], priors and variances
        [P, 4], all on one device, every image and class at once: candidates above the
        confidence threshold, stable-sorted by score (ties: lower prior first) and cut to top_k;
        greedy NMS; then per image the keep_top_k best over classes (ties: lower class, then
        candidate order); rows by image, class, then score."""
        n, n_p = conf.shape[0], conf.shape[1]
        dev = conf.device
        classes = [c for c in range(self.num_classes) if c != self.bg]
        cls = torch.tensor(classes, dtype=torch.long, device=dev)
        decoded = bx.decode(priors[:, None, :], variances[:, None, :], loc, self.code_type, self.var_in_target)
        if self.clip:           # newer forks' clip (OpenCV's face detector): boxes into [0, 1] before NMS
            decoded = decoded.clamp(0.0, 1.0)
        scores = conf[:, :, cls].permute(0, 2, 1)                          # [N, C', P]
        valid = scores > float(np.float32(self.conf_threshold)) if self.conf_threshold is not None \
            else torch.ones_like(scores, dtype=torch.bool)
        key = torch.where(valid, scores, scores.new_full((), -math.inf))
        k = n_p if self.top_k < 0 else min(self.top_k, n_p)
        order = bx.top_desc_t(key, k)
        valid = torch.gather(valid, -1, order)
        kmax = int(valid.sum(-1).max()) if valid.numel() else 0             # host sync: output size
        order, valid = order[..., :kmax], valid[..., :kmax]
        score = torch.gather(scores, -1, order)                             # [N, C', K]
        if self.share_location:
            boxes = decoded[:, :, 0][:, None].expand(n, len(classes), n_p, 4)
        else:
            boxes = decoded[:, :, cls].permute(0, 2, 1, 3)                    # [N, C', P, 4]
        cand = torch.gather(boxes, 2, order[..., None].expand(*order.shape, 4))
        rows_nc = n * len(classes)
        keep = bx.nms_keep_t(cand.reshape(rows_nc, kmax, 4), valid.reshape(rows_nc, kmax), self.nms_threshold,
                             self.eta).reshape(valid.shape)
        if self.keep_top_k > -1:
            flat = torch.where(keep, score, score.new_full((), -math.inf)).reshape(n, -1)
            best = bx.top_desc_t(flat, self.keep_top_k)
            chosen = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, best, True)
            keep = keep & chosen.reshape(keep.shape)
        img, c, j = keep.nonzero(as_tuple=True)
        if len(img) == 0:
            out = torch.full((n, 7), -1.0, device=dev)
            out[:, 0] = torch.arange(n, device=dev, dtype=out.dtype)
            return out
        return torch.cat([img[:, None].to(score.dtype), cls[c][:, None].to(score.dtype),
                          score[img, c, j][:, None], cand[img, c, j]], 1)

    def forward(self, loc, conf, priors):
        num = loc.shape[0]
        pv = priors.detach().float().reshape(2, -1, 4)
        n_p = pv.shape[1]
        rows = self.detect(loc.detach().float().reshape(num, n_p, -1, 4),
                           conf.detach().float().reshape(num, n_p, self.num_classes), pv[0], pv[1])
        if self.saver is not None:
            self.saver.add(rows.cpu().numpy(), num)
        return (rows.reshape(1, 1, -1, 7),)


@register("DetectionEvaluate")
class DetectionEvaluate(Layer):
    """Per-class gt counts then one [image, label, score, tp, fp] row per detection, [1, 1, R, 5]."""

    def __init__(self, lp, phase, bottom_shapes, top_shapes):
        super().__init__(lp, phase, bottom_shapes, top_shapes)
        ep = lp.detection_evaluate_param
        if not ep.HasField("num_classes"):
            raise self.error("detection_evaluate_param.num_classes is required")
        if ep.overlap_threshold <= 0:
            raise self.error("overlap_threshold must be positive")
        self.num_classes = int(ep.num_classes)
        self.bg = int(ep.background_label_id)
        self.threshold = np.float32(ep.overlap_threshold)
        self.evaluate_difficult = bool(ep.evaluate_difficult_gt)
        self.sizes: list[tuple[int, int]] = []
        if ep.name_size_file:
            self.sizes = read_name_sizes(ep.name_size_file, self)
        if ep.HasField("resize_param"):
            raise self.error("resize_param is not supported by the torch engine")
        self.count = 0

    def forward(self, detections, label):
        dets = detections.detach().to("cpu", torch.float32).numpy().reshape(-1, 7)
        gt = label.detach().to("cpu", torch.float32).numpy().reshape(-1, 8)
        gt = gt[gt[:, 0] != -1]
        rows = []
        for c in range(self.num_classes):
            if c == self.bg:
                continue
            g = gt[gt[:, 1] == c]
            n = len(g) if self.evaluate_difficult else int((g[:, 7] == 0).sum())
            rows.append([-1, c, n, -1, -1])
        normalized = not self.sizes
        # every image with a row (the all-empty batch's -1 rows included) advances the size line
        for image in sorted({int(v) for v in dets[:, 0] if v != -1}):
            d_img = dets[(dets[:, 0] == image) & (dets[:, 1] != -1)]
            g_img = gt[gt[:, 0] == image]
            for c in sorted({int(v) for v in d_img[:, 1] if v != -1}):
                d = d_img[d_img[:, 1] == c]
                d = d[np.argsort(-d[:, 2], kind="stable")]
                g = g_img[g_img[:, 1] == c]
                if len(g) == 0:
                    rows.extend([image, c, s, 0, 1] for s in d[:, 2])
                    continue
                dbox, gbox = d[:, 3:7], g[:, 3:7]
                if not normalized:
                    h, w = self.sizes[self.count]
                    scale = np.asarray([w, h, w, h], dtype=np.float32)
                    dbox, gbox = bx.clip(dbox) * scale, bx.clip(gbox) * scale
                iou = bx.jaccard(dbox, gbox, normalized)
                visited = np.zeros(len(g), dtype=bool)
                for k in range(len(d)):
                    j = int(np.argmax(iou[k]))
                    if iou[k, j] >= self.threshold:
                        if self.evaluate_difficult or g[j, 7] == 0:
                            if not visited[j]:
                                visited[j] = True
                                rows.append([image, c, d[k, 2], 1, 0])
                            else:
                                rows.append([image, c, d[k, 2], 0, 1])
                        else:
                            rows.append([image, c, d[k, 2], 0, 0])
                    else:
                        rows.append([image, c, d[k, 2], 0, 1])
            if self.sizes:
                self.count = (self.count + 1) % len(self.sizes)
        out = np.asarray(rows, dtype=np.float32).reshape(1, 1, -1, 5)
        return (torch.from_numpy(out).to(detections.device),)


def read_name_sizes(path: str, where) -> list[tuple[int, int]]:
    """``name height width`` lines of a name_size_file as (height, width)."""
    p = Path(path)
    if not p.is_file():
        raise where.error(f"name_size_file {path} not found")
    sizes = []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise where.error(f"{path}:{n}: expected 'name height width', got {line!r}")
        try:
            sizes.append((int(parts[1]), int(parts[2])))
        except ValueError:
            raise where.error(f"{path}:{n}: height and width must be integers, got {line!r}") from None
    return sizes
