"""The MLP (models/mlp.py) against independent computations: the paper's network bit for bit at the
defaults, each activation against NumPy, init_scale against the Glorot closed form, bad input."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge.models.mlp import MLP

X = np.random.default_rng(0).normal(size=(5, 12)).astype(np.float32)


def kernels(params):
    p = params["params"]
    return [p[f"Dense_{i}"]["kernel"] for i in range(len(p))], [p[f"Dense_{i}"]["bias"] for i in range(len(p))]


class PaperMLP(nn.Module):
    """The MLP as it was before the options: ReLU, Glorot-normal kernels."""

    @nn.compact
    def __call__(self, x):
        init = nn.initializers.glorot_normal()
        for _ in range(2):
            x = nn.relu(nn.Dense(7, kernel_init=init)(x))
        return nn.Dense(3, kernel_init=init)(x)


def test_defaults_are_the_paper_mlp_bit_for_bit():
    key = jax.random.PRNGKey(3)
    ours = MLP(width=7, depth=3, num_outputs=3).init(key, X)
    theirs = PaperMLP().init(key, X)
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("scale", [0.25, 0.8, 3.0])
def test_init_scale_multiplies_every_initial_weight(scale):
    key = jax.random.PRNGKey(1)
    base_w, base_b = kernels(MLP(width=16, depth=4, num_outputs=10).init(key, X))
    w, b = kernels(MLP(width=16, depth=4, num_outputs=10, init_scale=scale).init(key, X))
    for k0, k in zip(base_w, w):  # same draws, standard deviation times `scale`
        np.testing.assert_allclose(np.asarray(k), scale * np.asarray(k0), rtol=1e-5, atol=1e-7)
    assert all(not np.any(np.asarray(bias)) for bias in b + base_b)  # biases stay zero


def test_init_scale_gives_the_glorot_std_times_scale():
    # Closed form: a truncated normal (at 2 std) rescaled to variance scale**2 * 2 / (fan_in + fan_out).
    scale, fan_in, fan_out = 1.7, 600, 400
    params = MLP(width=fan_out, depth=2, num_outputs=10, init_scale=scale).init(
        jax.random.PRNGKey(0), jnp.zeros((1, fan_in)))
    kernel = np.asarray(params["params"]["Dense_0"]["kernel"])
    expected = scale * math.sqrt(2.0 / (fan_in + fan_out))
    assert kernel.std() == pytest.approx(expected, rel=0.01)  # 240,000 draws: ~0.2% sampling error
    assert np.abs(kernel).max() <= 2 * expected / 0.87962566103423978 * (1 + 1e-6)  # truncated at 2 sigma


def gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))


NUMPY_ACTIVATIONS = {
    "relu": lambda z: np.maximum(z, 0),
    "tanh": np.tanh,
    "elu": lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0))),
    "gelu": gelu_tanh,  # flax's nn.gelu is the tanh approximation by default
}


@pytest.mark.parametrize("activation", sorted(NUMPY_ACTIVATIONS))
def test_forward_pass_matches_numpy(activation):
    model = MLP(width=9, depth=4, num_outputs=10, activation=activation, init_scale=1.3)
    params = model.init(jax.random.PRNGKey(2), X)
    # non-zero biases, so that a wrong bias placement would show
    params = jax.tree.map(lambda a: a + 0.1 if a.ndim == 1 else a, params)
    w, b = kernels(params)
    h = X.astype(np.float64)
    for k, c in zip(w[:-1], b[:-1]):
        h = NUMPY_ACTIVATIONS[activation](h @ np.asarray(k, np.float64) + np.asarray(c, np.float64))
    expected = h @ np.asarray(w[-1], np.float64) + np.asarray(b[-1], np.float64)
    np.testing.assert_allclose(np.asarray(model.apply(params, X)), expected, rtol=1e-5, atol=1e-5)


def test_unknown_activation_refused_by_the_model():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        MLP(width=4, depth=2, activation="swish").init(jax.random.PRNGKey(0), X)
