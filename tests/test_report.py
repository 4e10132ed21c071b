"""The report: statistics recomputed from metrics.csv against hand-computed values, the figure grids,
and the self-contained HTML (parsed; every image a decodable PNG data URI)."""

from __future__ import annotations

import base64
import csv
import struct
from html.parser import HTMLParser

import pytest

from samedge import cli, config, report, run
from samedge.store import RunStore

# Second half (steps >= 4 of 0..8) ratios, and their statistics worked out by hand:
# sorted 0.8, 0.95, 1.0, 1.08, 1.3 -> median 1.0; numpy's linear p10 at position 0.4:
# 0.8 + 0.4 * 0.15 = 0.86; p90 at position 3.6: 1.08 + 0.6 * 0.22 = 1.212; within +-10%: 3 of 5.
HALF = [0.8, 1.3, 1.0, 0.95, 1.08]


def _rows(ratios, edge, gd_edge):
    out = []
    for step, ratio in enumerate(ratios):
        out.append({"step": step, "time_s": 0.1 * step, "loss": 1.0 / (step + 1), "acc": 0.5, "grad_norm": 1.0,
                    "lambda_max": ratio * edge, "edge": edge, "gd_edge": gd_edge, "ratio": ratio,
                    "align_grad": 0.5, "align_sam_grad": 0.4,
                    "test_loss": 0.3 if step % 4 == 0 else None, "test_acc": 0.9 if step % 4 == 0 else None})
    return out


def _make(root, optimizer, lr, rho, rows, status="completed", error=None, sub=None, steps=None, batch=None):
    cfg = config.resolve("mnist", "quick", optimizer=optimizer, lr=lr, rho=rho if optimizer != "gd" else None,
                         task_overrides=None if batch is None else {"batch_size": batch},
                         **({"steps": steps} if steps else {}))
    path = (root / sub if sub else root) / run.default_out(cfg).name
    store = RunStore.create(path, {"run": cfg.to_dict()})
    for r in rows:
        store.append(r)
    if status is not None:
        store.finish(status, {"steps_done": rows[-1]["step"] if rows else 0} | ({"error": error} if error else {}))
    return path


@pytest.fixture
def sweep_dir(tmp_path):
    root = tmp_path / "sweep"
    # SAM lr 0.1 rho 0.1: edge 8, 2/eta 20; first half ratios are noise the statistics must ignore.
    _make(root, "sam", 0.1, 0.1, _rows([5.0, 0.1, 3.0, 0.2] + HALF, edge=8.0, gd_edge=20.0))
    _make(root, "gd", 0.1, 0.0, _rows([0.5] * 9, edge=20.0, gd_edge=20.0))
    _make(root, "sam", 0.3, 0.1, _rows([1.0] * 3, edge=4.0, gd_edge=20 / 3), status=None)  # unfinished
    _make(root, "sam", 0.3, 0.3, [], status="failed", error="DataError: boom & <bad>")
    return root


