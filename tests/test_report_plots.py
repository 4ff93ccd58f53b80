"""``scratchdet plot``: the four PNGs are written, decode, have the expected size and are not blank;
the fluctuation of the gradient norm follows its stated definition; Caffe logs without gradient
norms still plot; nothing to plot is an error that writes nothing."""
import cv2
import numpy as np
import pytest

from scratchdet import cli
from scratchdet.caffe import glog
from scratchdet.report import plots, variants
from scratchdet.report.logparse import parse_text


@pytest.fixture(autouse=True)
def no_registry(monkeypatch):
    monkeypatch.setattr(variants, "registry", lambda: None)


def our_log(path, seed, diverge_at=None, lr=0.05):
    rng = np.random.default_rng(seed)
    lines = [glog.line("I", glog.SOLVER, "Initializing solver from parameters: \nmax_iter: 400\nbase_lr: 0.05")]
    for it in range(0, 401, 20):
        if it % 100 == 0:
            lines += [glog.line("I", glog.TESTING, f"Iteration {it}, Testing net (#0)"),
                      glog.line("I", glog.TEST_OUTPUT, f"    Test net output #0: detection_eval = {glog.num(it / 1000)}")]
        if diverge_at is not None and it >= diverge_at:
            lines.append(glog.line("E", glog.OURS, f"Training diverged at iteration {it}: loss = nan"))
            break
        lines += [glog.line("I", glog.LOSS, f"Iteration {it}, loss = {glog.num(20 / (1 + it / 50) + rng.random())}"),
                  glog.line("I", glog.OURS, f"Iteration {it}, gradient L2 norm = {glog.num(5 + 3 * rng.random())}"),
                  glog.line("I", glog.LR, f"Iteration {it}, lr = {glog.num(lr if it < 300 else lr / 10)}")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def check_png(path, size=None):
    assert path.is_file() and path.stat().st_size > 5000
    image = cv2.imread(str(path))
    assert image is not None
    if size:
        assert image.shape[:2] == size
    assert image.std() > 5           # drawn on, not a blank canvas
    return image


def test_fluctuation_follows_its_definition():
    series = [(0, 1.0), (10, 3.0), (20, 2.0), (30, 6.0), (40, 6.0)]
    # |changes| 2, 1, 4, 0; trailing mean over 2 display points: 2, 1.5, 2.5, 2
    assert plots.fluctuation(series, window=2) == [(10, 2.0), (20, 1.5), (30, 2.5), (40, 2.0)]
    assert plots.fluctuation(series, window=1) == [(10, 2.0), (20, 1.0), (30, 4.0), (40, 0.0)]
    assert plots.fluctuation(series[:1]) == []
    np.testing.assert_allclose(plots.moving_average([1, 2, np.nan, 4], 3), [1, 1.5, 1.5, 3])


def test_plots_are_written_for_several_runs(tmp_path, capsys):
    a = our_log(tmp_path / "runs/VOC0712/bn_head_lr0.01/train.log", 0)
    b = our_log(tmp_path / "runs/VOC0712/nobn_lr0.01/train.log", 1, diverge_at=240)
    out = tmp_path / "plots"
    assert cli.main(["plot", str(a), str(b), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("loss.png", "lr.png", "map.png"):
        check_png(out / name, size=(462, 704))            # 6.4 x 4.2 inches at 110 dpi
        assert f"wrote {out / name}" in printed
    fig1 = check_png(out / "figure1.png")
    assert fig1.shape[1] > 2 * fig1.shape[0]             # three panels side by side
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*"))


def test_caffe_log_without_gradient_norms_still_plots(tmp_path):
    log = tmp_path / "caffe.log"
    log.write_text("I0608 10:52:30.927119 19222 solver.cpp:243] Iteration 330, loss = 7.29032\n"
                   "I0608 10:52:30.927317 19222 sgd_solver.cpp:138] Iteration 330, lr = 0.001\n"
                   "I0608 10:53:30.927119 19222 solver.cpp:243] Iteration 340, loss = 7.1\n"
                   "I0608 10:53:30.927317 19222 sgd_solver.cpp:138] Iteration 340, lr = 0.001\n")
    paths = plots.plot_runs([("ssd", parse_text(log.read_text(), str(log)))], tmp_path / "out")
    assert [p.name for p in paths] == ["loss.png", "lr.png", "map.png", "figure1.png"]
    for p in paths:
        check_png(p)


def test_nothing_to_plot_is_an_error_and_writes_nothing(tmp_path, capsys):
    empty = tmp_path / "empty.log"
    empty.write_text("")
    assert cli.main(["plot", str(empty), "--out", str(tmp_path / "out")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    with pytest.raises(Exception, match="window 0"):
        plots.plot_runs([("x", parse_text("", "x"))], tmp_path / "out", window=0)


def _marker_points(ax):
    """(x, y, in axes coordinates?) of every divergence marker drawn on ``ax``."""
    return [(float(line.get_xdata()[0]), float(line.get_ydata()[0]), line.get_transform() != ax.transData)
            for line in ax.get_lines() if line.get_marker() == "x"]


def test_diverged_caffe_log_draws_no_nan_at_zero_gradient(tmp_path):
    # a Caffe log (no gradient-norm lines) that diverged at its second display point
    text = ("I0608 10:52:30.927119 19222 solver.cpp:243] Iteration 10, loss = 7.29\n"
            "I0608 10:52:31.927119 19222 solver.cpp:243] Iteration 20, loss = -nan\n")
    rec = parse_text(text, "caffe.log")
    assert rec.diverged.iteration == 20
    fig, axes = plots._new_figure(3)
    assert not plots._draw(axes[1], rec.grad_norm, rec, "ssd", "C0")          # the log has no |g|: nothing
    assert _marker_points(axes[1]) == []
    assert plots._draw(axes[0], rec.loss_series(), rec, "ssd", "C0")
    assert _marker_points(axes[0]) == [(20.0, 7.29, False)]                    # at the last finite loss
    # a run whose only value is non-finite: the marker sits at the top edge, not at 0
    first = parse_text("I0608 10:52:31.927119 19222 solver.cpp:243] Iteration 0, loss = nan\n", "c0.log")
    plots._draw(axes[2], first.loss_series(), first, "c0", "C1")
    assert _marker_points(axes[2]) == [(0.0, 1.0, True)]


def test_logs_sharing_a_name_are_labelled_by_their_paths(tmp_path, monkeypatch):
    assert plots.distinct_labels(["demo", "demo", "other"], ["runs/a/train.log", "runs/b/train.log", "x.log"]) == \
        ["demo (a/train.log)", "demo (b/train.log)", "other"]
    assert plots.distinct_labels(["demo", "demo"], ["a/one.log", "a/two.log"]) == ["demo (one.log)", "demo (two.log)"]
    assert plots.distinct_labels(["d", "d"], ["same.log", "same.log"]) == ["d (same.log)", "d (same.log) #2"]
    a = our_log(tmp_path / "r1/train.log", 0)
    b = our_log(tmp_path / "r2/train.log", 1)
    seen, orig = [], plots.plot_runs
    monkeypatch.setattr(plots, "plot_runs", lambda runs, *args, **kw: seen.extend(l for l, _ in runs) or orig(runs, *args, **kw))
    assert cli.main(["plot", str(a), str(b), "--out", str(tmp_path / "out"), "--variant", "demo", "--variant", "demo"]) == 0
    assert seen == ["demo (r1/train.log)", "demo (r2/train.log)"]
