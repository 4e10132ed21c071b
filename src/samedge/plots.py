"""Figures drawn from ``metrics.csv`` (so a diverged or interrupted run still gets them).

Every function takes run folders or rows and writes PNG and PDF files; nothing here computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from samedge.store import read_json, read_metrics, CONFIG


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _col(rows, key):
    pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


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
    run = config.get("run", config)
    lr = run.get("lr")
    parts = [str(run.get("optimizer", "?")), f"lr={lr:g}" if isinstance(lr, (int, float)) else ""]
    parts += [f"{k}={v:g}" for k, v in hparams_of(run).items()]
    task = run.get("task")
    return (f"{task}: " if task else "") + " ".join(p for p in parts if p)


def draw_sharpness(ax, rows, title: str = "") -> None:
    """lambda_max against the active edge and 2/eta over steps."""
    ax.plot(*_col(rows, "lambda_max"), color="C0", lw=1.6, label=r"$\lambda_{max}$")
    if any(r.get("lambda_max_sam") is not None for r in rows):
        ax.plot(*_col(rows, "lambda_max_sam"), color="C0", lw=0.8, ls=":", label=r"$\lambda_{max}$ at SAM point")
    ax.plot(*_col(rows, "edge"), color="C3", lw=1.2, ls="--", label="edge")
    ax.plot(*_col(rows, "gd_edge"), color="k", lw=1.0, ls="-.", label=r"$2/\eta$")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def draw_alignment(ax, rows, title: str = "") -> None:
    ax.plot(*_col(rows, "align_grad"), label="gradient")
    ax.plot(*_col(rows, "align_sam_grad"), label="step direction")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("step")
    ax.set_ylabel("|cos| with top eigenvector")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def draw_loss(ax, rows, title: str = "") -> None:
    ax.plot(*_col(rows, "loss"), label="train")
    if any(r.get("test_loss") is not None for r in rows):
        ax.plot(*_col(rows, "test_loss"), marker="o", ms=3, label="test")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def save(fig, path_stem: Path) -> list[Path]:
    paths = [Path(f"{path_stem}.png"), Path(f"{path_stem}.pdf")]
    for p in paths:
        fig.savefig(p, dpi=130, bbox_inches="tight")
    return paths


def plot_run(run_dir) -> list[Path]:
    """``sharpness``, ``alignment`` and ``loss`` figures (PNG and PDF) inside the run folder."""
    plt = _pyplot()
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    if not rows:
        return []
    title = _label(read_json(run_dir / CONFIG)) if (run_dir / CONFIG).exists() else run_dir.name
    written = []
    for name, draw in (("sharpness", draw_sharpness), ("alignment", draw_alignment), ("loss", draw_loss)):
        fig, ax = plt.subplots(figsize=(5, 3.4))
        draw(ax, rows, title)
        written += save(fig, run_dir / name)
        plt.close(fig)
    return written


def plot_comparison(run_dirs: Sequence, out_stem) -> list[Path]:
    """One row of sharpness panels, one per run, side by side (the demo's figure)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(run_dirs), figsize=(5 * len(run_dirs), 3.6), squeeze=False)
    for ax, run_dir in zip(axes[0], run_dirs):
        run_dir = Path(run_dir)
        draw_sharpness(ax, read_metrics(run_dir), _label(read_json(run_dir / CONFIG)))
    fig.tight_layout()
    written = save(fig, out_stem)
    plt.close(fig)
    return written


def plot_grid(panels, draw, out_stem, *, title: str = "") -> list[Path]:
    """A grid of panels, ``panels[i][j]`` = ``(rows, panel title)`` or ``None`` (an empty cell)."""
    plt = _pyplot()
    n_rows, n_cols = len(panels), max(len(r) for r in panels)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.2 * n_cols, 3.0 * n_rows), squeeze=False)
    for i, line in enumerate(panels):
        for j in range(n_cols):
            cell = line[j] if j < len(line) else None
            if cell is None or not cell[0]:
                axes[i][j].axis("off")
                if cell is not None:
                    axes[i][j].set_title(f"{cell[1]}\n(no measurements)", fontsize=9)
                continue
            draw(axes[i][j], *cell)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    written = save(fig, out_stem)
    plt.close(fig)
    return written
