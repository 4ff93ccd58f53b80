"""The AnnotatedData layer: label rows, key order with wrap-around, the empty-batch row, DDP
sharding, a stream that does not depend on the worker count and resumes at a position."""
import cv2
import numpy as np
import pytest

from scratchdet.caffe import io
from scratchdet.caffe.netstate import TEST, TRAIN
from scratchdet.caffe.schema import pb
from scratchdet.data.lmdb_io import LMDBWriter, record_key
from scratchdet.engine.layers.annotated_data import AnnotatedDataLayer
from scratchdet.errors import ScratchDetError

H = W = 16
# record i: a flat image of value 10*i, and i % 3 boxes (record 0 has none)
BOXES = {i: [(i % 5 + 1, (0.1 * k, 0.2, 0.1 * k + 0.3, 0.6 + 0.1 * k)) for k in range(i % 3)] for i in range(5)}


def record(i):
    rec = pb.AnnotatedDatum(type=pb.AnnotatedDatum.BBOX)
    img = np.full((H, W, 3), 10 * i, np.uint8)
    rec.datum.data = cv2.imencode(".png", img)[1].tobytes()
    rec.datum.encoded, rec.datum.channels, rec.datum.height, rec.datum.width = True, 3, H, W
    for k, (label, box) in enumerate(BOXES[i]):
        g = rec.annotation_group.add(group_label=label)
        a = g.annotation.add(instance_id=k)
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = box
        a.bbox.difficult = k == 1
    return rec


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("lmdb") / "tiny_lmdb"
    with LMDBWriter(path) as w:
        for i in range(5):
            w.put(record_key(i, f"img{i}.png"), record(i).SerializeToString())
    return path


def layer(db, batch=2, phase=TRAIN, transform="", samplers=""):
    lp = io.parse_text(f"""name: "data" type: "AnnotatedData" top: "data" top: "label"
        data_param {{ source: "{db}" batch_size: {batch} backend: LMDB }}
        transform_param {{ resize_param {{ resize_mode: WARP height: {H} width: {W} }} {transform} }}
        annotated_data_param {{ {samplers} }}""", pb.LayerParameter)
    lay = AnnotatedDataLayer(lp, phase, [], [(batch, 3, H, W), (1, 1, 1, 8)])
    lay.configure(workers=0)
    return lay


