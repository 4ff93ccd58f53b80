"""Which paper variant a log belongs to, and the paper's number for it.

The variant comes from the user (``--variant``), else from the log's path as the runner lays runs
out (``runs/<dataset>/<variant>/train.log``), else from the snapshot prefix or the net name the log
prints. The paper's number comes from the variant's ``paper_key`` in the registry the command layer
installs (``install_registry``), or from a key given by the user (``scratchdet.paper``).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ScratchDetError
from .. import paper
from .logparse import RunRecord

NET_SUFFIXES = ("_train", "_test", "_deploy")


_registry = None


def install_registry(reg) -> None:
    """Give this module the variant registry (``prototxt_gen.registry``, or any object with
    ``all_variants()``). report/ sits below prototxt_gen and never imports it; the command layer
    installs it before ``compare`` and ``plot`` run. Without one, variants come from the runs layout
    and net names, and paper numbers from ``--paper-key``."""
    global _registry
    _registry = reg


def registry():
    """The installed registry, or None."""
    return _registry


def known_variant_ids() -> set[str] | None:
    reg = registry()
    return None if reg is None else {v.id for v in reg.all_variants()}


def registry_variant(variant_id: str):
    """The registry's Variant object for an id, or None."""
    reg = registry()
    if reg is None:
        return None
    return next((v for v in reg.all_variants() if v.id == variant_id), None)


def runs_variant(path: str | None) -> str | None:
    """``.../runs/<dataset>/<variant>/<file>`` -> variant (the runner's layout)."""
    if not path:
        return None
    parts = Path(path).parts
    if "runs" not in parts:
        return None
    i = len(parts) - 1 - parts[::-1].index("runs")
    return parts[i + 2] if len(parts) > i + 3 else None


def runs_dataset(path: str | None) -> str | None:
    if not path or "runs" not in Path(path).parts:
        return None
    parts = Path(path).parts
    i = len(parts) - 1 - parts[::-1].index("runs")
    return parts[i + 1] if len(parts) > i + 2 else None


def _folders(path: str | None) -> list[str]:
    """Folder names of a path, nearest first, then its file stem."""
    if not path:
        return []
    p = Path(path)
    return [q for q in reversed(p.parts[:-1]) if q not in ("runs", "models", ".", "..", "/")] + [p.stem, p.name]


def net_variant(net_name: str | None) -> str | None:
    if not net_name:
        return None
    for suffix in NET_SUFFIXES:
        if net_name.endswith(suffix):
            return net_name[: -len(suffix)]
    return net_name


def infer_variant(log_path: str | None, rec: RunRecord | None = None) -> str | None:
    """The variant id of a run. With the registry: the first of (runs folder, the log's folders,
    the snapshot prefix's folders and name, the net name without _train) that it knows. Without
    it: the runs folder, else the net name."""
    snapshot_prefix = rec.snapshot_prefix if rec is not None else None
    net = net_variant(rec.net_name) if rec is not None else None
    candidates = [runs_variant(log_path), runs_variant(snapshot_prefix), *_folders(log_path),
                  *_folders(snapshot_prefix), net]
    known = known_variant_ids()
    if known:
        for c in candidates:
            if c and c in known:
                return c
    return runs_variant(log_path) or runs_variant(snapshot_prefix) or net


def paper_key_for(variant_id: str | None) -> str | None:
    v = registry_variant(variant_id) if variant_id else None
    return getattr(v, "paper_key", None) if v is not None else None


def analogue_key_for(variant_id: str | None) -> str | None:
    """The paper cell a toy variant imitates (demo nets carry it as ``analogue``), or None."""
    v = registry_variant(variant_id) if variant_id else None
    return getattr(v, "analogue", None) if v is not None else None


def paper_result(key: str | None) -> paper.PaperResult | None:
    """The paper's result for a key; an unknown key is an error listing the known families."""
    if not key:
        return None
    return paper.lookup(key)


def check_paper_key(key: str) -> None:
    if key not in paper.RESULTS:
        raise ScratchDetError(f"no paper result {key!r}; e.g. {', '.join(sorted(paper.RESULTS)[:4])}, ...")
