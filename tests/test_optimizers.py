"""The optimizer registry: each entry's facts against the closed forms and against each other."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samedge import edges, optimizers, steps
from samedge.errors import ConfigError


@pytest.mark.parametrize("name", ["gd", "sam", "momentum", "nesterov", "usam", "sam_momentum"])
def test_each_entry_builds_an_optimizer_with_its_closed_form_edge(name):
    entry = optimizers.get(name)
    hp = entry.defaults()
    opt = optimizers.build(name, 0.1, **hp)
    g = jnp.array([0.3, 0.4])  # |g| = 0.5
    closed = {
        "gd": lambda: edges.gd_edge(0.1),
        "sam": lambda: edges.sam_edge(0.1, hp["rho"], 0.5),
        "momentum": lambda: edges.momentum_edge(0.1, hp["momentum"]),
        "nesterov": lambda: edges.nesterov_edge(0.1, hp["momentum"]),
        "usam": lambda: edges.usam_edge(0.1, hp["rho"]),
        "sam_momentum": lambda: edges.sam_momentum_edge(0.1, hp["rho"], hp["momentum"], 0.5),
    }[name]()
    assert float(opt.edge(g, None)) == pytest.approx(float(closed), rel=1e-6)
    assert opt.name == name and opt.lr == 0.1
    assert (opt.ascent_point is None) == (entry.ascent is None)


def test_sam_at_rho_zero_is_gd_and_the_registry_says_so(x64):
    assert optimizers.get("sam").equivalent({"rho": 0.0}) == ("gd", {})
    assert optimizers.get("sam").equivalent({"rho": 0.1}) is None
    assert optimizers.get("sam_momentum").equivalent({"rho": 0.0, "momentum": 0.5}) == ("momentum", {"momentum": 0.5})
    assert not optimizers.get("sam").ascends({"rho": 0.0}) and optimizers.get("sam").ascends({"rho": 0.1})
    # and the steps agree exactly
    loss = jax.value_and_grad(lambda w: jnp.sum(jnp.cos(w)) + 0.5 * jnp.sum(w ** 2))
    w = jnp.linspace(-1.0, 1.0, 5)
    a, _, _ = optimizers.build("sam", 0.1, rho=0.0).update(w, optax.sgd(0.1).init(w), loss)
    b, _, _ = optimizers.build("gd", 0.1).update(w, optax.sgd(0.1).init(w), loss)
    assert np.array_equal(np.asarray(a), np.asarray(b))


def test_hyperparameters_are_checked_and_named():
    assert optimizers.resolve_hparams("usam") == {"rho": 0.5}  # USAM's own default, not SAM's
    assert optimizers.resolve_hparams("sam_momentum", {"rho": 0.2}) == {"rho": 0.2, "momentum": 0.9}
    with pytest.raises(ConfigError, match=r"gd has no rho \(its settings: lr, weight_decay\)"):
        optimizers.resolve_hparams("gd", {"rho": 0.1})
    with pytest.raises(ConfigError, match=r"--momentum must be in \[0, 1\)"):
        optimizers.resolve_hparams("momentum", {"momentum": 1.0})
    with pytest.raises(ConfigError, match="unknown optimizer 'adamw'"):
        optimizers.get("adamw")
    with pytest.raises(ConfigError, match="cannot import"):
        optimizers.get("no_such_module_xyz:entry")
    with pytest.raises(ConfigError, match="not a samedge.optimizers.Entry"):
        optimizers.get("samedge.edges:gd_edge")


def test_run_folder_tags_and_labels_come_from_the_entry():
    assert optimizers.run_name_tags("gd", {}) == ""
    assert optimizers.run_name_tags("sam", {"rho": 0.1}) == "-rho0.1"
    assert optimizers.run_name_tags("momentum", {"momentum": 0.9}) == "-m0.9"
    assert optimizers.describe("sam", 0.1, {"rho": 0.3}) == "sam lr=0.1 rho=0.3"


def test_sam_around_any_optax_base_has_no_made_up_edge():
    """A step shape around Adam: the SAM gradient fed to Adam, and no edge attached."""
    opt = steps.sam(optax.adam(1e-2), rho=0.05)
    assert opt.edge is None and opt.lr is None
    loss = lambda w: jnp.sum((w - 1.0) ** 2)  # noqa: E731
    w = jnp.zeros(3)
    new, state, value = opt.update(w, opt.init(w), jax.value_and_grad(loss))
    g = jax.grad(loss)(w)
    ascent = w + 0.05 * g / jnp.linalg.norm(g)
    ref_updates, _ = optax.adam(1e-2).update(jax.grad(loss)(ascent), optax.adam(1e-2).init(w), w)
    np.testing.assert_allclose(new, w + ref_updates, rtol=1e-6)
    assert float(value) == pytest.approx(3.0)


def test_a_base_that_is_not_an_optax_transformation_is_refused():
    with pytest.raises(TypeError, match="optax.GradientTransformation"):
        steps.sam(0.1, rho=0.1)


@pytest.mark.parametrize("name", ["rmsprop", "adam", "sam_adam", "sam_adam_pre"])
def test_the_preconditioner_read_from_a_live_state_is_the_one_the_next_update_applies(name, x64):
    """After a few real steps, P read from the optax state (and the gradient at the point) equals the
    division the next optax update performs: updates = -lr * (first moment) / P."""
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.normal(size=(5, 5)))
    loss = lambda w: 0.5 * jnp.sum((a @ w) ** 2) + jnp.sum(jnp.cos(w))  # noqa: E731
    opt = optimizers.build(name, 0.01)
    hp = optimizers.resolve_hparams(name)
    w = jnp.asarray(rng.normal(size=5))
    state = opt.init(w)
    for _ in range(4):
        w, state, _ = opt.update(w, state, jax.value_and_grad(loss))
    g = jax.grad(loss)(w)
    p = opt.preconditioner(state, g)
    base = optax.rmsprop(0.01, decay=hp["beta2"], eps=hp["eps"]) if name == "rmsprop" else \
        optax.adam(0.01, b1=hp["beta1"], b2=hp["beta2"], eps=hp["eps"])
    updates, _ = base.update(g, state, w)
    if name == "rmsprop":
        first = g
    else:  # the bias-corrected first moment of the next step
        s = state[0]
        first = (hp["beta1"] * s.mu + (1 - hp["beta1"]) * g) / (1 - hp["beta1"] ** (s.count + 1))
    np.testing.assert_allclose(-0.01 * first / p, updates, rtol=1e-10)


def test_adaptive_edges_are_the_closed_forms():
    g = jnp.array([0.3, 0.4])
    assert float(optimizers.build("rmsprop", 0.01).edge(g, None)) == pytest.approx(200.0)
    assert float(optimizers.build("adam", 0.01, beta1=0.9).edge(g, None)) == pytest.approx(3800.0)
    assert optimizers.build("sam_adam", 0.01).edge is None  # no closed form: step_radius instead
    assert optimizers.get("sam_adam").equivalent({"rho": 0.0, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8})[0] == "adam"