def _csv(path):
    with open(path, newline="") as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def test_summary_csv_statistics_match_hand_computed_values(sweep_dir):
    written = report.write_report(sweep_dir)
    table = _csv(sweep_dir / "summary.csv")
    assert len(table) == 4
    sam = table["mnist-sam-lr0.1-rho0.1-s0"]
    assert (sam["task"], sam["optimizer"], float(sam["eta"]), float(sam["rho"])) == ("mnist", "sam", 0.1, 0.1)
    assert sam["status"] == "completed" and int(sam["steps"]) == 8
    assert float(sam["ratio_median"]) == pytest.approx(1.0)
    assert float(sam["ratio_p10"]) == pytest.approx(0.86)
    assert float(sam["ratio_p90"]) == pytest.approx(1.212)
    assert float(sam["ratio_within_10pct"]) == pytest.approx(0.6)
    assert int(sam["ratio_count"]) == len(HALF)  # the second-half measurements behind the median
    # lambda_max / (2/eta) = ratio * 8 / 20 over the second half: median 0.4
    assert float(sam["lambda_over_gd_edge_median"]) == pytest.approx(0.4)
    assert float(sam["final_train_loss"]) == pytest.approx(1 / 9)
    assert (sam["test_metric"], float(sam["test_value"])) == ("test_acc", pytest.approx(0.9))
    gd = table["mnist-gd-lr0.1-s0"]
    assert float(gd["rho"]) == 0.0 and float(gd["ratio_median"]) == pytest.approx(0.5)
    assert table["mnist-sam-lr0.3-rho0.1-s0"]["status"] == "unfinished"
    failed = table["mnist-sam-lr0.3-rho0.3-s0"]
    assert failed["status"] == "failed" and "DataError" in failed["error"] and failed["ratio_median"] == ""
    for name in ("sharpness", "alignment", "loss"):
        for ext in ("png", "pdf"):
            assert (sweep_dir / "figures" / f"{name}_mnist_quick_s0.{ext}").stat().st_size > 1000
    assert written[-1] == sweep_dir / "report.html"
    md = (sweep_dir / "report.md").read_text()
    assert "| mnist-sam-lr0.1-rho0.1-s0 | mnist | sam | 0.1 | rho=0.1 | 0 | completed | 8 |" in md
    assert "| 1 (n=5) |" in md  # the median with its support
    assert "Completed SAM-type runs (rho > 0)" in md and "1 of 1" in md  # the completed SAM run is in [0.85, 1.15]
    # the unfinished run's median rests on steps 1 and 2 only: flagged, and the flag explained
    assert "| 1 (n=2)* |" in md and report.FEW_NOTE in md
    assert "DataError: boom" in md


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.rows, self.imgs, self._in_body, self._row = [], [], False, None

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body:
            self._row = []
        elif tag == "img":
            self.imgs.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag == "tbody":
            self._in_body = False
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None

    def handle_data(self, data):
        if self._row is not None:
            self._row.append(data)


def test_html_is_self_contained_with_table_and_png_figures(sweep_dir):
    report.write_report(sweep_dir)
    page = _Page()
    page.feed((sweep_dir / "report.html").read_text(encoding="utf-8"))
    assert len(page.rows) == 4
    statuses = sorted(r[6] for r in page.rows)
    assert statuses == ["completed", "completed", "failed", "unfinished"]
    sam = next(r for r in page.rows if r[:5] == ["mnist-sam-lr0.1-rho0.1-s0", "mnist", "sam", "0.1", "rho=0.1"])
    assert sam[12] == "1 (n=5)"  # median ratio, formatted, with its support (after first_ratio)
    assert len(page.imgs) == 3
    for img in page.imgs:
        head, data = img["src"].split(",", 1)
        assert head == "data:image/png;base64"
        png = base64.b64decode(data, validate=True)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])  # IHDR
        assert width > 500 and height > 300  # a 2 x 3 grid of panels, not a blank stub


@pytest.fixture
def same_point_dir(tmp_path):
    """Three SAM runs of one grid point (eta 0.1, rho 0.1) for 8, 16 and 4 steps in sub-folders, and GD."""
    root = tmp_path / "same"
    for sub, n in (("a", 9), ("b", 17), ("c", 5)):
        _make(root, "sam", 0.1, 0.1, _rows([1.0] * n, edge=8.0, gd_edge=20.0), sub=sub, steps=n - 1)
    _make(root, "gd", 0.1, 0.0, _rows([0.9] * 9, edge=20.0, gd_edge=20.0))
    return root


