"""The generated nets against independent numbers: SSD300's prior layout (caffe-ssd-spec §2.2, with
its golden first-cell priors recomputed here in numpy from the generated PriorBox parameters), the
prior sizes against the paper's scale rule s_k = s_min + (s_max - s_min)(k - 1)/(m - 1), and
the released Root-ResNet-34's layer and parameter counts (scratchdet-released-code.md §10)."""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from prototxt_gen import registry
from scratchdet.caffe import io, shapes
from scratchdet.caffe.netstate import TEST, TRAIN

REPO = Path(__file__).resolve().parents[1]
SSD300_MAPS = [38, 19, 10, 5, 3, 1]
SSD300_PRIORS = 38 * 38 * 4 + 19 * 19 * 6 + 10 * 10 * 6 + 5 * 5 * 6 + 3 * 3 * 4 + 1 * 1 * 4   # 8732
GOLDEN_FIRST_CELL = np.array([[-0.036667, -0.036667, 0.063333, 0.063333],
                              [-0.057377, -0.057377, 0.084044, 0.084044],
                              [-0.057377, -0.022022, 0.084044, 0.048689],
                              [-0.022022, -0.057377, 0.048689, 0.084044]])


def net(variant_id: str, name: str):
    v = registry.get(variant_id)
    return io.read_net(REPO / "models" / v.dataset / v.id / name)


_SHAPES: dict = {}


def train_shapes(variant_id: str):
    if variant_id not in _SHAPES:
        _SHAPES[variant_id] = shapes.infer(net(variant_id, "train.prototxt"), TRAIN)
    return _SHAPES[variant_id]


def prior_layers(ns):
    return [ly for ly in ns.layers if ly.type == "PriorBox"]


def numpy_priors(pp, feat_h, feat_w, img_h, img_w, cells=1):
    """PriorBox forward as caffe-ssd-spec §2.2 describes it, for the first ``cells`` cells. The box
    order per cell is the spec's worked one, [min, sqrt(min*max), r1, 1/r1, r2, 1/r2, ...], which is
    what its de-duplication and flip rule gives for the nets SSD's scripts write: one min and one max
    size, flip on, distinct ratios other than 1 (asserted here instead of re-implementing the rule)."""
    ratios = list(pp.aspect_ratio)
    assert pp.flip and len(pp.min_size) == len(pp.max_size) == 1, "not an SSD-script PriorBox"
    assert len(set(ratios)) == len(ratios) and 1.0 not in ratios, "not an SSD-script PriorBox"
    mn, mx = int(pp.min_size[0]), int(pp.max_size[0])
    sides = [(mn, mn), (np.sqrt(mn * mx),) * 2]
    sides += [(mn * np.sqrt(a), mn / np.sqrt(a)) for r in ratios for a in (r, 1 / r)]
    step_w = pp.step if pp.step else img_w / feat_w
    step_h = pp.step if pp.step else img_h / feat_h
    out = []
    for idx in range(cells):
        cy, cx = ((v + pp.offset) * step for v, step in zip(divmod(idx, feat_w), (step_h, step_w)))
        out += [[(cx - w / 2) / img_w, (cy - h / 2) / img_h, (cx + w / 2) / img_w, (cy + h / 2) / img_h]
                for w, h in sides]
    boxes = np.array(out)
    return np.clip(boxes, 0, 1) if pp.clip else boxes


SSD300_LIKE = (["voc07_ssd300_vgg16", "voc07_rootres34", "coco_rootres34", "voc07_rootres18"]
               + [v.id for v in registry.all_variants() if v.table in ("Table 1", "Table 2", "Figure 3")])


@pytest.mark.parametrize("variant_id", SSD300_LIKE)
def test_ssd300_layout_38_19_10_5_3_1_and_8732_priors(variant_id):
    ns = train_shapes(variant_id)
    priors = prior_layers(ns)
    assert [ly.bottom_shapes[0][2:] for ly in priors] == [(m, m) for m in SSD300_MAPS]
    assert ns.priors == SSD300_PRIORS == 8732
    c = registry.get(variant_id).data.num_classes
    assert ns.blobs["mbox_loc"][1] == 4 * 8732 and ns.blobs["mbox_conf"][1] == c * 8732


@pytest.mark.parametrize("variant_id", ["voc07_ssd300_vgg16", "table1_scratch_bn_both_lr0.05", "table2_ds_1x7",
                                        "voc07_rootres34", "voc07_rootres34_released"])
