"""Batch sharpness against exact enumeration.

Six examples of a 2-layer tanh network (20 parameters, float64): every minibatch of size 2 or 3
drawn without replacement can be listed (15 and 20 subsets), so the expectations the estimator
targets under the training sampler (uniform over subsets) are computed exactly, each subset's
``q_B`` from a dense Hessian (``jax.hessian``), independently of the HVP the module uses.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from samedge import batch_sharpness as bs
from samedge import optimizers
from samedge.errors import ConfigError
from samedge.tasks import minibatch_fn

N = 6
ETA, RHO = 0.5, 0.05
N_BATCHES = 2000


def loss_fn(params, batch):
    x, y = batch
    return jnp.mean((jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"] - y) ** 2)


def problem():
    """Data and parameters (float64 under the x64 fixture). The first target is tripled so that
    batches with it have long gradients and a lower curvature: the mean of ratios and the ratio of
    means then differ by many standard errors, and the test tells them apart."""
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    x = jax.random.normal(k[0], (N, 3))
    y = jax.random.normal(k[1], (N,)) * jnp.array([3.0, 1, 1, 1, 1, 1])
    params = {"w1": jax.random.normal(k[2], (3, 4)), "b1": 0.1 * jax.random.normal(k[3], (4,)),
              "w2": jax.random.normal(k[4], (4,))}
    return (x, y), params


@jax.jit
def _gradient_and_hessian(params, batch):
    flat, unravel = ravel_pytree(params)
    f = lambda v: loss_fn(unravel(v), batch)  # noqa: E731
    return jax.grad(f)(flat), jax.hessian(f)(flat)


def dense_terms(params, batch):
    """``(q, ||g||^2, g^T H g, lambda_min, lambda_max)`` from the dense Hessian of the batch loss."""
    g, h = (np.asarray(a) for a in _gradient_and_hessian(params, batch))
    eig = np.linalg.eigvalsh(h)
    return g @ h @ g / (g @ g), g @ g, g @ h @ g, eig[0], eig[-1]


def sam_edge_np(eta, rho, g_norm):
    """The SAM-edge, written out: the positive root of rho lam^2 / |g| + lam - 2/eta = 0."""
    return g_norm / (2 * rho) * (np.sqrt(1 + 8 * rho / (eta * g_norm)) - 1)


def enumerate_exact(data, params, b):
    """Exact expectations over the uniform distribution on the b-subsets of the N examples."""
    x, y = data
    rows = np.array([dense_terms(params, (x[np.array(s)], y[np.array(s)]))[:3]
                     for s in itertools.combinations(range(N), b)])
    q, gg, ghg = rows.T
    edge = sam_edge_np(ETA, RHO, np.sqrt(gg))
    rom = ghg.mean() / gg.mean()
    return {"q": q, "edge": edge, "ratio": q / edge, "rom": rom,
            # the delta method's asymptotic sd of the ratio of means, per sqrt(batch)
            "rom_sd": np.sqrt(np.mean((ghg - rom * gg) ** 2)) / gg.mean()}


def sampler(data, b, seed=7):
    """Fresh minibatches of the training scheme (samedge.tasks.minibatch_fn) at random steps."""
    return bs.from_batch_fn(minibatch_fn(N, b, jax.random.PRNGKey(seed)), data)


def test_batch_curvature_against_the_dense_hessian(x64):
    data, params = problem()
    batch = (data[0][:3], data[1][:3])
    q, gg, ghg = (float(v) for v in jax.jit(bs.batch_curvature, static_argnums=0)(loss_fn, params, batch))
    q_ref, gg_ref, ghg_ref, lam_min, lam_max = dense_terms(params, batch)
    assert q == pytest.approx(q_ref, rel=1e-10)
    assert gg == pytest.approx(gg_ref, rel=1e-12) and ghg == pytest.approx(ghg_ref, rel=1e-10)
    assert lam_min < q < lam_max and lam_min < 0  # a Rayleigh quotient; this Hessian is indefinite
    # A zero gradient leaves no direction: q is NaN, not a number picked at random.
    flat = lambda p, batch: jnp.sum(p ** 2)  # noqa: E731
    q0, gg0, ghg0 = bs.batch_curvature(flat, jnp.zeros(3), None)
    assert np.isnan(float(q0)) and float(gg0) == 0 and float(ghg0) == 0


@pytest.mark.parametrize("b", [2, 3])
def test_estimate_converges_to_the_enumerated_expectations(x64, b):
    data, params = problem()
    exact = enumerate_exact(data, params, b)
    out = jax.jit(lambda p, k: bs.estimate(loss_fn, p, sampler(data, b), k, max_batches=N_BATCHES, rel_se=0.0,
                                           eta=ETA, rho=RHO))(params, jax.random.PRNGKey(1))
    out = {k: float(v) for k, v in out.items()}
    assert out["batch_sharpness_n"] == N_BATCHES
    root_n = np.sqrt(N_BATCHES)
    # The reported standard errors are the sampling ones (not vacuously large or small).
    assert out["batch_sharpness_se"] == pytest.approx(exact["q"].std() / root_n, rel=0.2)
    assert out["batch_sharpness_rom_se"] == pytest.approx(exact["rom_sd"] / root_n, rel=0.2)
    assert out["sam_batch_ratio_se"] == pytest.approx(exact["ratio"].std() / root_n, rel=0.2)
    # Each estimate within 4 of its standard errors of the exact expectation.
    assert abs(out["batch_sharpness"] - exact["q"].mean()) <= 4 * out["batch_sharpness_se"]
    assert abs(out["batch_sharpness_rom"] - exact["rom"]) <= 4 * out["batch_sharpness_rom_se"]
    assert abs(out["sam_batch_ratio"] - exact["ratio"].mean()) <= 4 * out["sam_batch_ratio_se"]
    assert abs(out["sam_batch_edge"] - exact["edge"].mean()) <= 4 * exact["edge"].std() / root_n
    # The two averages are different quantities here, by more than 8 standard errors: the
    # checks above would fail if one were reported for the other.
    assert abs(exact["q"].mean() - exact["rom"]) > 8 * max(out["batch_sharpness_se"], out["batch_sharpness_rom_se"])


def test_the_stopping_rule(x64):
    data, params = problem()
    sample = sampler(data, 3)
    # rel_se traced: one compiled program per (max_batches, min_batches).
    run = jax.jit(lambda p, k, rel, mx, mn: bs.estimate(loss_fn, p, sample, k, max_batches=mx, rel_se=rel,
                                                       min_batches=mn), static_argnums=(3, 4))
    key = jax.random.PRNGKey(3)
    out = run(params, key, 0.02, 500, 10)
    assert "sam_batch_edge" not in out  # no edge asked for, no edge columns
    n = int(out["batch_sharpness_n"])
    assert 10 < n < 500
    assert float(out["batch_sharpness_se"]) <= 0.02 * abs(float(out["batch_sharpness"]))
    # One batch fewer (the same first n - 1 batches: keys are folded from the index) had not got
    # there: max_batches binds.
    before = run(params, key, 0.0, n - 1, 10)
    assert int(before["batch_sharpness_n"]) == n - 1
    assert float(before["batch_sharpness_se"]) > 0.02 * abs(float(before["batch_sharpness"]))
    # min_batches binds when the target is loose.
    assert int(run(params, key, 10.0, 500, 10)["batch_sharpness_n"]) == 10


def test_chunks_traced_eta_and_the_optimizer_edge_agree(x64):
    data, params = problem()
    sample = sampler(data, 2)
    key = jax.random.PRNGKey(5)
    kwargs = dict(max_batches=12, rel_se=0.0)
    # eta and rho traced under jit, one batch per loop iteration.
    traced_fn = jax.jit(lambda e, r: bs.estimate(loss_fn, params, sample, key, eta=e, rho=r, **kwargs))
    traced = traced_fn(ETA, RHO)
    # SAM's own edge from the optimizer registry (as measure.py would pass it), four batches per
    # iteration: the same batches (keys folded from the batch index), the same numbers.
    sam = optimizers.build("sam", ETA, rho=RHO)
    via_edge = bs.estimate(loss_fn, params, sample, key, edge_fn=lambda g: sam.edge(g, None), chunk=4, **kwargs)
    assert set(via_edge) == set(traced)
    for name in traced:
        assert float(via_edge[name]) == pytest.approx(float(traced[name]), rel=1e-10, abs=1e-12), name
    # rho = 0 is SGD: the edge is 2/eta for every batch and the ratio is eta * batch_sharpness / 2.
    sgd = traced_fn(ETA, 0.0)
    assert float(sgd["batch_sharpness"]) == pytest.approx(float(traced["batch_sharpness"]), rel=1e-12)
    assert float(sgd["sam_batch_edge"]) == pytest.approx(2 / ETA, rel=1e-12)
    assert float(sgd["sam_batch_ratio"]) == pytest.approx(ETA * float(sgd["batch_sharpness"]) / 2, rel=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_batches=1), "max_batches must be an integer >= 2"),
    (dict(min_batches=20, max_batches=10), "min_batches 20 exceeds max_batches 10"),
    (dict(rel_se=-0.1), "rel_se must be >= 0"),
    (dict(chunk=0), "chunk must be an integer >= 1"),
    (dict(rho=0.1), "rho needs eta"),
    (dict(eta=0.1, edge_fn=lambda g: 1.0), "not both"),
])
def test_bad_arguments_are_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        bs.estimate(lambda p, b: jnp.sum(p ** 2), jnp.ones(2), lambda k: None, jax.random.PRNGKey(0), **kwargs)
