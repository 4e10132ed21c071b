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
           "boundaries", "theory_optimizers", "check", "weight_decay_check"]

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
    return tuple(n for n, e in optimizers.BUILTIN.items() if e.edge is not None and e.preconditioner is None)


def _hparams(name, rho, beta) -> dict:
    """The grid's ``rho`` and ``beta`` as the optimizer's own hyperparameters (those it has)."""
    pairs = ((optimizers.RHO.name, rho), (optimizers.MOMENTUM.name, beta))
    return {k: v for k, v in pairs if k in optimizers.get(name).hyper_names}


def _run(name, eta, rho, beta, lam, grad_norm, num_steps, wd=None):
    """Growth of ``w_0`` for one optimizer on the two-dimensional quadratic (traceable); ``wd``: coupled
    weight decay on ``w_0`` alone (the drift direction ``w_1`` undecayed, so ``||g||`` stays held)."""
    mu = DRIFT * (1.0 - beta) / (eta * num_steps)
    h = jnp.stack([lam, mu])  # (2,) diagonal Hessian
    w = jnp.stack([X0 * grad_norm / lam, grad_norm / mu])  # (2,)
    if wd is None:
        opt = optimizers.build(name, eta, **_hparams(name, rho, beta))
    else:  # decay needs w_0 and w_1 as leaves of their own: a mask is per leaf
        opt = optimizers.build(name, eta, decay_mask=lambda p: {"a": True, "b": False}, weight_decay=wd,
                               **_hparams(name, rho, beta))
        w = {"a": w[0], "b": w[1]}
        h = {"a": lam, "b": mu}

    def loss_fn(w):
        return 0.5 * sum(jnp.sum(c * x**2) for c, x in zip(jax.tree.leaves(h), jax.tree.leaves(w)))

    grad_fn = jax.value_and_grad(loss_fn)
    first = (lambda w: w[0]) if wd is None else (lambda w: w["a"])

    def body(carry, _):
        w, state = carry
        w, state, _ = opt.update(w, state, grad_fn)
        return (w, state), jnp.abs(first(w))

    _, path = jax.lax.scan(body, (w, opt.init(w)), None, length=num_steps)  # path: (T,)
    return jnp.max(path[num_steps // 2:]) / jnp.abs(first(w))


def _edge(name, eta, rho, beta, grad_norm, wd=None):
    """The predicted threshold on the loss's curvature ``lam``: the edge, less ``wd`` under decay (the
    edge is then on ``H + wd D``, and ``D`` decays the test direction)."""
    if wd is None:
        return optimizers.get(name).edge(eta, grad_norm, **_hparams(name, rho, beta)) + 0.0 * grad_norm
    return optimizers.get(name).edge(eta, grad_norm, weight_decay=wd, **_hparams(name, rho, beta)) - wd


def _bisect(stable_at, lo, hi, iters: int):
    """The factor in ``[lo, hi]`` where ``stable_at(factor)`` turns False, by ``iters`` halvings (traceable)."""

    def halve(_, bracket):
        a, c = bracket
        m = 0.5 * (a + c)
        stable = stable_at(m)
        return jnp.where(stable, m, a), jnp.where(stable, c, m)

    a, c = jax.lax.fori_loop(0, iters, halve, (lo, hi))
    return 0.5 * (a + c)


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
        return _bisect(lambda m: _run(name, e, r, b, m * edge, g, num_steps) <= 1.0, lo, hi, iters) * edge

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


# --- Weight decay: the coupled edges on the decayed operator ----------------------------------------
#
# The same two-dimensional quadratic as parameters {"a": w_0, "b": w_1} with the decay mask on "a"
# alone (D = diag(1, 0)): the test direction is an eigenvector of H + wd D with eigenvalue lam + wd,
# and the drift direction, undecayed, still holds ||g||. The predicted threshold on the loss's
# curvature lam is the optimizer's edge with decay (on H + wd D) less wd.

DECAY_FRACTIONS = (0.1, 0.5)  # eta * wd at the checked points: the edge on lam moves by 5% and 25% for GD


@functools.lru_cache(maxsize=None)
def _decay_program(name: str, num_steps: int, iters: int):
    def one(e, r, b, wd, g):
        edge = _edge(name, e, r, b, g, wd)
        below = _run(name, e, r, b, BELOW * edge, g, num_steps, wd)
        above = _run(name, e, r, b, ABOVE * edge, g, num_steps, wd)
        lo, hi = jnp.asarray(0.5, e.dtype), jnp.asarray(1.5, e.dtype)
        factor = _bisect(lambda m: _run(name, e, r, b, m * edge, g, num_steps, wd) <= 1.0, lo, hi, iters)
        return edge, factor * edge, below, above

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, None)))


