"""The GD and SAM edges against their defining equations and the paper's closed form."""

import jax.numpy as jnp
import numpy as np
import pytest

from samedge import edges


def test_gd_edge_is_where_the_gd_factor_reaches_minus_one():
    for eta in (1e-3, 0.1, 2.0):
        lam = edges.gd_edge(eta)
        assert 1 - eta * lam == pytest.approx(-1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sam_edge_solves_the_stability_equation(seed):
    rng = np.random.default_rng(seed)
    eta = 10 ** rng.uniform(-4, 0, 50)
    rho = 10 ** rng.uniform(-3, 1, 50)
    g = 10 ** rng.uniform(-6, 2, 50)
    lam = edges.sam_edge(eta, rho, g)
    # The SAM factor along the top eigenvector, 1 - eta lam (1 + rho lam / ||g||), is -1 at the edge.
    np.testing.assert_allclose(eta * lam * (1 + rho * lam / g), 2.0, rtol=1e-10)


def test_sam_edge_matches_paper_form_where_it_is_well_conditioned():
    eta, rho, g = np.meshgrid([0.01, 0.1, 0.3], [0.1, 0.3, 1.0], [0.01, 0.1, 1.0])
    np.testing.assert_allclose(edges.sam_edge(eta, rho, g), edges.sam_edge_paper_form(eta, rho, g), rtol=1e-10)


def test_sam_edge_limits():
    assert edges.sam_edge(0.1, 0.0, 1.0) == pytest.approx(20.0, rel=1e-15)
    assert edges.sam_edge(0.1, 0.0, 0.0) == pytest.approx(20.0, rel=1e-15)  # rho = 0 is GD, even at g = 0
    assert edges.sam_edge(0.1, 0.1, 0.0) == 0.0  # no division by zero; the edge closes
    assert edges.sam_edge(0.1, 0.1, 1e-30) < 1e-12
    assert edges.sam_edge(0.1, 0.1, 1e30) == pytest.approx(20.0, rel=1e-12)  # huge gradient: GD's edge
    # Where the paper's form cancels catastrophically, the stable form still solves the equation.
    lam = edges.sam_edge(1.0, 1e-12, 1.0)
    assert lam == pytest.approx(2.0, rel=1e-11)
    assert eval_factor(1.0, 1e-12, 1.0, lam) == pytest.approx(-1.0, abs=1e-12)


def eval_factor(eta, rho, g, lam):
    return 1 - eta * lam * (1 + rho * lam / g)


def test_sam_edge_below_gd_edge_and_monotone_in_rho():
    rhos = np.array([0.0, 0.01, 0.1, 1.0, 10.0])
    values = edges.sam_edge(0.1, rhos, 0.5)
    assert values[0] == pytest.approx(20.0)
    assert np.all(np.diff(values) < 0)


def test_sam_edge_accepts_jax_arrays_and_stays_finite():
    out = edges.sam_edge(jnp.float32(0.1), 0.1, jnp.array([0.0, 1e-3, 1.0], jnp.float32))
    assert isinstance(out, jnp.ndarray)
    assert bool(jnp.all(jnp.isfinite(out)))
    np.testing.assert_allclose(np.asarray(out), edges.sam_edge(0.1, 0.1, np.array([0.0, 1e-3, 1.0])), rtol=1e-6)