def test_first_cell_priors_match_the_spec_golden_values(variant_id):
    n = net(variant_id, "deploy.prototxt")
    first = next(lp for lp in n.layer if lp.type == "PriorBox")
    ns = shapes.infer(n)
    feat = ns.blobs[first.bottom[0]]
    got = numpy_priors(first.prior_box_param, feat[2], feat[3], 300, 300)
    np.testing.assert_allclose(got, GOLDEN_FIRST_CELL, atol=1e-6)
    # variances: 0.1, 0.1, 0.2, 0.2 (CENTER_SIZE), clip false, SSD300's sizes
    assert list(first.prior_box_param.variance) == pytest.approx([0.1, 0.1, 0.2, 0.2])
    assert (first.prior_box_param.min_size[0], first.prior_box_param.max_size[0]) == (30, 60)


# The paper's anchor scales (SSD's rule, kept by ScratchDet, §4): s_k = s_min + (s_max - s_min)(k - 1)/(m - 1)
# for the m = 5 layers after the first, as percent of the 300-pixel input; SSD's scripts (released-code
# §4) floor the percent step to an integer and put a smaller first layer in front. Per data set:
# (s_min, s_max, first layer's min and max), in percent.
SCALES = {"voc": (20, 90, 10, 20), "coco": (15, 90, 7, 15)}


def paper_scales(s_min: int, s_max: int, m: int = 5, floor_step: bool = True) -> list[float]:
    step = (s_max - s_min) // (m - 1) if floor_step else (s_max - s_min) / (m - 1)
    return [s_min + step * (k - 1) for k in range(1, m + 2)]        # m layers and the last max


@pytest.mark.parametrize("variant_id", SSD300_LIKE + ["voc12_rootres34", "coco_rootres34_released", "coco_rootres18"])
def test_prior_sizes_follow_the_papers_scale_rule(variant_id):
    pps = [lp.prior_box_param for lp in net(variant_id, "deploy.prototxt").layer if lp.type == "PriorBox"]
    s_min, s_max, first_min, first_max = SCALES["coco" if variant_id.startswith("coco") else "voc"]
    scales = paper_scales(s_min, s_max)
    want_min = [300 * first_min / 100] + [300 * s / 100 for s in scales[:-1]]
    want_max = [300 * first_max / 100] + [300 * s / 100 for s in scales[1:]]
    assert [p.min_size[0] for p in pps] == pytest.approx(want_min)
    assert [p.max_size[0] for p in pps] == pytest.approx(want_max)
    # the integer floor moves each scale by less than one percent point per layer from the paper's
    exact = paper_scales(s_min, s_max, floor_step=False)
    assert all(0 <= e - f < k for k, (e, f) in enumerate(zip(exact, scales), 1))


def test_prior_sizes_and_steps_follow_ssd_scripts():
    voc = [lp.prior_box_param for lp in net("voc07_rootres34", "deploy.prototxt").layer if lp.type == "PriorBox"]
    assert [p.min_size[0] for p in voc] == [30, 60, 111, 162, 213, 264]
    assert [p.max_size[0] for p in voc] == [60, 111, 162, 213, 264, 315]
    assert [p.step for p in voc] == [8, 16, 32, 64, 100, 300]
    assert [list(p.aspect_ratio) for p in voc] == [[2], [2, 3], [2, 3], [2, 3], [2], [2]]
    coco = [lp.prior_box_param for lp in net("coco_rootres34", "deploy.prototxt").layer if lp.type == "PriorBox"]
    assert [p.min_size[0] for p in coco] == [21, 45, 99, 153, 207, 261]
    assert [p.max_size[0] for p in coco] == [45, 99, 153, 207, 261, 315]