def weight_decay_check(names=None, *, fractions=DECAY_FRACTIONS, grad_norm: float = 1.0, num_steps: int = 1000,
                       iters: int = 20, etas=(0.01, 0.1, 1.0), rhos=(0.05, 0.2), betas=(0.0, 0.9),
                       on_check=None) -> list[Check]:
    """Each coupled optimizer's edge with weight decay, on quadratics (see the comment above).

    Args:
      names: optimizers (default: every one with a closed-form edge and coupled decay).
      fractions: the values of ``eta * wd`` crossed with the grid.
      grad_norm, num_steps, iters: as in :func:`check` and :func:`find_thresholds`.
      etas, rhos, betas: the grid (each optimizer uses the axes it has).
      on_check: called with each :class:`Check` when done.

    Returns:
      One :class:`Check` per optimizer (named ``<name>+wd``): its boundary's ``predicted`` and
      ``simulated`` are thresholds on the loss's curvature ``lam`` (the edge on ``H + wd D`` less ``wd``).
    """
    coupled = [n for n in theory_optimizers() if optimizers.get(n).decay == "coupled"]
    names = list(names) if names else coupled
    bad = [n for n in names if n not in coupled]
    if bad:
        raise ConfigError(f"no coupled weight decay edge to check for {', '.join(bad)}; choose from {', '.join(coupled)}")
    out = []
    for name in names:
        grid = default_grid(name, etas=etas, rhos=rhos, betas=betas)
        reps = len(fractions)
        eta, rho, beta = (np.repeat(a, reps) for a in grid)
        wd = np.tile(np.asarray(fractions, float), len(grid.eta)) / eta
        with jax.enable_x64(True):
            pred, sim, below, above = (np.asarray(x) for x in _decay_program(name, num_steps, iters)(
                *_f64(eta, rho, beta, wd, grad_norm)))
        worst = float(np.max(np.abs(sim / pred - 1)))
        ok = bool(below.max() <= 1 and above.min() >= 1e3 and worst < TOLERANCE)
        b = Boundary(f"{name}+wd", Grid(eta, rho, beta), grad_norm, pred, sim)
        out.append(Check(f"{name}+wd", len(eta), float(below.max()), float(above.min()), worst, ok, b))
        if on_check is not None:
            on_check(out[-1])
    return out


# --- Adaptive optimizers: a frozen preconditioner -------------------------------------------------
#
# RMSProp, Adam and SAM over Adam, each written out as its recursion with a *frozen* diagonal
# preconditioner P (the model behind their edges in samedge.edges), on a three-dimensional
# quadratic: a 2 x 2 test block B = c R(theta) diag(1, kappa) R(theta)^T with P = diag(p0, p1)
# there (theta = 0: B and P commute; theta != 0: they do not), and a drift direction (P = 1) with a
# tiny curvature and a large offset that holds ||g|| near G, as above. The threshold is the
# largest scale c whose growth stays <= 1, bisected, compared with the c the formula predicts:
# lambda_max(P^-1 B) at the edge of edges.rmsprop_edge / adam_edge / sam_adam_pre_edge, and for SAM's
# Euclidean ascent over Adam (no closed form in lambda(P^-1 B)), the c at which the linearised step's
# radius |1 - eta (1 - beta1)/(1 + beta1) mu_max(P^-1 (B + rho B^2/G))| reaches 1.

ADAPTIVE = ("rmsprop", "adam", "sam_adam_pre", "sam_adam")
P_TEST = (4.0, 0.25)  # the preconditioner on the test block
KAPPA = 0.3  # the second eigenvalue of the block, relative to the first
X0_ADAPTIVE = 1e-30  # the test block's amplitude, relative to the held gradient norm (float64)
DRIFT_ADAPTIVE = 1e-9  # the held gradient norm's relative drift over a run (the SAM edges depend on it)


class AdaptiveGrid(NamedTuple):
    eta: np.ndarray
    rho: np.ndarray
    beta1: np.ndarray
    theta: np.ndarray  # rotation of the test block against P


def adaptive_grid(name: str, *, etas=(0.01, 0.1), rhos=(0.05, 0.5), beta1s=(0.0, 0.5, 0.9),
                  thetas=(0.0, 0.6)) -> AdaptiveGrid:
    """The adaptive optimizer's settings crossed (RMSProp has no beta1, the plain ones no rho)."""
    uses_rho = name in ("sam_adam", "sam_adam_pre")
    uses_beta1 = name != "rmsprop"
    e, r, b, t = np.meshgrid(np.asarray(etas, float), np.asarray(rhos if uses_rho else (0.0,), float),
                             np.asarray(beta1s if uses_beta1 else (0.0,), float), np.asarray(thetas, float),
                             indexing="ij")
    return AdaptiveGrid(e.ravel(), r.ravel(), b.ravel(), t.ravel())


