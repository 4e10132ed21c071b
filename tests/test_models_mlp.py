"""The MLP's options against hand computations: the activation, and init_scale on the weights' spread."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge.models.mlp import MLP


@pytest.mark.parametrize("activation, fn", [("relu", jax.nn.relu), ("tanh", jnp.tanh), ("gelu", jax.nn.gelu)])
def test_the_activation_is_the_one_named(activation, fn):
    model = MLP(width=7, depth=3, num_outputs=2, activation=activation)
    x = jax.random.normal(jax.random.PRNGKey(0), (5, 4))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    h = x
    for i in range(2):
        h = fn(h @ params[f"Dense_{i}"]["kernel"] + params[f"Dense_{i}"]["bias"])
    out = h @ params["Dense_2"]["kernel"] + params["Dense_2"]["bias"]
    np.testing.assert_allclose(model.apply({"params": params}, x), out, rtol=1e-5, atol=1e-6)


def test_init_scale_multiplies_the_weights_spread():
    x = jnp.zeros((1, 300))
    base = MLP(width=300, depth=2, num_outputs=300).init(jax.random.PRNGKey(0), x)["params"]
    scaled = MLP(width=300, depth=2, num_outputs=300, init_scale=3.0).init(jax.random.PRNGKey(0), x)["params"]
    for layer in ("Dense_0", "Dense_1"):
        ratio = float(jnp.std(scaled[layer]["kernel"]) / jnp.std(base[layer]["kernel"]))
        assert ratio == pytest.approx(3.0, rel=1e-4)  # same draw, scaled (variance_scaling is linear in its scale's root)
        # Glorot normal at scale 1: std sqrt(2 / (fan_in + fan_out)) = sqrt(1/300)
        assert float(jnp.std(base[layer]["kernel"])) == pytest.approx((2 / 600) ** 0.5, rel=0.02)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(width=3, depth=2, activation="swish").init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))
