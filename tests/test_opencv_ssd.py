"""Full SSD deploy nets against OpenCV 4.x's Caffe importer (PriorBox + DetectionOutput included):
VGG16 SSD300 and ScratchDet300 (Root-ResNet-34), random weights and nonzero BatchNorm statistics,
written with our caffemodel writer; the DetectionOutput rows with confidence > 0 agree with ours
(OpenCV pads its output to keep_top_k rows with zeros).

The deploy files come from the generators (``scratchdet gen``); the test skips while they, or the
SSD layers, are not there yet.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("this OpenCV has no Caffe importer", allow_module_level=True)

from scratchdet.caffe import io  # noqa: E402
from scratchdet.caffe.netstate import TEST  # noqa: E402
from scratchdet.engine.caffemodel import save_caffemodel  # noqa: E402
from scratchdet.engine.layers import REGISTRY  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models" / "VOC0712"


def deploy_files():
    found = []
    rootres = MODELS / "voc07_rootres34" / "deploy.prototxt"
    found.append(pytest.param(rootres, id="rootres34"))
    vgg = sorted(p for p in MODELS.glob("*vgg*/deploy.prototxt")) if MODELS.is_dir() else []
    # prefer a VGG16 SSD300 with SSD's L2 Normalize on conv4_3 (the pretrained-VGG16 rows)
    vgg.sort(key=lambda p: ("Normalize" not in p.read_text(), str(p)))
    found.append(pytest.param(vgg[0] if vgg else MODELS / "<vgg16 variant>" / "deploy.prototxt", id="vgg16"))
    return found


def street_image(h=375, w=500):
    """A street-like test picture: gradient sky, a few filled shapes (deterministic)."""
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = np.linspace(40, 220, w, dtype=np.uint8)[None, :, None]
    cv2.rectangle(img, (60, 150), (200, 330), (30, 60, 200), -1)
    cv2.circle(img, (340, 200), 70, (200, 180, 20), -1)
    cv2.rectangle(img, (380, 40), (470, 120), (20, 220, 60), -1)
    return img


def _randomise(net, seed=0):
    """Random weights by the prototxt's fillers, nonzero biases, and BatchNorm statistics with a
    scale factor != 1; the conf heads get spread-out logits so that scores are well separated."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in net.layers:
            blobs = layer.blobs()
            if layer.lp.type == "BatchNorm":
                c = blobs[0].numel()
                s = 3.0
                blobs[0].copy_(torch.empty(c).uniform_(-0.2, 0.2, generator=g) * s)
                blobs[1].copy_(torch.empty(c).uniform_(0.5, 1.5, generator=g) * s)
                blobs[2].fill_(s)
            elif layer.lp.type == "Convolution":
                fan_in = blobs[0][0].numel()
                std = (2.0 / fan_in) ** 0.5 * (4.0 if "conf" in layer.name else 1.0)
                blobs[0].copy_(torch.empty(blobs[0].shape).normal_(0, std, generator=g))
                if len(blobs) > 1:
                    blobs[1].copy_(torch.empty(blobs[1].shape).uniform_(-0.1, 0.1, generator=g))


def opencv_detections(deploy, weights, x: np.ndarray) -> np.ndarray:
    """OpenCV dnn's DetectionOutput rows [K, 7] for input ``x`` (its padding rows, score 0, dropped)."""
    cv = cv2.dnn.readNetFromCaffe(str(deploy), str(weights))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setInput(x)
    rows = cv.forward().reshape(-1, 7)
    return rows[rows[:, 2] > 0]