def _block(theta, xp=np):
    c, s = xp.cos(theta), xp.sin(theta)
    rot = xp.stack([xp.stack([c, -s]), xp.stack([s, c])])
    return rot @ xp.diag(xp.asarray([1.0, KAPPA])) @ rot.T


def _adaptive_run(name, eta, rho, beta1, theta, scale, grad_norm, num_steps, wd=0.0):
    """Growth of the test block under the frozen-P recursion of ``name`` (traceable).

    The test block is renormalised to ``X0_ADAPTIVE`` after every step and its log-amplitude
    accumulated: the recursion stays linear in it (it never moves ``||g||``) and nothing under- or
    overflows however long the run. The growth compares the largest amplitude of the last quarter of
    the run with that of the second quarter, so a transient at the start (Adam's bias correction,
    momentum's non-normal gain) does not count: it exceeds 1 exactly when the slowest mode grows.
    ``wd``: decoupled weight decay (AdamW's ``- eta wd w``) on the test block, not on the drift direction.
    """
    mu = DRIFT_ADAPTIVE / (eta * num_steps)  # the drift direction: P = 1 there
    h = jnp.zeros((3, 3)).at[:2, :2].set(scale * _block(theta, jnp)).at[2, 2].set(mu)
    p = jnp.asarray([P_TEST[0], P_TEST[1], 1.0])
    small = X0_ADAPTIVE * grad_norm / scale
    w0 = jnp.asarray([small, small, grad_norm / mu])
    pre = name == "sam_adam_pre"
    euclid = name == "sam_adam"
    test = jnp.asarray([1.0, 1.0, 0.0])

    def body(carry, t):
        w, m, log_amp = carry
        g = h @ w
        if pre:
            d = g / p / jnp.sqrt(jnp.sum(g * g / p))
        elif euclid:
            d = g / jnp.linalg.norm(g)
        else:
            d = jnp.zeros_like(g)
        ga = h @ (w + rho * d)
        m = beta1 * m + (1 - beta1) * ga
        m_hat = m / (1 - beta1 ** (t + 1.0)) if name != "rmsprop" else ga
        w = w - eta * m_hat / p - eta * wd * test * w
        amp = jnp.sqrt(jnp.sum((test * w) ** 2) + jnp.sum((test * m) ** 2))
        factor = jnp.where(amp > 0, small / amp, 1.0)
        w = jnp.where(test > 0, w * factor, w)
        m = jnp.where(test > 0, m * factor, m)
        log_amp = log_amp - jnp.log(factor)
        return (w, m, log_amp), log_amp

    _, path = jax.lax.scan(body, (w0, jnp.zeros(3), jnp.zeros(())), jnp.arange(num_steps, dtype=w0.dtype))
    q = num_steps // 4
    return jnp.exp(jnp.max(path[3 * q:]) - jnp.max(path[q:2 * q]))


def adaptive_predicted_scale(name: str, grid: AdaptiveGrid, grad_norm: float = 1.0, wd=None) -> np.ndarray:
    """The block scale ``c`` at which the optimizer's edge is reached, from the formulas, ``(p,)``;
    ``wd``: ``(p,)`` decoupled weight decay on the test block (its ``D = I``), or ``None``."""
    from samedge import edges

    out = []
    wds = np.zeros(len(grid.eta)) if wd is None else np.asarray(wd, float)
    for eta, rho, beta1, theta, w in zip(*grid, wds):
        b = _block(theta)
        s = np.diag(np.asarray(P_TEST) ** -0.5)
        top = np.max(np.linalg.eigvalsh(s @ b @ s))  # lambda_max(P^-1 B) at c = 1
        kw = {"weight_decay": float(w)} if w else {}
        if name == "rmsprop":
            out.append(edges.rmsprop_edge(eta, **kw) / top)
        elif name == "adam":
            out.append(edges.adam_edge(eta, beta1, **kw) / top)
        elif name == "sam_adam_pre":  # G_u = ||P^-1/2 g|| = G: the drift direction, where P = 1, carries g
            out.append(float(edges.sam_adam_pre_edge(eta, rho, beta1, grad_norm, **kw)) / top)
        else:  # the radius of the linearised step reaches 1: bisect c on the linear algebra
            out.append(_radius_one(eta, rho, beta1, b, grad_norm, float(w)))
    return np.asarray(out)


