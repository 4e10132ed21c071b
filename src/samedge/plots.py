"""Figures drawn from ``metrics.csv`` (so a diverged or interrupted run still gets them).

Every function takes run folders or rows and writes PNG and PDF files; nothing here computes. The
``*_figure`` functions return the matplotlib figure before it is saved (the tests inspect them).

What every figure shows, and how it stays readable:

- every y axis is labelled (``eigenvalue of the Hessian``, ``|cos| with top eigenvector``, ``loss``)
  with plain tick labels (``20``, ``0.5``; never ``2x10^1``);
- the y axis is linear when the plotted values span less than a factor :data:`LOG_RATIO`, log
  otherwise, and a linear axis reaches at least 1% beyond its values (float rounding is not drawn
  as structure);
- lines that coincide by construction are drawn once with a merged label: ``edge = 2/η`` for GD
  (its edge is 2/eta), ``gradient = step direction`` when the step follows the gradient;
- the sharpness figure draws every measured eigenvalue: ``lambda_max`` (thick), ``|lambda_2..k|``
  (thin, with ``--topk``), the tracked outliers (faint points, with ``--track-fraction``) and
  ``lambda_max`` at the SAM point (dotted); a ``lambda_max`` whose Lanczos did not converge is
  marked with a red x (the statistics leave those rows out);
- a panel may hold several runs (``[(label, rows), ...]`` instead of ``rows``): each run then has
  its own colour and the line style tells the quantity, so no run is left out of a grid cell;
- a run with ``--probe layers`` also gets ``layers``: each block's ``lambda_max/<b>`` (a colour per
  block, from the input to the read-out) against the whole Hessian's ``lambda_max``, the edge, 2/eta
  and, with ``--probe gauss_newton``, the Gauss-Newton ``gn_lambda_max``; beside it the top
  eigenvector's mass per block (``mass/<b>``, stacked to 1).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from samedge.store import read_json, read_metrics, CONFIG

LOG_RATIO = 10.0  # a y axis whose values span at least this factor is drawn log, else linear
MIN_WINDOW = 0.01  # a linear y axis spans at least +-1% around the middle of its values
SAME = 1e-6  # relative difference under which two measured series are the same line (float32 rounding)
YLABEL = {"sharpness": "eigenvalue of the Hessian", "alignment": "|cos| with top eigenvector", "loss": "loss",
          "layers": "eigenvalue of the Hessian", "mass": "share of the top eigenvector"}
LAYER, MASS = "lambda_max/", "mass/"  # the per-layer columns' families (samedge.probes.layers)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _ok(v) -> bool:
    return v is not None and math.isfinite(v)


def _col(rows, key, fn=None):
    """``(steps, values)`` of the rows where ``key`` holds a finite number (``fn`` applied)."""
    pairs = [(r["step"], r[key]) for r in rows if _ok(r.get(key))]
    return [p[0] for p in pairs], [(fn(p[1]) if fn else p[1]) for p in pairs]


def _numbered(rows, prefix: str, start: int = 1) -> list[str]:
    """The columns ``prefix<i>`` (i >= start) that hold a finite value in some row, by i."""
    keys = {k for r in rows for k, v in r.items() if k.startswith(prefix) and k[len(prefix):].isdigit() and _ok(v)}
    return sorted((k for k in keys if int(k[len(prefix):]) >= start), key=lambda k: int(k[len(prefix):]))


def _same(rows, a: str, b: str) -> bool:
    """Whether columns ``a`` and ``b`` hold the same values wherever either is measured (and some)."""
    pairs = [(r.get(a), r.get(b)) for r in rows if _ok(r.get(a)) or _ok(r.get(b))]
    return bool(pairs) and all(_ok(x) and _ok(y) and abs(x - y) <= SAME * max(abs(x), abs(y), 1e-30)
                               for x, y in pairs)


def hparams_of(run: dict) -> dict:
    """The optimizer's hyperparameters in a run's settings (``config.json``'s ``run`` part); folders
    written before the registry kept ``rho`` and ``momentum`` as fields."""
    from samedge import optimizers

    if "hparams" in run:
        return dict(run["hparams"] or {})
    try:
        own = optimizers.get(run.get("optimizer")).hyper_names
    except Exception:
        own = ()
    return {k: run[k] for k in own if k in run}


def _label(config: dict) -> str:
    """A run's title: ``mnist (quick): sam lr=0.1 rho=0.1, seed 0`` (task, optimizer, settings)."""
    run = config.get("run", config)
    lr = run.get("lr")
    parts = [str(run.get("optimizer", "?")), f"lr={lr:g}" if isinstance(lr, (int, float)) else ""]
    parts += [f"{k}={v:g}" for k, v in hparams_of(run).items()]
    task, preset, seed = run.get("task"), run.get("preset"), run.get("seed")
    head = f"{task} ({preset})" if task and preset else (task or "")
    text = (f"{head}: " if head else "") + " ".join(p for p in parts if p)
    return text + (f", seed {seed}" if seed is not None else "")


# -- axes ---------------------------------------------------------------------------------------

def _num(value, _pos=None) -> str:
    """A tick label in plain numbers: ``20``, ``0.05``, ``1e-6`` (no mathtext powers)."""
    if value == 0:
        return "0"
    if 1e-3 <= abs(value) < 1e5:
        return f"{value:g}"
    mantissa, exp = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exp)}"