def test_runs_sharing_a_grid_cell_are_each_drawn_and_listed(same_point_dir, monkeypatch):
    from samedge import plots

    figures = []
    original = plots.grid_figure
    monkeypatch.setattr(plots, "grid_figure", lambda *a, **kw: figures.append(original(*a, **kw)) or figures[-1])
    report.write_report(same_point_dir)
    sharpness = figures[[name for name, _ in report.GRIDS].index("sharpness")]
    cell, = [ax for ax in sharpness.axes if ax.get_title().startswith("eta=0.1, rho=0.1 (SAM)")]
    lams = [line for line in cell.lines if line.get_gid() == "lambda_max"]
    assert sorted(max(line.get_xdata()) for line in lams) == [4, 8, 16]  # 3 runs, 3 lines
    legend = [t.get_text() for t in cell.get_legend().get_texts()]
    assert {"a (8 steps)", "b (16 steps)", "c (4 steps)"} <= set(legend)
    for fig in figures:  # every grid draws all four runs
        assert sum(len([ln for ln in ax.lines if ln.get_gid() in ("lambda_max", "align_grad=align_sam_grad",
                                                                  "align_grad", "loss")]) for ax in fig.axes) == 4

    table = _csv(same_point_dir / "summary.csv")
    names = {"a/mnist-sam-lr0.1-rho0.1-s0": 5, "b/mnist-sam-lr0.1-rho0.1-s0": 9, "c/mnist-sam-lr0.1-rho0.1-s0": 3}
    for name, second_half in names.items():  # steps >= last/2 of 0..8, 0..16, 0..4
        assert int(table[name]["ratio_count"]) == second_half
    md = (same_point_dir / "report.md").read_text()
    for name, second_half in names.items():
        line, = [ln for ln in md.splitlines() if ln.startswith(f"| {name} |")]
        assert f"| 1 (n={second_half}) |" in line
    assert ("Completed SAM-type runs (rho > 0) with median λmax/edge over the second half in [0.85, 1.15]: "
            "3 of 3.") in md
    page = _Page()
    page.feed((same_point_dir / "report.html").read_text(encoding="utf-8"))
    assert sorted(r[0] for r in page.rows) == sorted([*names, "mnist-gd-lr0.1-s0"])


def test_counts_of_left_out_rows_are_shown(tmp_path):
    """Rows the measurement could not vouch for: steps 1 and 6 unconverged (6 is in the second half,
    so its ratio is left out and 4 of the 5 second-half rows remain), step 7 uncertified."""
    rows = _rows([5.0, 0.1, 3.0, 0.2] + HALF, edge=8.0, gd_edge=20.0)
    for r in rows:
        r["converged"] = 0.0 if r["step"] in (1, 6) else 1.0
        r["certified"] = 0.0 if r["step"] == 7 else 1.0
    root = tmp_path / "guard"
    _make(root, "sam", 0.1, 0.1, rows)
    report.write_report(root)
    sam = _csv(root / "summary.csv")["mnist-sam-lr0.1-rho0.1-s0"]
    assert (sam["rows_unconverged"], sam["rows_uncertified"], sam["ratio_left_out"]) == ("2", "1", "1")
    assert int(sam["ratio_count"]) == 4
    # median of the second half without step 6 (ratio 1.0): 0.8, 0.95, 1.08, 1.3 -> 1.015
    assert float(sam["ratio_median"]) == pytest.approx(1.015)
    md = (root / "report.md").read_text()
    header, = [ln for ln in md.splitlines() if ln.startswith("| run |")]
    assert header.endswith("| unconverged rows | uncertified rows | left out of ratio |")
    row, = [ln for ln in md.splitlines() if ln.startswith("| mnist-sam-lr0.1-rho0.1-s0 |")]
    assert "| 1.015 (n=4) |" in row and row.endswith("| 2 | 1 | 1 |")
    assert report.EXTRA_NOTE in md


def test_report_of_a_folder_without_runs_is_a_one_line_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == cli.EXIT_USER_ERROR
    assert "no run folders" in capsys.readouterr().err


def test_first_ratio_and_the_spread_over_seeds(tmp_path):
    """first_ratio is the first row's ratio; a cell run with two seeds gets its mean and std."""
    import statistics

    medians = []
    for seed, level in ((0, 1.0), (1, 1.2)):
        cfg = config.resolve("mnist", "quick", optimizer="sam", lr=0.1, rho=0.1, seed=seed)
        rows = [{"step": 10 * i, "loss": 1.0, "grad_norm": 1.0, "lambda_max": 1.0, "edge": 1.0, "gd_edge": 20.0,
                 "ratio": 0.3 if i == 0 else level} for i in range(5)]
        path = tmp_path / run.default_out(cfg).name
        from samedge.store import RunStore
        store = RunStore.create(path, {"run": cfg.to_dict(), "task_info": {}})
        for r in rows:
            store.append(r)
        store.finish("completed", {})
        medians.append(level)
    report.write_report(tmp_path)
    import csv
    table = list(csv.DictReader(open(tmp_path / "summary.csv")))
    assert [float(r["first_ratio"]) for r in table] == [0.3, 0.3]
    md = (tmp_path / "report.md").read_text()
    assert "## Across seeds" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| mnist | quick | sam |"))
    assert f"| 0,1 | {statistics.fmean(medians):.4g} | {statistics.stdev(medians):.4g} |" in line


