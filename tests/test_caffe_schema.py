"""Our caffe.proto against the SSD fork's schema as caffe-ssd-spec.md §1.1 lists it (field numbers,
labels, types, defaults, read from the spec's markdown tables in this test), plus the proto2
presence rule SSD relies on and one-line errors for bad prototxts."""
import math
import re
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from scratchdet.caffe import io
from scratchdet.caffe.schema import pb
from scratchdet.errors import ScratchDetError

REPO = Path(__file__).resolve().parents[1]
SPEC_NAME = "caffe-ssd-spec.md"


def find_spec() -> Path | None:
    """The spec lives in the project's shared reference folder, beside or inside the checkout."""
    import os
    candidates = [Path(os.environ["SCRATCHDET_REFERENCE"]) / SPEC_NAME] if os.environ.get("SCRATCHDET_REFERENCE") else []
    for base in (REPO, *REPO.parents[:2]):
        candidates.append(base / "shared" / "reference" / SPEC_NAME)
    return next((p for p in candidates if p.is_file()), None)


def spec_tables(path: Path) -> dict[str, dict[str, tuple]]:
    """``**Message**`` + ``| # | field | label | type | default |`` tables of §1.1 ->
    {message: {field: (number, label, type, default)}}."""
    text = path.read_text()
    start = text.index("### 1.1 Full field tables")
    end = text.index("\n## 2.", start)
    tables: dict[str, dict[str, tuple]] = {}
    current = None
    for line in text[start:end].splitlines():
        m = re.fullmatch(r"\*\*(\w+)\*\*", line.strip())
        if m:
            current = tables.setdefault(m.group(1), {})
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if current is not None and len(cells) == 5 and cells[0].isdigit():
            num, name, label, ftype, default = cells
            current[name.strip("`")] = (int(num), label, ftype, default)
    return tables


SPEC = find_spec()
needs_spec = pytest.mark.skipif(SPEC is None, reason=f"{SPEC_NAME} (shared/reference) not found; "
                                                      "set SCRATCHDET_REFERENCE to its folder")


@pytest.fixture(scope="module")
def tables():
    return spec_tables(SPEC)


def test_proto_loads_with_the_messages_ssd_needs():
    for name in ("NetParameter", "LayerParameter", "SolverParameter", "SolverState", "AnnotatedDatum",
                 "LabelMap", "PriorBoxParameter", "MultiBoxLossParameter", "DetectionOutputParameter",
                 "DetectionEvaluateParameter", "NormalizeParameter", "AnnotatedDataParameter", "BlobProto"):
        assert hasattr(pb, name), name


def test_a_few_numbers_and_defaults_from_the_spec():
    lp = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert (lp["prior_box_param"].number, lp["annotated_data_param"].number, lp["norm_param"].number,
            lp["detection_output_param"].number, lp["transform_param"].number) == (203, 200, 206, 204, 100)
    assert pb.AnnotatedDatum.DESCRIPTOR.fields_by_name["type"].number == 2
    sp = pb.SolverParameter()
    assert (sp.ap_version, sp.eval_type, sp.type, sp.iter_size, sp.snapshot_after_train) == \
        ("Integral", "classification", "SGD", 1, True)
    assert pb.SolverParameter.DESCRIPTOR.fields_by_name["ap_version"].number == 42
    pp = pb.PriorBoxParameter()
    assert (pp.flip, pp.clip, pp.offset) == (True, False, 0.5)
    assert pb.MultiBoxLossParameter().code_type == pb.PriorBoxParameter.CORNER   # CORNER, not CENTER_SIZE
    assert pb.DataParameter().backend == pb.DataParameter.LEVELDB                 # so nets must say LMDB
    assert math.isclose(pb.BatchNormParameter().eps, 1e-5, rel_tol=1e-6)
    assert pb.NetParameter.DESCRIPTOR.fields_by_name["layer"].number == 100


def test_annotation_type_bbox_is_serialized_although_it_is_zero():
    datum = pb.AnnotatedDatum()
    datum.type = pb.AnnotatedDatum.BBOX
    assert pb.AnnotatedDatum.BBOX == 0
    data = datum.SerializeToString()
    assert data == bytes([0x10, 0x00])          # field 2, varint, value 0: present on the wire
    back = pb.AnnotatedDatum.FromString(data)
    assert back.HasField("type")
    assert not pb.AnnotatedDatum.FromString(pb.AnnotatedDatum().SerializeToString()).HasField("type")


_SCALAR_NAMES = {
    FieldDescriptor.TYPE_FLOAT: "float", FieldDescriptor.TYPE_DOUBLE: "double", FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_INT64: "int64", FieldDescriptor.TYPE_UINT32: "uint32", FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_BOOL: "bool", FieldDescriptor.TYPE_STRING: "string", FieldDescriptor.TYPE_BYTES: "bytes",
}


def _type_name(f) -> str:
    if f.type == FieldDescriptor.TYPE_MESSAGE:
        return f.message_type.name
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f"enum {f.enum_type.full_name.split('.', 1)[1]}"
    return _SCALAR_NAMES[f.type]