def _positive(values):
    return [v for v in values if _ok(v) and v > 0]


def log_axis(axis, lo: float, hi: float) -> None:
    """Plain labels on a log ``axis`` (``ax.yaxis``/``ax.xaxis``, already log-scaled); ticks at 1-2-5 when the
    span ``lo..hi`` is under three decades, so that at least two ticks are labelled."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    span = math.log10(hi / lo) if lo > 0 and hi > 0 else 3
    subs = (1.0, 2.0, 5.0) if span < 3 else (1.0,)
    axis.set_major_locator(LogLocator(base=10, subs=subs))
    axis.set_major_formatter(FuncFormatter(_num))
    axis.set_minor_locator(LogLocator(base=10, subs=tuple(s for s in range(2, 10) if s not in subs)))
    axis.set_minor_formatter(NullFormatter())


def plain_axis(axis) -> None:
    """Plain numbers on a linear axis: no offset (``+1.99``), no ``x10^k``."""
    from matplotlib.ticker import ScalarFormatter

    fmt = ScalarFormatter(useOffset=False)
    fmt.set_scientific(False)
    axis.set_major_formatter(fmt)


def y_axis(ax, values, *, log: bool | None = None, window: float = MIN_WINDOW) -> bool:
    """Scale and label the y axis of ``ax`` for ``values``; returns whether it is log.

    Log when ``log`` says so, or (``log=None``) when the positive values span at least
    :data:`LOG_RATIO`; linear otherwise, reaching at least ``window`` x the values' middle beyond
    them on either side, so that rounding noise is not drawn as scatter."""
    finite = [v for v in values if _ok(v)]
    pos = _positive(finite)
    if log is None:
        log = len(pos) > 1 and max(pos) / min(pos) >= LOG_RATIO and min(finite) > 0
    if log and pos:
        ax.set_yscale("log")
        log_axis(ax.yaxis, min(pos), max(pos))
        return True
    ax.set_yscale("linear")
    plain_axis(ax.yaxis)
    if finite:
        lo, hi = min(finite), max(finite)
        mid, half = (lo + hi) / 2, (hi - lo) / 2
        want = window * abs(mid)
        if half < want:  # the values +-window
            ax.set_ylim(lo - want, hi + want)
    return False


def _x_axis(ax) -> None:
    ax.set_xlabel("step")
    plain_axis(ax.xaxis)


def _series(data) -> list[tuple[str, list]]:
    """A panel's runs as ``[(label, rows), ...]``: ``rows`` alone is one unlabelled run."""
    if data and isinstance(data[0], tuple):
        return [(str(label), list(rows)) for label, rows in data]
    return [("", list(data or []))]


