"""The figures: every run of a grid cell drawn, every axis labelled with plain tick labels, lines that
coincide by construction drawn so both stay visible (or merged under one label), and every measured
eigenvalue drawn. Run folders are written by hand (config.json, metrics.csv, summary.json): no training.

The figures are inspected as matplotlib objects: each line's ``gid`` names the quantity it draws."""

from __future__ import annotations

import csv
import json
import math
import re

import numpy as np
import pytest

from samedge import plots, plots_edges, report, theory

ETA = 0.1
GD_EDGE = 2 / ETA


def _write_run(path, run, rows, status="completed"):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"run": run}))
    columns = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else repr(r[c]) for c in columns])
    if status:
        (path / "summary.json").write_text(json.dumps({"status": status, "steps_done": rows[-1]["step"]}))
    return path


def _config(optimizer="sam", lr=ETA, hparams=None, steps=100):
    return {"task": "mnist", "preset": "quick", "optimizer": optimizer, "lr": lr,
            "hparams": {"rho": 0.1} if hparams is None and optimizer == "sam" else (hparams or {}),
            "steps": steps, "seed": 0}


def _rows(steps, *, gd=False, no_edge=False, every=10, topk=1, outliers=0, lam0=1.5, lam1=6.0, edge=6.0):
    """lambda_max rising linearly from lam0 to lam1 against a constant edge (2/eta for GD)."""
    out = []
    for s in range(0, steps + 1, every):
        lam = lam0 + (lam1 - lam0) * s / steps
        e = GD_EDGE if gd else edge
        r = {"step": s, "time_s": 0.01 * s, "loss": 2.0 / (1 + s), "acc": 0.5, "grad_norm": 1.0,
             "lambda_max": lam, "edge": None if no_edge else e, "gd_edge": GD_EDGE,
             "ratio": None if no_edge else lam / e, "align_grad": 0.3 + 0.001 * s,
             "align_sam_grad": (0.3 + 0.001 * s) if gd else 0.7}
        for k in range(1, topk + 1):
            r[f"lambda_{k}"] = lam * 0.7 ** (k - 1) * (-1 if k == 3 else 1)  # lambda_3 negative: drawn as |.|
        for k in range(1, outliers + 1):
            r[f"outlier_{k}"] = lam * (1 - 0.1 * k) if s >= steps / 2 else float("nan")  # NaN: not found
        r["test_loss"] = 2.2 / (1 + s) if s % 50 == 0 else None
        out.append(r)
    return out


def _lines(ax, gid):
    return [line for line in ax.lines if line.get_gid() == gid]


def _legend_texts(ax):
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def _close(figs):
    plt = plots._pyplot()
    for fig in figs:
        plt.close(fig)


@pytest.fixture
def three_runs_one_cell(tmp_path):
    """Three runs of the same point (eta, rho) for 100, 200 and 400 steps, under sub-folders, and a GD run."""
    root = tmp_path / "runs"
    for sub, steps in (("a", 100), ("b", 200), ("c", 400)):
        _write_run(root / sub / "mnist-sam-lr0.1-rho0.1-s0", _config(steps=steps), _rows(steps))
    _write_run(root / "mnist-gd-lr0.1-s0", _config("gd", hparams={}), _rows(100, gd=True, lam1=19.0))
    return root


def test_a_grid_cell_draws_every_run_sharing_it(three_runs_one_cell):
    root = three_runs_one_cell
    (key, panels), = report.grid_panels(report.find_runs(root), root)
    assert key == ("mnist", "quick", 0)
    fig = plots.grid_figure(panels, plots.draw_sharpness)
    try:
        cell = next(ax for ax in fig.axes if ax.get_title().startswith("eta=0.1, rho=0.1 (SAM)"))
        lams = _lines(cell, "lambda_max")
        assert len(lams) == 3  # one line per run, none left out
        assert sorted(max(line.get_xdata()) for line in lams) == [100, 200, 400]
        texts = _legend_texts(cell)
        for name in ("a (100 steps)", "b (200 steps)", "c (400 steps)"):
            assert name in texts, texts
        # the runs coincide where they overlap: widths differ so each stays visible
        assert len({line.get_linewidth() for line in lams}) == 3
        gd = next(ax for ax in fig.axes if ax.get_title().startswith("eta=0.1 (GD)"))
        assert len(_lines(gd, "lambda_max")) == 1
    finally:
        _close([fig])


