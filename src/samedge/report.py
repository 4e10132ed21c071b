"""The report of a folder of runs (a sweep, or several): figure grids, ``summary.csv``, ``report.md``
and a self-contained ``report.html``.

Every number is recomputed from each run's ``metrics.csv`` with :func:`samedge.analysis.summarize`
(so an interrupted or failed run is reported on what it measured); the status and step count come
from ``summary.json`` (``unfinished`` when there is none). The edge statistics are those of the
second half of the run: the median and 10th/90th percentiles of lambda_max / edge, the share of
measurements with ``|lambda_max / edge - 1| <= 0.1``, and the median of lambda_max / (2/eta).

Runs that measured batch sharpness (``--batch-sharpness``; :func:`samedge.analysis.stochastic_stats`)
also get a "Stochastic edges" table (:func:`stochastic_rows`): by batch size, the second-half
medians over ``2/eta`` of batch sharpness, its ratio-of-means form, the full batch's lambda_max and
the step's own minibatch lambda_max, SAM's ``sam_batch_ratio``, lambda_max / edge, and whether batch
sharpness and lambda_max / edge are stationary (their third- and fourth-quarter medians within
:data:`STATIONARY_TOL`);
``summary.csv`` then carries ``batch_size`` and those statistics too.

Runs that measured where the sharpness lives (``--probe layers``, ``gauss_newton``, ``trace``;
:func:`where_stats`) get a "Where the sharpness lives" table (:func:`where_rows`): the block holding
most of the top eigenvector, with its second-half median mass, and the block with the largest
median ``lambda_max/<b>`` over the whole lambda_max; the median ``gn_lambda_max / lambda_top`` and
``gn_lambda_max / edge``; the median trace and trace / lambda_max. ``summary.csv`` carries them too
(:data:`WHERE`), and the figure grids gain ``layers`` (:func:`samedge.plots.draw_layers`).

Each median is shown with its support, the number of second-half measurements behind it
(``ratio_count``; ``1.017 (n=6)``), and flagged when fewer than :data:`MIN_SUPPORT`.

Figure grids, one set per (task, preset, seed): rows are step sizes eta, columns the optimizer and
its settings (rho = 0 is the GD run); ``sharpness`` (lambda_max against its edge and 2/eta, with
lambda_2..k and the tracked outliers when measured), ``alignment`` and ``loss``. Every run is
drawn: runs sharing a cell (e.g. different step counts, or the same point under several
sub-folders) are one line each in that cell's panel, named by their folder.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import math
from dataclasses import dataclass
from pathlib import Path

from samedge import analysis, plots
from samedge.store import CONFIG, METRICS, SUMMARY, read_json, read_metrics

COLUMNS = ("run", "task", "preset", "optimizer", "eta", "rho", "settings", "seed", "status", "steps", "final_train_loss",
           "test_metric", "test_value", "ratio_median", "ratio_p10", "ratio_p90", "ratio_within_10pct",
           "ratio_count", "first_ratio", "lambda_over_gd_edge_median", "final_lambda_max", "final_edge", "final_gd_edge",
           "wall_time_s", "measure_share", "error")
# Counts of left-out measurements that analysis.summarize may give; shown (CSV, tables) when it does.
EXTRA = ("rows_unconverged", "rows_uncertified", "ratio_left_out")
EXTRA_HEADINGS = {"rows_unconverged": "unconverged rows", "rows_uncertified": "uncertified rows",
                  "ratio_left_out": "left out of ratio"}
EDGE_BAND = (0.85, 1.15)  # "at the edge": the acceptance band for a completed SAM-type run's median
EXTRA_NOTE = ("unconverged rows: measurements whose Lanczos missed its tolerance (marked x in the sharpness "
              "figures); left out of ratio: those of them in the second half, which the statistics leave out; "
              "uncertified rows: measurements where a cold cross-check found a larger eigenvalue (adopted).")
# Batch-sharpness and stationarity statistics analysis.stochastic_stats may give; in summary.csv when some run has them.
STOCHASTIC = ("batch_sharpness_over_gd_edge_median", "batch_sharpness_rom_over_gd_edge_median",
              "lambda_max_full_over_gd_edge_median", "sam_batch_ratio_median", "batch_sharpness_count",
              "batch_sharpness_q3_median", "batch_sharpness_q4_median", "batch_sharpness_quarters_reldiff",
              "ratio_q3_median", "ratio_q4_median", "ratio_quarters_reldiff")
# Where the sharpness lives (analysis of the opt-in probes' columns, where_stats); in summary.csv when some run has them.
WHERE = ("top_mass_block", "top_mass_median", "top_lambda_block", "top_lambda_over_lambda_max_median",
         "gn_over_lambda_top_median", "gn_over_edge_median", "gn_count", "trace_median", "trace_over_lambda_max_median",
         "trace_n_median")
STATIONARY_TOL = 0.05  # q3 and q4 medians further apart than this (relative): not stationary
STATIONARY_ABS = 1e-3  # ... unless within this absolute distance (a quantity at ~0, e.g. full-batch GD's q_B)
MIN_SUPPORT = 3  # a median of fewer second-half measurements than this is flagged
GRIDS = (("sharpness", plots.draw_sharpness), ("alignment", plots.draw_alignment), ("loss", plots.draw_loss))


@dataclass
class Run:
    path: Path
    config: dict  # the ``run`` part of config.json
    summary: dict  # summary.json, or {} while the run has none
    rows: list  # metrics.csv rows


def find_runs(root) -> list[Run]:
    """Every run folder (one holding ``config.json``) under ``root``, in path order."""
    root = Path(root)
    out = []
    for cfg_path in sorted(root.rglob(CONFIG)):
        path = cfg_path.parent
        try:
            config = read_json(cfg_path).get("run", {})
            summary = read_json(path / SUMMARY) if (path / SUMMARY).exists() else {}
            rows = read_metrics(path) if (path / METRICS).exists() else []
        except (OSError, ValueError, KeyError):  # a folder being written right now: report what is there
            config, summary, rows = read_json(cfg_path).get("run", {}), {}, []
        out.append(Run(path, config, summary, rows))
    return out


def _rho(config: dict) -> float:
    return float(plots.hparams_of(config).get("rho", 0.0))


def _settings(config: dict) -> str:
    """The optimizer's own settings, e.g. ``rho=0.1`` (``-`` when it has none), then a schedule and a
    decay mask other than the defaults.

    >>> _settings({"optimizer": "sam", "hparams": {"rho": 0.1, "weight_decay": 5e-4}, "decay_mask": "all",
    ...            "schedule": "cosine", "warmup_steps": 10})
    'rho=0.1 weight_decay=0.0005 decay_mask=all schedule=cosine warmup=10'
    """
    parts = [f"{k}={v:g}" for k, v in plots.hparams_of(config).items()]
    if plots.hparams_of(config).get("weight_decay") and config.get("decay_mask", "weights") != "weights":
        parts.append(f"decay_mask={config['decay_mask']}")
    if config.get("schedule", "constant") != "constant":
        parts.append(f"schedule={config['schedule']}")
    if config.get("warmup_steps"):
        parts.append(f"warmup={config['warmup_steps']}")
    if config.get("measure_mode", "train") != "train":
        parts.append(f"measured={config['measure_mode']}")
    return " ".join(parts) or "-"


def _column(config: dict) -> tuple:
    """A figure grid's column: optimizers without settings first, then by optimizer and settings."""
    hp = plots.hparams_of(config)
    return (bool(hp), str(config.get("optimizer")), tuple(sorted(hp.items())))