def _width(i: int, n: int) -> float:
    """Line-width factor of run ``i`` of ``n`` in one panel: the first drawn widest (and underneath),
    so runs that coincide (the same settings run for different step counts) all stay visible."""
    return 1.0 + 0.9 * (n - 1 - i) / (n - 1) if n > 1 else 1.0


def _legend(ax, handles, fontsize=6.5):
    if handles:
        ax.legend(handles=handles, fontsize=fontsize, framealpha=0.75, ncol=2 if len(handles) > 5 else 1)


def _key(label, **style):
    """A legend entry (a line drawn nowhere)."""
    from matplotlib.lines import Line2D

    return Line2D([], [], label=label, **style)


# -- the three run figures ----------------------------------------------------------------------

def sharpness_values(rows) -> list[float]:
    """Every value the sharpness figure draws for ``rows`` (its y scale is chosen on them)."""
    keys = ["lambda_max", "lambda_max_sam", "edge", "gd_edge"] + _numbered(rows, "lambda_", 2) \
        + _numbered(rows, "outlier_")
    return [abs(r[k]) for r in rows for k in keys if _ok(r.get(k))]


def draw_sharpness(ax, data, title: str = "", *, log: bool | None = None) -> None:
    """lambda_max against the active edge and 2/eta over steps, with every other eigenvalue measured.

    ``data`` is one run's rows, or ``[(label, rows), ...]`` for several runs in one panel (a colour
    each; the line style tells the quantity). Each line's ``gid`` names what it draws: per run
    ``lambda_max``, ``lambda_k`` (one per k >= 2), ``outliers``, ``lambda_max_sam``, ``edge`` and
    ``gd_edge``; ``edge=gd_edge`` where the edge is 2/eta at every point (GD: one line, labelled
    ``edge = 2/η``). 2/eta shared by every run in the panel is drawn once."""
    runs = _series(data)
    many = len(runs) > 1
    keys, values, fixed = [], [], []
    gd_all = [v for _, rows in runs for v in _col(rows, "gd_edge")[1]]
    one_gd = bool(gd_all) and max(gd_all) - min(gd_all) <= SAME * max(gd_all)
    merged = bool(gd_all) and all(_same(rows, "edge", "gd_edge") for _, rows in runs if rows)
    any_edge = any(_ok(r.get("edge")) for _, rows in runs for r in rows)
    gd_name = r"edge = $2/\eta$" if merged else r"$2/\eta$"
    gd_style = dict(color="C3", lw=1.5, ls="--") if merged else dict(color="k", lw=1.0, ls=":")
    for i, (label, rows) in enumerate(runs):
        if not rows:
            keys.append(_key(f"{label} (no measurements)", ls="none"))
            continue
        values += sharpness_values(rows)
        c, w, z = (f"C{i}" if many else "C0"), _width(i, len(runs)), 2 + i / 100
        if many:
            keys.append(_key(label, color=c, lw=1.6 * w))
        ax.plot(*_col(rows, "lambda_max"), color=c, lw=1.6 * w, zorder=z, gid="lambda_max", label=r"$\lambda_{max}$")
        ks = _numbered(rows, "lambda_", 2)
        name = rf"$|\lambda_2|..|\lambda_{{{len(ks) + 1}}}|$" if len(ks) > 1 else r"$|\lambda_2|$"
        for j, k in enumerate(ks):
            ax.plot(*_col(rows, k, abs), color=c, lw=0.7, alpha=0.55, gid="lambda_k", label=name if j == 0 else "_")
        outs = _numbered(rows, "outlier_")
        if outs:
            pts = [(r["step"], r[k]) for k in outs for r in rows if _ok(r.get(k))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], ls="none", marker="o", ms=2.5, color=c, alpha=0.3,
                    mec="none", gid="outliers", label="tracked outliers")
        missed = [(r["step"], r["lambda_max"]) for r in rows if r.get("converged") == 0 and _ok(r.get("lambda_max"))]
        if missed:  # Lanczos missed its tolerance there: drawn, but marked (the statistics leave them out)
            ax.plot([p[0] for p in missed], [p[1] for p in missed], ls="none", marker="x", ms=5, color="C3",
                    mew=1.2, zorder=z + 1, gid="unconverged", label="not converged")
            fixed += ax.lines[-1:]
        if any(_ok(r.get("lambda_max_sam")) for r in rows):
            ax.plot(*_col(rows, "lambda_max_sam"), color=c, lw=0.9, ls=":", gid="lambda_max_sam",
                    label=r"$\lambda_{max}$ at SAM point")
        if not merged and any(_ok(r.get("edge")) for r in rows):
            ax.plot(*_col(rows, "edge"), color=c if many else "C3", lw=1.5 * w, ls="--", zorder=z, gid="edge",
                    label="edge")
        if not one_gd and gd_all:  # eta differs between the runs: each its own 2/eta
            ax.plot(*_col(rows, "gd_edge"), gid="edge=gd_edge" if merged else "gd_edge", label=gd_name,
                    **(gd_style | ({"color": c} if many else {})))
    if one_gd:  # one 2/eta for the panel, over the steps of every run
        steps = [r["step"] for _, rows in runs for r in rows if _ok(r.get("gd_edge"))]
        fixed += ax.plot([min(steps), max(steps)], [gd_all[0]] * 2, gid="edge=gd_edge" if merged else "gd_edge",
                         label=gd_name, **gd_style)
    handles = keys + _quantity_handles(ax, many, fixed)
    if not any_edge:
        handles.append(_key("edge: none known", ls="none"))
    _legend(ax, handles)
    y_axis(ax, values, log=log)
    _x_axis(ax)
    ax.set_ylabel(YLABEL["sharpness"])
    ax.set_title(title, fontsize=9)