def test_released_root_resnet34_voc_counts():
    counts = {name: Counter(lp.type for lp in net("voc07_rootres34_released", name).layer)
              for name in ("train.prototxt", "test.prototxt", "deploy.prototxt")}
    assert sum(counts["train.prototxt"].values()) == 241
    assert sum(counts["test.prototxt"].values()) == 245
    assert sum(counts["deploy.prototxt"].values()) == 243
    assert counts["train.prototxt"] == Counter(
        {"Convolution": 60, "BatchNorm": 42, "Scale": 42, "ReLU": 42, "Eltwise": 19, "Permute": 12, "Flatten": 12,
         "PriorBox": 6, "Concat": 3, "Pooling": 1, "AnnotatedData": 1, "MultiBoxLoss": 1})
    test = counts["test.prototxt"]
    assert (test["Flatten"], test["Reshape"], test["Softmax"], test["DetectionOutput"], test["DetectionEvaluate"],
            test["MultiBoxLoss"]) == (13, 1, 1, 1, 1, 0)
    ns = train_shapes("voc07_rootres34_released")
    assert ns.learnable == 24_553_262 and ns.stats == 17_322
    assert ns.priors == 8892 == 38 ** 2 * 4 + 19 ** 2 * 6 + 10 ** 2 * 6 + 5 ** 2 * 6 + 5 ** 2 * 4 + 5 ** 2 * 4
    assert [ly.bottom_shapes[0][1:3] for ly in prior_layers(ns)] == [(256, 38), (512, 19), (128, 10), (128, 5),
                                                                      (128, 5), (128, 5)]
    assert ns.blobs["mbox_conf"][1] == 186_732 and ns.blobs["mbox_loc"][1] == 35_568
    macs = shapes.infer(net("voc07_rootres34_released", "deploy.prototxt")).macs
    assert round(macs / 1e9, 2) == 33.32


def test_released_root_resnet34_coco_counts():
    sizes = {name: len(net("coco_rootres34_released", name).layer)
             for name in ("train.prototxt", "test.prototxt", "deploy.prototxt")}
    assert sizes == {"train.prototxt": 265, "test.prototxt": 269, "deploy.prototxt": 267}
    c = Counter(lp.type for lp in net("coco_rootres34_released", "train.prototxt").layer)
    assert (c["BatchNorm"], c["Scale"], c["Convolution"], c["Eltwise"]) == (54, 54, 60, 19)
    ns = train_shapes("coco_rootres34_released")
    assert ns.learnable == 28_151_852 and ns.stats == 22_434
    assert ns.blobs["mbox_conf"][1] == 720_252


def test_released_root_resnet34_layer_names_are_the_scripts():
    layers = net("voc07_rootres34_released", "train.prototxt").layer
    names = [lp.name for lp in layers]
    # post-order emission: the conv3 projection comes after conv3_2, right before the fourth sum
    i = names.index("conv3_2")
    assert names[i + 1: i + 3] == ["Convolution1", "Eltwise4"]
    by_name = {lp.name: lp for lp in layers}
    assert by_name["BatchNorm5"].top == ["BatchNorm5"] and by_name["BatchNorm5"].bottom == ["Eltwise1"]
    assert by_name["Eltwise1"].bottom == ["pool1", "conv2_2"]
    assert by_name["conv2_1"].bottom == ["pool1"]
    assert "Eltwise19" in by_name and "Eltwise20" not in by_name
    for lp in layers:
        if lp.type == "Convolution" and "mbox" not in lp.name:
            cp = lp.convolution_param
            assert not cp.bias_term and cp.weight_filler.type == "xavier", lp.name
        if lp.type == "BatchNorm":
            assert [p.lr_mult for p in lp.param] == [0, 0, 0] and not lp.HasField("batch_norm_param")
    assert [lp.name for lp in layers if lp.type == "Pooling"] == ["pool1"]
    assert not any(lp.type == "Normalize" for lp in layers)


@pytest.mark.parametrize("variant_id", ["voc07_rootres34_released", "voc12_rootres34_released",
                                        "coco_rootres34_released", "voc07_rootres34"])
def test_released_text_writes_stride_1_where_the_scripts_do(variant_id):
    """The authors' scripts pass the stride explicitly to stem_1, the stride-1 extra blocks' first
    convs and SSD's head convs (ConvBNLayer), so their files carry ``stride: 1`` on those 15 convs
    (scratchdet-released-code.md); the paper profile omits the default everywhere."""
    for name in ("train.prototxt", "deploy.prototxt"):
        explicit = [lp.name for lp in net(variant_id, name).layer
                    if lp.type == "Convolution" and list(lp.convolution_param.stride) == [1]]
        if variant_id.endswith("_released"):
            sources = ["conv4_12", "conv5_6", "conv6_2", "conv7_2", "conv8_2", "conv9_2"]
            assert explicit == ["stem_1", "conv8_1", "conv9_1"] + [f"{s}_mbox_{k}" for s in sources for k in ("loc", "conf")]
        else:
            assert explicit == []


