"""The causal Transformer: causality, prefix consistency, the masked cross-entropy, shapes, the two
initialisations (samedge's GPT-2 style and the paper's code's) and the two GELUs."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge.models.transformer import MLP, TRUNCATED_STD, Transformer, causal_mask, cross_entropy

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


def test_truncated_std_constant():
    # std of a standard normal truncated to [-2, 2]: Var = 1 - 2 * 2 phi(2) / (2 Phi(2) - 1)
    phi = math.exp(-2.0) / math.sqrt(2 * math.pi)
    mass = math.erf(2 / math.sqrt(2))
    assert TRUNCATED_STD == pytest.approx(math.sqrt(1 - 4 * phi / mass), rel=1e-12)
    assert TRUNCATED_STD == pytest.approx(0.8796, abs=1e-4)


# Per kernel: (std, bound): the std each scheme's formula gives and, for a truncated normal, the bound
# |w| <= 2 sigma of its untruncated scale sigma (None for an untruncated normal). f is the fan-in.
def expected_init(scheme, name, f, n_layers):
    c = TRUNCATED_STD
    if scheme == "gpt2":
        std = 0.02 / math.sqrt(2 * n_layers) if name in ("out", "proj") else 0.02
        return std, None
    if name in ("tok_emb", "pos_emb"):  # truncated_normal(0.02), not rescaled for the truncation
        return 0.02 * c, 2 * 0.02
    if name == "head":  # Haiku's Linear default truncated_normal(1/sqrt(f)), not rescaled either
        return c / math.sqrt(f), 2 / math.sqrt(f)
    std = math.sqrt(2 / (n_layers * f))  # variance_scaling(2/L, fan_in, truncated_normal): rescaled by 1/c
    return std, 2 * std / c


MID = dict(vocab_size=128, max_len=64, d_model=64, n_layers=3, n_heads=4, key_size=16, mlp_ratio=4)
PAPER = dict(vocab_size=128, max_len=64, d_model=128, n_layers=6, n_heads=8, key_size=32, mlp_ratio=4)


@pytest.mark.parametrize("size", [MID, PAPER], ids=["mid", "paper"])
@pytest.mark.parametrize("scheme", ["gpt2", "authors"])
def test_initial_weights_follow_the_scheme(scheme, size):
    model = Transformer(**size, init_scheme=scheme)
    params = jax.jit(model.init)(jax.random.PRNGKey(7), jnp.zeros((1, size["max_len"]), jnp.int32))["params"]
    d, layers, p = size["d_model"], size["n_layers"], size["n_heads"] * size["key_size"]
    kernels = {"tok_emb": (params["tok_emb"], d), "pos_emb": (params["pos_emb"], d),
               "head": (params["head"]["kernel"], d)}
    for i in range(layers):
        block = params[f"block_{i}"]
        kernels |= {f"{i}/qkv": (block["attn"]["qkv"]["kernel"], d), f"{i}/out": (block["attn"]["out"]["kernel"], p),
                    f"{i}/fc": (block["mlp"]["fc"]["kernel"], d),
                    f"{i}/proj": (block["mlp"]["proj"]["kernel"], size["mlp_ratio"] * d)}
        for ln in ("ln1", "ln2"):
            np.testing.assert_array_equal(block[ln]["scale"], 1.0)
            np.testing.assert_array_equal(block[ln]["bias"], 0.0)
    assert len(kernels) == 3 + 4 * layers
    for key, (w, f) in kernels.items():
        name = key.rpartition("/")[2]
        assert w.shape[0] == f or name.endswith("emb")  # the kernel's input axis is its fan-in
        w = np.asarray(w, np.float64).ravel()
        std, bound = expected_init(scheme, name, f, layers)
        # Sampling error: the relative standard error of a sample std is sqrt((kurtosis - 1) / 4n),
        # at most 1/sqrt(2n) (the normal's; a truncated normal's kurtosis is lower). 4.5 of them
        # stay below 6%, so the test tells std from std * 0.8796 (truncation corrected or not).
        tol = 4.5 / math.sqrt(2 * w.size)
        assert tol < 0.06, key
        assert np.std(w) == pytest.approx(std, rel=tol), key
        assert abs(np.mean(w)) < 4.5 * std / math.sqrt(w.size), key
        if bound is None:  # untruncated: P(|z| > 2.5) = 1.2% leaves some of n >= 4096 beyond 2.5 std
            assert np.abs(w).max() > 2.5 * std, key
        else:  # truncated at 2 sigma: inside, and reaching within 5% of it (P(1.9 < |z| < 2) = 1.25%)
            assert 0.95 * bound < np.abs(w).max() <= bound * (1 + 1e-6), key
    biases = [b for path, b in jax.tree_util.tree_leaves_with_path(params)
              if path[-1].key == "bias" and "ln" not in str(path[-2].key)]
    assert len(biases) == 1 + 4 * layers and all(np.all(np.asarray(b) == 0) for b in biases)


def test_unknown_init_or_gelu_is_refused():
    with pytest.raises(ValueError, match="unknown init 'he'"):
        Transformer(**SMALL, init_scheme="he").init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))
    with pytest.raises(ValueError, match="unknown gelu 'fast'"):
        Transformer(**SMALL, gelu="fast").init(jax.random.PRNGKey(0), jnp.zeros((1, 4), jnp.int32))


def gelu_exact(x):
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


@pytest.mark.parametrize("gelu, form", [("exact", gelu_exact), ("tanh", gelu_tanh)])
def test_mlp_uses_the_chosen_gelu(gelu, form):
    mlp = MLP(mlp_ratio=4, n_layers=1, gelu=gelu)
    x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (3, 5, 8))
    params = mlp.init(jax.random.PRNGKey(1), x)
    params = jax.tree.map(lambda w: 20.0 * w if w.ndim == 2 else w, params)  # pre-activations of order 1
    fc, proj = params["params"]["fc"], params["params"]["proj"]
    h = np.asarray(x, np.float64) @ np.asarray(fc["kernel"], np.float64)  # (3, 5, 32), zero biases
    assert 0.5 < h.std() < 5  # where the two forms differ (by up to ~2e-4 per unit)
    expected = form(h) @ np.asarray(proj["kernel"], np.float64)
    other = (gelu_tanh if form is gelu_exact else gelu_exact)(h) @ np.asarray(proj["kernel"], np.float64)
    got = np.asarray(mlp.apply(params, x), np.float64)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(got - other).max() > 10 * np.abs(got - expected).max()  # and not the other form


def test_the_transformer_passes_its_gelu_to_every_block(small):
    model, params, tokens, _ = small
    assert (model.init_scheme, model.gelu) == ("gpt2", "exact")  # samedge's defaults
    exact = np.asarray(jax.jit(model.apply)(params, tokens))
    tanh = np.asarray(jax.jit(Transformer(**SMALL, gelu="tanh").apply)(params, tokens))
    assert np.abs(tanh - exact).max() > 1e-4
