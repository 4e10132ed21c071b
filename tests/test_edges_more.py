"""The edges of momentum, Nesterov, USAM and SAM + momentum against independent truths.

Truths: the quadratic formula in its textbook (unstable) form, the reductions to GD/SAM, and the
spectral radius of the linear map that the *implemented* step (samedge.steps) applies to the
state along one eigenvector, built column by column and handed to ``numpy.linalg.eigvals``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from samedge import edges, steps

ETAS = [0.01, 0.1, 0.7]
BETAS = [0.0, 0.3, 0.9]
RHOS = [0.0, 0.02, 0.5]


def _build(name, eta, rho=0.0, beta=0.0):
    """The registry's optimizer with the (rho, beta) it has."""
    from samedge import optimizers

    own = optimizers.get(name).hyper_names
    return optimizers.build(name, eta, **{k: v for k, v in (("rho", rho), ("momentum", beta)) if k in own})


def textbook_root(a, c):
    """Positive root of ``a x**2 + x - c = 0`` by the usual formula (a > 0)."""
    return (-1.0 + np.sqrt(1.0 + 4.0 * a * c)) / (2.0 * a)


@pytest.mark.parametrize("eta", ETAS)
def test_usam_and_sam_momentum_stable_forms_equal_textbook_roots(eta):
    for rho in [0.02, 0.5]:
        assert np.isclose(edges.usam_edge(eta, rho), textbook_root(rho, 2.0 / eta), rtol=1e-12)
        for beta in BETAS:
            for g in [1e-3, 0.1, 10.0]:
                want = textbook_root(rho / g, 2.0 * (1.0 + beta) / eta)
                assert np.isclose(edges.sam_momentum_edge(eta, rho, beta, g), want, rtol=1e-10)
                # and the edge satisfies the defining equation
                lam = edges.sam_momentum_edge(eta, rho, beta, g)
                assert np.isclose(eta * lam * (1 + rho * lam / g), 2 * (1 + beta), rtol=1e-10)


@pytest.mark.parametrize("eta", ETAS)
def test_reductions(eta):
    for beta in BETAS:
        assert np.isclose(edges.sam_momentum_edge(eta, 0.0, beta, 0.3), edges.momentum_edge(eta, beta))
    for rho in RHOS:
        assert np.isclose(edges.sam_momentum_edge(eta, rho, 0.0, 0.3), edges.sam_edge(eta, rho, 0.3), rtol=1e-12)
    assert edges.momentum_edge(eta, 0.0) == edges.gd_edge(eta) == edges.nesterov_edge(eta, 0.0)
    assert np.isclose(edges.usam_edge(eta, 0.0), edges.gd_edge(eta))
    # zero gradient: the normalised ascent blows up the curvature penalty, the edge is 0 (not NaN)
    assert edges.sam_momentum_edge(eta, 0.1, 0.9, 0.0) == 0.0
    assert np.isclose(edges.sam_momentum_edge(eta, 0.0, 0.9, 0.0), edges.momentum_edge(eta, 0.9))


def test_edges_trace_under_jit():
    f = jax.jit(lambda e, r, b, g: (edges.usam_edge(e, r), edges.sam_momentum_edge(e, r, b, g)))
    u, s = f(jnp.float32(0.1), jnp.float32(0.1), jnp.float32(0.5), jnp.float32(1.0))
    assert np.isclose(u, 10.0, rtol=1e-6)
    assert np.isclose(s, edges.sam_momentum_edge(0.1, 0.1, 0.5, 1.0), rtol=1e-6)


def transition_radii(opt, lams):
    """Spectral radii of the step's linear map on (x, velocity) for ``L = lam x**2 / 2``, one per lam.

    The step is linear on a quadratic, so its Jacobian with respect to the flattened
    (parameters, optimizer state) is the transition matrix itself.
    """
    w0 = jnp.zeros((1,))
    flat0, unravel = ravel_pytree((w0, opt.init(w0)))

    @jax.jit
    @jax.vmap
    def matrix(lam):
        grad_fn = jax.value_and_grad(lambda w: 0.5 * lam * jnp.sum(w**2))
        step = lambda z: ravel_pytree(opt.update(*unravel(z), grad_fn)[:2])[0]  # noqa: E731
        return jax.jacfwd(step)(flat0)

    return np.max(np.abs(np.linalg.eigvals(np.asarray(matrix(jnp.asarray(lams))))), axis=-1)


