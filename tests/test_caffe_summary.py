"""``scratchdet summary`` on a tiny net whose shapes, parameters, priors and multiply-adds are
worked out by hand below (Caffe's rules: conv floors, pooling ceils)."""
import json

from scratchdet import cli

TINY = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Scale" bottom: "conv" top: "conv" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prior" type: "PriorBox" bottom: "conv" bottom: "data"
        prior_box_param { min_size: 2 max_size: 5 aspect_ratio: 2 aspect_ratio: 3 flip: true variance: 0.1 } }
"""


def hand_numbers():
    n = 2
    # conv: (9 + 2*1 - 3) // 2 + 1 = 5  -> 4x5x5, weights 4*3*3*3 + 4 biases
    conv_hw = (9 + 2 - 3) // 2 + 1
    conv_params = 4 * 3 * 3 * 3 + 4
    conv_macs = n * 4 * conv_hw * conv_hw * (3 * 3 * 3)
    # pooling rounds up: ceil((5 - 2) / 2) + 1 = 3
    pool_hw = -(-(conv_hw - 2) // 2) + 1
    fc_in = 4 * pool_hw * pool_hw
    fc_params = fc_in * 10 + 10
    fc_macs = n * fc_in * 10
    bn_stats = 4 + 4 + 1
    scale_params = 4 + 4
    # priors per cell: ratios {1, 2, 1/2, 3, 1/3} for the min size + one for sqrt(min*max)
    priors = conv_hw * conv_hw * (5 + 1)
    return dict(conv_hw=conv_hw, pool_hw=pool_hw, learnable=conv_params + scale_params + fc_params,
                stats=bn_stats, macs=conv_macs + fc_macs, priors=priors, batch=n)


def test_summary_json_matches_the_hand_computation(tmp_path, capsys):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    assert cli.main(["summary", str(path), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    want = hand_numbers()
    layers = {ly["name"]: ly for ly in got["layers"]}
    assert layers["conv"]["top_shapes"] == [[2, 4, want["conv_hw"], want["conv_hw"]]]
    assert layers["pool"]["top_shapes"] == [[2, 4, want["pool_hw"], want["pool_hw"]]]
    assert layers["fc"]["top_shapes"] == [[2, 10]]
    assert layers["prior"]["top_shapes"] == [[1, 2, want["priors"] * 4]]
    assert (got["learnable"], got["stats"], got["priors"], got["macs"]) == \
        (want["learnable"], want["stats"], want["priors"], want["macs"])
    assert got["macs_per_image"] == want["macs"] // want["batch"]
    assert got["layer_types"]["Convolution"] == 1 and len(got["layers"]) == 8


def test_summary_text_output_totals(tmp_path, capsys):
    path = tmp_path / "tiny.prototxt"
    path.write_text(TINY)
    assert cli.main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    want = hand_numbers()
    assert f"learnable parameters: {want['learnable']:,}" in out
    assert f"priors: {want['priors']:,}" in out


def test_summary_of_a_bad_prototxt_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.prototxt"
    path.write_text(TINY.replace("kernel_size: 3 stride: 2", "kernel_size: 3 strides: 2"))
    assert cli.main(["summary", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "strides" in err and "bad.prototxt" in err


def test_summary_of_a_zero_stride_names_the_layer_and_field(tmp_path, capsys):
    # stride 0 once divided by zero inside the shape rules (a traceback); Caffe CHECKs stride > 0
    for old, new, layer, field in (("kernel_size: 3 stride: 2", "kernel_size: 3 stride: 0", "conv", "convolution_param.stride"),
                                   ("kernel_size: 2 stride: 2", "kernel_size: 2 stride: 0", "pool", "pooling_param.stride")):
        path = tmp_path / f"zero_{layer}.prototxt"
        path.write_text(TINY.replace(old, new))
        assert cli.main(["summary", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert path.name in err and repr(layer) in err and field in err and "> 0" in err, err
