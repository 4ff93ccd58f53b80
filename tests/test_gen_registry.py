"""The variant registry, the build API's overrides, and ``scratchdet gen`` (listing, writing, and
one-line errors for unknown ids and impossible configurations)."""
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prototxt_gen import build, registry
from prototxt_gen.backbones import ResNetSpec, resnet, resnet18
from prototxt_gen.netspec import L, NetSpec
from scratchdet import cli
from scratchdet.caffe import shapes
from scratchdet.caffe.netstate import TRAIN
from scratchdet.errors import ScratchDetError
from scratchdet import paper

REPO = Path(__file__).resolve().parents[1]


def ids(prefix):
    return [v.id for v in registry.all_variants() if v.id.startswith(prefix)]


def test_every_paper_cell_is_a_variant_with_its_paper_number():
    table1 = [v for v in registry.all_variants() if v.table == "Table 1"]
    assert len(table1) == 18 == len(paper.TABLE1_CONFIGS) * len(paper.TABLE1_LRS)
    assert {v.paper_key for v in table1} == {k for k in paper.RESULTS if k.startswith("table1/")}
    table2 = [v for v in registry.all_variants() if v.table == "Table 2"]
    assert len(table2) == 10
    assert {v.paper_key for v in table2} == {k for k in paper.RESULTS if k.startswith("table2/") and not k.endswith("/fps")}
    fig3 = [v for v in registry.all_variants() if v.table == "Figure 3"]
    assert [v.id for v in fig3] == ["fig3_resnet18", "fig3_resnet18_a", "fig3_resnet18_b", "fig3_root_resnet18"]
    assert [v.paper_result.value for v in fig3] == [73.1, 75.3, 77.6, 78.5]
    for v in registry.all_variants():
        if v.paper_key is not None:
            assert v.paper_key in paper.RESULTS, v.id
    # NAN cells stay NAN (e.g. no BN at lr 0.01 and 0.05)
    nan = {v.id for v in table1 if v.paper_result.is_nan}
    assert nan == {"table1_scratch_nobn_lr0.01", "table1_scratch_nobn_lr0.05", "table1_scratch_bn_head_lr0.05",
                   "table1_pretrained_vgg16_lr0.05"}


def test_scratchdet_and_root_resnet18_variants():
    for ds, folder in (("voc07", "VOC0712"), ("voc12", "VOC0712Plus"), ("coco", "coco")):
        for suffix in ("_rootres34", "_rootres34_released", "_rootres18"):
            assert registry.get(ds + suffix).dataset == folder
    assert registry.get("voc07_rootres34").paper_result.value == 80.4
    assert registry.get("voc07_rootres34").profile == "paper"
    assert registry.get("coco_rootres34_released").profile == "released"
    assert registry.get("voc07_rootres18").paper_result.value == 78.5
    assert registry.get("coco_rootres34").paper_result.metric == "COCO AP"


def test_batches_schedules_and_weights_follow_design():
    for v in registry.all_variants():
        if v.table == "Table 1":
            assert v.batch == (128 if v.pretrained is None else 32), v.id
            assert v.schedule.stepvalue == (80000, 100000, 120000) and v.schedule.max_iter == 120000
            assert v.base_lr == float(v.id.rsplit("_lr", 1)[1])
        if v.table in ("Table 2", "Figure 3"):
            assert v.batch == 128 and v.batch_per_gpu == 32 and v.pretrained is None
            # 0.05 for 45k, then /10 for another 30k, 20k and 5k (paper §4.2.2)
            assert [v.schedule.lr_at(i) for i in (0, 44999, 45000, 74999, 75000, 95000, 99999)] == \
                pytest.approx([0.05, 0.05, 0.005, 0.005, 0.0005, 0.00005, 0.00005])
            assert v.schedule.max_iter == 100000
        if v.table == "ScratchDet300":
            assert v.batch == 128 and v.base_lr == 0.05
        assert v.schedule.source, v.id
    assert registry.get("voc07_rootres34").schedule.stepvalue == (40000, 75000, 90000, 100000)
    coco = registry.get("coco_rootres34_released")
    assert (coco.batch_per_gpu, coco.gpus, coco.iter_size, coco.schedule.max_iter) == (16, 4, 2, 325000)
    assert registry.get("table1_pretrained_vgg16_lr0.01").pretrained
    assert registry.get("demo_rootres").data.folder == "synthetic"
    assert len(ids("demo_table1_")) == 12