@pytest.mark.parametrize("name", ["momentum", "nesterov", "usam"])
def test_implemented_step_is_linearly_stable_exactly_below_its_edge(name, x64):
    for eta, beta, rho in [(0.01, 0.9, 0.5), (0.1, 0.3, 0.02), (0.7, 0.0, 0.5), (0.7, 0.95, 0.02)]:
        if True:
            if True:
                opt = _build(name, eta, rho, beta)
                edge = float(opt.edge(jnp.asarray([1.0]), None))
                below, at, above = transition_radii(opt, edge * np.array([1 - 1e-6, 1.0, 1 + 1e-6]))
                assert below < 1.0 < above
                assert np.isclose(at, 1.0, atol=1e-9)


def test_new_steps_reduce_to_gd_and_sam(x64):
    """momentum/nesterov at beta=0 and usam at rho=0 are GD; sam_momentum at beta=0 is SAM."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    hmat = jnp.asarray(a @ a.T / 6)
    grad_fn = jax.value_and_grad(lambda w: 0.5 * w @ hmat @ w + jnp.sum(jnp.cos(w)))
    w = jnp.asarray(rng.normal(size=6))
    opts = [_build("gd", 0.1)] + [_build(n, 0.1, 0.0, 0.0) for n in ("momentum", "nesterov", "usam")]
    opts += [_build("sam", 0.1, 0.2), _build("sam_momentum", 0.1, 0.2, 0.0)]

    @jax.jit
    def run_all(w):  # one compiled program for all six, three steps each
        out = []
        for opt in opts:
            p, s = w, opt.init(w)
            for _ in range(3):
                p, s, _ = opt.update(p, s, grad_fn)
            out.append(p)
        return out

    gd, *same_as_gd, sam, sam_m = run_all(w)
    for p in same_as_gd:
        np.testing.assert_allclose(p, gd, rtol=1e-12)
    np.testing.assert_allclose(sam_m, sam, rtol=1e-12)
    assert not np.allclose(sam, gd)


def test_momentum_conventions_by_hand(x64):
    """Heavy ball, Nesterov (optax form), USAM and SAM + momentum against hand-written recursions."""
    grad = jax.grad(lambda w: jnp.sum(w**4) / 4 + jnp.sum(w**2))
    grad_fn = lambda w: (jnp.sum(w**4) / 4 + jnp.sum(w**2), grad(w))  # noqa: E731
    w0 = jnp.array([0.7, -1.2, 0.3])
    eta, beta, rho = 0.05, 0.8, 0.3

    kinds = ("momentum", "nesterov", "usam", "sam_momentum")

    @jax.jit
    def steps_of(w):
        out = []
        for kind in kinds:
            opt = _build(kind, eta, rho, beta)
            p, s = w, opt.init(w)
            for _ in range(6):
                p, s, _ = opt.update(p, s, grad_fn)
            out.append(p)
        return out

    def by_hand(kind, n=6):
        w, v = np.asarray(w0), np.zeros(3)
        grad = lambda w: w**3 + 2 * w  # noqa: E731  (the same loss, differentiated by hand)
        for _ in range(n):
            g = grad(w)
            if kind == "momentum":
                v = beta * v + g
                w = w - eta * v
            elif kind == "nesterov":
                v = g + beta * v
                w = w - eta * (g + beta * v)
            elif kind == "usam":
                w = w - eta * grad(w + rho * g)
            elif kind == "sam_momentum":
                v = beta * v + grad(w + rho * g / np.linalg.norm(g))
                w = w - eta * v
        return w

    for kind, got in zip(kinds, steps_of(w0)):
        np.testing.assert_allclose(got, by_hand(kind), rtol=1e-12)


def test_ascent_points_of_the_new_optimizers():
    w = {"a": jnp.array([1.0, 2.0])}
    g = {"a": jnp.array([3.0, 4.0])}
    np.testing.assert_allclose(_build("usam", 0.1, 0.5).ascent_point(w, g)["a"], [2.5, 4.0])
    np.testing.assert_allclose(_build("sam_momentum", 0.1, 0.5).ascent_point(w, g)["a"], [1.3, 2.4], rtol=1e-6)
    assert _build("momentum", 0.1).ascent_point is None and _build("nesterov", 0.1).ascent_point is None
