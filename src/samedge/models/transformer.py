"""The paper's character-level language model: a pre-LayerNorm causal Transformer.

    x = tok_emb[tokens] + pos_emb[:T]                               (B, T, d)
    repeat L times:
        x = x + Wo . attention(causal, H heads of key size k)(LN(x))  (B, T, d)
        x = x + W2 . gelu(W1 . LN(x))                                (B, T, d), hidden 4d
    logits = W_out . LN(x) + b_out                                   (B, T, V), read-out untied

Every dense layer has a bias; LayerNorms have a scale and a bias. Parameters (``P = H k``):

    V d + T d                                  embeddings
    + L (2d + 3(d P + P) + (P d + d)           LN, q/k/v, attention output
         + 2d + (d m d + m d) + (m d d + d))   LN, MLP with m = mlp_ratio
    + 2d + d V + V                             final LN, read-out

Initialisation as in GPT-2: normal(0.02) weights and embeddings, zero biases, and the two
projections that write into the residual stream scaled by ``1/sqrt(2L)`` so the residual's
variance does not grow with depth.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

STD = 0.02  # GPT-2's initial weight scale


def causal_mask(t: int) -> jax.Array:
    """``(T, T)`` booleans, True where query ``i`` may attend to key ``j``, that is ``j <= i``."""
    return jnp.tril(jnp.ones((t, t), dtype=bool))


class CausalSelfAttention(nn.Module):
    n_heads: int
    key_size: int
    n_layers: int  # for the residual projection's scale

    @nn.compact
    def __call__(self, x):  # (B, T, d) -> (B, T, d)
        b, t, d = x.shape
        h, k = self.n_heads, self.key_size
        qkv = nn.Dense(3 * h * k, kernel_init=nn.initializers.normal(STD), name="qkv")(x)  # (B, T, 3Hk)
        q, key, v = jnp.split(qkv.reshape(b, t, 3, h, k), 3, axis=2)  # each (B, T, 1, H, k)
        q, key, v = (a[:, :, 0] for a in (q, key, v))  # each (B, T, H, k)
        scores = jnp.einsum("bqhk,bshk->bhqs", q, key) / math.sqrt(k)  # (B, H, T, T)
        # A masked score gets the dtype's lowest value, so its softmax weight is exactly 0 and a later
        # token can never reach an earlier position (each row keeps its diagonal, so none is empty).
        scores = jnp.where(causal_mask(t), scores, jnp.finfo(scores.dtype).min)
        weights = jax.nn.softmax(scores, axis=-1)  # (B, H, T, T)
        out = jnp.einsum("bhqs,bshk->bqhk", weights, v).reshape(b, t, h * k)  # (B, T, Hk)
        proj_init = nn.initializers.normal(STD / math.sqrt(2 * self.n_layers))
        return nn.Dense(d, kernel_init=proj_init, name="out")(out)  # (B, T, d)


class MLP(nn.Module):
    mlp_ratio: int
    n_layers: int

    @nn.compact
    def __call__(self, x):  # (B, T, d) -> (B, T, d)
        d = x.shape[-1]
        x = nn.Dense(self.mlp_ratio * d, kernel_init=nn.initializers.normal(STD), name="fc")(x)  # (B, T, md)
        x = nn.gelu(x, approximate=False)
        proj_init = nn.initializers.normal(STD / math.sqrt(2 * self.n_layers))
        return nn.Dense(d, kernel_init=proj_init, name="proj")(x)  # (B, T, d)


class Block(nn.Module):
    n_heads: int
    key_size: int
    mlp_ratio: int
    n_layers: int

    @nn.compact
    def __call__(self, x):  # (B, T, d) -> (B, T, d)
        x = x + CausalSelfAttention(self.n_heads, self.key_size, self.n_layers, name="attn")(
            nn.LayerNorm(epsilon=1e-5, name="ln1")(x))
        return x + MLP(self.mlp_ratio, self.n_layers, name="mlp")(nn.LayerNorm(epsilon=1e-5, name="ln2")(x))


class Transformer(nn.Module):
    vocab_size: int = 128  # ASCII
    max_len: int = 64  # the paper's sequence length: rows of the positional embedding
    d_model: int = 128  # the paper's model size
    n_layers: int = 6  # the paper's depth
    n_heads: int = 8  # the paper's heads
    key_size: int = 32  # the paper's key (and value) size per head
    mlp_ratio: int = 4  # MLP hidden width = 4 d, as in the paper

    @nn.compact
    def __call__(self, tokens):  # (B, T) int -> (B, T, V) logits
        t = tokens.shape[1]
        emb = nn.initializers.normal(STD)
        tok = self.param("tok_emb", emb, (self.vocab_size, self.d_model))  # (V, d)
        pos = self.param("pos_emb", emb, (self.max_len, self.d_model))  # (T_max, d)
        x = tok[tokens] + pos[None, :t]  # (B, T, d)
        for i in range(self.n_layers):
            x = Block(self.n_heads, self.key_size, self.mlp_ratio, self.n_layers, name=f"block_{i}")(x)
        x = nn.LayerNorm(epsilon=1e-5, name="ln_f")(x)  # (B, T, d)
        return nn.Dense(self.vocab_size, kernel_init=nn.initializers.normal(STD), name="head")(x)  # (B, T, V)


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