def test_run_figures_label_every_axis_with_plain_ticks(tmp_path):
    runs = {"sam": _write_run(tmp_path / "sam", _config(), _rows(100, topk=3, outliers=2)),
            "gd": _write_run(tmp_path / "gd", _config("gd", hparams={}), _rows(100, gd=True, lam1=19.0)),
            "none": _write_run(tmp_path / "none", _config("mymod:toy", hparams={"damp": 0.5}),
                               _rows(100, no_edge=True))}
    for name, path in runs.items():
        figs = plots.run_figures(path)
        assert set(figs) == {"sharpness", "alignment", "loss"}
        try:
            for kind, fig in figs.items():
                fig.canvas.draw()
                ax, = fig.axes
                assert ax.get_ylabel() == plots.YLABEL[kind] and ax.get_xlabel() == "step"
                # the title names the task, the optimizer and its settings
                assert ax.get_title().startswith("mnist (quick): ") and ("lr=0.1" in ax.get_title())
                lo, hi = sorted(ax.get_ylim())
                shown = [t.get_text() for t in ax.get_yticklabels()
                         if lo <= t.get_position()[1] <= hi and t.get_visible()]
                shown = [t for t in shown if t]
                assert len(shown) >= 2, (name, kind, shown)
                for text in shown:  # plain numbers: no mathtext powers, no "x10^k"
                    assert re.fullmatch(r"-?[0-9.]+(e-?[0-9]+)?", text), (name, kind, text)
                assert ax.yaxis.get_offset_text().get_text() == ""
        finally:
            _close(figs.values())


def test_sharpness_axis_is_linear_when_narrow_and_log_when_wide(tmp_path):
    narrow = _write_run(tmp_path / "gd", _config("gd", hparams={}), _rows(100, gd=True, lam0=12.0, lam1=21.0))
    wide = _write_run(tmp_path / "sam", _config(), _rows(100, lam0=0.5, lam1=6.0))  # 0.5 .. 2/eta = 20
    for path, scale in ((narrow, "linear"), (wide, "log")):
        figs = plots.run_figures(path)
        assert figs["sharpness"].axes[0].get_yscale() == scale
        _close(figs.values())


def test_gd_edge_and_two_over_eta_are_one_line_and_sam_keeps_both_visible(tmp_path):
    gd = plots.run_figures(_write_run(tmp_path / "gd", _config("gd", hparams={}), _rows(100, gd=True, lam1=19.0)))
    sam = plots.run_figures(_write_run(tmp_path / "sam", _config(), _rows(100)))
    try:
        ax = gd["sharpness"].axes[0]
        merged = _lines(ax, "edge=gd_edge")
        assert len(merged) == 1 and not _lines(ax, "edge") and not _lines(ax, "gd_edge")
        assert merged[0].get_ydata()[0] == pytest.approx(GD_EDGE)
        assert r"edge = $2/\eta$" in _legend_texts(ax)
        ax = sam["sharpness"].axes[0]
        edge, two = _lines(ax, "edge"), _lines(ax, "gd_edge")
        assert len(edge) == 1 and len(two) == 1
        assert edge[0].get_linestyle() != two[0].get_linestyle()
        assert {"edge", r"$2/\eta$"} <= set(_legend_texts(ax))
        # alignment: GD's step direction is its gradient: one line, one label
        ax = gd["alignment"].axes[0]
        assert len(ax.lines) == 1 and _legend_texts(ax) == ["gradient = step direction"]
        ax = sam["alignment"].axes[0]
        grad, step = _lines(ax, "align_grad"), _lines(ax, "align_sam_grad")
        assert len(grad) == len(step) == 1 and grad[0].get_linestyle() != step[0].get_linestyle()
    finally:
        _close([*gd.values(), *sam.values()])