def test_paper_root_resnet34_differs_from_released_only_where_documented():
    paper = train_shapes("voc07_rootres34")
    released = train_shapes("voc07_rootres34_released")
    # BatchNorm+Scale (2 values per channel) after each of the 12 head convs, which lose their bias;
    # conv8 (now stride 2) gets a 1x1 projection shortcut (128*128). conv9's sum feeds nothing (the
    # head reads conv9_2), so neither it nor its shortcut is emitted, in both profiles.
    head_out = sum(ly.top_shapes[0][1] for ly in released.layers if ly.type == "Convolution" and "mbox" in ly.name)
    assert head_out == 750     # 30 priors per location over the 6 sources x (4 + 21)
    assert paper.learnable - released.learnable == 2 * head_out - head_out + 128 * 128
    assert Counter(ly.type for ly in paper.layers)["BatchNorm"] == 42 + 12


def test_root_resnet18_matches_the_released_body_up_to_documented_changes():
    """Released Root-ResNet-18 body + SSD extras, VOC, no head BN: 15,990,958 learnable
    (released-code §10). Ours has head BN (-750 biases, +2x750 Scale), no BN on pool1 (-2x64)
    and emits the BN on conv9_2 (+2x256)."""
    ns = train_shapes("voc07_rootres18")
    assert ns.learnable == 15_990_958 - 750 + 1500 - 128 + 512


def test_vgg_variants_put_batchnorm_where_table1_says():
    def bn_after(variant_id):
        layers = net(variant_id, "train.prototxt").layer
        bns = {lp.bottom[0] for lp in layers if lp.type == "BatchNorm"}
        return "conv1_1" in bns, "conv6_2" in bns, "conv4_3_mbox_loc" in bns
    assert bn_after("table1_scratch_nobn_lr0.001") == (False, False, False)
    assert bn_after("table1_scratch_bn_head_lr0.01") == (False, False, True)
    assert bn_after("table1_scratch_bn_backbone_lr0.05") == (True, True, False)
    assert bn_after("table1_scratch_bn_both_lr0.05") == (True, True, True)
    for vid in ("table1_scratch_bn_both_lr0.05", "table1_pretrained_vgg16_lr0.001"):
        assert not any(lp.type == "Normalize" for lp in net(vid, "train.prototxt").layer)
    norm = [lp for lp in net("voc07_ssd300_vgg16", "deploy.prototxt").layer if lp.type == "Normalize"]
    assert [lp.bottom[0] for lp in norm] == ["conv4_3"] and norm[0].norm_param.scale_filler.value == 20


def test_table2_rows_differ_in_the_root_only():
    def root(variant_id):
        layers = net(variant_id, "deploy.prototxt").layer
        stems = [lp.convolution_param for lp in layers if lp.name.startswith("stem_")]
        return (len(stems), stems[0].kernel_size[0], stems[0].stride[0] if stems[0].stride else 1,
                any(lp.name == "pool1" for lp in layers))
    assert root("table2_ds_1x7") == (1, 7, 2, True) == root("fig3_resnet18")
    assert root("fig3_resnet18_a") == (1, 7, 2, False)
    assert root("fig3_resnet18_b") == (1, 7, 1, True) == root("table2_nods_1x7")
    assert root("table2_nods_5x3") == (5, 3, 1, True)
    assert root("fig3_root_resnet18") == root("table2_nods_3x3") == root("voc07_rootres18") == (3, 3, 1, True)


@pytest.mark.parametrize("variant_id", ["demo_rootres", "demo_table1_bn-none_lr0.05", "demo_table1_bn-both_lr0.01"])
def test_demo_nets_are_small(variant_id):
    ns = shapes.infer(net(variant_id, "deploy.prototxt"))
    assert 0.03e9 < ns.macs < 0.3e9          # per image (deploy batch 1): a few it/s on a laptop CPU
    assert [ly.bottom_shapes[0][2] for ly in prior_layers(ns)] == [16, 8, 4, 2, 1]
    mins = [ly for ly in net(variant_id, "deploy.prototxt").layer if ly.type == "PriorBox"]
    assert [p.prior_box_param.min_size[0] for p in mins] == [int(128 * r / 100) for r in (10, 20, 43, 66, 89)]
    assert [p.prior_box_param.step for p in mins] == [8, 16, 32, 64, 128]


