"""The paper's MLP: ``depth - 1`` hidden layers of ``width`` units and a linear read-out.

The paper's network is ReLU with Glorot-normal weights and zero biases (the defaults). Two options
serve the quick presets: ``activation`` (one of :data:`ACTIVATIONS`) and ``init_scale``, which
multiplies every initial weight's standard deviation (``init_scale ** 2`` times the Glorot variance;
biases stay zero), so the network's output, and with square loss lambda_max at step 0, scales with it.
"""

from __future__ import annotations

import flax.linen as nn
import jax

ACTIVATIONS = {"relu": nn.relu, "tanh": nn.tanh, "elu": nn.elu, "gelu": nn.gelu}


class MLP(nn.Module):
    width: int = 1000  # the paper's width
    depth: int = 4  # number of dense layers: depth - 1 hidden layers, then the read-out
    num_outputs: int = 10
    activation: str = "relu"  # the paper's; a key of ACTIVATIONS
    init_scale: float = 1.0  # multiplies the Glorot-normal standard deviation of every weight (1: the paper's)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:  # (N, D) -> (N, num_outputs)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; choose one of {', '.join(ACTIVATIONS)}")
        act = ACTIVATIONS[self.activation]
        # glorot_normal is variance_scaling(1.0, "fan_avg", "truncated_normal"): at init_scale 1 the
        # weights are the paper's, bit for bit.
        init = nn.initializers.variance_scaling(self.init_scale ** 2, "fan_avg", "truncated_normal")
        for _ in range(self.depth - 1):
            x = act(nn.Dense(self.width, kernel_init=init)(x))
        return nn.Dense(self.num_outputs, kernel_init=init)(x)