def batch_size(config: dict):
    """The minibatch size a run trained on, from its ``task_config``: ``"full"`` for the full batch.

    Args:
      config: the ``run`` part of ``config.json``.

    Returns:
      ``task_config["batch_size"]`` as an int, or ``"full"`` when it is 0, None or absent.

    >>> batch_size({"task_config": {"batch_size": 64}}), batch_size({"task_config": {"batch_size": 0}}), batch_size({})
    (64, 'full', 'full')
    """
    size = (config.get("task_config") or {}).get("batch_size")
    return int(size) if size else "full"


def summary_row(run: Run, root: Path) -> dict:
    """One line of ``summary.csv`` for ``run`` (see the module docstring for the statistics)."""
    stats = analysis.summarize(run.rows)
    if "final_test_acc" in stats:
        metric, value = "test_acc", stats["final_test_acc"]
    elif "final_test_loss" in stats:
        metric, value = "test_loss", stats["final_test_loss"]
    else:
        metric, value = "", None
    c = run.config
    return {
        "run": str(run.path.relative_to(root)) if run.path != root else ".",
        "task": c.get("task"), "preset": c.get("preset"), "optimizer": c.get("optimizer"),
        "eta": c.get("lr"), "rho": _rho(c), "settings": _settings(c), "seed": c.get("seed"),
        "batch_size": batch_size(c),
        "status": run.summary.get("status", "unfinished"),
        "steps": run.summary.get("steps_done", stats.get("final_step", 0)),
        "final_train_loss": stats.get("final_loss"), "test_metric": metric, "test_value": value,
        "ratio_median": stats.get("ratio_median"), "ratio_p10": stats.get("ratio_p10"),
        "ratio_p90": stats.get("ratio_p90"), "ratio_within_10pct": stats.get("ratio_within_10pct"),
        "ratio_count": stats.get("ratio_count", 0),
        # where the run started: GD's rise to 2/eta (progressive sharpening) shows as first_ratio < 1
        "first_ratio": run.rows[0].get("ratio") if run.rows else None,
        "lambda_over_gd_edge_median": stats.get("lambda_over_gd_edge_median"),
        "final_lambda_max": stats.get("final_lambda_max"), "final_edge": stats.get("final_edge"),
        "final_gd_edge": stats.get("final_gd_edge"), "wall_time_s": run.summary.get("wall_time_s"),
        "measure_share": run.summary.get("measure_share"), "error": run.summary.get("error", ""),
        # an optimizer without a closed-form edge: lambda is measured, the ratio is left empty
        "no_edge": bool(run.rows) and all(r.get("edge") is None for r in run.rows),
    } | {k: stats[k] for k in EXTRA + STOCHASTIC if k in stats} | where_stats(run.rows)


