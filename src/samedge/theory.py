"""The edges checked where they are derived: each optimizer run on a two-dimensional quadratic.

The model is ``L(w) = (lam w_0**2 + mu w_1**2) / 2``. Direction 0 carries the eigenvalue ``lam``
under test; direction 1 has a tiny curvature ``mu`` and a large offset ``w_1 = G / mu``, so the
gradient norm stays near the target ``G`` for the whole run (``w_1`` shrinks by about
``eta mu T / (1 - beta) = DRIFT`` over ``T`` steps) while ``w_0`` starts tiny (``lam w_0 = 1e-6 G``)
and so barely moves ``||g||``. This holds ``||g||`` fixed, which is what the ``||g||``-dependent
edges (SAM, SAM with momentum) assume, and is harmless for the others.

The simulation runs the optimizer's own step from :mod:`samedge.steps` (so the momentum
conventions and ascent points are the ones training uses), with ``eta, rho, beta`` and ``lam`` as
traced arrays: one compiled program per optimizer covers a whole grid. The growth of a run is
``max |w_0|`` over the second half of the steps divided by ``|w_0|`` at the start: below the edge
it stays under 1 (the component decays), above it it explodes (linear steps) or saturates at the
amplitude where ``||g||`` has grown enough to move the edge (SAM-type steps, about ``1e5`` here).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from samedge import optimizers
from samedge.errors import ConfigError

__all__ = ["Grid", "Boundary", "Check", "growth", "predicted_edge", "find_thresholds", "default_grid",
           "boundaries", "theory_optimizers", "check"]

BELOW, ABOVE = 0.98, 1.02  # the factors of the predicted edge at which growth is checked
TOLERANCE = 1e-2  # largest |simulated / predicted - 1| of a bisected threshold that passes
X0 = 1e-6  # lam * w_0 / G at the start: small enough that ||g|| is G to 1e-12
DRIFT = 1e-3  # relative shrink of the held gradient norm over a run


class Grid(NamedTuple):
    """Hyperparameter points, each a flat ``(p,)`` float array."""

    eta: np.ndarray
    rho: np.ndarray
    beta: np.ndarray


class Boundary(NamedTuple):
    """Predicted edges against thresholds found by bisection on the simulated growth."""

    name: str
    grid: Grid
    grad_norm: float
    predicted: np.ndarray  # (p,) the closed-form edge at each point
    simulated: np.ndarray  # (p,) the largest lam whose growth stays <= 1, by bisection


def theory_optimizers() -> tuple[str, ...]:
    """The registry's optimizers with a closed-form edge (the ones checked here).

    >>> theory_optimizers()[:2]
    ('gd', 'sam')
    """
    return tuple(n for n, e in optimizers.BUILTIN.items() if e.edge is not None)


def _hparams(name, rho, beta) -> dict:
    """The grid's ``rho`` and ``beta`` as the optimizer's own hyperparameters (those it has)."""
    pairs = ((optimizers.RHO.name, rho), (optimizers.MOMENTUM.name, beta))
    return {k: v for k, v in pairs if k in optimizers.get(name).hyper_names}


def _run(name, eta, rho, beta, lam, grad_norm, num_steps):
    """Growth of ``w_0`` for one optimizer on the two-dimensional quadratic (traceable)."""
    mu = DRIFT * (1.0 - beta) / (eta * num_steps)
    h = jnp.stack([lam, mu])  # (2,) diagonal Hessian
    w = jnp.stack([X0 * grad_norm / lam, grad_norm / mu])  # (2,)
    opt = optimizers.build(name, eta, **_hparams(name, rho, beta))

    def loss_fn(w):
        return 0.5 * jnp.sum(h * w**2)

    grad_fn = jax.value_and_grad(loss_fn)

    def body(carry, _):
        w, state = carry
        w, state, _ = opt.update(w, state, grad_fn)
        return (w, state), jnp.abs(w[0])

    _, path = jax.lax.scan(body, (w, opt.init(w)), None, length=num_steps)  # path: (T,)
    return jnp.max(path[num_steps // 2:]) / jnp.abs(w[0])


def _edge(name, eta, rho, beta, grad_norm):
    return optimizers.get(name).edge(eta, grad_norm, **_hparams(name, rho, beta)) + 0.0 * grad_norm


def predicted_edge(name: str, grid: Grid, grad_norm: float = 1.0) -> np.ndarray:
    """The optimizer's own ``edge(||g||)`` (from :mod:`samedge.edges`) at each grid point, ``(p,)``."""
    with jax.enable_x64(True):
        f = jax.vmap(lambda e, r, b: _edge(name, e, r, b, jnp.asarray(grad_norm, jnp.float64)))
        return np.asarray(f(*(jnp.asarray(a, jnp.float64) for a in grid)))


@functools.lru_cache(maxsize=None)
def _growth_program(name: str, num_steps: int):
    # Cached so that every call for one optimizer and length reuses one compiled program.
    def one(e, r, b, factor, g):
        return _run(name, e, r, b, factor * _edge(name, e, r, b, g), g, num_steps)

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))


