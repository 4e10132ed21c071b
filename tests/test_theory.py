"""Each optimizer on the two-dimensional quadratic: bounded at 0.98 x its edge, growing at 1.02 x.

The truth is the closed-form edge of :mod:`samedge.edges`; the simulation runs the implemented
step of :mod:`samedge.steps` (float64), with the gradient norm held near its target where the
edge depends on it.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from samedge import edges, theory

GRID = dict(etas=(0.01, 0.3, 2.0), rhos=(0.01, 0.3), betas=(0.0, 0.5, 0.9))


@pytest.mark.parametrize("name", theory.theory_optimizers())
def test_bounded_below_and_growing_above_the_edge(name):
    grid = theory.default_grid(name, **GRID)
    p = len(grid.eta)
    both = theory.Grid(*(np.concatenate([a, a]) for a in grid))
    factor = np.repeat([0.98, 1.02], p)
    grown = theory.growth(name, both, factor, grad_norm=0.5, num_steps=500)
    assert np.all(grown[:p] <= 1.0), grown[:p]  # the top component decays below the edge
    assert np.all(grown[p:] >= 1e3), grown[p:]  # and explodes (or saturates far out) above it


def test_the_held_gradient_norm_is_the_one_the_edge_uses():
    """A SAM edge evaluated at the wrong ||g|| (2x) is visibly wrong: the check has teeth."""
    grid = theory.default_grid("sam", etas=(0.1,), rhos=(0.3,))
    right = edges.sam_edge(0.1, 0.3, 0.5)
    wrong = edges.sam_edge(0.1, 0.3, 1.0)
    # at lam = 1.02 x the right edge it grows; that lam is far below the wrong edge
    assert theory.growth("sam", grid, 1.02, grad_norm=0.5, num_steps=500)[0] >= 1e3
    assert 1.02 * right < 0.8 * wrong


@pytest.mark.parametrize("name", ["nesterov", "sam_momentum"])
def test_bisected_thresholds_match_predicted_edges(name):
    grid = theory.default_grid(name, etas=(0.05, 1.0), rhos=(0.05,), betas=(0.3, 0.9))
    simulated = theory.find_thresholds(name, grid, grad_norm=0.5, num_steps=500, iters=14)
    predicted = theory.predicted_edge(name, grid, grad_norm=0.5)
    np.testing.assert_allclose(simulated, predicted, rtol=5e-3)


def test_theory_command_prints_the_table_and_writes_the_figure(tmp_path, capsys):
    from samedge import cli

    rc = cli.main(["theory", "--out", str(tmp_path), "--optimizers", "usam", "--steps", "200"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "usam" in out and "FAILED" not in out
    assert (tmp_path / "boundaries.png").stat().st_size > 0 and (tmp_path / "boundaries.pdf").exists()
    assert cli.main(["theory", "--out", str(tmp_path), "--optimizers", "adamw"]) == 2


def test_adaptive_edges_hold_on_frozen_preconditioner_quadratics():
    """RMSProp, Adam and SAM over Adam (ascent in P's geometry) simulated with a frozen diagonal P on
    commuting and non-commuting Hessian blocks: every bisected threshold within 0.1% of its formula;
    SAM's Euclidean ascent over Adam (no closed form): the linearised step's radius is 1 there."""
    checks = theory.adaptive_check(num_steps=2000)
    assert [c.name for c in checks] == list(theory.ADAPTIVE)
    for c in checks:
        assert c.ok and c.worst < 1e-3, (c.name, c.worst)
        assert set(c.boundary.grid.eta) == {0.01, 0.1}
    sam_adam = checks[-1]
    assert sam_adam.growth_below < 1e-3  # |step_radius - 1| at the simulated thresholds
    grid = theory.adaptive_grid("sam_adam")
    assert set(grid.theta) == {0.0, 0.6}  # commuting and not


def test_adaptive_harness_finds_an_instability_it_is_told_about():
    """The bisection is not a tautology: a wrong (10% high) formula is caught."""
    grid = theory.adaptive_grid("adam", etas=(0.1,), beta1s=(0.5,), thetas=(0.0,))
    right = theory.adaptive_predicted_scale("adam", grid)
    with jax.enable_x64(True):
        growth_above = theory._adaptive_run("adam", 0.1, 0.0, 0.5, 0.0, 1.1 * right[0], 1.0, 2000)
        growth_below = theory._adaptive_run("adam", 0.1, 0.0, 0.5, 0.0, 0.99 * right[0], 1.0, 2000)
    assert float(growth_above) > 1e3 and float(growth_below) < 1


def test_weight_decay_edges_hold_on_quadratics():
    """Each coupled optimizer's edge with weight decay (on H + wd D, the test direction decayed, the
    drift direction not) against the threshold bisected on the simulated step, at eta * wd = 0.1 and 0.5."""
    checks = theory.weight_decay_check(num_steps=500, iters=14)
    assert {c.name for c in checks} == {f"{n}+wd" for n in ("gd", "sam", "momentum", "nesterov", "usam",
                                                          "sam_momentum")}
    for c in checks:
        assert c.ok, (c.name, c.growth_below, c.growth_above, c.worst)


def test_weight_decay_moves_the_threshold_the_harness_finds():
    """The harness sees the decay: GD at eta wd = 0.5 explodes at 1.02 x its bound 2/eta - wd, and also
    at the undecayed 2/eta, which lies 33% above that bound; without decay 2/eta is the threshold."""
    import jax.numpy as jnp

    eta, wd = 0.1, 5.0
    with jax.enable_x64(True):
        grown = [float(theory._run("gd", jnp.asarray(eta), 0.0, 0.0, jnp.asarray(lam), 1.0, 500, jnp.asarray(w)))
                 for w, lam in ((wd, 0.98 * (2 / eta - wd)), (wd, 1.02 * (2 / eta - wd)), (wd, 2 / eta),
                                (0.0, 0.98 * 2 / eta))]
    assert grown[0] <= 1 and grown[1] >= 1e3 and grown[2] >= 1e3 and grown[3] <= 1


def test_weight_decay_decoupled_adaptive_edges_hold_on_frozen_preconditioner_quadratics():
    """AdamW's form of decay (eta wd = 0.1 on the test block) in RMSProp, Adam, SAM over Adam with the
    P-ascent (closed forms) and SAM's Euclidean ascent over Adam (its step radius with the decay term):
    every simulated threshold within 1e-3 of the prediction, and 5% away from the undecayed one."""
    decayed = theory.adaptive_check(num_steps=2000, decay_fraction=0.1)
    assert [c.name for c in decayed] == [f"{n}+wd" for n in theory.ADAPTIVE]
    for c in decayed:
        assert c.ok, (c.name, c.worst, c.growth_below)
    plain = {c.name: c for c in theory.adaptive_check(["adam"], num_steps=2000)}
    shift = decayed[1].boundary.simulated / plain["adam"].boundary.simulated
    np.testing.assert_allclose(shift, 1 - 0.1 / 2, rtol=1e-6)  # (2 - eta wd)/2