def where_stats(rows) -> dict:
    """Where the sharpness lives, from a run's rows: second-half medians (:func:`samedge.analysis.half_median`,
    unconverged rows left out) of the opt-in probes' columns; only the keys whose columns the run has.

    Args:
      rows: ``metrics.csv`` rows.

    Returns:
      ``top_mass_block`` (the block with the largest median ``mass/<b>``, the share of the top
      eigenvector in it) and ``top_mass_median``; ``top_lambda_block`` (the largest median
      ``lambda_max/<b>``) and ``top_lambda_over_lambda_max_median`` (its ``lambda_max/<b> / lambda_max``);
      ``gn_over_lambda_top_median``, ``gn_over_edge_median`` (``gn_lambda_max / edge``) and
      ``gn_count``; ``trace_median``, ``trace_over_lambda_max_median`` and ``trace_n_median``.

    >>> rows = [{"step": s, "lambda_max": 2.0, "edge": 2.0, "mass/a": m, "mass/b": 1 - m, "lambda_max/a": 1.5,
    ...          "lambda_max/b": 0.5, "gn_lambda_max": 1.9, "gn_over_lambda_top": 0.95} for s, m in ((0, 0.2), (10, 0.9))]
    >>> st = where_stats(rows)
    >>> st["top_mass_block"], st["top_mass_median"], st["top_lambda_block"], st["top_lambda_over_lambda_max_median"]
    ('a', 0.9, 'a', 0.75)
    >>> st["gn_over_lambda_top_median"], st["gn_over_edge_median"], "trace_median" in st
    (0.95, 0.95, False)
    """
    out: dict = {}
    for family, name in ((plots.MASS, "top_mass"), (plots.LAYER, "top_lambda")):
        medians = {b: analysis.half_median(rows, family + b)[0] for b in plots.layer_blocks(rows, family)}
        medians = {b: v for b, v in medians.items() if v is not None}
        if medians:
            top = max(medians, key=medians.get)
            out[f"{name}_block"] = top
            out["top_mass_median" if family == plots.MASS else "top_lambda_over_lambda_max_median"] = (
                medians[top] if family == plots.MASS else analysis.half_median(rows, family + top, "lambda_max")[0])
    gn, count = analysis.half_median(rows, "gn_over_lambda_top")
    if count:
        out |= {"gn_over_lambda_top_median": gn, "gn_over_edge_median": analysis.half_median(rows, "gn_lambda_max",
                                                                                            "edge")[0],
                "gn_count": count}
    trace, count = analysis.half_median(rows, "trace")
    if count:
        out |= {"trace_median": trace, "trace_over_lambda_max_median": analysis.half_median(rows, "trace",
                                                                                            "lambda_max")[0],
                "trace_n_median": analysis.half_median(rows, "trace_n")[0]}
    return out


def _sort_key(row):
    return (row["task"] or "", row["preset"] or "", row["seed"] or 0, row["eta"] or 0, row["rho"], row["optimizer"] or "",
            row["settings"], row["run"])


def _extras(rows) -> list[str]:
    """The :data:`EXTRA` counts some run's summary has."""
    return [k for k in EXTRA if any(k in r for r in rows)]


def _stochastic_columns(rows) -> list[str]:
    """``batch_size`` (when some run trained on minibatches or measured batch sharpness) and the
    :data:`STOCHASTIC` statistics some run's summary has."""
    present = [k for k in STOCHASTIC if any(k in r for r in rows)]
    minibatch = any(r.get("batch_size", "full") != "full" for r in rows)
    return (["batch_size"] if minibatch or "batch_sharpness_count" in present else []) + present


def _where_columns(rows) -> list[str]:
    """The :data:`WHERE` statistics some run's summary has."""
    return [k for k in WHERE if any(k in r for r in rows)]


