"""SLQ against dense truth: Gauss-quadrature moments, stochastic moments and the CDF of eigh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import curvature, spectrum


def matrix_with_spectrum(eigs, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    return (q * eigs) @ q.T


def bulk_and_outlier(n=300):
    rng = np.random.default_rng(1)
    eigs = np.concatenate([rng.uniform(0.0, 1.0, n - 1), [6.0]])  # a bulk in [0, 1] and one outlier
    return eigs, jnp.asarray(matrix_with_spectrum(eigs))


M, PROBES = 30, 30


@pytest.fixture(scope="module")
def bulk_slq():
    """SLQ of the bulk-and-outlier matrix, computed once (float64): eigs, a, nodes, weights."""
    with jax.enable_x64(True):
        eigs, a = bulk_and_outlier()
        nodes, weights = spectrum.slq(lambda v: a @ v, a.shape[0], jax.random.PRNGKey(0), num_probes=PROBES,
                                      num_matvecs=M, dtype=jnp.float64)
        return eigs, np.asarray(a), np.asarray(nodes), np.asarray(weights)


def test_each_probe_is_a_gauss_quadrature(bulk_slq, x64):
    eigs, a, nodes, weights = bulk_slq
    # the probes, regenerated as slq draws them
    keys = jax.random.split(jax.random.PRNGKey(0), PROBES)[:3]
    for i, k in enumerate(keys):
        v = np.array(jax.random.normal(k, (a.shape[0],), jnp.float64))
        v /= np.linalg.norm(v)
        np.testing.assert_allclose(weights[i].sum(), 1.0, rtol=1e-12)
        av = v
        for p in range(2 * M):  # exact up to p = 2m - 1
            np.testing.assert_allclose(np.sum(weights[i] * nodes[i] ** p), v @ av, rtol=1e-7)
            av = a @ av


def test_average_matches_the_dense_spectrum(bulk_slq):
    eigs, _, nodes, weights = bulk_slq
    # moments: (1/n) tr A^p, up to the probe noise. For a normalised Gaussian probe v^T B v has
    # variance 2 var(eig(B)) / (n + 2); allow 4 standard errors of the mean over the probes.
    n, probes = len(eigs), nodes.shape[0]
    for p in (1, 2, 3):
        est = np.mean(np.sum(weights * nodes**p, axis=1))
        stderr = np.sqrt(2 * np.var(eigs**p) / (n + 2) / probes)
        assert abs(est - np.mean(eigs**p)) < 4 * stderr, (p, est, np.mean(eigs**p), stderr)
    # CDF: Kolmogorov distance to the dense eigenvalues' empirical CDF
    xs = np.linspace(-0.1, 6.1, 400)
    slq_cdf = np.array([np.mean(np.sum(weights * (nodes <= x), axis=1)) for x in xs])
    true_cdf = np.array([np.mean(eigs <= x) for x in xs])
    assert np.max(np.abs(slq_cdf - true_cdf)) < 0.08
    # the outlier is a node (a converged Ritz value) on every probe
    np.testing.assert_allclose(nodes.max(axis=1), 6.0, rtol=1e-8)


def test_density_integrates_to_one_and_shows_the_outlier(bulk_slq):
    eigs, _, nodes, weights = bulk_slq
    s = spectrum.to_spectrum(0, nodes, weights, edge=6.0)
    assert abs(np.trapezoid(s.density, s.grid) - 1.0) < 1e-3
    near = np.abs(s.grid - 6.0) < 0.1
    gap = (s.grid > 2.0) & (s.grid < 5.0)
    assert s.density[near].max() > 100 * s.density[gap].max()  # a bump at the outlier, nothing between
    assert abs(s.lambda_max - 6.0) < 1e-8


def test_slq_of_a_model_hessian_matches_dense_eigh(x64):
    """On a tiny tanh network's loss, SLQ's moments equal those of eigh(jax.hessian)."""
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(20, 3))), jnp.asarray(rng.normal(size=(20,)))
    params = {"w1": jnp.asarray(rng.normal(size=(3, 3))), "w2": jnp.asarray(rng.normal(size=(3,)))}
    loss = lambda p: jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2)  # noqa: E731
    eigs = np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(loss, params)))
    matvec, n = curvature.flat_hvp(loss, params)
    nodes, weights = spectrum.slq(matvec, n, jax.random.PRNGKey(1), num_probes=1, num_matvecs=n, dtype=jnp.float64)
    # with m = n the quadrature nodes are the eigenvalues themselves (weights probe-dependent)
    np.testing.assert_allclose(np.sort(np.asarray(nodes[0])), eigs, atol=1e-8)
