"""The paper's MLP: ``depth - 1`` hidden ReLU layers of ``width`` units and a linear read-out."""

from __future__ import annotations

import flax.linen as nn
import jax


class MLP(nn.Module):
    width: int = 1000  # the paper's width
    depth: int = 4  # number of dense layers: depth - 1 hidden ReLU layers, then the read-out
    num_outputs: int = 10

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (N, D) -> (N, num_outputs)
        init = nn.initializers.glorot_normal()
        for _ in range(self.depth - 1):
            x = nn.relu(nn.Dense(self.width, kernel_init=init)(x))
        return nn.Dense(self.num_outputs, kernel_init=init)(x)
