"""The paper's character-level language model: a pre-LayerNorm causal Transformer::

    x = tok_emb[tokens] + pos_emb[:T]                               (B, T, d)
    repeat L times:
        x = x + Wo . attention(causal, H heads of key size k)(LN(x))  (B, T, d)
        x = x + W2 . gelu(W1 . LN(x))                                (B, T, d), hidden 4d
    logits = W_out . LN(x) + b_out                                   (B, T, V), read-out untied

Every dense layer has a bias; LayerNorms have a scale and a bias. Parameters (``P = H k``)::

    V d + T d                                  embeddings
    + L (2d + 3(d P + P) + (P d + d)           LN, q/k/v, attention output
         + 2d + (d m d + m d) + (m d d + d))   LN, MLP with m = mlp_ratio
    + 2d + d V + V                             final LN, read-out

Two initialisations (``init_scheme``); biases start at 0 and LayerNorms at scale 1, offset 0 in both.
Below, ``f`` is a kernel's fan-in (its input width: ``d`` for q/k/v and the MLP's first layer,
``P = H k`` for the attention output, ``m d`` for the MLP's second layer, ``d`` for the read-out)
and ``c = 0.87962566`` the standard deviation of a standard normal truncated at +-2.

- ``"gpt2"`` (samedge's default): normal (untruncated) of std 0.02 for the embeddings, q/k/v, the
  MLP's first layer and the read-out; std ``0.02 / sqrt(2L)`` for the two projections that write
  into the residual stream (attention output, MLP second layer), so the residual's variance does
  not grow with depth.
- ``"authors"`` (Long & Bartlett's code, google-deepmind/sam_edge ``transformer_model.py``, a
  modification of Haiku's transformer example), translated from Haiku to flax with the same
  distributions:

  * q/k/v, attention output and both MLP layers: ``hk.initializers.VarianceScaling(2 / L)``
    (fan-in, truncated normal), here ``nn.initializers.variance_scaling(2 / L, "fan_in",
    "truncated_normal")``. Both libraries divide the truncated draw by ``c``, so the std is
    exactly ``sqrt(2 / (L f))`` and the values lie within ``+-2 sqrt(2 / (L f)) / c``.
  * token and position embeddings: ``hk.initializers.TruncatedNormal(stddev=0.02)``, here
    ``nn.initializers.truncated_normal(0.02)``. Neither corrects for the truncation (0.02 is the
    scale of the untruncated normal), so the std is ``0.02 c = 0.01759`` and the values lie
    within +-0.04.
  * read-out: ``hk.Linear``'s default, ``TruncatedNormal(stddev=1 / sqrt(f))``, uncorrected too:
    std ``c / sqrt(f)``, values within ``+-2 / sqrt(f)`` (``variance_scaling(1.0, "fan_in",
    "truncated_normal")`` would be ``1 / sqrt(f)``, 14% wider; it is not what their code draws).

  Their q, k and v are three Linears of fan-in ``d``; here one fused kernel of fan-in ``d``, whose
  entries have the same distribution.

``gelu``: ``"exact"`` (samedge's default, the erf form) or ``"tanh"``, the approximation
``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`` that ``jax.nn.gelu`` uses by default and so the
authors' code (``jax.nn.gelu`` in their MLP).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

STD = 0.02  # GPT-2's initial weight scale (and the scale of the authors' truncated-normal embeddings)
TRUNCATED_STD = 0.87962566103423978  # std of a standard normal truncated to [-2, 2]
INITS = ("gpt2", "authors")
GELUS = ("exact", "tanh")


def _truncated_normal_fan_in(key, shape, dtype=jnp.float32):
    """Haiku's ``hk.Linear`` default: ``TruncatedNormal(stddev=1/sqrt(fan_in))``, the truncated draw
    not rescaled, so the std is ``TRUNCATED_STD / sqrt(fan_in)``. ``shape``: (fan_in, fan_out)."""
    return nn.initializers.truncated_normal(1.0 / math.sqrt(shape[0]))(key, shape, dtype)


def initializers(init: str, n_layers: int) -> dict:
    """The kernel initialisers of scheme ``init`` (see the module docstring): ``embed`` (token and
    position embeddings), ``hidden`` (q/k/v, MLP first layer), ``residual`` (attention output, MLP
    second layer) and ``head`` (the read-out)."""
    if init == "gpt2":
        residual = nn.initializers.normal(STD / math.sqrt(2 * n_layers))
        normal = nn.initializers.normal(STD)
        return {"embed": normal, "hidden": normal, "residual": residual, "head": normal}
    if init == "authors":
        scaled = nn.initializers.variance_scaling(2.0 / n_layers, "fan_in", "truncated_normal")
        return {"embed": nn.initializers.truncated_normal(STD), "hidden": scaled, "residual": scaled,
                "head": _truncated_normal_fan_in}
    raise ValueError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")


def gelu_fn(gelu: str):
    """``jax.nn.gelu`` in its exact (erf) or tanh-approximated form."""
    if gelu not in GELUS:
        raise ValueError(f"unknown gelu {gelu!r}; choose one of {', '.join(GELUS)}")
    return lambda x: nn.gelu(x, approximate=gelu == "tanh")


def causal_mask(t: int) -> jax.Array:
    """``(T, T)`` booleans, True where query ``i`` may attend to key ``j``, that is ``j <= i``."""
    return jnp.tril(jnp.ones((t, t), dtype=bool))


class CausalSelfAttention(nn.Module):
    n_heads: int
    key_size: int
    n_layers: int  # for the initial scales
    init_scheme: str = "gpt2"

    @nn.compact
    def __call__(self, x):  # (B, T, d) -> (B, T, d)
        b, t, d = x.shape
        h, k = self.n_heads, self.key_size
        inits = initializers(self.init_scheme, self.n_layers)
        qkv = nn.Dense(3 * h * k, kernel_init=inits["hidden"], name="qkv")(x)  # (B, T, 3Hk)
        q, key, v = jnp.split(qkv.reshape(b, t, 3, h, k), 3, axis=2)  # each (B, T, 1, H, k)
        q, key, v = (a[:, :, 0] for a in (q, key, v))  # each (B, T, H, k)
        scores = jnp.einsum("bqhk,bshk->bhqs", q, key) / math.sqrt(k)  # (B, H, T, T)
        # A masked score gets the dtype's lowest value, so its softmax weight is exactly 0 and a later
        # token can never reach an earlier position (each row keeps its diagonal, so none is empty).
        scores = jnp.where(causal_mask(t), scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)  # (B, H, T, T)
        out = jnp.einsum("bhqs,bshk->bqhk", weights, v).reshape(b, t, h * k)  # (B, T, Hk)
        return nn.Dense(d, kernel_init=inits["residual"], name="out")(out)  # (B, T, d)


class MLP(nn.Module):
    mlp_ratio: int
    n_layers: int
    init_scheme: str = "gpt2"
    gelu: str = "exact"

    @nn.compact
    def __call__(self, x):  # (B, T, d) -> (B, T, d)
        d = x.shape[-1]
        inits = initializers(self.init_scheme, self.n_layers)
        x = nn.Dense(self.mlp_ratio * d, kernel_init=inits["hidden"], name="fc")(x)  # (B, T, md)
        x = gelu_fn(self.gelu)(x)
        return nn.Dense(d, kernel_init=inits["residual"], name="proj")(x)  # (B, T, d)


class Block(nn.Module):
    n_heads: int
    key_size: int
    mlp_ratio: int
    n_layers: int
    init_scheme: str = "gpt2"
    gelu: str = "exact"

    @nn.compact
    def __call__(self, x):  # (B, T, d) -> (B, T, d)
        x = x + CausalSelfAttention(self.n_heads, self.key_size, self.n_layers, self.init_scheme, name="attn")(
            nn.LayerNorm(epsilon=1e-5, name="ln1")(x))
        return x + MLP(self.mlp_ratio, self.n_layers, self.init_scheme, self.gelu, name="mlp")(
            nn.LayerNorm(epsilon=1e-5, name="ln2")(x))


class Transformer(nn.Module):
    vocab_size: int = 128  # ASCII
    max_len: int = 64  # the paper's sequence length: rows of the positional embedding
    d_model: int = 128  # the paper's model size
    n_layers: int = 6  # the paper's depth
    n_heads: int = 8  # the paper's heads
    key_size: int = 32  # the paper's key (and value) size per head
    mlp_ratio: int = 4  # MLP hidden width = 4 d, as in the paper
    # "gpt2" or "authors" (the paper's code): the initial weights, see the module docstring; not
    # named ``init``, which would hide flax's Module.init
    init_scheme: str = "gpt2"
    gelu: str = "exact"  # "exact" (erf) or "tanh" (the approximation the paper's code uses)

    @nn.compact
    def __call__(self, tokens):  # (B, T) int -> (B, T, V) logits
        t = tokens.shape[1]
        inits = initializers(self.init_scheme, self.n_layers)
        emb = inits["embed"]
        tok = self.param("tok_emb", emb, (self.vocab_size, self.d_model))  # (V, d)
        pos = self.param("pos_emb", emb, (self.max_len, self.d_model))  # (T_max, d)
        x = tok[tokens] + pos[None, :t]  # (B, T, d)
        for i in range(self.n_layers):
            x = Block(self.n_heads, self.key_size, self.mlp_ratio, self.n_layers, self.init_scheme, self.gelu,
                      name=f"block_{i}")(x)
        x = nn.LayerNorm(epsilon=1e-5, name="ln_f")(x)  # (B, T, d)
        return nn.Dense(self.vocab_size, kernel_init=inits["head"], name="head")(x)  # (B, T, V)


def cross_entropy(logits, targets, pad: int = 0):
    """Mean over non-padding targets of ``-log softmax(logits)[target]``, and their count.

    logits: (B, T, V); targets: (B, T) int, ``pad`` marks positions that carry no loss.
    Returns ``(mean, count)``; a batch of padding only has mean 0.
    """
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, T, V)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # (B, T)
    mask = targets != pad  # (B, T)
    count = mask.sum()
    return jnp.where(mask, nll, 0.0).sum() / jnp.maximum(count, 1), count