def _bs_rows(bs, ratio=1.0, edge=8.0, gd_edge=20.0):
    """Rows of a run that measured batch sharpness ``bs`` per step (2/eta = 20), with a ratio of
    means 1.1 x, lambda_max_full 0.5 x and sam_batch_ratio bs / 25 (a per-batch edge of 25); ``ratio``
    one number or one per step."""
    ratios = ratio if isinstance(ratio, list) else [ratio] * len(bs)
    return [{"step": step, "loss": 1.0, "grad_norm": 1.0, "lambda_max": r * edge, "edge": edge,
             "gd_edge": gd_edge, "ratio": r, "batch_sharpness": b, "batch_sharpness_se": 0.01,
             "batch_sharpness_rom": 1.1 * b, "batch_sharpness_n": 50, "lambda_max_full": 0.5 * b,
             "sam_batch_ratio": b / 25.0, "sam_batch_edge": 25.0} for step, (b, r) in enumerate(zip(bs, ratios))]


# Steps 0..8: second half 4..8, third quarter (4, 6] = steps 5, 6, fourth (6, 8] = steps 7, 8.
DRIFTING = [1.0, 2.0, 3.0, 4.0, 18.0, 19.0, 19.0, 20.0, 21.0]  # q3 19/20, q4 20.5/20: 7.9% apart
STEADY = [1.0, 2.0, 3.0, 4.0, 20.0, 20.0, 20.0, 20.0, 20.4]  # q3 1.0, q4 1.01: 1% apart


class _Tables(HTMLParser):
    """Every table's body rows by the table's id: each cell as (text, attributes)."""

    def __init__(self):
        super().__init__()
        self.tables, self._id, self._row, self._cell = {}, None, None, None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._id = dict(attrs).get("id")
        elif tag == "tr" and self._id is not None:
            self._row = []
        elif tag == "td" and self._row is not None:
            self._cell = ["", dict(attrs)]

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self._row.append(tuple(self._cell))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            if self._row:  # the header row has no td
                self.tables.setdefault(self._id, []).append(self._row)
            self._row = None
        elif tag == "table":
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[0] += data


@pytest.fixture
def batch_dir(tmp_path):
    """SAM at batch sizes 16, 8 and the full batch, GD at 16 (all with batch sharpness) and a full-batch GD
    run without it; SAM's batch-16 run is still drifting in its last quarter (batch sharpness), its
    batch-8 run too (lambda_max / edge)."""
    root = tmp_path / "batches"
    _make(root, "sam", 0.1, 0.1, _bs_rows(STEADY), batch=0)
    _make(root, "sam", 0.1, 0.1, _bs_rows(DRIFTING), batch=16)
    _make(root, "sam", 0.1, 0.1, _bs_rows(STEADY, ratio=[d / 20.0 for d in DRIFTING]), batch=8)
    _make(root, "gd", 0.1, 0.0, _bs_rows(STEADY, ratio=0.5, edge=20.0), batch=16)
    _make(root, "gd", 0.2, 0.0, _rows([0.5] * 9, edge=10.0, gd_edge=10.0))  # full batch, no batch sharpness
    return root


def _section(md, heading):
    lines = md.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    return [[c.strip() for c in ln.strip("|").split(" | ")] for ln in lines if ln.startswith("| ")]


