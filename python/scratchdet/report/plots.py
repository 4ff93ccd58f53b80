"""``scratchdet plot``: training curves of several runs on shared axes, and the paper's Figure 1.

Written to ``--out`` (PNG, matplotlib's Agg renderer, no display needed):

* ``loss.png``     smoothed training loss (as logged) against iteration
* ``lr.png``       learning rate against iteration
* ``map.png``      test mAP (percent) against iteration; the paper's value, when known, dashed
* ``figure1.png``  the paper's Figure 1 panels: (a) training loss, (b) L2 norm of the gradient,
  (c) fluctuation of that norm

Value axes turn logarithmic when the curves span more than a factor of 20 (an exploding run next to
converging ones, lr steps), linear otherwise.

The gradient norm is the one our engine logs every display interval (``Iteration N, gradient L2
norm = v``: all learnable diffs, before clipping); Caffe's own logs do not have it, so panels (b)
and (c) say so for such runs. The paper does not define its "fluctuation (smoothed)"; here it is
the absolute change of the norm between consecutive display points, |g_k - g_(k-1)|, averaged over
a trailing window of ``--window`` display points (default 10): large when the gradient jumps
around, small when it changes predictably, which is the property Figure 1 argues about.

One colour per run, labelled by variant (logs that share one are told apart by their file paths);
a run that diverged ends with an ``x`` at the iteration of its first non-finite loss, placed at its
last finite value in that panel, or at the panel's top edge when the run has no finite value there.
A panel whose quantity a log lacks (Caffe's logs have no gradient norm) shows nothing for that run,
not a divergence marker at zero.
"""
from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from ..errors import ScratchDetError
from .logparse import RunRecord

FLUCTUATION_WINDOW = 10
PNG_DPI = 110


def moving_average(values, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start); NaNs are skipped."""
    v = np.asarray(values, np.float64).reshape(-1)
    finite = np.isfinite(v)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, v, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, len(v) + 1)
    lo = np.maximum(hi - window, 0)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def fluctuation(series: list[tuple[int, float]], window: int = FLUCTUATION_WINDOW) -> list[tuple[int, float]]:
    """(iteration, smoothed |g_k - g_(k-1)|) from the second display point on."""
    if len(series) < 2:
        return []
    its = np.asarray([i for i, _ in series])
    g = np.asarray([v for _, v in series], np.float64)
    change = np.abs(np.diff(g))
    smooth = moving_average(change, window)
    return [(int(i), float(v)) for i, v in zip(its[1:], smooth)]


def _finite(series):
    return [(i, v) for i, v in series if v is not None and math.isfinite(v)]


def _draw(ax, series, rec: RunRecord, label: str, color, scale: float = 1.0, marker=None) -> bool:
    """One run's curve (finite points), its divergence marker; True when anything was drawn."""
    series = list(series)
    pts = _finite(series)
    if pts:
        x, y = zip(*pts)
        ax.plot(x, [v * scale for v in y], color=color, label=label, linewidth=1.2,
                marker=marker or ("o" if len(pts) == 1 else None), markersize=3)
    if rec.diverged is not None and series:   # no marker where the log lacks this quantity
        before = [p for p in pts if p[0] <= rec.diverged.iteration] or pts
        style = dict(marker="x", color=color, markersize=10, markeredgewidth=2, linestyle="none",
                     label=None if pts else label, clip_on=False)
        if before:
            ax.plot([rec.diverged.iteration], [before[-1][1] * scale], **style)
        else:   # only non-finite values: at the top edge, not at a made-up value
            ax.plot([rec.diverged.iteration], [1.0], transform=ax.get_xaxis_transform(), **style)
        return True
    return bool(pts)


def _label(rec: RunRecord, name: str) -> str:
    return f"{name} (NAN at {rec.diverged.iteration})" if rec.diverged else name


def _new_figure(ncols: int = 1, width: float = 6.4):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width * ncols if ncols > 1 else width, 4.2))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, k + 1) for k in range(ncols)]
    return fig, axes


def _finish(ax, title: str, ylabel: str, drawn: bool, empty_note: str, log_y: bool = False) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if drawn:
        if log_y:
            ys = [y for line in ax.get_lines() for y in np.asarray(line.get_ydata(), float) if np.isfinite(y)]
            if ys and min(ys) > 0 and max(ys) / min(ys) > 20:   # log only where it spans decades
                ax.set_yscale("log")
        if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
            ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty_note, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="gray")


def _save(fig, path: Path) -> Path:
    from ..data.files import write_atomic
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=PNG_DPI)
    write_atomic(path, buf.getvalue())
    return path