@pytest.mark.parametrize("deploy", deploy_files())
def test_detection_output_agrees_with_opencv(deploy, tmp_path):
    if not deploy.is_file():
        pytest.skip(f"{deploy.relative_to(ROOT)} not generated yet (scratchdet gen)")
    missing = [t for t in ("PriorBox", "DetectionOutput", "Normalize", "Permute") if t not in REGISTRY]
    if missing:
        pytest.skip(f"engine layers not available yet: {missing}")
    from scratchdet.engine.detect import preprocess
    from scratchdet.engine.net import Net

    param = io.read_net(deploy)
    net = Net(param, TEST, source=str(deploy), seed=1)
    _randomise(net)
    weights = tmp_path / "random.caffemodel"
    save_caffemodel(net, weights)
    data_layer = next(layer for layer in net.layers if layer.lp.type == "Input")
    _, _, h, w = data_layer.shapes[0]
    x = preprocess(street_image(), h, w, (104, 117, 123))
    out_name = next(layer.lp.top[0] for layer in net.layers if layer.lp.type == "DetectionOutput")
    with torch.no_grad():
        ours = net.forward({data_layer.lp.top[0]: torch.from_numpy(x)})[out_name].numpy().reshape(-1, 7)
    ours = ours[ours[:, 2] > 0]

    theirs = opencv_detections(deploy, weights, x)

    assert len(ours) > 10, "random weights should give many detections above the threshold"
    keep_top_k = next(layer.lp for layer in net.layers if layer.lp.type == "DetectionOutput").detection_output_param.keep_top_k
    cutoff = min(ours[:, 2].min(), theirs[:, 2].min())
    near_cut = lambda rows: np.abs(rows[:, 2] - cutoff) < 1e-4 if len(ours) >= keep_top_k else np.zeros(len(rows), bool)  # noqa: E731

    def match(a, b):
        unmatched = []
        for row in a:
            same = b[(b[:, 1] == row[1]) & (np.abs(b[:, 2] - row[2]) < 1e-3)]
            if not len(same) or np.abs(same[:, 3:] - row[3:]).max(axis=1).min() > 2e-3:
                unmatched.append(row)
        return np.array(unmatched).reshape(-1, 7)

    # rows at the keep_top_k score cut may swap on float ties; every other row must match
    lost = match(ours[~near_cut(ours)], theirs)
    extra = match(theirs[~near_cut(theirs)], ours)
    assert not len(lost) and not len(extra), f"ours only: {lost[:3]}, OpenCV only: {extra[:3]}"
    assert abs(len(ours) - len(theirs)) <= int(near_cut(ours).sum() + near_cut(theirs).sum())


# a net whose DetectionOutput has `clip: 1` (a newer fork's field; OpenCV's face detector deploy
# net has it): priors near the image border and large loc outputs decode past [0, 1]
CLIP_NET = """name: "clipnet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "p" type: "Convolution" bottom: "data" top: "p" convolution_param { num_output: 8 kernel_size: 3 stride: 2 } }
layer { name: "loc" type: "Convolution" bottom: "p" top: "loc" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "conf" type: "Convolution" bottom: "p" top: "conf" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "prior" type: "PriorBox" bottom: "p" bottom: "data" top: "prior"
  prior_box_param { min_size: 12 max_size: 16 flip: false clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "loc_flat" type: "Flatten" bottom: "loc_perm" top: "loc_flat" }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "conf_flat" type: "Flatten" bottom: "conf_perm" top: "conf_flat" }
layer { name: "conf_sig" type: "Sigmoid" bottom: "conf_flat" top: "conf_sig" }
layer { name: "detection_out" type: "DetectionOutput" bottom: "loc_flat" bottom: "conf_sig" bottom: "prior" top: "detection_out"
  detection_output_param { num_classes: 2 share_location: true background_label_id: 0 code_type: CENTER_SIZE
    nms_param { nms_threshold: 0.45 top_k: 100 } keep_top_k: 50 confidence_threshold: 0.05 clip: CLIP } }
"""


@pytest.mark.parametrize("clip", [True, False])
def test_detection_output_clip_field_agrees_with_opencv(clip, tmp_path, capsys):
    from scratchdet.engine.net import Net
    text = CLIP_NET.replace("CLIP", "1" if clip else "0")
    deploy = tmp_path / "deploy.prototxt"
    deploy.write_text(text)
    net = Net(io.parse_text(text, io.pb.NetParameter), TEST, source=str(deploy), seed=3)
    assert "detection_output_param.clip is not an SSD fork field" in capsys.readouterr().err
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for layer in net.layers:
            for blob in layer.blobs():   # distinct scores (no ties at 1.0), large box offsets
                blob.copy_(torch.empty(blob.shape).normal_(0, 0.05 if layer.name == "conf" else 0.4, generator=g))
    weights = tmp_path / "w.caffemodel"
    save_caffemodel(net, weights)
    x = np.random.default_rng(0).normal(0, 3, (1, 3, 16, 16)).astype(np.float32)
    with torch.no_grad():
        ours = net.forward({"data": torch.from_numpy(x)})["detection_out"].numpy().reshape(-1, 7)
    ours = ours[ours[:, 2] > 0]
    theirs = opencv_detections(deploy, weights, x)
    assert len(ours) >= 5 and len(ours) == len(theirs)
    outside = (ours[:, 3:] < 0) | (ours[:, 3:] > 1)
    assert not outside.any() if clip else outside.any()      # the net is built so that boxes leave [0, 1]
    order = lambda rows: rows[np.lexsort((rows[:, 3], -rows[:, 2], rows[:, 1]))]  # noqa: E731
    np.testing.assert_allclose(order(ours), order(theirs), rtol=1e-5, atol=2e-4)
