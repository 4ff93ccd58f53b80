"""OpenCV 4.x's Caffe importer as an independent implementation: a small net with every standard
layer an SSD deploy net uses (conv with dilation/group, BatchNorm with nonzero statistics and a scale
factor != 1, Scale, ReLU, MAX/AVE pooling at ceil borders, Eltwise with coeffs, Concat, Normalize,
Permute, Flatten, Reshape, Softmax, Dropout), read by ``cv2.dnn.readNetFromCaffe`` from our prototxt
and our written caffemodel: every layer's output agrees with ours."""
import numpy as np
import pytest
import torch

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2.dnn, "readNetFromCaffe"):       # OpenCV 5 removed the Caffe importer
    pytest.skip("this OpenCV has no Caffe importer", allow_module_level=True)

from scratchdet.caffe.io import parse_text  # noqa: E402
from scratchdet.caffe.netstate import TEST  # noqa: E402
from scratchdet.caffe.schema import pb  # noqa: E402
from scratchdet.engine.caffemodel import save_caffemodel  # noqa: E402
from scratchdet.engine.net import Net  # noqa: E402

DEPLOY = """name: "cvnet"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 25 dim: 25 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 stride: 2
  weight_filler { type: "xavier" } bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true filler { type: "uniform" min: 0.5 max: 1.5 }
  bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "pool2" type: "Pooling" bottom: "conv1" top: "pool2" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 8 kernel_size: 3 pad: 2 dilation: 2 group: 2
  weight_filler { type: "msra" } bias_filler { type: "gaussian" std: 0.1 } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" relu_param { negative_slope: 0.1 } }
layer { name: "sum" type: "Eltwise" bottom: "pool2" bottom: "conv2" top: "sum" eltwise_param { coeff: 0.5 coeff: -1.5 } }
layer { name: "norm" type: "Normalize" bottom: "sum" top: "norm" norm_param { across_spatial: false channel_shared: false
  scale_filler { type: "uniform" min: 10 max: 20 } } }
layer { name: "drop" type: "Dropout" bottom: "norm" top: "norm" }
layer { name: "cat" type: "Concat" bottom: "norm" bottom: "pool1" top: "cat" }
layer { name: "perm" type: "Permute" bottom: "cat" top: "perm" permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "flat" type: "Flatten" bottom: "perm" top: "flat" }
layer { name: "resh" type: "Reshape" bottom: "flat" top: "resh" reshape_param { shape { dim: 0 dim: -1 dim: 4 } } }
layer { name: "prob" type: "Softmax" bottom: "resh" top: "prob" softmax_param { axis: 2 } }
"""


def test_every_layer_agrees_with_opencv(tmp_path):
    net = Net(parse_text(DEPLOY, pb.NetParameter), TEST, seed=11)
    with torch.no_grad():
        g = torch.Generator().manual_seed(5)
        s = 2.5                                  # stored statistics are sums scaled by s
        mean_sum, var_sum, factor = net.layer("bn1").blobs()
        mean_sum.copy_(torch.empty(8).uniform_(-1, 1, generator=g) * s)
        var_sum.copy_(torch.empty(8).uniform_(0.2, 2, generator=g) * s)
        factor.fill_(s)
    (tmp_path / "deploy.prototxt").write_text(DEPLOY)
    save_caffemodel(net, tmp_path / "w.caffemodel")

    x = np.random.default_rng(0).standard_normal((2, 3, 25, 25)).astype(np.float32) * 50
    ours = {}
    net.forward({"data": torch.from_numpy(x)}, per_layer=ours)

    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel"))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cv.enableFusion(False)                       # keep every layer's own output
    cv.setInput(x)
    names = [n for n in cv.getLayerNames() if n in ours]
    assert len(names) == len(net.layers) - 1    # every layer but the input
    for name, theirs in zip(names, cv.forward(names)):
        mine = ours[name][0].detach().numpy()
        assert theirs.size == mine.size, name
        scale = max(1.0, float(np.abs(mine).max()))
        np.testing.assert_allclose(theirs.reshape(mine.shape), mine, rtol=1e-4, atol=1e-5 * scale, err_msg=name)
    # the checks mean something: the net's outputs are not trivial
    assert ours["pool2"][0].shape[2:] == (7, 7) and ours["pool1"][0].shape[2:] == (7, 7)
    assert float(ours["prob"][0].detach().std()) > 0.05


@pytest.mark.parametrize("across_spatial", [True, False])
def test_channel_shared_normalize_0_axis_scale_reads_in_opencv(tmp_path, across_spatial):
    """Normalize with channel_shared (the default): our caffemodel holds its scale as a 0-axis blob
    (no shape field, one value), as Caffe writes it; OpenCV reads it and agrees."""
    text = f"""name: "normnet"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 4 dim: 5 dim: 6 }} }} }}
layer {{ name: "norm" type: "Normalize" bottom: "data" top: "norm" norm_param {{
  across_spatial: {str(across_spatial).lower()} scale_filler {{ type: "constant" value: 7.5 }} }} }}
"""
    net = Net(parse_text(text, pb.NetParameter), TEST, seed=0)
    assert tuple(net.layer("norm").blobs()[0].shape) == ()
    (tmp_path / "deploy.prototxt").write_text(text)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 6)).astype(np.float32)
    mine = net.forward({"data": torch.from_numpy(x)})["norm"].detach().numpy()
    cv = cv2.dnn.readNetFromCaffe(str(tmp_path / "deploy.prototxt"), str(tmp_path / "w.caffemodel"))
    cv.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cv.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cv.setInput(x)
    theirs = cv.forward("norm")
    np.testing.assert_allclose(theirs.reshape(mine.shape), mine, rtol=1e-4, atol=1e-5)
    assert float(np.abs(mine).max()) > 1.0           # the scale 7.5 was applied