@functools.lru_cache(maxsize=None)
def _bisect_program(name: str, num_steps: int, iters: int):
    def one(e, r, b, lo, hi, g):
        edge = _edge(name, e, r, b, g)

        def halve(_, bracket):
            a, c = bracket
            m = 0.5 * (a + c)
            stable = _run(name, e, r, b, m * edge, g, num_steps) <= 1.0
            return jnp.where(stable, m, a), jnp.where(stable, c, m)

        a, c = jax.lax.fori_loop(0, iters, halve, (lo, hi))
        return 0.5 * (a + c) * edge

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, None, None, None)))


def _f64(*arrays):
    return [jnp.asarray(a, jnp.float64) for a in arrays]


def growth(name: str, grid: Grid, factor, *, grad_norm: float = 1.0, num_steps: int = 1000) -> np.ndarray:
    """Growth of the top component at ``lam = factor * edge`` for each grid point, ``(p,)`` (float64).

    ``factor`` is a number or a ``(p,)`` array (one factor per point).
    """
    factor = np.broadcast_to(np.asarray(factor, float), np.shape(grid.eta))
    with jax.enable_x64(True):
        out = _growth_program(name, num_steps)(*_f64(*grid, factor, grad_norm))
        return np.asarray(out)


def find_thresholds(name: str, grid: Grid, *, grad_norm: float = 1.0, num_steps: int = 1000,
                    lo: float = 0.5, hi: float = 1.5, iters: int = 24) -> np.ndarray:
    """Largest ``lam`` with growth <= 1, by bisection, as eigenvalues ``(p,)``.

    Bisection between ``lo`` and ``hi`` times the predicted edge, ``iters`` halvings (the bracket
    shrinks to ``(hi - lo) / 2**iters`` of the edge), every grid point at once in one compiled loop.
    """
    with jax.enable_x64(True):
        out = _bisect_program(name, num_steps, iters)(*_f64(*grid, lo, hi, grad_norm))
        return np.asarray(out)


def default_grid(name: str, *, etas=(0.01, 0.1, 1.0), rhos=(0.01, 0.05, 0.2, 1.0), betas=(0.0, 0.3, 0.6, 0.9)) -> Grid:
    """The hyperparameters each optimizer depends on, crossed; the others at 0."""
    own = optimizers.get(name).hyper_names
    uses_rho, uses_beta = optimizers.RHO.name in own, optimizers.MOMENTUM.name in own
    e, r, b = np.meshgrid(np.asarray(etas, float), np.asarray(rhos if uses_rho else (0.0,), float),
                          np.asarray(betas if uses_beta else (0.0,), float), indexing="ij")
    return Grid(e.ravel(), r.ravel(), b.ravel())


def boundaries(names=None, *, grad_norm: float = 1.0, num_steps: int = 1000, **grid_kw) -> list[Boundary]:
    """Predicted and simulated stability boundaries of each optimizer over its default grid."""
    out = []
    for name in names or theory_optimizers():
        grid = default_grid(name, **grid_kw)
        out.append(Boundary(name, grid, grad_norm, predicted_edge(name, grid, grad_norm),
                            find_thresholds(name, grid, grad_norm=grad_norm, num_steps=num_steps)))
    return out


class Check(NamedTuple):
    """One optimizer's verdict: growth just below and above its edge, and the bisected thresholds."""

    name: str
    points: int  # grid points
    growth_below: float  # largest growth at BELOW x the edge (stable: <= 1)
    growth_above: float  # smallest growth at ABOVE x the edge (unstable: >= 1e3)
    worst: float  # largest |simulated / predicted - 1| of the thresholds
    ok: bool
    boundary: Boundary


def check(names=None, *, grad_norm: float = 1.0, num_steps: int = 1000, on_check=None) -> list[Check]:
    """Check each optimizer's closed-form edge on quadratics (see the module docstring).

    Args:
      names: optimizers (default: every one with a closed-form edge).
      grad_norm: the gradient norm the quadratic holds.
      num_steps: simulated steps per run.
      on_check: called with each :class:`Check` as soon as it is done (progress).

    Returns:
      One :class:`Check` per optimizer; ``ok`` when the component decays at ``BELOW`` x the edge at
      every grid point, grows at least 1e3-fold at ``ABOVE`` x the edge, and every bisected
      threshold lies within ``TOLERANCE`` of the formula.
    """
    names = list(names) if names else list(theory_optimizers())
    bad = [n for n in names if n not in theory_optimizers()]
    if bad:
        raise ConfigError(f"unknown optimizer(s) {', '.join(bad)}; choose from {', '.join(theory_optimizers())}")
    if not grad_norm > 0 or num_steps < 10:
        raise ConfigError("--grad-norm must be > 0 and --steps >= 10")
    out = []
    for name in names:
        grid = default_grid(name)
        p = len(grid.eta)
        both = Grid(*(np.concatenate([a, a]) for a in grid))
        grown = growth(name, both, np.repeat([BELOW, ABOVE], p), grad_norm=grad_norm, num_steps=num_steps)
        b = Boundary(name, grid, grad_norm, predicted_edge(name, grid, grad_norm),
                     find_thresholds(name, grid, grad_norm=grad_norm, num_steps=num_steps))
        worst = float(np.max(np.abs(b.simulated / b.predicted - 1)))
        ok = bool(grown[:p].max() <= 1 and grown[p:].min() >= 1e3 and worst < TOLERANCE)
        out.append(Check(name, p, float(grown[:p].max()), float(grown[p:].min()), worst, ok, b))
        if on_check is not None:
            on_check(out[-1])
    return out
