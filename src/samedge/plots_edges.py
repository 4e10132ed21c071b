"""Figures for the other optimizers' edges: stability boundaries and Hessian spectral densities.

Every function takes computed results and writes PNG and PDF files; nothing here computes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from samedge.plots import _pyplot, log_axis, save, y_axis

WINDOW = 0.01  # a boundary panel's y axis spans at least +-1% around its values: bisection's float
#                rounding (~1e-7 of the edge) is not drawn as scatter

def _title(name: str) -> str:
    from samedge import optimizers

    import textwrap

    entry = _entry(name)
    decay = " (weight decay: lambda(H) = edge - wd)" if name.endswith("+wd") else ""
    return textwrap.fill(f"{entry.label}: {entry.edge_formula}{decay}", 48)


def _entry(name: str):
    """The registry entry of a boundary's name (``sam+wd``: a check with weight decay is SAM's)."""
    from samedge import optimizers

    return optimizers.get(name.removesuffix("+wd"))


def _axis(b):
    """The variable each boundary collapses onto, and its label (from the optimizer's settings)."""
    from samedge import optimizers

    entry = _entry(b.name)
    g = b.grid
    if optimizers.RHO.name in entry.hyper_names and (entry.edge_needs_grad_norm or entry.linear_step is not None):
        return g.rho / (g.eta * b.grad_norm), r"$\rho/(\eta\,\|g\|)$", True
    if optimizers.RHO.name in entry.hyper_names:
        return g.rho / g.eta, r"$\rho/\eta$", True
    if optimizers.MOMENTUM.name in entry.hyper_names:
        return g.beta, r"momentum $\beta$", False
    if optimizers.BETA1.name in entry.hyper_names:
        return g.beta, r"$\beta_1$ (Adam's first moment)", False
    return g.eta, r"$\eta$", True


def plot_boundaries(bounds: Sequence, out_stem) -> list[Path]:
    """One panel per optimizer: ``eta * edge`` predicted (lines) against bisected thresholds (markers).

    Each y axis is linear with plain tick labels and spans at least +-1% (:data:`WINDOW`) around its
    values, so that GD's constant eta * edge = 2 is a flat line, not float rounding blown up.

    ``bounds`` are :class:`samedge.theory.Boundary`; a panel's lines are split by momentum ``beta``.
    """
    plt = _pyplot()
    n = len(bounds)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, b in zip(axes.ravel(), bounds):
        x, xlabel, logx = _axis(b)
        eta = b.grid.eta
        betas = np.unique(b.grid.beta) if len(np.unique(b.grid.beta)) > 1 and _has_rho(b.name) else [None]
        for i, beta in enumerate(betas):
            sel = np.ones_like(x, bool) if beta is None else b.grid.beta == beta
            order = np.argsort(x[sel])
            lab = "" if beta is None else rf" $\beta$={beta:g}"
            ax.plot(x[sel][order], (eta * b.predicted)[sel][order], color=f"C{i}", lw=1.2,
                    label="predicted" + lab)
            ax.plot(x[sel], (eta * b.simulated)[sel], ls="none", marker="o", mfc="none", color=f"C{i}",
                    ms=6, label="simulated" + lab)
        if logx:
            ax.set_xscale("log")
            log_axis(ax.xaxis, float(np.min(x)), float(np.max(x)))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(r"$\eta\,\lambda$ at the edge (dimensionless)")
        y_axis(ax, np.concatenate([eta * b.predicted, eta * b.simulated]).tolist(), log=False, window=WINDOW)
        worst = np.max(np.abs(b.simulated / b.predicted - 1))
        ax.set_title(f"{_title(b.name)}\nmax |sim/pred - 1| = {worst:.1e}", fontsize=8)
        ax.legend(fontsize=6)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.tight_layout()
    written = save(fig, out_stem)
    plt.close(fig)
    return written


def _has_rho(name):
    from samedge import optimizers

    return optimizers.RHO.name in _entry(name).hyper_names


def plot_spectra(spectra: Sequence, out_stem, title: str = "") -> list[Path]:
    """Spectral densities (log scale), one curve per step, with the edge and lambda_max marked.

    ``spectra`` are :class:`samedge.spectrum.Spectrum` (grid, density, edge, lambda_max, step).
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, s in enumerate(spectra):
        ax.plot(s.grid, np.maximum(s.density, 1e-12), color=f"C{i}", lw=1.2, label=f"step {s.step}")
        ax.axvline(s.edge, color=f"C{i}", ls="--", lw=0.9)
        ax.plot([s.lambda_max], [1e-6], marker="v", color=f"C{i}", ms=7)
    ax.set_yscale("log")
    ax.set_ylim(1e-7, None)
    log_axis(ax.yaxis, 1e-7, max(float(np.max(s.density)) for s in spectra) if spectra else 1.0)
    ax.set_xlabel(r"Hessian eigenvalue $\lambda$")
    ax.set_ylabel("density (SLQ)")
    ax.set_title((title + "\n" if title else "") + r"dashed: the optimizer's edge; $\triangledown$: the largest node (the top Ritz value)",
                 fontsize=8)
    ax.legend(fontsize=7)
    written = save(fig, out_stem)
    plt.close(fig)
    return written


def save_spectra(spectra: Sequence, out, run_config: dict, title: str = "") -> list[Path]:
    """Write ``spectra.npz`` (grid, density, nodes, weights per step), ``spectra.json`` (the run's
    settings, each step's edge and lambda_max) and the figure ``spectrum`` (PNG, PDF) into ``out``."""
    import json

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "spectra.npz", **{f"{k}_{s.step}": getattr(s, k) for s in spectra
                                     for k in ("grid", "density", "nodes", "weights")})
    (out / "spectra.json").write_text(json.dumps({"run": run_config, "steps": [
        {"step": s.step, "edge": s.edge, "lambda_max": s.lambda_max} for s in spectra]}, indent=2))
    return plot_spectra(spectra, out / "spectrum", title=title)
