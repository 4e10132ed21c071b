"""GD and SAM steps against their formulas written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import optimizers, steps


def quadratic_loss(h, b):
    return lambda w: 0.5 * w["a"] @ h @ w["a"] - b @ w["a"] + 0.25 * jnp.sum(w["c"] ** 4)


@pytest.fixture
def problem():
    key = jax.random.PRNGKey(0)
    m = jax.random.normal(key, (5, 5))
    h = m @ m.T / 5
    b = jax.random.normal(jax.random.fold_in(key, 1), (5,))
    params = {"a": jax.random.normal(jax.random.fold_in(key, 2), (5,)), "c": jnp.arange(3.0)}
    return quadratic_loss(h, b), params


def grad_fn_of(loss):
    return jax.value_and_grad(loss)


def test_gd_step_is_w_minus_eta_g(problem):
    loss, w = problem
    opt = optimizers.build("gd", 0.1)
    new, _, value = opt.update(w, opt.init(w), grad_fn_of(loss))
    g = jax.grad(loss)(w)
    for k in w:
        np.testing.assert_allclose(new[k], w[k] - 0.1 * g[k], rtol=1e-6)
    assert value == pytest.approx(float(loss(w)))


def test_sam_step_matches_the_formula(problem):
    loss, w = problem
    eta, rho = 0.05, 0.3
    opt = optimizers.build("sam", eta, rho=rho)
    new, _, _ = opt.update(w, opt.init(w), grad_fn_of(loss))
    g = jax.grad(loss)(w)
    norm = np.sqrt(sum(float(jnp.sum(x**2)) for x in g.values()))
    ascent = {k: w[k] + rho * g[k] / norm for k in w}
    g_sam = jax.grad(loss)(ascent)
    for k in w:
        np.testing.assert_allclose(new[k], w[k] - eta * g_sam[k], rtol=1e-6, atol=1e-7)


def test_sam_with_rho_zero_equals_gd_exactly(problem):
    loss, w = problem
    gd, sam = optimizers.build("gd", 0.1), optimizers.build("sam", 0.1, rho=0.0)
    a, _, _ = jax.jit(lambda p: gd.update(p, gd.init(p), grad_fn_of(loss)))(w)
    b, _, _ = jax.jit(lambda p: sam.update(p, sam.init(p), grad_fn_of(loss)))(w)
    for k in w:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k]))


def test_zero_gradient_means_no_ascent_offset():
    w = {"x": jnp.zeros(3)}
    loss = lambda p: jnp.sum(p["x"] ** 2)  # gradient exactly zero at the minimum
    opt = optimizers.build("sam", 0.1, rho=0.5)
    new, _, _ = opt.update(w, opt.init(w), grad_fn_of(loss))
    assert np.array_equal(np.asarray(new["x"]), np.zeros(3))  # no NaN, no move
    assert np.array_equal(np.asarray(steps.sam_ascent_point(w, {"x": jnp.zeros(3)}, 0.5)["x"]), np.zeros(3))


def test_sam_factor_on_a_quadratic():
    # On L = lam/2 x^2 + (small curvature, large offset) y, SAM multiplies x by
    # 1 - eta lam (1 + rho lam / ||g||), with g the gradient at the current point.
    lam, mu, eta, rho = 4.0, 1e-3, 0.1, 0.2
    loss = lambda p: 0.5 * lam * p["w"][0] ** 2 + 0.5 * mu * (p["w"][1] - 100.0) ** 2
    w = {"w": jnp.array([1e-3, 0.0])}
    g = jax.grad(loss)(w)["w"]
    norm = float(jnp.linalg.norm(g))
    opt = optimizers.build("sam", eta, rho=rho)
    new, _, _ = opt.update(w, opt.init(w), grad_fn_of(loss))
    expected = 1 - eta * lam * (1 + rho * lam / norm)
    assert float(new["w"][0] / w["w"][0]) == pytest.approx(expected, rel=1e-4)


def test_edges_are_attached(problem):
    g = jnp.array([0.6, 0.8])  # |g| = 1
    assert float(optimizers.build("gd", 0.1).edge(g, None)) == pytest.approx(20.0)
    assert float(optimizers.build("sam", 0.1, rho=0.1).edge(g, None)) < 20.0
    assert float(optimizers.build("sam", 0.1, rho=0.0).edge(g, None)) == pytest.approx(20.0)