def test_stochastic_edges_table_by_batch_size_with_the_full_batch_last(batch_dir):
    import numpy as np

    report.write_report(batch_dir)
    md = (batch_dir / "report.md").read_text()
    header, *body = _section(md, "Stochastic edges")
    assert header[:6] == ["task", "optimizer", "eta", "settings", "batch", "seed"]
    # one row per run that measured batch sharpness; GD before SAM, then batch 8, 16, full (numbers, not text)
    assert [(r[1], r[4]) for r in body] == [("gd", "16"), ("sam", "8"), ("sam", "16"), ("sam", "full")]
    col = {h: i for i, h in enumerate(header)}
    sam16 = body[2]
    half = np.array(DRIFTING[4:]) / 20.0
    assert sam16[col["batch sharpness/(2/η) (n)"]] == f"{np.median(half):.4g} (n=5)"
    assert float(sam16[col["ratio of means/(2/η)"]]) == pytest.approx(np.median(1.1 * half), rel=1e-3)
    assert float(sam16[col["λmax full/(2/η)"]]) == pytest.approx(np.median(0.5 * half), rel=1e-3)
    assert float(sam16[col["minibatch λmax/(2/η)"]]) == pytest.approx(8.0 / 20.0)
    assert float(sam16[col["sam_batch_ratio"]]) == pytest.approx(np.median(np.array(DRIFTING[4:]) / 25.0), rel=1e-3)
    assert sam16[col["median λmax/edge (n)"]] == "1 (n=5)"
    q3, q4 = np.median(DRIFTING[5:7]) / 20.0, np.median(DRIFTING[7:]) / 20.0
    drift = abs(q4 - q3) / q3
    assert drift > 0.05
    assert sam16[col["batch sharpness q3 / q4"]] == f"{q3:.4g} / {q4:.4g} {report.DRIFT_MARK}"
    s3, s4 = np.median(STEADY[5:7]) / 20.0, np.median(STEADY[7:]) / 20.0
    assert abs(s4 - s3) / s3 < 0.05  # stationary: no mark
    assert body[3][col["batch sharpness q3 / q4"]] == f"{s3:.4g} / {s4:.4g}"
    assert body[0][col["sam_batch_ratio"]] == ""  # GD: blank
    assert body[0][col["median λmax/edge (n)"]] == "0.5 (n=5)"

    table = _csv(batch_dir / "summary.csv")
    sizes = {name: row["batch_size"] for name, row in table.items()}
    assert sizes == {"mnist-sam-lr0.1-rho0.1-s0": "full", "mnist-sam-lr0.1-rho0.1-b16-s0": "16",
                     "mnist-sam-lr0.1-rho0.1-b8-s0": "8", "mnist-gd-lr0.1-b16-s0": "16", "mnist-gd-lr0.2-s0": "full"}
    sam16 = table["mnist-sam-lr0.1-rho0.1-b16-s0"]
    assert float(sam16["batch_sharpness_over_gd_edge_median"]) == pytest.approx(np.median(half))
    assert int(sam16["batch_sharpness_count"]) == 5
    assert float(sam16["batch_sharpness_quarters_reldiff"]) == pytest.approx(drift)
    assert table["mnist-gd-lr0.2-s0"]["batch_sharpness_over_gd_edge_median"] == ""  # did not measure it

    page = _Tables()
    page.feed((batch_dir / "report.html").read_text(encoding="utf-8"))
    rows = page.tables["stochastic"]
    assert [(r[1][0], r[4][0]) for r in rows] == [("gd", "16"), ("sam", "8"), ("sam", "16"), ("sam", "full")]
    marked = [r[col["batch sharpness q3 / q4"]] for r in rows]
    assert [report.DRIFT_MARK in text for text, _ in marked] == [False, False, True, False]
    assert marked[2][1].get("class") == "drift"
    ratio_marked = [r[col["λmax/edge q3 / q4"]] for r in rows]
    assert [report.DRIFT_MARK in text for text, _ in ratio_marked] == [False, True, False, False]
    assert ratio_marked[1][1].get("class") == "drift"
    assert body[1][col["λmax/edge q3 / q4"]] == f"{q3:.4g} / {q4:.4g} {report.DRIFT_MARK}"  # the same numbers
    assert body[3][col["λmax/edge q3 / q4"]] == "1 / 1"
    assert len(page.tables["summary"]) == 5


def test_a_sweep_without_batch_sharpness_has_no_stochastic_section(sweep_dir):
    report.write_report(sweep_dir)
    assert "Stochastic edges" not in (sweep_dir / "report.md").read_text()
    assert "Stochastic edges" not in (sweep_dir / "report.html").read_text(encoding="utf-8")
    with open(sweep_dir / "summary.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "batch_size" not in header and not [h for h in header if h.startswith("batch_sharpness")]