def test_test_nets_and_solvers_agree():
    for v in registry.all_variants():
        folder = REPO / "models" / v.dataset / v.id
        sp = io.read_solver(folder / "solver.prototxt")
        test = io.read_net(folder / "test.prototxt")
        data = next(lp for lp in test.layer if lp.type == "AnnotatedData")
        assert sp.train_net == f"models/{v.dataset}/{v.id}/train.prototxt"
        assert sp.snapshot_prefix == f"runs/{v.dataset}/{v.id}/{v.id}"
        assert list(sp.stepvalue) == list(v.schedule.stepvalue) and sp.max_iter == v.schedule.max_iter
        assert sp.base_lr == pytest.approx(v.base_lr) and sp.lr_policy == "multistep"
        if v.data.in_training_test:
            # one test pass covers the test set exactly once (or as the released scripts do)
            assert sp.test_iter[0] * data.data_param.batch_size >= v.data.num_test_image
            assert (sp.test_iter[0] - 1) * data.data_param.batch_size < v.data.num_test_image
            assert sp.eval_type == "detection" and sp.ap_version == "11point"
        else:
            assert not sp.test_net and not any(lp.type == "DetectionEvaluate" for lp in test.layer)
        train = io.read_net(folder / "train.prototxt")
        tdata = next(lp for lp in train.layer if lp.type == "AnnotatedData")
        assert tdata.data_param.batch_size * v.gpus * sp.iter_size == v.batch


def test_shapes_of_the_test_net_hold_for_every_variant():
    for v in registry.all_variants():
        ns = shapes.infer(net(v.id, "test.prototxt"), TEST)
        assert ns.count("DetectionOutput") == 1


def _random_caffemodel(net_param, path, seed=0):
    """Weights of the right shapes (OpenCV needs blobs for every conv); BatchNorm factor 1."""
    from scratchdet.caffe.blobs import array_to_blob
    from scratchdet.caffe.schema import pb
    rng = np.random.default_rng(seed)
    weights = pb.NetParameter()
    for ly in shapes.infer(net_param).layers:
        if ly.param_shapes:
            layer = weights.layer.add(name=ly.name, type=ly.type)
            for i, shape in enumerate(ly.param_shapes):
                a = rng.normal(0, 0.05, shape).astype(np.float32)
                if ly.type == "BatchNorm":
                    a = np.abs(a) + (1.0 if i == 2 else 0.5)
                layer.blobs.append(array_to_blob(a))
    path.write_bytes(weights.SerializeToString())


@pytest.mark.parametrize("variant_id", ["demo_rootres", "voc07_rootres34_released"])
def test_opencv_reads_the_deploy_net_and_its_priors_match_numpy(variant_id, tmp_path):
    """OpenCV 4.x's Caffe importer (an independent PriorBox) runs the generated deploy net; every
    prior it makes equals the spec's formula applied here to the generated parameters."""
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    v = registry.get(variant_id)
    path = REPO / "models" / v.dataset / v.id / "deploy.prototxt"
    deploy = io.read_net(path)
    _random_caffemodel(deploy, tmp_path / "w.caffemodel")
    cvnet = cv2.dnn.readNetFromCaffe(str(path), str(tmp_path / "w.caffemodel"))
    size = v.arch.input_size
    cvnet.setInput(np.random.default_rng(1).uniform(-100, 100, (1, 3, size, size)).astype(np.float32))
    priors, detections = cvnet.forward(["mbox_priorbox", "detection_out"])
    ns = shapes.infer(deploy)
    want = []
    for lp in (lp for lp in deploy.layer if lp.type == "PriorBox"):
        feat = ns.blobs[lp.bottom[0]]
        want.append(numpy_priors(lp.prior_box_param, feat[2], feat[3], size, size, cells=feat[2] * feat[3]))
    want = np.concatenate(want)
    assert priors.shape == (1, 2, want.size) and len(want) == ns.priors
    np.testing.assert_allclose(priors[0, 0].reshape(-1, 4), want, atol=1e-5)
    np.testing.assert_allclose(priors[0, 1].reshape(-1, 4), np.tile([0.1, 0.1, 0.2, 0.2], (len(want), 1)), atol=1e-7)
    assert detections.shape[-1] == 7
    if variant_id == "voc07_rootres34_released":
        # conv8_2/conv9_2 (the last 2 x 100 priors): 5x5 maps with steps 100 and 300 put 64 + 96
        # priors' centres outside the image, the ones SSD300's 3x3 and 1x1 maps lack (released-code §4)
        boxes = priors[0, 0].reshape(-1, 4)[-200:]
        outside = ((boxes[:, 0] + boxes[:, 2]) / 2 > 1) | ((boxes[:, 1] + boxes[:, 3]) / 2 > 1)
        assert outside.sum() == 160