def plot_runs(runs: list[tuple[str, RunRecord]], out_dir, window: int = FLUCTUATION_WINDOW,
              paper_values: dict[str, float | None] | None = None) -> list[Path]:
    """Write the four PNGs for ``runs`` = [(label, record)]; returns their paths."""
    if window < 1:
        raise ScratchDetError(f"fluctuation window {window}: must be at least 1")
    out_dir = Path(out_dir)
    paper_values = paper_values or {}
    import matplotlib
    colors = matplotlib.colormaps["tab10"].colors
    color = {label: colors[k % len(colors)] for k, (label, _) in enumerate(runs)}
    written = []

    fig, (ax,) = _new_figure()
    drawn = False
    for label, rec in runs:
        drawn |= _draw(ax, rec.loss_series(), rec, _label(rec, label), color[label])
    _finish(ax, "Training loss", "loss (smoothed as logged)", drawn, "no loss lines in the logs", log_y=True)
    written.append(_save(fig, out_dir / "loss.png"))

    fig, (ax,) = _new_figure()
    drawn = False
    for label, rec in runs:
        pts = _finite(rec.lr_series())
        if pts:
            x, y = zip(*pts)
            ax.step(x, y, where="post", color=color[label], label=label, linewidth=1.2)
            drawn = True
    _finish(ax, "Learning rate", "lr", drawn, "no lr lines in the logs", log_y=True)
    written.append(_save(fig, out_dir / "lr.png"))

    fig, (ax,) = _new_figure()
    drawn = False
    for label, rec in runs:
        drawn |= _draw(ax, rec.map_series(), rec, _label(rec, label), color[label], scale=100, marker="o")
        value = paper_values.get(label)
        if value is not None:
            ax.axhline(value, color=color[label], linestyle="--", linewidth=0.9, label=f"{label}: paper {value:g}")
    _finish(ax, "Test mAP", "mAP (%)", drawn, "no test outputs in the logs")
    written.append(_save(fig, out_dir / "map.png"))

    fig, axes = _new_figure(3, width=4.6)
    panels = [("(a) Training loss", "loss", lambda r: r.loss_series(), "no loss lines"),
              ("(b) L2 norm of gradient", "||g||", lambda r: r.grad_norm,
               "no 'gradient L2 norm' lines\n(Caffe logs lack them; our engine writes them)"),
              (f"(c) Fluctuation of L2 norm (smoothed)", f"mean |Δ||g||| over {window} displays",
               lambda r: fluctuation(r.grad_norm, window), "no 'gradient L2 norm' lines")]
    for ax, (title, ylabel, get, note) in zip(axes, panels):
        drawn = False
        for label, rec in runs:
            drawn |= _draw(ax, get(rec), rec, _label(rec, label), color[label])
        _finish(ax, title, ylabel, drawn, note, log_y=True)
    written.append(_save(fig, out_dir / "figure1.png"))
    return written


def plot_grouped_bars(groups: list[str], series: dict[str, list], path, title: str, ylabel: str) -> Path:
    """One bar per series in each group, with an error bar: ``series`` = {name: [(mean, sd) or None
    per group]} (None: no value, no bar). For AP by object size over seeds."""
    import matplotlib
    colors = matplotlib.colormaps["tab10"].colors
    fig, (ax,) = _new_figure(width=7.2)
    width = 0.8 / max(len(series), 1)
    for k, (name, values) in enumerate(series.items()):
        xs = [g + (k - (len(series) - 1) / 2) * width for g in range(len(groups))]
        pts = [(x, v) for x, v in zip(xs, values) if v is not None]
        if pts:
            ax.bar([x for x, _ in pts], [v[0] for _, v in pts], width, yerr=[v[1] for _, v in pts],
                   capsize=3, color=colors[k % len(colors)], label=name)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, Path(path))


def distinct_labels(names: list[str], paths: list[str]) -> list[str]:
    """``names`` as given where unique; runs that share one get ``name (path)`` with the fewest
    trailing path parts that tell them apart (the file name, else its folders too)."""
    out = list(names)
    for name in set(names):
        idx = [k for k, n in enumerate(names) if n == name]
        if len(idx) < 2:
            continue
        parts = [Path(paths[k]).parts for k in idx]
        depth = 1
        while depth < max(len(p) for p in parts) and len({p[-depth:] for p in parts}) < len(parts):
            depth += 1
        for k, p in zip(idx, parts):
            out[k] = f"{name} ({'/'.join(p[-depth:])})"
    seen: dict[str, int] = {}
    for k, label in enumerate(out):      # the same file given twice
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            out[k] = f"{label} #{seen[label]}"
    return out
