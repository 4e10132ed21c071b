"""Adaptive tracking: every eigenvalue above a fraction of the edge, against dense eigh."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import curvature


def matrix_with_spectrum(eigs, seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(len(eigs), len(eigs))))
    return jnp.asarray((q * eigs) @ q.T), q


def spectrum_with_outliers(outliers, n=300, seed=0):
    bulk = np.random.default_rng(seed).uniform(-0.5, 2.0, n - len(outliers))
    return np.concatenate([bulk, outliers])


@pytest.fixture(scope="module")
def tracker():
    with jax.enable_x64(True):
        return jax.jit(lambda a, v0, thr: curvature.lanczos_above(lambda v: a @ v, v0, thr, k_max=8, max_iters=48))


def test_finds_every_outlier_above_the_fraction(tracker, x64):
    edge = 10.0
    eigs = spectrum_with_outliers([10.0, 8.7, 7.1, 6.2, 5.6])  # five above 0.5 x edge; bulk <= 2
    a, _ = matrix_with_spectrum(eigs)
    v0 = jax.random.normal(jax.random.PRNGKey(0), (len(eigs),), jnp.float64)
    out = tracker(a, v0, 0.5 * edge)
    truth = np.sort(np.linalg.eigvalsh(np.asarray(a)))[::-1]
    truth = truth[truth > 0.5 * edge]
    assert int(out.count) == len(truth) == 5
    np.testing.assert_allclose(np.asarray(out.values[:5]), truth, rtol=1e-4)
    assert np.all(np.isnan(np.asarray(out.values[5:])))
    assert np.all(np.asarray(out.residuals[:5]) <= 1e-3)
    # each vector is an eigenvector: ||A v - lam v|| small
    v = np.asarray(out.vectors[:5])
    r = np.linalg.norm(v @ np.asarray(a) - np.asarray(out.values[:5])[:, None] * v, axis=1)
    assert np.all(r <= 1e-3 * np.asarray(out.values[:5]))
    print(f"matvecs to find 5 outliers in n=300: {int(out.num_matvecs)}")
    assert 5 < int(out.num_matvecs) < 48


def test_grows_k_as_outliers_appear_and_warm_start_saves_matvecs(tracker, x64):
    edge = 10.0
    eigs1 = spectrum_with_outliers([10.0, 7.0])
    a1, q = matrix_with_spectrum(eigs1)
    cold = tracker(a1, jax.random.normal(jax.random.PRNGKey(1), (300,), jnp.float64), 0.5 * edge)
    assert int(cold.count) == 2
    # the same eigenvectors, three more outliers appear (q's columns for the bulk entries get new values)
    eigs2 = eigs1.copy()
    eigs2[:3] = [9.0, 8.0, 6.0]
    a2 = jnp.asarray((q * eigs2) @ q.T)
    noise = jax.random.normal(jax.random.PRNGKey(2), (300,), jnp.float64)
    warm = tracker(a2, cold.vectors.sum(0) + 0.1 * noise / jnp.linalg.norm(noise), 0.5 * edge)
    assert int(warm.count) == 5
    np.testing.assert_allclose(np.asarray(warm.values[:5]), [10.0, 9.0, 8.0, 7.0, 6.0], rtol=1e-4)
    # the same matrix again from the converged vectors: cheaper than from scratch
    again = tracker(a2, warm.vectors.sum(0) + 0.1 * noise / jnp.linalg.norm(noise), 0.5 * edge)
    scratch = tracker(a2, noise, 0.5 * edge)
    assert int(again.count) == int(scratch.count) == 5
    assert int(again.num_matvecs) <= int(scratch.num_matvecs)


def test_none_above_gives_an_empty_set(tracker, x64):
    eigs = spectrum_with_outliers([])
    a, _ = matrix_with_spectrum(eigs)
    out = tracker(a, jax.random.normal(jax.random.PRNGKey(0), (300,), jnp.float64), 5.0)
    assert int(out.count) == 0
    assert np.all(np.asarray(out.vectors) == 0)


def test_measurement_logs_every_outlier_above_the_fraction_of_the_edge(x64):
    """Through make_measure: a quadratic loss whose Hessian has a chosen spectrum, USAM's edge."""
    from samedge import edges, measure, optimizers

    lr, rho = 0.1, 0.1
    edge = float(edges.usam_edge(lr, rho))  # 10
    eigs = spectrum_with_outliers([0.95 * edge, 0.7 * edge, 0.45 * edge], n=200)
    a, _ = matrix_with_spectrum(eigs, seed=3)
    b = jnp.asarray(np.random.default_rng(4).normal(size=200))

    def loss_fn(p, batch):
        return 0.5 * p["w"] @ a @ p["w"] + b @ p["w"]

    settings = measure.MeasureSettings(track_fraction=0.4, track_max=6, max_hvps=48)
    m = measure.measurement(loss_fn, optimizers.build("usam", lr, rho=rho), settings)
    params = {"w": jnp.zeros(200)}
    state = m.init(params, jax.random.PRNGKey(0))
    assert state.vectors.shape == (1, 200) and state.vectors.dtype == jnp.float64  # the top-k probe's
    assert state.carries["outliers"].shape == (6, 200)  # the outliers probe's own
    row, state = m.measure(params, (), state, jax.random.PRNGKey(1))
    assert int(row["n_outliers"]) == 3
    np.testing.assert_allclose([float(row[f"outlier_{i}"]) for i in (1, 2, 3)], [9.5, 7.0, 4.5], rtol=1e-4)
    assert np.isnan(float(row["outlier_4"]))
    assert np.isclose(float(row["edge"]), edge)
    first = int(row["hvps_outliers"])
    assert first > 3
    # warm-started from the vectors it returned, the next measurement needs no more matvecs
    row2, _ = m.measure(params, (), state, jax.random.PRNGKey(2))
    assert int(row2["n_outliers"]) == 3 and int(row2["hvps_outliers"]) <= first