def test_unknown_id_suggests_close_ones():
    with pytest.raises(ScratchDetError) as exc:
        registry.get("voc07_rootres")
    msg = str(exc.value)
    assert "voc07_rootres" in msg and "voc07_rootres34" in msg and "\n" not in msg


def test_gen_cli_unknown_id_exit_2_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scratchdet", "gen", "table2_nods_9x3", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "table2_nods_9x3" in err and "table2_nods_" in err.split("mean", 1)[1]
    assert list(tmp_path.iterdir()) == []


def test_gen_list_json(capsys):
    assert cli.main(["gen", "--list", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == len(registry.all_variants())
    row = next(r for r in rows if r["id"] == "table1_scratch_bn_both_lr0.05")
    assert (row["table"], row["dataset"], row["paper_metric"], row["paper_value"], row["base_lr"]) == \
        ("Table 1", "VOC0712", "VOC07 mAP", 78.7, 0.05)
    assert row["stepvalue"] == [80000, 100000, 120000] and row["profile"] == "paper" and row["cell"]
    nan = next(r for r in rows if r["id"] == "table1_scratch_nobn_lr0.05")
    assert nan["paper_value"] == "NAN"


def test_gen_writes_files_that_train_from_the_repo_root(tmp_path, capsys):
    out = tmp_path / "m"
    assert cli.main(["gen", "demo_rootres", "--out", str(out), "--lmdb-dir", "/data/x",
                     "--set", "max_iter=300", "--set", "batch=4"]) == 0
    folder = out / "synthetic" / "demo_rootres"
    assert sorted(p.name for p in folder.iterdir()) == sorted(build.FILES)
    assert os.access(folder / "train.sh", os.X_OK)
    from scratchdet.caffe import io
    sp = io.read_solver(folder / "solver.prototxt")
    assert sp.train_net == f"{folder.as_posix()}/train.prototxt" and sp.max_iter == 300
    assert list(sp.stepvalue) == [200, 275]       # the schedule's shape scales with max_iter
    train = io.read_net(folder / "train.prototxt")
    assert train.layer[0].data_param.source == "/data/x/synthetic_trainval_lmdb"
    assert train.layer[0].data_param.batch_size == 4


def test_train_script_runs_caffe_from_the_root_and_logs_to_runs():
    text = build.build_variant("table1_pretrained_vgg16_lr0.001")["train.sh"]
    assert 'cd "$(dirname "$0")/../../.."' in text
    assert "${CAFFE_BIN:-caffe}" in text and '--gpu "${GPUS:-0}"' in text
    assert "tee runs/VOC0712/table1_pretrained_vgg16_lr0.001/train.log" in text
    assert "scratchdet train" in text and "${WEIGHTS:?" in text
    scratch = build.build_variant("voc07_rootres34")["train.sh"]
    assert '--gpu "${GPUS:-0,1,2,3}"' in scratch and "WEIGHTS" not in scratch


def test_train_script_shell_logic(tmp_path, monkeypatch):
    """Run the generated script with a fake caffe: it cds to the root and tees the log."""
    root = tmp_path / "repo"
    root.mkdir()
    monkeypatch.chdir(root)
    folder = root / build.write_variant("demo_rootres", "models")
    fake = tmp_path / "caffe"
    fake.write_text('#!/bin/sh\necho "fake caffe $* in $(pwd)"\n')
    fake.chmod(0o755)
    r = subprocess.run(["sh", str(folder / "train.sh"), "--extra"], capture_output=True, text=True,
                       env=dict(os.environ, CAFFE_BIN=str(fake), GPUS="7"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    log = (root / "runs" / "synthetic" / "demo_rootres" / "train.log").read_text()
    assert log.strip() == (f"fake caffe train --solver=models/synthetic/demo_rootres/solver.prototxt --gpu 7 "
                           f"--extra in {root}")


def test_demo_overrides_rescale_the_net():
    files = build.build_variant("demo_rootres", input_size=160, width=0.5, sources=4)
    ns = shapes.infer(files["train.prototxt"], TRAIN)
    priors = [ly for ly in ns.layers if ly.type == "PriorBox"]
    assert [ly.bottom_shapes[0][2] for ly in priors] == [20, 10, 5, 3]
    assert ns.layer("stem_1").top_shapes[0][1] == 8 and ns.layer("data").top_shapes[0][2:] == (160, 160)
    mins = [lp.prior_box_param.min_size[0] for lp in files["deploy.prototxt"].layer if lp.type == "PriorBox"]
    assert mins == [16, 32, 88, 144]       # SSD's rule at 160 with 4 sources: 10%, 20%, 55%, 90%


@pytest.mark.parametrize("variant_id, overrides, words", [
    ("demo_rootres", {"sources": 9}, ["demo_rootres", "sources"]),
    ("demo_rootres", {"input_size": 4}, ["demo_rootres", "input_size"]),
    ("voc07_rootres34", {"input_size": 512}, ["voc07_rootres34", "demo"]),
    ("voc07_rootres34", {"profile": "fast"}, ["voc07_rootres34", "unknown profile"]),
    ("table2_ds_1x7", {"profile": "released"}, ["table2_ds_1x7", "released"]),
    ("demo_rootres", {"colour": "red"}, ["demo_rootres", "colour"]),
    ("demo_rootres", {"stepvalue": [500, 100]}, ["demo_rootres", "increasing"]),
    ("demo_rootres", {"batch": 0}, ["demo_rootres", "batch"]),
])
def test_impossible_configurations_are_one_line_errors(variant_id, overrides, words):
    with pytest.raises(ScratchDetError) as exc:
        build.build_variant(variant_id, **overrides)
    msg = str(exc.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


def test_profile_override_gives_the_twin():
    folder, files = build.render_variant("voc07_rootres34", "models", profile="released")
    assert folder.as_posix() == "models/VOC0712/voc07_rootres34_released"
    assert files == build.render_variant("voc07_rootres34_released", "models")[1]


def test_backbone_errors_name_the_problem():
    with pytest.raises(ScratchDetError, match="at least one conv"):
        resnet18(root_convs=0)
    with pytest.raises(ScratchDetError, match="75x75"):
        resnet18(downsample=False, maxpool=False)
    net = NetSpec()
    net.data = L.Input(input_param={"shape": [{"dim": [1, 3, 32, 32]}]})
    with pytest.raises(ScratchDetError, match="at least one conv"):
        resnet(net, net.data, ResNetSpec(root_convs=0))


def test_a_source_map_below_1x1_is_reported_with_the_variant():
    v = registry.get("table2_nods_3x3")
    tiny = registry.Arch(resnet=v.arch.resnet, input_size=64)   # 64x64 input: conv8_2/conv9_2 cannot exist
    with pytest.raises(ScratchDetError) as exc:
        build.build_variant(dataclasses.replace(v, arch=tiny))
    msg = str(exc.value)
    assert msg.startswith("variant table2_nods_3x3:") and "not positive" in msg and "\n" not in msg


def test_cli_impossible_configuration_writes_nothing(tmp_path):
    r = subprocess.run([sys.executable, "-m", "scratchdet", "gen", "demo_rootres", "demo_table1_bn-none_lr0.05",
                        "--set", "sources=9", "--out", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "sources" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_netspec_names_and_order_like_caffe():
    net = NetSpec()
    net.data = L.Input(input_param={"shape": [{"dim": [1, 3, 8, 8]}]})
    side = L.Convolution(net.data, num_output=2, kernel_size=1)          # unnamed, created first
    net.a = L.Convolution(net.data, num_output=2, kernel_size=3, pad=1)
    relu = L.ReLU(L.BatchNorm(net.a, in_place=True), in_place=True)
    net.b = L.Eltwise(side, relu)
    L.Eltwise(net.b, net.b)                                              # nothing reads it: not emitted
    proto = net.to_proto("t")
    assert [(lp.name, lp.type, list(lp.bottom), list(lp.top)) for lp in proto.layer] == [
        ("data", "Input", [], ["data"]),
        ("a", "Convolution", ["data"], ["a"]),
        ("Convolution1", "Convolution", ["data"], ["Convolution1"]),   # b's inputs, in order
        ("BatchNorm1", "BatchNorm", ["a"], ["a"]),
        ("ReLU1", "ReLU", ["a"], ["a"]),
        ("b", "Eltwise", ["Convolution1", "a"], ["b"]),
    ]
    assert proto.layer[1].convolution_param.pad == [1]