def _default_matches(f, text: str) -> bool:
    if not f.has_default_value:
        return text == ""
    if f.type == FieldDescriptor.TYPE_ENUM:
        return f.enum_type.values_by_number[f.default_value].name == text
    if f.type == FieldDescriptor.TYPE_BOOL:
        return str(f.default_value).lower() == text
    if f.type == FieldDescriptor.TYPE_STRING:
        return f'"{f.default_value}"' == text
    return math.isclose(float(f.default_value), float(text), rel_tol=1e-6)


# fields of newer forks that we accept (with a warning) beyond the SSD fork's schema
NEWER_FORK_FIELDS = {("DetectionOutputParameter", "clip")}


@needs_spec
def test_every_message_we_define_matches_the_spec_tables(tables):
    """Each of our messages that the spec lists: every field we define has the spec's number,
    label, type and default (ours may omit fields, never change them)."""
    checked = 0
    for name, fields in tables.items():
        ours = getattr(pb, name, None)
        if ours is None:
            continue
        for f in ours.DESCRIPTOR.fields:
            if (name, f.name) in NEWER_FORK_FIELDS:     # accepted from newer forks: its number must not clash
                assert f.number not in {v[0] for v in fields.values()}, f"{name}.{f.name}: number clashes"
                continue
            assert f.name in fields, f"{name}.{f.name} is not in the SSD fork's schema"
            num, label, ftype, default = fields[f.name]
            assert f.number == num, f"{name}.{f.name}: number {f.number}, spec {num}"
            assert ("repeated" if f.is_repeated else "optional") == label, f"{name}.{f.name}: label"
            assert _type_name(f) == ftype.replace(" [packed]", ""), f"{name}.{f.name}: {_type_name(f)} vs {ftype}"
            if f.type != FieldDescriptor.TYPE_MESSAGE and not f.is_repeated:
                assert _default_matches(f, default.strip()), f"{name}.{f.name}: default {f.default_value!r} vs {default!r}"
            checked += 1
    assert checked > 300


@needs_spec
def test_spec_tables_parse_as_expected(tables):
    # guards the parser: a table it misread would make the comparisons above vacuous
    assert tables["LayerParameter"]["prior_box_param"][0] == 203
    assert tables["SolverParameter"]["ap_version"] == (42, "optional", "string", '"Integral"')
    assert len(tables["PriorBoxParameter"]) == 13 and len(tables["SolverParameter"]) == 44


def test_unknown_field_in_a_prototxt_is_one_line_naming_it():
    with pytest.raises(ScratchDetError) as exc:
        io.parse_text('layer { name: "a" type: "ReLU" relu_param { slope: 2 } }', pb.NetParameter, "bad.prototxt")
    msg = str(exc.value)
    assert "\n" not in msg and "bad.prototxt" in msg and "slope" in msg


def test_bad_enum_value_is_one_line(tmp_path):
    path = tmp_path / "solver.prototxt"
    path.write_text("base_lr: 0.1\nsolver_mode: TPU\n")
    with pytest.raises(ScratchDetError) as exc:
        io.read_solver(path)
    assert "\n" not in str(exc.value) and "TPU" in str(exc.value) and str(path) in str(exc.value)


def test_to_text_round_trips_float32_values_exactly():
    import numpy as np
    rng = np.random.default_rng(0)
    values = [0.1, 1e-10, 0.0005, 20.0, 0.001, 1e-05, 2.76248, 104.0, 3.4028234663852886e38, 1.4e-45]
    values += [float(v) for v in rng.standard_normal(200).astype(np.float32) * 10.0 ** rng.integers(-12, 12, 200)]
    for v in values:
        f32 = float(np.float32(v))
        msg = pb.NormalizeParameter(eps=f32)               # eps is a float (32-bit) field
        back = io.parse_text(io.to_text(msg), pb.NormalizeParameter)
        assert np.float32(back.eps) == np.float32(f32), (v, io.to_text(msg))
    sp = pb.SolverParameter(base_lr=0.1, weight_decay=0.0005, delta=1e-10, gamma=20.0)
    text = io.to_text(sp)
    assert "base_lr: 0.1\n" in text and "weight_decay: 0.0005\n" in text and "delta: 1e-10\n" in text
    assert io.parse_text(text, pb.SolverParameter) == sp


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_modes_a_plain_open_gives(tmp_path, mask):
    import os
    import stat
    old = os.umask(mask)
    try:
        io.atomic_write_bytes(tmp_path / "a.bin", b"x")
        io.write_text(pb.SolverParameter(base_lr=0.1), tmp_path / "solver.prototxt")
        io.write_binary(pb.SolverParameter(base_lr=0.1), tmp_path / "b.binaryproto")
        (tmp_path / "plain").write_bytes(b"x")
    finally:
        os.umask(old)
    expect = stat.S_IMODE((tmp_path / "plain").stat().st_mode)
    assert expect == 0o666 & ~mask
    for name in ("a.bin", "solver.prototxt", "b.binaryproto"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expect, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "b.binaryproto", "plain", "solver.prototxt"]
