"""The paper's CNN: blocks of 3 x 3 'SAME' convolutions, each followed by ReLU then LayerNorm, a
2 x 2 max-pool closing each block, then a dense read-out. NHWC input.

Block ``i`` (from 0) has ``base_channels * 2**i`` channels. LayerNorm normalises over the channel
axis with a learned per-channel scale and bias (flax's default). Parameter count, with
``c_i = base * 2**i``, ``c_{-1} = C_in``, ``k`` convolutions a block and ``B`` blocks on an
``H x W`` image::

    sum_i [ (9 c_{i-1} + 1) c_i + 2 c_i + (k - 1) ((9 c_i + 1) c_i + 2 c_i) ]
      + (H W / 4**B) c_{B-1} * outputs + outputs
"""

from __future__ import annotations

import flax.linen as nn
import jax


class CNN(nn.Module):
    blocks: int = 2  # the paper's two blocks
    convs_per_block: int = 1  # the paper's one convolution a block
    base_channels: int = 16  # block i has base_channels * 2**i channels (16, 32 in the paper)
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (N, H, W, C) -> (N, num_outputs)
        init = nn.initializers.glorot_normal()
        for i in range(self.blocks):
            for _ in range(self.convs_per_block):
                x = nn.Conv(self.base_channels * 2**i, (3, 3), padding="SAME", kernel_init=init)(x)
                x = nn.LayerNorm()(nn.relu(x))  # (N, H, W, c_i)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))  # (N, H/2, W/2, c_i)
        x = x.reshape(x.shape[0], -1)  # (N, H W c / 4**blocks)
        return nn.Dense(self.num_outputs, kernel_init=init)(x)
