"""The causal Transformer: causality, prefix consistency, the masked cross-entropy, shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge.models.transformer import Transformer, causal_mask, cross_entropy

SMALL = dict(vocab_size=128, max_len=12, d_model=16, n_layers=2, n_heads=2, key_size=8, mlp_ratio=4)


@pytest.fixture(scope="module")
def small():
    model = Transformer(**SMALL)
    initial = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 12), jnp.int32))
    # Scale the weights up from the 0.02 initialisation so every position visibly depends on its past.
    params = jax.tree.map(lambda w: 10.0 * w if w.ndim == 2 else w, initial)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 12), 1, 128)
    return model, params, tokens, initial


def test_causal_mask_is_lower_triangular():
    np.testing.assert_array_equal(causal_mask(4), np.tril(np.ones((4, 4), bool)))


def test_a_later_token_never_changes_an_earlier_logit(small):
    model, params, tokens, _ = small
    apply = jax.jit(model.apply)
    base = np.asarray(apply(params, tokens))  # (B, T, V)
    for t in (0, 3, 6, 11):
        changed = tokens.at[:, t].set((tokens[:, t] + 17) % 127 + 1)  # a different non-pad token
        out = np.asarray(apply(params, changed))
        np.testing.assert_array_equal(out[:, :t], base[:, :t])  # masked weights are exactly 0
        assert np.abs(out[:, t] - base[:, t]).max() > 1e-3  # the changed position itself moves


def test_logits_equal_those_of_the_prefix_alone(small):
    # An independent view of causality: position t sees only tokens[: t + 1], so running the
    # model on that prefix gives the same logits at t.
    model, params, tokens, _ = small
    apply = jax.jit(model.apply)
    full = np.asarray(apply(params, tokens))
    for t in (0, 6):
        prefix = np.asarray(apply(params, tokens[:, : t + 1]))  # (B, t + 1, V)
        np.testing.assert_allclose(prefix, full[:, : t + 1], rtol=1e-5, atol=1e-5)


def test_cross_entropy_averages_over_non_padding_targets():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32)
    targets = np.array([[3, 1, 0, 6, 2], [0, 0, 4, 5, 0]])
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    keep = [(b, t) for b in range(2) for t in range(5) if targets[b, t] != 0]
    expected = -np.mean([logp[b, t, targets[b, t]] for b, t in keep])
    mean, count = cross_entropy(jnp.asarray(logits), jnp.asarray(targets))
    assert int(count) == len(keep) == 6
    np.testing.assert_allclose(float(mean), expected, rtol=1e-6)
    mean, count = cross_entropy(jnp.asarray(logits), jnp.zeros((2, 5), jnp.int32))
    assert float(mean) == 0.0 and int(count) == 0


def test_initial_loss_is_near_uniform(small):
    # GPT-2 initialisation: logits start near 0, so the loss starts near log V.
    model, _, tokens, initial = small
    mean, _ = cross_entropy(jax.jit(model.apply)(initial, tokens), jnp.roll(tokens, -1, axis=1))
    assert abs(float(mean) - np.log(128)) < 0.05