def write_csv(rows, path: Path) -> Path:
    columns = list(COLUMNS) + _extras(rows) + _stochastic_columns(rows) + _where_columns(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in columns})
    return path


def _panel_title(config) -> str:
    from samedge import optimizers

    try:
        kind = optimizers.get(config.get("optimizer")).label
    except Exception:
        kind = str(config.get("optimizer", "?"))
    hp = plots.hparams_of(config)
    return ", ".join([f"eta={config.get('lr', 0):g}"] + [f"{k}={v:g}" for k, v in hp.items()]) + f" ({kind})"


def _run_name(run: Run, root: Path) -> str:
    return str(run.path.relative_to(root)) if run.path != root else run.path.name


def _short(text: str, width: int = 34) -> str:
    return text if len(text) <= width else text[: width // 2 - 1] + "…" + text[-(width - width // 2):]


def run_labels(runs, root: Path) -> list[str]:
    """Short legend labels for runs sharing a grid cell: their folders relative to ``root`` less
    the path parts they all share, with the last step measured (``a (200 steps)``)."""
    parts = [Path(_run_name(r, root)).parts for r in runs]
    lead = 0
    while all(len(p) > lead + 1 and p[lead] == parts[0][lead] for p in parts):
        lead += 1
    trail = 0
    while all(len(p) > lead + trail + 1 and p[-1 - trail] == parts[0][-1 - trail] for p in parts):
        trail += 1
    names = ["/".join(p[lead:len(p) - trail]) for p in parts]
    if len(set(names)) < len(names):  # identical after trimming: keep the whole relative path
        names = ["/".join(p) for p in parts]
    return [_short(n) + (f" ({r.rows[-1]['step']} steps)" if r.rows else " (no measurements)")
            for n, r in zip(names, runs)]


def grid_panels(runs, root: Path) -> list[tuple[tuple, list]]:
    """``[((task, preset, seed), panels), ...]``: one figure grid per (task, preset, seed), rows eta,
    columns optimizer and settings; a cell is ``(rows, title)`` for one run and
    ``([(label, rows), ...], title)`` for several (see :func:`run_labels`), so no run is left out."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        c = run.config
        groups.setdefault((c.get("task"), c.get("preset"), c.get("seed")), []).append(run)
    out = []
    for key, group in sorted(groups.items(), key=lambda kv: tuple(str(k) for k in kv[0])):
        etas = sorted({float(r.config.get("lr", 0)) for r in group})
        columns = sorted({_column(r.config) for r in group})
        cells: dict[tuple, list[Run]] = {}
        for r in sorted(group, key=lambda r: str(r.path)):
            cells.setdefault((float(r.config.get("lr", 0)), _column(r.config)), []).append(r)
        panels = [[_panel(cells[(e, p)], root) if (e, p) in cells else None for p in columns] for e in etas]
        out.append((key, panels))
    return out


def _panel(cell: list, root: Path) -> tuple:
    title = _panel_title(cell[0].config)
    if len(cell) == 1:
        return cell[0].rows, title
    return list(zip(run_labels(cell, root), (r.rows for r in cell))), title + f" - {len(cell)} runs"


def figure_grids(runs, fig_dir: Path, root: Path | None = None) -> list[Path]:
    """Sharpness, alignment and loss grids (PNG and PDF) per (task, preset, seed); returns the PNGs."""
    if root is None:
        root = Path(*_common(runs)) if runs else Path(".")
    fig_dir.mkdir(parents=True, exist_ok=True)
    pngs = []
    grids = GRIDS + ((("layers", plots.draw_layers),) if any(plots.layer_blocks(r.rows) for r in runs) else ())
    for (task, preset, seed), panels in grid_panels(runs, root):
        for name, draw in grids:
            stem = fig_dir / f"{name}_{task}_{preset}_s{seed}"
            plots.plot_grid(panels, draw, stem, title=f"{task} ({preset}), seed {seed}: {name}")
            pngs.append(Path(f"{stem}.png"))
    return pngs


def _common(runs) -> tuple:
    parts = [r.path.parts for r in runs]
    common = []
    for level in zip(*parts):
        if any(p != level[0] for p in level):
            break
        common.append(level[0])
    return tuple(common)


def _md_table(title: str, note: str, table, cell, rows) -> list[str]:
    """A ``## title`` section of report.md: the note, then one row per run of ``(key, heading)`` columns
    ``table`` whose cells ``cell(row, key)`` gives; nothing when ``rows`` is empty."""
    if not rows:
        return []
    lines = ["", f"## {title}", "", note, "",
             "| " + " | ".join(h for _, h in table) + " |", "|" + "---|" * len(table)]
    return lines + ["| " + " | ".join(cell(r, k).replace("|", "\\|") for k, _ in table) + " |" for r in rows]


def _cell(row, key) -> str:
    if key == "ratio_median":
        if row.get("no_edge"):
            return "no known edge"
        if row.get("ratio_median") is None:
            return ""
        return f"{_fmt(row['ratio_median'])} (n={row.get('ratio_count') or 0})" + ("*" if few(row) else "")
    return _fmt(row.get(key))


def _fmt(value, digits: int = 4) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


TABLE = ("run", "task", "optimizer", "eta", "settings", "seed", "status", "steps", "final_train_loss", "test_metric",
         "test_value", "first_ratio", "ratio_median", "ratio_p10", "ratio_p90", "ratio_within_10pct",
         "lambda_over_gd_edge_median")
HEADINGS = ("run", "task", "optimizer", "eta", "settings", "seed", "status", "steps", "train loss", "test metric",
            "value", "first λmax/edge", "median λmax/edge (n)", "p10", "p90", "within ±10%", "median λmax/(2/η)")
FEW_NOTE = ("(n): the number of second-half measurements behind the median; a median marked * rests on fewer "
            f"than {MIN_SUPPORT}, too few to say where the run sits.")


def _table(rows) -> tuple[list[str], list[str]]:
    """The table's keys and headings: :data:`TABLE`, then the :data:`EXTRA` counts the runs have."""
    extras = _extras(rows)
    return list(TABLE) + extras, list(HEADINGS) + [EXTRA_HEADINGS[k] for k in extras]


def few(row) -> bool:
    """Whether ``row``'s median rests on fewer than :data:`MIN_SUPPORT` measurements."""
    return row.get("ratio_median") is not None and (row.get("ratio_count") or 0) < MIN_SUPPORT


def at_edge_line(rows) -> str:
    """How many completed SAM-type runs (rho > 0) have their median lambda_max/edge in the band."""
    sam = [r for r in rows if r["rho"] > 0 and r["status"] == "completed"]
    ok = [r for r in sam if r["ratio_median"] is not None and EDGE_BAND[0] <= r["ratio_median"] <= EDGE_BAND[1]]
    text = (f"Completed SAM-type runs (rho > 0) with median λmax/edge over the second half in "
            f"[{EDGE_BAND[0]}, {EDGE_BAND[1]}]: {len(ok)} of {len(sam)}")
    thin = [r for r in sam if few(r)]
    if thin:
        text += f" ({len(thin)} of the {len(sam)} with a median of fewer than {MIN_SUPPORT} measurements)"
    return text + "."


def _counts(rows) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def write_markdown(rows, pngs, root: Path, out: Path) -> Path:
    keys, headings = _table(rows)
    lines = [f"# samedge report: {root}", "",
             f"{len(rows)} runs: {_counts(rows)}. {at_edge_line(rows)}", "",
             f"Statistics over the second half of each run, recomputed from its metrics.csv; {EDGE_NOTE}", "",
             "| " + " | ".join(headings) + " |", "|" + "---|" * len(headings)]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r, k).replace("|", "\\|") for k in keys) + " |")
    if any(few(r) for r in rows):
        lines += ["", FEW_NOTE]
    if _extras(rows):
        lines += ["", EXTRA_NOTE]
    spread = seed_spread(rows)
    if spread:
        lines += ["", "## Across seeds", "",
                  "Mean and standard deviation (n - 1) over seeds of each cell's second-half median λmax/edge.", "",
                  "| task | preset | optimizer | eta | settings | seeds | mean | std |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {s['task']} | {s['preset']} | {s['optimizer']} | {_fmt(s['eta'])} | {s['settings']} | "
                  f"{s['seeds']} | {_fmt(s['mean'])} | {_fmt(s['std'])} |" for s in spread]
    lines += _md_table("Stochastic edges", STOCHASTIC_NOTE, STOCHASTIC_TABLE, _stochastic_cell, stochastic_rows(rows))
    lines += _md_table("Where the sharpness lives", WHERE_NOTE, WHERE_TABLE, _where_cell, where_rows(rows))
    failed = [r for r in rows if r["error"]]
    if failed:
        lines += ["", "## Errors", ""] + [f"- `{r['run']}`: {r['error']}" for r in failed]
    lines += ["", "## Figures", ""]
    for png in pngs:
        rel = png.relative_to(out)
        lines += [f"![{png.stem}]({rel})  (PDF: [{rel.with_suffix('.pdf')}]({rel.with_suffix('.pdf')}))", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def seed_spread(rows) -> list[dict]:
    """For each cell (task, preset, optimizer, eta, settings) run with two or more seeds: the mean and
    standard deviation (n - 1) over seeds of the second-half median ratio.

    >>> r = dict(task="t", preset="p", optimizer="sam", eta=0.1, settings="rho=0.1")
    >>> seed_spread([r | {"seed": 0, "ratio_median": 1.0}, r | {"seed": 1, "ratio_median": 1.2}])[0]["mean"]
    1.1
    """
    import statistics

    cells: dict[tuple, list] = {}
    for r in rows:
        if r.get("ratio_median") is not None:
            key = (r["task"], r["preset"], r["optimizer"], r["eta"], r["settings"])
            cells.setdefault(key, []).append(r)
    out = []
    for (task, preset, optimizer, eta, settings), group in cells.items():
        seeds = sorted({g["seed"] for g in group})
        if len(seeds) < 2:
            continue
        values = [g["ratio_median"] for g in group]
        out.append(dict(task=task, preset=preset, optimizer=optimizer, eta=eta, settings=settings,
                        seeds=",".join(str(s) for s in seeds), mean=round(statistics.fmean(values), 12),
                        std=statistics.stdev(values)))
    return out


STOCHASTIC_TABLE = (
    ("task", "task"), ("optimizer", "optimizer"), ("eta", "eta"), ("settings", "settings"), ("batch_size", "batch"),
    ("seed", "seed"), ("batch_sharpness_over_gd_edge_median", "batch sharpness/(2/η) (n)"),
    ("batch_sharpness_rom_over_gd_edge_median", "ratio of means/(2/η)"),
    ("lambda_max_full_over_gd_edge_median", "λmax full/(2/η)"), ("lambda_over_gd_edge_median", "minibatch λmax/(2/η)"),
    ("sam_batch_ratio_median", "sam_batch_ratio"), ("ratio_median", "median λmax/edge (n)"),
    ("batch_sharpness_quarters", "batch sharpness q3 / q4"), ("ratio_quarters", "λmax/edge q3 / q4"))
DRIFT_MARK = "†"
STOCHASTIC_NOTE = (
    "Runs that measured batch sharpness: second-half medians over 2/η of batch sharpness (the mean over fresh "
    "minibatches of q_B = g_B'H_B g_B/‖g_B‖²; SGD's edge of stochastic stability is 1), of its ratio-of-means form "
    "E[g_B'H_B g_B]/E[‖g_B‖²], of λmax of the full batch's Hessian and of λmax of the step's own minibatch; "
    "sam_batch_ratio: the mean of q_B / SAM-edge(‖g_B‖) (SAM-type runs); λmax/edge against the optimizer's own edge. "
    "q3 / q4: the medians of batch sharpness/(2/η) and of λmax/edge over the third and fourth quarters of the run "
    f"(by step), marked {DRIFT_MARK} where they differ by more than {STATIONARY_TOL:.0%} and by more than {STATIONARY_ABS:g} (not stationary). Batch: the minibatch size "
    "(full last).")


WHERE_TABLE = (
    ("run", "run"), ("optimizer", "optimizer"), ("eta", "eta"), ("settings", "settings"), ("seed", "seed"),
    ("top_mass_block", "top vector's block (mass)"), ("top_lambda_block", "sharpest block (λmax_b/λmax)"),
    ("gn_over_lambda_top_median", "λmax(G)/λtop (n)"), ("gn_over_edge_median", "λmax(G)/edge"),
    ("trace_median", "trace"), ("trace_over_lambda_max_median", "trace/λmax"))
WHERE_NOTE = (
    "Runs with --probe layers, gauss_newton or trace: second-half medians. The top vector's block: the block "
    "holding the largest share of the Hessian's top eigenvector (its share); the sharpest block: the largest "
    "λmax of a diagonal block of the Hessian, over λmax of the whole (at most 1); λmax(G)/λtop: the Gauss-Newton "
    "part's top eigenvalue over the Hessian's largest (1: the top is all Gauss-Newton), and over the optimizer's "
    "own edge; trace: Hutchinson's estimate of tr(H), and over λmax.")


def where_rows(rows) -> list[dict]:
    """The summary rows of the runs that measured a where-probe (some :data:`WHERE` statistic), in
    the report's order.

    >>> where_rows([{"run": "a"}, {"run": "b", "trace_median": 3.0}])
    [{'run': 'b', 'trace_median': 3.0}]
    """
    return [r for r in rows if any(k in r for k in WHERE)]


def _where_cell(row, key) -> str:
    if key == "top_mass_block" and key in row:
        return f"{row[key]} ({_fmt(row.get('top_mass_median'), 3)})"
    if key == "top_lambda_block" and key in row:
        return f"{row[key]} ({_fmt(row.get('top_lambda_over_lambda_max_median'), 3)})"
    if key == "gn_over_lambda_top_median" and key in row:
        return f"{_fmt(row[key])} (n={row.get('gn_count') or 0})"
    return _fmt(row.get(key))


def _batch_order(size) -> tuple:
    return (1, 0) if size in ("full", None, 0) else (0, int(size))


def stochastic_rows(rows) -> list[dict]:
    """The summary rows of the runs that measured batch sharpness, in the "Stochastic edges" order.

    Args:
      rows: :func:`summary_row` dicts.

    Returns:
      Those with ``batch_sharpness_count`` (set by :func:`samedge.analysis.stochastic_stats` when the
      run measured batch sharpness), sorted by (task, optimizer, eta, settings, batch size with the
      full batch last, seed, run).

    >>> r = dict(task="t", optimizer="sgd", eta=0.1, settings="-", seed=0, run="x", batch_sharpness_count=4)
    >>> no_bs = {k: v for k, v in r.items() if k != "batch_sharpness_count"} | {"batch_size": 8}
    >>> [s["batch_size"] for s in stochastic_rows([r | {"batch_size": b} for b in ("full", 64, 16)] + [no_bs])]
    [16, 64, 'full']
    """
    measured = [r for r in rows if "batch_sharpness_count" in r]
    return sorted(measured, key=lambda r: (r["task"] or "", r["optimizer"] or "", r["eta"] or 0, r["settings"],
                                           _batch_order(r.get("batch_size")), r["seed"] or 0, r["run"]))


def not_stationary(row, quantity: str = "batch_sharpness") -> bool:
    """Whether ``quantity`` (``batch_sharpness``: over 2/eta; ``ratio``: lambda_max / edge) moved by
    more than :data:`STATIONARY_TOL` between the third and fourth quarters of the run.

    Args:
      row: a :func:`summary_row` dict.
      quantity: ``"batch_sharpness"`` or ``"ratio"``.

    Returns:
      ``|q4 - q3| / q3 > STATIONARY_TOL`` for the quarters' medians (False when either is missing),
      and ``|q4 - q3| > STATIONARY_ABS``: a quantity at about zero (full-batch GD's batch sharpness,
      ~1e-5 of 2/eta: its gradient is orthogonal to the top eigenvectors) is not called drifting.

    >>> [not_stationary({"batch_sharpness_quarters_reldiff": d}) for d in (0.08, 0.02)], not_stationary({})
    ([True, False], False)
    >>> not_stationary({"ratio_quarters_reldiff": 0.08}, "ratio")
    True
    >>> not_stationary({"ratio_quarters_reldiff": 0.14, "ratio_q3_median": 1.4e-5, "ratio_q4_median": 1.6e-5}, "ratio")
    False
    """
    diff = row.get(f"{quantity}_quarters_reldiff")
    q3, q4 = row.get(f"{quantity}_q3_median"), row.get(f"{quantity}_q4_median")
    close = q3 is not None and q4 is not None and abs(q4 - q3) <= STATIONARY_ABS
    return diff is not None and diff > STATIONARY_TOL and not close


def _stochastic_cell(row, key) -> str:
    if key == "batch_size":
        return str(row.get("batch_size", "full"))
    if key == "batch_sharpness_over_gd_edge_median":
        value = row.get(key)
        return "" if value is None else f"{_fmt(value)} (n={row.get('batch_sharpness_count') or 0})"
    if key == "sam_batch_ratio_median" and not row.get("rho", 0) > 0:
        return ""  # non-SAM: the per-batch edge is 2/eta, and this is batch sharpness/(2/eta) again
    if key == "ratio_median":
        return _cell(row, key)
    if key in ("batch_sharpness_quarters", "ratio_quarters"):
        quantity = key.removesuffix("_quarters")
        q3, q4 = row.get(f"{quantity}_q3_median"), row.get(f"{quantity}_q4_median")
        if q3 is None and q4 is None:
            return ""
        return f"{_fmt(q3)} / {_fmt(q4)}" + (f" {DRIFT_MARK}" if not_stationary(row, quantity) else "")
    return _fmt(row.get(key))


def _where_td(row, key) -> str:
    return " class=l" if key in ("run", "optimizer", "settings") else ""


def _html_table(title: str, note: str, table_id: str, table, cell, td, rows) -> list[str]:
    """report.html's counterpart of :func:`_md_table`: a heading, the note and a table of ``(key,
    heading)`` columns whose cells ``cell(row, key)`` gives and ``td(row, key)`` classes; nothing when
    ``rows`` is empty."""
    if not rows:
        return []
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for _, h in table)
    body = ["<tr>" + "".join(f"<td{td(r, k)}>{e(cell(r, k))}</td>" for k, _ in table) + "</tr>" for r in rows]
    return [f"<h2>{e(title)}</h2>", f"<p>{e(note)}</p>",
            f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>', *body, "</tbody></table>"]


def _stochastic_td(row, key) -> str:
    if key in ("task", "optimizer", "settings"):
        return " class=l"
    if key in ("batch_sharpness_quarters", "ratio_quarters") and not_stationary(row, key.removesuffix("_quarters")):
        return f' class=drift title="third and fourth quarters differ by more than {STATIONARY_TOL:.0%}"'
    if key == "ratio_median" and few(row):
        return f' class=few title="fewer than {MIN_SUPPORT} measurements behind this median"'
    return ""


EDGE_NOTE = ("the edge is each optimizer's own (2/η for GD, the SAM-edge for SAM; `samedge edge` prints them); "
             "λmax is the optimizer's own sharpness (λmax(P⁻¹H) for an adaptive one, λmax(H + wd D) under "
             "coupled weight decay); under a schedule η is the peak and the statistics use the rows where η_t is at "
             "least half of it; run = the run folder under the reported one.")
_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;font-size:12px}
th,td{border:1px solid #bbb;padding:3px 6px;text-align:right}th{background:#eee}td.l{text-align:left}
tr.failed td{background:#fdd}tr.diverged td{background:#ffe9c6}img{max-width:100%;margin:1em 0}
td.few{color:#a40}td.drift{color:#a40}"""


def _td_class(row, key) -> str:
    if key in ("run", "task", "optimizer", "status", "test_metric"):
        return " class=l"
    if key == "ratio_median" and few(row):
        return f' class=few title="fewer than {MIN_SUPPORT} measurements behind this median"'
    return ""


def write_html(rows, pngs, root: Path, out: Path) -> Path:
    """``report.html`` with the figures inlined as base64 PNG data URIs: opens with no server."""
    e = html.escape
    keys, headings = _table(rows)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>samedge report: {e(str(root))}</title><style>{_CSS}</style></head><body>",
             f"<h1>samedge report: {e(str(root))}</h1>",
             f"<p>{len(rows)} runs: {e(_counts(rows))}. {e(at_edge_line(rows))}</p>",
             f"<p>Generated {e(_dt.datetime.now(_dt.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}. "
             f"Statistics over the second half of each run; {e(EDGE_NOTE.replace('`', ''))}</p>",
             '<table id="summary"><thead><tr>' + "".join(f"<th>{e(h)}</th>" for h in headings) + "</tr></thead><tbody>"]
    for r in rows:
        cells = "".join(f"<td{_td_class(r, k)}>{e(_cell(r, k))}</td>" for k in keys)
        title = f' title="{e(r["error"])}"' if r["error"] else ""
        parts.append(f'<tr class="{e(r["status"])}"{title}>{cells}</tr>')
    parts.append("</tbody></table>")
    if any(few(r) for r in rows):
        parts.append(f"<p>{e(FEW_NOTE)}</p>")
    if _extras(rows):
        parts.append(f"<p>{e(EXTRA_NOTE)}</p>")
    parts += _html_table("Stochastic edges", STOCHASTIC_NOTE, "stochastic", STOCHASTIC_TABLE, _stochastic_cell,
                         _stochastic_td, stochastic_rows(rows))
    parts += _html_table("Where the sharpness lives", WHERE_NOTE, "where", WHERE_TABLE, _where_cell,
                         _where_td, where_rows(rows))
    for png in pngs:
        data = base64.b64encode(png.read_bytes()).decode("ascii")
        parts.append(f"<h2>{e(png.stem)}</h2>")
        parts.append(f'<img alt="{e(png.stem)}" src="data:image/png;base64,{data}">')
    parts.append("</body></html>")
    path = out / "report.html"
    path.write_text("\n".join(parts) + "\n", encoding="utf-8")
    return path


def write_report(root, out=None) -> list[Path]:
    """Write ``summary.csv``, the figure grids, ``report.md`` and ``report.html`` for the runs under
    ``root`` into ``out`` (default ``root``); returns the written paths, ``report.html`` last."""
    from samedge.errors import RunDirError

    root = Path(root)
    out = Path(out) if out is not None else root
    if not root.is_dir():
        raise RunDirError(f"{root} is not a folder")
    runs = find_runs(root)
    if not runs:
        raise RunDirError(f"no run folders (with {CONFIG}) under {root}")
    out.mkdir(parents=True, exist_ok=True)
    rows = sorted((summary_row(r, root) for r in runs), key=_sort_key)
    csv_path = write_csv(rows, out / "summary.csv")
    pngs = figure_grids(runs, out / "figures", root)
    md = write_markdown(rows, pngs, root, out)
    page = write_html(rows, pngs, root, out)
    return [csv_path, *pngs, md, page]