def _quantity_handles(ax, many: bool, fixed=()):
    """One legend entry per quantity drawn on ``ax``; with several runs (a colour each) the entry
    is grey, except for the lines drawn once for the whole panel (``fixed``)."""
    seen, out = set(), []
    thinnest = {}  # label -> the run drawn thinnest (a grey entry shows the plain width)
    for line in ax.lines:
        lab = line.get_label()
        if lab not in thinnest or line.get_linewidth() < thinnest[lab].get_linewidth():
            thinnest[lab] = line
    for line in ax.lines:
        lab = line.get_label()
        if lab.startswith("_") or lab in seen:
            continue
        seen.add(lab)
        if many and line not in fixed:
            t = thinnest[lab]
            out.append(_key(lab, color="0.35", ls=t.get_linestyle(), lw=t.get_linewidth(),
                            marker=t.get_marker(), ms=t.get_markersize(), alpha=t.get_alpha()))
        else:
            out.append(line)
    return out


def draw_alignment(ax, data, title: str = "") -> None:
    """``|cos|`` of the gradient and of the step direction with the top eigenvector; one line
    ``gradient = step direction`` where they coincide (GD; ``gid`` ``align_grad=align_sam_grad``)."""
    runs = _series(data)
    many = len(runs) > 1
    keys = []
    for i, (label, rows) in enumerate(runs):
        if not rows:
            keys.append(_key(f"{label} (no measurements)", ls="none"))
            continue
        c1, c2 = (f"C{i}", f"C{i}") if many else ("C0", "C1")
        w, z = _width(i, len(runs)), 2 + i / 100
        if many:
            keys.append(_key(label, color=c1, lw=1.6 * w))
        if _same(rows, "align_grad", "align_sam_grad"):
            ax.plot(*_col(rows, "align_grad"), color=c1, lw=1.6 * w, zorder=z, gid="align_grad=align_sam_grad",
                    label="gradient = step direction")
            continue
        ax.plot(*_col(rows, "align_grad"), color=c1, lw=1.6 * w, zorder=z, gid="align_grad", label="gradient")
        if any(_ok(r.get("align_sam_grad")) for r in rows):
            ax.plot(*_col(rows, "align_sam_grad"), color=c2, lw=1.0 * w, zorder=z, ls="--", marker=".", ms=3,
                    gid="align_sam_grad", label="step direction")
    _legend(ax, keys + _quantity_handles(ax, many))
    ax.set_ylim(0, 1.02)
    plain_axis(ax.yaxis)
    _x_axis(ax)
    ax.set_ylabel(YLABEL["alignment"])
    ax.set_title(title, fontsize=9)


