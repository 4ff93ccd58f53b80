"""The committed ``models/`` tree: every file parses with our schema, uses only fields the SSD fork's
schema has (as caffe-ssd-spec.md §1.1 lists them, parsed here independently of our caffe.proto),
and is exactly what the generators emit now (a stale or extra file fails)."""
from pathlib import Path

import pytest

from prototxt_gen import build, labelmaps, registry
from scratchdet.caffe import io
from scratchdet.caffe.schema import pb

from test_caffe_schema import SPEC, needs_spec, spec_tables  # noqa: E402  (tests/ is on sys.path)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
NET_FILES = ("train.prototxt", "test.prototxt", "deploy.prototxt")


def model_files():
    return sorted(p for p in MODELS.rglob("*") if p.is_file())


def test_models_tree_holds_every_variant_and_nothing_else():
    expected = {f"{v.dataset}/{v.id}/{name}" for v in registry.all_variants() for name in build.FILES}
    present = {p.relative_to(MODELS).as_posix() for p in model_files()}
    assert present - expected == set(), "stale files in models/ (run: scratchdet gen --all --out models)"
    assert expected - present == set(), "missing files in models/ (run: scratchdet gen --all --out models)"


def test_models_equal_what_the_generators_emit_now():
    stale = []
    for v in registry.all_variants():
        folder, rendered = build.render_variant(v, "models")
        for name, data in rendered.items():
            if (REPO / folder / name).read_bytes() != data:
                stale.append(f"{folder}/{name}")
    assert not stale, f"{len(stale)} stale generated files, e.g. {stale[:3]} (run: scratchdet gen --all --out models)"


def test_label_maps_equal_the_generator():
    for path, data in labelmaps.render().items():
        assert (REPO / path).read_bytes() == data, path


def _walk(msg, tables, where, problems):
    """Every field set in ``msg`` (recursively) must be in the spec's table for its message."""
    name = msg.DESCRIPTOR.name
    table = tables.get(name)
    if table is None:
        problems.append(f"{where}: message {name} is not in the spec's tables")
        return
    for field, value in msg.ListFields():
        if field.name not in table:
            problems.append(f"{where}: {name}.{field.name}")
            continue
        if field.message_type is not None:
            for i, item in enumerate(value if field.is_repeated else [value]):
                _walk(item, tables, f"{where}.{field.name}", problems)


@needs_spec
def test_every_generated_field_exists_in_the_ssd_fork_schema():
    tables = spec_tables(SPEC)
    problems: list[str] = []
    files = model_files()
    for path in files:
        if path.name == "train.sh":
            text = path.read_text()
            assert text.startswith("#!/bin/sh\n") and "/work/" not in text and "/home/" not in text
            continue
        kind = pb.SolverParameter if path.name == "solver.prototxt" else pb.NetParameter
        msg = io.read_text(path, kind)          # parses with our schema (errors are one line)
        _walk(msg, tables, str(path.relative_to(REPO)), problems)
    for path in labelmaps.FILES:
        _walk(io.read_labelmap(REPO / path), tables, path, problems)
    assert not problems, f"{len(problems)} fields outside the SSD schema, e.g. {problems[:5]}"
    assert len(files) == 5 * len(registry.all_variants())


def test_walker_flags_a_field_outside_the_schema():
    # the check above must be able to fail: a field the spec does not list is reported
    tables = {"NetParameter": {"name": (1, "optional", "string", "")}}
    problems: list[str] = []
    _walk(pb.NetParameter(name="x", force_backward=True), tables, "t", problems)
    assert problems == ["t: NetParameter.force_backward"]


@pytest.mark.parametrize("name", NET_FILES)
def test_generated_paths_are_relative_to_the_repo_root(name):
    for v in registry.all_variants()[::7]:
        text = (MODELS / v.dataset / v.id / name).read_text()
        assert "/work/" not in text and "$HOME" not in text and '"/' not in text, (v.id, name)