def record_ids(data):
    return [int(round(float(x))) // 10 for x in data[:, 0, 0, 0]]


def test_batches_follow_key_order_and_wrap(db):
    lay = layer(db)
    seen = [record_ids(lay.forward()[0]) for _ in range(4)]
    assert seen == [[0, 1], [2, 3], [4, 0], [1, 2]]
    assert lay.position == 8


def test_label_rows_and_empty_batch(db):
    lay = layer(db)
    data, label = lay.forward()                   # records 0 (no box) and 1 (one box)
    assert data.shape == (2, 3, H, W)
    np.testing.assert_allclose(label.numpy(), [[[[1, 2, 0, 0.0, 0.2, 0.3, 0.6, 0]]]], atol=1e-6)
    data, label = lay.forward()                   # records 2 (two boxes, the second difficult) and 3 (none)
    np.testing.assert_allclose(label.numpy()[0, 0], [[0, 3, 0, 0.0, 0.2, 0.3, 0.6, 0],
                                                     [0, 3, 1, 0.1, 0.2, 0.4, 0.7, 1]], atol=1e-6)
    lay = layer(db, batch=1)
    _, label = lay.forward()                      # record 0 alone: no box at all
    assert label.shape == (1, 1, 1, 8) and np.all(label.numpy() == -1)


def test_mean_value_and_mirror_reach_the_data_top(db):
    lay = layer(db, batch=1, transform="mean_value: 5 mean_value: 6 mean_value: 7 scale: 2")
    lay.seek(3)
    data, _ = lay.forward()
    np.testing.assert_allclose(data[0, :, 0, 0].numpy(), [(30 - 5) * 2, (30 - 6) * 2, (30 - 7) * 2])


def test_round_robin_shards_across_ranks(db):
    shards = []
    for rank in range(2):
        lay = layer(db)
        lay.configure(rank=rank, world=2, workers=0)
        shards.append([record_ids(lay.forward()[0]) for _ in range(2)])
    assert shards == [[[0, 2], [4, 1]], [[1, 3], [0, 2]]]
    test_layer = layer(db, phase=TEST)
    test_layer.configure(rank=1, world=2, workers=0)       # the TEST phase reads the whole set
    assert record_ids(test_layer.forward()[0]) == [0, 1]


AUGMENT = ('mirror: true distort_param { brightness_prob: 0.5 brightness_delta: 32 } '
           'expand_param { prob: 0.5 max_expand_ratio: 2 } emit_constraint { emit_type: CENTER }')
SAMPLER = ('batch_sampler { sampler { min_scale: 0.3 max_scale: 1 min_aspect_ratio: 0.5 max_aspect_ratio: 2 } '
           'sample_constraint { min_jaccard_overlap: 0.1 } max_sample: 1 max_trials: 50 }')


def test_stream_is_independent_of_workers_and_resumes_at_a_position(db):
    def run(workers, start=0, n=4, seed=7):
        lay = layer(db, transform=AUGMENT, samplers=SAMPLER)
        lay.configure(seed=seed, workers=workers)
        lay.seek(start)
        out = [lay.forward() for _ in range(n)]
        lay.close()
        return out

    serial = run(0)
    parallel = run(2)
    resumed = run(0, start=4, n=2)
    for (d1, l1), (d2, l2) in zip(serial, parallel):
        assert np.array_equal(d1.numpy(), d2.numpy()) and np.array_equal(l1.numpy(), l2.numpy())
    for (d1, l1), (d2, l2) in zip(serial[2:], resumed):
        assert np.array_equal(d1.numpy(), d2.numpy()) and np.array_equal(l1.numpy(), l2.numpy())
    other = run(0, seed=8)
    assert any(not np.array_equal(a[0].numpy(), b[0].numpy()) for a, b in zip(serial, other))


def test_missing_source_and_bad_backend_are_clear_errors(tmp_path, db):
    with pytest.raises(ScratchDetError, match="no_such_lmdb"):
        layer(tmp_path / "no_such_lmdb")
    lp = io.parse_text(f'name: "d" type: "AnnotatedData" top: "data" data_param {{ source: "{db}" batch_size: 1 }}',
                       pb.LayerParameter)
    with pytest.raises(ScratchDetError, match="backend must be LMDB"):
        AnnotatedDataLayer(lp, TRAIN, [], [(1, 3, H, W)])


FORK_AFTER_OPENCV = """
import sys
import cv2, numpy as np
sys.path.insert(0, {tests!r})
import test_train_data_layer as t
cv2.resize(np.zeros((600, 600, 3), np.uint8), (900, 900))     # may start OpenCV's thread pool
lp = t.io.parse_text('name: "data" type: "AnnotatedData" top: "data" top: "label" '
                     'data_param {{ source: "{db}" batch_size: 2 backend: LMDB }} '
                     'transform_param {{ resize_param {{ resize_mode: WARP height: 400 width: 400 interp_mode: CUBIC }} }}',
                     t.pb.LayerParameter)
lay = t.AnnotatedDataLayer(lp, t.TRAIN, [], [(2, 3, 400, 400), (1, 1, 1, 8)])
lay.configure(workers=0)
lay.forward()                                                  # OpenCV work in this process
lay.seek(0)
big = np.zeros((600, 600, 3), np.uint8)
for _ in range(5):
    cv2.resize(big, (311, 307), interpolation=cv2.INTER_CUBIC)
lay.configure(workers=1)
print(t.record_ids(lay.forward()[0]))
"""


def test_workers_start_after_opencv_was_used_in_the_parent(db):
    import subprocess
    import sys
    from pathlib import Path
    script = FORK_AFTER_OPENCV.format(tests=str(Path(__file__).parent), db=str(db))
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[0, 1]"


def test_encoded_records_take_caffes_jpeg_round_trip_after_a_crop(tmp_path, monkeypatch):
    """Caffe writes a sampled crop back as a JPEG (OpenCV's default quality, 95) and decodes it
    again; the test nets' empty ``batch_sampler {}`` crops every image to itself, so every test
    image goes through one round trip. Without a sampler, or with SCRATCHDET_JPEG_ROUNDTRIP=0,
    the stored pixels come through."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)              # texture: JPEG changes it
    rec = pb.AnnotatedDatum(type=pb.AnnotatedDatum.BBOX)
    rec.datum.data = cv2.imencode(".png", img)[1].tobytes()
    rec.datum.encoded, rec.datum.channels, rec.datum.height, rec.datum.width = True, 3, H, W
    path = tmp_path / "textured_lmdb"
    with LMDBWriter(path) as w:
        w.put(record_key(0, "img0.png"), rec.SerializeToString())
    round_trip = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_COLOR)
    assert np.abs(round_trip.astype(int) - img).max() > 0

    def first_image(samplers, env=None):
        if env is None:
            monkeypatch.delenv("SCRATCHDET_JPEG_ROUNDTRIP", raising=False)
        else:
            monkeypatch.setenv("SCRATCHDET_JPEG_ROUNDTRIP", env)
        data = layer(path, batch=1, phase=TEST, samplers=samplers).forward()[0].numpy()[0]
        return data.transpose(1, 2, 0)

    np.testing.assert_array_equal(first_image("batch_sampler { }"), round_trip.astype(np.float32))
    np.testing.assert_array_equal(first_image(""), img.astype(np.float32))
    np.testing.assert_array_equal(first_image("batch_sampler { }", env="0"), img.astype(np.float32))
    with pytest.raises(ScratchDetError, match="SCRATCHDET_JPEG_ROUNDTRIP='maybe'"):
        first_image("batch_sampler { }", env="maybe")