def draw_loss(ax, data, title: str = "") -> None:
    """Training loss (line) and test loss (points) over steps."""
    runs = _series(data)
    many = len(runs) > 1
    keys, values = [], []
    for i, (label, rows) in enumerate(runs):
        if not rows:
            keys.append(_key(f"{label} (no measurements)", ls="none"))
            continue
        c1, c2 = (f"C{i}", f"C{i}") if many else ("C0", "C1")
        w, z = _width(i, len(runs)), 2 + i / 100
        if many:
            keys.append(_key(label, color=c1, lw=1.4 * w))
        steps, loss = _col(rows, "loss")
        values += loss
        ax.plot(steps, loss, color=c1, lw=1.4 * w, zorder=z, gid="loss", label="train")
        if any(_ok(r.get("test_loss")) for r in rows):
            steps, test = _col(rows, "test_loss")
            values += test
            ax.plot(steps, test, color=c2, ls="--" if many else "-", lw=0.9 * w, zorder=z, marker="o", ms=3 * w,
                    gid="test_loss",
                    label="test")
    _legend(ax, keys + _quantity_handles(ax, many))
    y_axis(ax, values)
    _x_axis(ax)
    ax.set_ylabel(YLABEL["loss"])
    ax.set_title(title, fontsize=9)


def layer_blocks(rows, family: str = LAYER) -> list[str]:
    """The blocks ``b`` with a finite ``<family>b`` column (``lambda_max/b``) in some row, in column order.

    >>> layer_blocks([{"step": 0, "lambda_max/Dense_0": 1.0, "lambda_max/Dense_1": None, "mass/Dense_1": 0.5}])
    ['Dense_0']
    """
    out: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k.startswith(family) and _ok(v) and k[len(family):] not in out:
                out.append(k[len(family):])
    return out


def _block_colours(blocks):
    """A colour per block along viridis, the input's dark to the read-out's light."""
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return {b: cmap(0.9 * i / max(len(blocks) - 1, 1)) for i, b in enumerate(blocks)}


RUN_STYLES = ("-", "--", ":", "-.")  # a run's line style in a panel of several (draw_layers)


MAX_BLOCK_KEYS = 10  # more blocks than this: one legend entry for the colour scale instead of one each