def step_radius(eta, rho, beta1, block, grad_norm, wd: float = 0.0) -> float:
    """``|1 - eta (1 - beta1)/(1 + beta1) mu_max|`` with ``mu_max`` the top eigenvalue of
    ``P^-1 (B + rho B^2 / G)`` (SAM's Euclidean ascent over Adam, linearised with P and G frozen), plus
    ``wd (1 + beta1)/(1 - beta1)`` under decoupled decay (:meth:`samedge.optimizers.Entry.build`'s
    masked AdamW step, here with ``D = I`` on the block)."""
    a = np.diag(1 / np.asarray(P_TEST)) @ (block + rho * block @ block / grad_norm)
    mu = np.max(np.linalg.eigvals(a).real) + wd * (1 + beta1) / (1 - beta1)
    return abs(1 - eta * (1 - beta1) / (1 + beta1) * mu)


def _radius_one(eta, rho, beta1, block, grad_norm, wd: float = 0.0) -> float:
    lo, hi = 1e-6, 1e6
    for _ in range(200):
        mid = np.sqrt(lo * hi)
        if step_radius(eta, rho, beta1, mid * block, grad_norm, wd) < 1:
            lo = mid
        else:
            hi = mid
    return float(np.sqrt(lo * hi))


@functools.lru_cache(maxsize=None)
def _adaptive_bisect(name: str, num_steps: int, iters: int):
    def one(e, r, b, t, c0, wd, lo, hi, g):
        return _bisect(lambda m: _adaptive_run(name, e, r, b, t, m * c0, g, num_steps, wd) <= 1.0, lo, hi, iters) * c0

    return jax.jit(jax.vmap(one, in_axes=(0, 0, 0, 0, 0, 0, None, None, None)))


def adaptive_check(names=None, *, grad_norm: float = 1.0, num_steps: int = 2000, iters: int = 30,
                   on_check=None, decay_fraction: float = 0.0) -> list[Check]:
    """Each adaptive optimizer's threshold on the frozen-P quadratics against its formula.

    Args:
      names: a subset of :data:`ADAPTIVE` (default: all).
      grad_norm: the gradient norm the drift direction holds.
      num_steps: simulated steps per run; iters: halvings of the bisection bracket [0.9, 1.1].
      on_check: called with each :class:`Check` when done.
      decay_fraction: ``eta wd`` of decoupled weight decay (AdamW's form) on the test block at every
        point (0: none); the checks are then named ``<name>+wd``.

    Returns:
      One :class:`Check` per optimizer; its boundary's ``predicted`` and ``simulated`` are
      ``lambda_max(P^-1 B)`` at the edge; ``ok`` when every simulated threshold lies within 0.1% of
      the prediction and, for ``sam_adam``, the linearised step's radius at the simulated thresholds
      is within 1e-3 of 1 (that largest deviation is the check's ``growth_below``).
    """
    names = list(names) if names else list(ADAPTIVE)
    out = []
    for name in names:
        grid = adaptive_grid(name)
        wd = decay_fraction / np.asarray(grid.eta, float)
        predicted = adaptive_predicted_scale(name, grid, grad_norm, wd)
        with jax.enable_x64(True):
            simulated = np.asarray(_adaptive_bisect(name, num_steps, iters)(
                *_f64(*grid, predicted, wd, 0.9, 1.1, grad_norm)))
        worst = float(np.max(np.abs(simulated / predicted - 1)))
        radius = [step_radius(e, r, b, s * _block(t), grad_norm, w)
                  for e, r, b, t, s, w in zip(*grid, simulated, wd)]
        radius_err = float(np.max(np.abs(np.asarray(radius) - 1))) if name == "sam_adam" else 0.0
        ok = worst < 1e-3 and radius_err < 1e-3
        # in the units of the edges: lambda_max(P^-1 B) at the threshold
        top = np.asarray([np.max(np.linalg.eigvalsh(np.diag(np.asarray(P_TEST) ** -0.5) @ _block(t)
                                                     @ np.diag(np.asarray(P_TEST) ** -0.5))) for t in grid.theta])
        label = f"{name}+wd" if decay_fraction else name
        boundary = Boundary(label, Grid(grid.eta, grid.rho, grid.beta1), grad_norm, predicted * top, simulated * top)
        out.append(Check(label, len(grid.eta), radius_err, float("nan"), worst, ok, boundary))
        if on_check is not None:
            on_check(out[-1])
    return out
