"""The paper's CNN: blocks of 3 x 3 'SAME' convolutions, each followed by ReLU then LayerNorm, a
2 x 2 max-pool closing each block, then a dense read-out. NHWC input.

Block ``i`` (from 0) has ``base_channels * 2**i`` channels. LayerNorm normalises over the channel
axis with a learned per-channel scale and bias (flax's default). Parameter count, with
``c_i = base * 2**i``, ``c_{-1} = C_in``, ``k`` convolutions a block and ``B`` blocks on an
``H x W`` image::

    sum_i [ (9 c_{i-1} + 1) c_i + 2 c_i + (k - 1) ((9 c_i + 1) c_i + 2 c_i) ]
      + (H W / 4**B) c_{B-1} * outputs + outputs

On the CPU a convolution is computed as one matrix product over the 3 x 3 patches (the nine shifted
copies of the padded input side by side), and the pool as a reshape and a max. XLA:CPU runs its own
convolution and ``reduce_window`` several times slower inside a compiled loop (a ``lax.scan`` chunk
of steps, Lanczos' ``while_loop``) than outside, where the patch product runs as fast as anywhere
(``benchmarks/cnn_conv_in_loop.py``). Elsewhere (GPU) the convolution is XLA's own. The parameters
are the same either way (``Conv_j/kernel`` in HWIO, ``Conv_j/bias``).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


def conv3x3_patches(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'SAME' 3 x 3 convolution, stride 1, as a matrix product: x (N, H, W, C), kernel (3, 3, C, F)."""
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    # (N, H, W, 9 C), the window offsets (dy, dx) in kernel order, channels innermost like HWIO.
    patches = jnp.concatenate([padded[:, dy:dy + h, dx:dx + w, :] for dy in range(3) for dx in range(3)], axis=-1)
    return (patches.reshape(n * h * w, 9 * c) @ kernel.reshape(9 * c, -1)).reshape(n, h, w, -1)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2 x 2 max-pool, stride 2, 'VALID' (an odd last row or column is dropped): (N, H, W, C) -> (N, H/2, W/2, C)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Conv3x3(nn.Module):
    """A 3 x 3 'SAME' convolution with bias; ``patches`` picks the matrix-product form."""

    features: int
    patches: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.glorot_normal(), (3, 3, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if self.patches:
            y = conv3x3_patches(x, kernel)
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + bias


class CNN(nn.Module):
    blocks: int = 2  # the paper's two blocks
    convs_per_block: int = 1  # the paper's one convolution a block
    base_channels: int = 16  # block i has base_channels * 2**i channels (16, 32 in the paper)
    num_outputs: int = 10
    patches: bool | None = None  # convolutions as patch products; None: on the CPU only

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (N, H, W, C) -> (N, num_outputs)
        patches = jax.default_backend() == "cpu" if self.patches is None else self.patches
        j = 0
        for i in range(self.blocks):
            for _ in range(self.convs_per_block):
                x = Conv3x3(self.base_channels * 2**i, patches, name=f"Conv_{j}")(x)
                x = nn.LayerNorm()(nn.relu(x))  # (N, H, W, c_i)
                j += 1
            x = max_pool_2x2(x)  # (N, H/2, W/2, c_i)
        x = x.reshape(x.shape[0], -1)  # (N, H W c / 4**blocks)
        return nn.Dense(self.num_outputs, kernel_init=nn.initializers.glorot_normal())(x)