def draw_layers(ax, data, title: str = "", *, log: bool | None = None, block_legend: bool = True) -> None:
    """Each block's ``lambda_max/<b>`` against ``lambda_max``, the edge and 2/eta (and ``gn_lambda_max``).

    ``data`` is one run's rows or ``[(label, rows), ...]``; with several runs the colour tells the
    block and the line style the run. Each line's ``gid``: ``lambda_max/<b>`` per block,
    ``lambda_max``, ``gn_lambda_max``, ``edge``, ``gd_edge``. ``block_legend=False`` leaves the blocks
    out of the legend (the run figure keys them beside, in the mass panel).

    >>> rows = [{"step": s, "lambda_max": 2.0, "edge": 2.2, "gd_edge": 4.0, "lambda_max/Dense_0": 0.1,
    ...          "lambda_max/Dense_1": 1.5} for s in (0, 10)]
    >>> fig, ax = _pyplot().subplots()
    >>> draw_layers(ax, rows)
    >>> sorted({line.get_gid() for line in ax.lines})
    ['edge', 'gd_edge', 'lambda_max', 'lambda_max/Dense_0', 'lambda_max/Dense_1']
    >>> _pyplot().close(fig)
    """
    runs = _series(data)
    many = len(runs) > 1
    blocks: list[str] = []
    for _, rows in runs:
        blocks += [b for b in layer_blocks(rows) if b not in blocks]
    colours = _block_colours(blocks)
    keys, values = [], []
    for i, (label, rows) in enumerate(runs):
        if not rows:
            keys.append(_key(f"{label} (no measurements)", ls="none"))
            continue
        ls = RUN_STYLES[i % len(RUN_STYLES)] if many else "-"
        if many:
            keys.append(_key(label, color="k", ls=ls))
        for b in layer_blocks(rows):
            steps, lam = _col(rows, LAYER + b)
            values += lam
            named = block_legend and len(blocks) <= MAX_BLOCK_KEYS
            ax.plot(steps, lam, color=colours[b], lw=1.1, ls=ls, gid=LAYER + b, label=b if named else "_")
        for key, style, name in (("lambda_max", dict(color="k", lw=1.8), r"$\lambda_{max}$ (whole)"),
                                 ("gn_lambda_max", dict(color="0.45", lw=1.2, marker=".", ms=3),
                                  r"Gauss-Newton $\lambda_{max}$"),
                                 ("edge", dict(color="C3", lw=1.4), "edge"),
                                 ("gd_edge", dict(color="k", lw=0.9), r"$2/\eta$")):
            if key == "gd_edge" and _same(rows, "edge", "gd_edge"):
                continue  # GD: the edge is 2/eta, drawn once
            steps, vals = _col(rows, key)
            if vals:
                values += vals
                dash = {"edge": "--", "gd_edge": ":"}.get(key, ls)
                if key == "edge" and _same(rows, "edge", "gd_edge"):
                    name = r"edge = $2/\eta$"
                ax.plot(steps, vals, ls=dash if not many or key in ("edge", "gd_edge") else ls, gid=key,
                        label=name, **style)
    handles = keys + _quantity_handles(ax, False)
    if block_legend and len(blocks) > MAX_BLOCK_KEYS:
        handles.append(_key(f"{len(blocks)} blocks: {blocks[0]} (dark) .. {blocks[-1]} (light)",
                            color=colours[blocks[len(blocks) // 2]]))
    _legend(ax, handles, fontsize=6)
    y_axis(ax, values, log=log)
    _x_axis(ax)
    ax.set_ylabel(YLABEL["layers"])
    ax.set_title(title, fontsize=9)


def draw_mass(ax, rows, title: str = "") -> None:
    """The top eigenvector's mass per block (``mass/<b>``), stacked: where ``v_1`` lives (``gid`` ``mass``).

    >>> rows = [{"step": s, "mass/Dense_0": 0.25, "mass/Dense_1": 0.75} for s in (0, 10)]
    >>> fig, ax = _pyplot().subplots()
    >>> draw_mass(ax, rows)
    >>> [c.get_gid() for c in ax.collections], [float(y) for y in ax.get_ylim()]
    (['mass', 'mass'], [0.0, 1.0])
    >>> _pyplot().close(fig)
    """
    blocks = layer_blocks(rows, MASS)
    colours = _block_colours(layer_blocks(rows) or blocks)
    kept = [r for r in rows if all(_ok(r.get(MASS + b)) for b in blocks)]
    if blocks and kept:
        stack = ax.stackplot([r["step"] for r in kept], [[r[MASS + b] for r in kept] for b in blocks],
                             labels=blocks, colors=[colours.get(b, "0.5") for b in blocks], alpha=0.85)
        for poly in stack:
            poly.set_gid("mass")
        shown = list(stack)[::-1]  # the read-out on top, as stacked
        if len(shown) > 2 * MAX_BLOCK_KEYS:
            shown = shown[:: -(-len(shown) // (2 * MAX_BLOCK_KEYS))]
        ax.legend(handles=shown, fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  ncol=1 if len(shown) <= MAX_BLOCK_KEYS else 2)
    ax.set_ylim(0, 1)
    plain_axis(ax.yaxis)
    _x_axis(ax)
    ax.set_ylabel(YLABEL["mass"])
    ax.set_title(title, fontsize=9)


DRAW = {"sharpness": draw_sharpness, "alignment": draw_alignment, "loss": draw_loss}


# -- files --------------------------------------------------------------------------------------

def save(fig, path_stem: Path) -> list[Path]:
    paths = [Path(f"{path_stem}.png"), Path(f"{path_stem}.pdf")]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    return paths


def run_figures(run_dir) -> dict:
    """``{"sharpness": fig, "alignment": fig, "loss": fig}`` of one run folder (empty without
    measurements); the caller closes them."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return {}
    title = _label(read_json(run_dir / CONFIG)) if (run_dir / CONFIG).exists() else run_dir.name
    out = {}
    for name, draw in DRAW.items():
        fig, ax = plt.subplots(figsize=(5.4, 3.6))
        draw(ax, rows, title)
        fig.tight_layout()
        out[name] = fig
    if layer_blocks(rows):  # --probe layers: the per-layer panel against the edge, the mass beside it
        fig, (left, right) = plt.subplots(1, 2, figsize=(10.2, 3.8), gridspec_kw={"width_ratios": [3, 2]})
        draw_layers(left, rows, title, block_legend=not layer_blocks(rows, MASS))
        draw_mass(right, rows, "mass of the top eigenvector per block")
        fig.tight_layout()
        out["layers"] = fig
    return out


def plot_run(run_dir) -> list[Path]:
    """``sharpness``, ``alignment`` and ``loss`` figures (PNG and PDF) inside the run folder, and
    ``layers`` when the run measured ``lambda_max/<block>`` (``--probe layers``)."""
    plt = _pyplot()
    written = []
    for name, fig in run_figures(run_dir).items():
        written += save(fig, Path(run_dir) / name)
        plt.close(fig)
    return written


def comparison_figure(run_dirs: Sequence):
    """The demo's figure: one sharpness panel per run, side by side, on one shared y axis (linear
    when the runs' values together span less than :data:`LOG_RATIO`, else log)."""
    plt = _pyplot()
    runs = [(Path(d), read_metrics(d)) for d in run_dirs]
    values = [v for _, rows in runs for v in sharpness_values(rows)]
    pos = _positive(values)
    log = len(pos) > 1 and max(pos) / min(pos) >= LOG_RATIO
    fig, axes = plt.subplots(1, len(runs), figsize=(5.2 * len(runs), 3.8), squeeze=False)
    for ax, (run_dir, rows) in zip(axes[0], runs):
        if ax is not axes[0][0]:
            ax.sharey(axes[0][0])
        title = _label(read_json(run_dir / CONFIG)) if (run_dir / CONFIG).exists() else run_dir.name
        draw_sharpness(ax, rows, title, log=log)
    y_axis(axes[0][0], values, log=log)  # the shared limits cover every run's values
    for ax in axes[0]:
        ax.tick_params(labelleft=True)
    fig.suptitle(r"$\lambda_{max}$ against each optimizer's own edge (same y axis, "
                 + ("log" if log else "linear") + ")", fontsize=10)
    fig.tight_layout()
    return fig


def plot_comparison(run_dirs: Sequence, out_stem) -> list[Path]:
    """One row of sharpness panels, one per run, side by side (the demo's figure)."""
    plt = _pyplot()
    fig = comparison_figure(run_dirs)
    written = save(fig, out_stem)
    plt.close(fig)
    return written


def grid_figure(panels, draw, *, title: str = ""):
    """A grid of panels, ``panels[i][j]`` = ``(data, panel title)`` or ``None`` (an empty cell);
    ``data`` is one run's rows or ``[(label, rows), ...]`` (see :func:`draw_sharpness`)."""
    plt = _pyplot()
    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    wide = any(cell is not None and cell[0] and isinstance(cell[0][0], tuple) for line in panels for cell in line)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=((5.0 if wide else 4.4) * n_cols, 3.3 * n_rows), squeeze=False)
    for i, line in enumerate(panels):
        for j in range(n_cols):
            cell = line[j] if j < len(line) else None
            if cell is None or not _drawable(cell[0]):
                axes[i][j].axis("off")
                if cell is not None:
                    axes[i][j].set_title(f"{cell[1]}\n(no measurements)", fontsize=9)
                continue
            draw(axes[i][j], *cell)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _drawable(data) -> bool:
    return any(rows for _, rows in _series(data)) if data else False


def plot_grid(panels, draw, out_stem, *, title: str = "") -> list[Path]:
    """:func:`grid_figure`, saved as PNG and PDF."""
    plt = _pyplot()
    fig = grid_figure(panels, draw, title=title)
    written = save(fig, out_stem)
    plt.close(fig)
    return written