def test_lambda_2_to_k_and_tracked_outliers_are_drawn(tmp_path):
    rows = _rows(100, topk=3, outliers=2)
    figs = plots.run_figures(_write_run(tmp_path / "sam", _config(), rows))
    try:
        ax = figs["sharpness"].axes[0]
        lam_k = _lines(ax, "lambda_k")
        assert len(lam_k) == 2
        np.testing.assert_allclose(lam_k[1].get_ydata(), [abs(r["lambda_3"]) for r in rows])
        outliers, = _lines(ax, "outliers")
        found = [r[f"outlier_{k}"] for k in (1, 2) for r in rows if not math.isnan(r[f"outlier_{k}"])]
        assert len(outliers.get_ydata()) == len(found) > 0 and outliers.get_linestyle() == "None"
        texts = _legend_texts(ax)
        assert r"$|\lambda_2|..|\lambda_{3}|$" in texts and "tracked outliers" in texts
    finally:
        _close(figs.values())


def test_unconverged_measurements_are_marked(tmp_path):
    rows = _rows(100)
    for r in rows:
        r["converged"] = 0 if r["step"] in (30, 70) else 1
    figs = plots.run_figures(_write_run(tmp_path / "sam", _config(), rows))
    try:
        ax = figs["sharpness"].axes[0]
        marks, = _lines(ax, "unconverged")
        assert list(marks.get_xdata()) == [30, 70] and "not converged" in _legend_texts(ax)
    finally:
        _close(figs.values())


def test_grid_panels_draw_lambda_k_and_outliers_too(tmp_path):
    root = tmp_path / "runs"
    _write_run(root / "sam", _config(), _rows(100, topk=2, outliers=1))
    (_, panels), = report.grid_panels(report.find_runs(root), root)
    fig = plots.grid_figure(panels, plots.draw_sharpness)
    try:
        ax, = [a for a in fig.axes if a.lines]
        assert len(_lines(ax, "lambda_k")) == 1 and len(_lines(ax, "outliers")) == 1
    finally:
        _close([fig])


def test_comparison_shares_one_linear_y_axis_when_the_ranges_allow(tmp_path):
    gd = _write_run(tmp_path / "gd", _config("gd", hparams={}), _rows(100, gd=True, lam0=8.0, lam1=19.0))
    sam = _write_run(tmp_path / "sam", _config(), _rows(100, lam0=4.0, lam1=9.0, edge=9.0))
    fig = plots.comparison_figure([gd, sam])
    try:
        fig.canvas.draw()
        a, b = fig.axes
        assert a.get_ylim() == b.get_ylim() and a.get_yscale() == b.get_yscale() == "linear"
        assert "same y axis" in fig._suptitle.get_text()
        for ax in (a, b):
            assert ax.get_ylabel() == plots.YLABEL["sharpness"]
            assert [t.get_text() for t in ax.get_yticklabels() if t.get_text()]  # both show their ticks
        lo, hi = a.get_ylim()
        assert lo <= 4.0 and hi >= GD_EDGE  # every value of both runs inside the shared axis
    finally:
        _close([fig])


def test_boundaries_gd_panel_spans_a_relative_window_with_plain_ticks(monkeypatch, tmp_path):
    """GD's eta * edge is 2 at every point; bisection rounding (1e-7) must not fill the panel."""
    figs = []
    monkeypatch.setattr(plots_edges, "save", lambda fig, stem: figs.append(fig) or [])
    rng = np.random.default_rng(0)
    bounds = []
    for name in ("gd", "sam"):
        grid = theory.default_grid(name)
        predicted = theory.predicted_edge(name, grid, 1.0)
        bounds.append(theory.Boundary(name, grid, 1.0, predicted,
                                      predicted * (1 + 1e-7 * rng.standard_normal(predicted.shape))))
    plots_edges.plot_boundaries(bounds, tmp_path / "boundaries")
    fig, = figs
    fig.canvas.draw()
    gd_ax = fig.axes[0]
    lo, hi = gd_ax.get_ylim()
    assert lo <= 2 * (1 - 0.01) and hi >= 2 * (1 + 0.01)
    labels = [t.get_text() for t in gd_ax.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert len(labels) >= 2 and all(re.fullmatch(r"[0-9.]+", t) for t in labels), labels
    assert gd_ax.yaxis.get_offset_text().get_text() == ""
    assert gd_ax.get_ylabel()
