"""ResNet-18 in its CIFAR form (He et al. 2016, as trained on CIFAR by Foret et al. 2021 for SAM). NHWC.

A 3 x 3 stem convolution at stride 1 (no max-pool) with ``w`` channels, then stages ``i = 0, 1, ...``
of ``stage_sizes[i]`` BasicBlocks with ``c_i = w 2**i`` channels, the first block of stage ``i > 0``
at stride 2, then a global average pool and a dense head. A BasicBlock is::

    y = relu(norm(conv3x3(x, stride)));  y = norm(conv3x3(y))
    out = relu(y + shortcut(x)),  shortcut = norm(conv1x1(x, stride)) when the shape changes, else x

Padding is PyTorch's: one pixel on every side for the 3 x 3 convolutions at stride 1 and at stride 2
(XLA's 'SAME' at stride 2 on an even side pads (0, 1) instead, a different function), none for the
1 x 1 shortcut, which at stride 2 reads pixels (0, 0), (0, 2), ... A side of H gives
``(H - 1) // 2 + 1`` at stride 2. Parameter names follow torchvision's (``conv1``, ``bn1``,
``layer{i+1}_{j}/{conv1, bn1, conv2, bn2, downsample_conv, downsample_bn}``, ``fc``).

``norm="batch"`` puts BatchNorm after every convolution (the convolutions then have no bias);
``norm="none"`` is the same network without normalisation, every convolution with a bias instead.
BatchNorm keeps flax's conventions: learned ``scale`` and ``bias`` in ``params``, running ``mean`` and
``var`` in ``batch_stats``, updated as ``running = momentum * running + (1 - momentum) * batch``. The
batch variance is the biased one (divided by N H W), both to normalise and in the running update
(PyTorch keeps the unbiased one in its running variance), and is computed as the mean of squared
deviations (two passes: no cancellation in float32).

Initialisation, as torchvision's ResNet: convolution kernels He normal, variance ``2 / fan_out`` with
``fan_out = k * k * out_channels``, an untruncated normal; convolution biases (``norm="none"``) zero;
BatchNorm scale 1 and bias 0. The dense head is flax's default: LeCun normal kernel (truncated normal
of variance ``1 / fan_in``), zero bias (torchvision's ``nn.Linear`` draws a uniform instead).

Parameter count, with ``b_i = stage_sizes[i]``, ``c_{-1} = c_0 = w``, ``L`` stages, ``K`` outputs and
``n`` per-channel parameters after each convolution (2 for BatchNorm's scale and bias, 1 for a bias
under ``norm="none"``)::

    (27 + n) w                                                    stem
      + sum_i [ 9 c_{i-1} c_i + (2 b_i - 1) 9 c_i**2 + 2 b_i n c_i ]  3 x 3 convolutions and norms
      + sum_{i >= 1} (c_{i-1} c_i + n c_i)                        1 x 1 shortcuts
      + c_{L-1} K + K                                             head

For the standard ``stage_sizes=(2, 2, 2, 2)`` this is ``2724 w**2 + (27 + 75 n) w + 8 w K + K``:
11,173,962 at ``w = 64``, ``K = 10`` with BatchNorm (:func:`count`).

With ``patches`` (by default on the CPU only) every convolution is one matrix product: a 3 x 3 one over
the nine shifted (at stride 2 also strided) copies of the padded input side by side, channels
innermost in the kernel's HWIO order; a 1 x 1 one is a (strided) slice and a matrix product. XLA:CPU
runs its own convolution several times slower inside a compiled loop (a ``lax.scan`` chunk of steps,
Lanczos' ``while_loop``) than outside (``benchmarks/cnn_conv_in_loop.py``); for this network on two
cores an SGD step in a ``lax.scan`` took 10 (width 8) to 25 (width 16) times as long as the patch
product's, an HVP in a ``fori_loop`` 15 to 35 times (``benchmarks/resnet_conv.py``). Elsewhere (GPU)
the convolution is XLA's own
(``lax.conv_general_dilated`` with the explicit padding above). The parameters are the same either way.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

NORMS = ("batch", "none")

# torchvision's kaiming_normal_(mode="fan_out", nonlinearity="relu"): std sqrt(2 / (k k out)).
he_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def count(width: int, num_outputs: int = 10, norm: str = "batch", stage_sizes: tuple[int, ...] = (2, 2, 2, 2)) -> int:
    """Number of parameters of :class:`ResNet` on 3-channel input, from the formula in the module docstring.

    Args:
      width: channels of the stem and of the first stage (``w``; stage ``i`` has ``w * 2**i``).
      num_outputs: the dense head's outputs (``K``).
      norm: ``"batch"`` (BatchNorm's scale and bias after every convolution) or ``"none"`` (a bias
        on every convolution instead).
      stage_sizes: BasicBlocks per stage.

    Returns:
      The number of scalars in ``params`` (``batch_stats`` not counted).

    >>> count(64)  # CIFAR ResNet-18
    11173962
    >>> count(64, norm="none"), count(4, num_outputs=100)
    (11169162, 47592)
    """
    _check_norm(norm)
    n = 2 if norm == "batch" else 1
    total = (9 * 3 + n) * width  # stem
    c_prev = width
    for i, blocks in enumerate(stage_sizes):
        c = width * 2**i
        total += 9 * c_prev * c + (2 * blocks - 1) * 9 * c * c + 2 * blocks * n * c
        if c != c_prev:  # the first block of every stage after the first: stride 2, channels doubled
            total += c_prev * c + n * c
        c_prev = c
    return total + c_prev * num_outputs + num_outputs


def conv_patches(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """A k x k convolution (k odd) with PyTorch's padding ``(k - 1) // 2`` on every side, as a matrix product.

    The ``k * k`` shifted (and, at stride 2, strided) copies of the padded input are laid side by
    side, window offsets ``(dy, dx)`` in row-major order with channels innermost, which is the HWIO
    kernel's own order, so one matrix product with the reshaped kernel gives the convolution. A
    1 x 1 convolution is a strided slice and a matrix product.

    Args:
      x: (N, H, W, C) input.
      kernel: (k, k, C, F) kernel, HWIO.
      stride: the same in both directions.

    Returns:
      (N, (H + 2p - k) // stride + 1, (W + 2p - k) // stride + 1, F) with ``p = (k - 1) // 2``; equal
      to :func:`conv_lax` to float rounding.

    >>> x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    >>> conv_patches(x, jnp.ones((3, 3, 1, 1)), stride=2)[0, ..., 0]  # row/col 0 sees the zero padding
    Array([[10., 24.],
           [51., 90.]], dtype=float32)
    >>> conv_patches(x, jnp.ones((1, 1, 1, 1)), stride=2)[0, ..., 0]  # pixels (0, 0), (0, 2), ...
    Array([[ 0.,  2.],
           [ 8., 10.]], dtype=float32)
    """
    k = kernel.shape[0]
    p = (k - 1) // 2
    n, h, w, c = x.shape
    ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    if p:
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))  # (N, H + 2p, W + 2p, C)
    # Window (dy, dx) of output pixel (i, j) is padded pixel (stride i + dy, stride j + dx).
    shifted = [x[:, dy:dy + stride * (ho - 1) + 1:stride, dx:dx + stride * (wo - 1) + 1:stride, :]
               for dy in range(k) for dx in range(k)]  # k k of (N, Ho, Wo, C)
    cols = shifted[0] if k == 1 else jnp.concatenate(shifted, axis=-1)  # (N, Ho, Wo, k k C)
    return (cols.reshape(n * ho * wo, k * k * c) @ kernel.reshape(k * k * c, -1)).reshape(n, ho, wo, -1)


def conv_lax(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """The same convolution as :func:`conv_patches` by XLA's own ``lax.conv_general_dilated``.

    Args:
      x: (N, H, W, C) input.
      kernel: (k, k, C, F) kernel, HWIO, k odd.
      stride: the same in both directions.

    Returns:
      (N, Ho, Wo, F), padded ``(k - 1) // 2`` on every side explicitly (PyTorch's padding, not 'SAME').

    >>> x = jnp.arange(2 * 4 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 4, 1)
    >>> conv_lax(x, jnp.ones((3, 3, 1, 1)), stride=2)[0, ..., 0]
    Array([[10., 24.],
           [51., 90.]], dtype=float32)
    """
    p = (kernel.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


class Conv(nn.Module):
    """A k x k convolution with PyTorch's padding, He-normal (fan-out) kernel and an optional zero-init bias.

    Attributes:
      features: output channels.
      kernel_size: k (odd; 3 or 1 here).
      strides: the same in both directions.
      use_bias: add a learned bias (``norm="none"``); without one the convolution feeds a BatchNorm.
      patches: :func:`conv_patches` if True, else :func:`conv_lax`; same parameters either way.

    Call with ``x`` (N, H, W, C); returns (N, Ho, Wo, features). Parameters: ``kernel`` (k, k, C, F)
    and, with ``use_bias``, ``bias`` (F,).

    >>> conv = Conv(4, strides=2, use_bias=True, patches=True)
    >>> variables = conv.init(jax.random.PRNGKey(0), jnp.ones((2, 8, 8, 3)))
    >>> jax.tree.map(jnp.shape, variables["params"])
    {'bias': (4,), 'kernel': (3, 3, 3, 4)}
    >>> conv.apply(variables, jnp.ones((2, 8, 8, 3))).shape
    (2, 4, 4, 4)
    """

    features: int
    kernel_size: int = 3
    strides: int = 1
    use_bias: bool = False
    patches: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", he_normal_fan_out, (k, k, x.shape[-1], self.features))
        y = (conv_patches if self.patches else conv_lax)(x, kernel, self.strides)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,))
        return y


class BatchNorm(nn.Module):
    """BatchNorm over all axes but the last; the running statistics are updated only where they can be.

    Unlike ``flax.linen.BatchNorm``, a train-mode call (``use_running_average=False``) whose
    ``batch_stats`` collection is not mutable normalises with the batch's statistics and keeps the
    running ones as they are (no error), so a loss in train mode can be differentiated (HVPs,
    SAM's ascent) without carrying the statistics out.

    Attributes:
      momentum: ``running = momentum * running + (1 - momentum) * batch`` (flax's convention).
      epsilon: added to the variance.

    Call with ``x`` (..., C) and keyword ``use_running_average``; returns
    ``(x - mean) / sqrt(var + epsilon) * scale + bias``, with the batch's mean and biased variance
    (train mode) or the running ones (eval mode). Variables: ``params`` ``scale`` (ones), ``bias``
    (zeros); ``batch_stats`` ``mean`` (zeros), ``var`` (ones), each (C,).

    >>> bn = BatchNorm(momentum=0.9)
    >>> x = jnp.array([[1.0], [3.0]])
    >>> variables = bn.init(jax.random.PRNGKey(0), x, use_running_average=False)
    >>> y, updates = bn.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> y[:, 0].round(3), updates["batch_stats"]["mean"], updates["batch_stats"]["var"]
    (Array([-1.,  1.], dtype=float32), Array([0.2], dtype=float32), Array([1.], dtype=float32))
    """

    momentum: float = 0.9
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        running_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        running_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if use_running_average:
            mean, var = running_mean.value, running_var.value
        else:
            axes = tuple(range(x.ndim - 1))
            mean = x.mean(axes)  # (C,)
            var = jnp.square(x - mean).mean(axes)  # (C,), biased
            if self.is_mutable_collection("batch_stats") and not self.is_initializing():
                running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
                running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
        return (x - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias


class BasicBlock(nn.Module):
    """Two 3 x 3 convolutions with a residual connection, projected (1 x 1 convolution + norm) when the shape changes.

    Attributes:
      features: output channels.
      strides: of the first convolution and of the projection.
      norm: ``"batch"`` or ``"none"`` (then every convolution has a bias).
      bn_momentum, bn_epsilon: BatchNorm's (see :class:`BatchNorm`).
      patches: convolutions as matrix products (see :class:`Conv`).

    Call with ``x`` (N, H, W, C) and keyword ``use_running_average``; returns
    (N, Ho, Wo, features) after the final ReLU.

    >>> block = BasicBlock(4)  # stride 1, 4 channels in and out: the identity shortcut
    >>> x = jnp.ones((2, 8, 8, 4))
    >>> variables = block.init(jax.random.PRNGKey(0), x, use_running_average=False)
    >>> sorted(variables["params"]), block.apply(variables, x, use_running_average=True).shape
    (['bn1', 'bn2', 'conv1', 'conv2'], (2, 8, 8, 4))
    >>> wider = BasicBlock(8, strides=2)  # a stride or a width change: projected shortcut
    >>> sorted(jax.eval_shape(lambda: wider.init(jax.random.PRNGKey(0), x, use_running_average=False))["params"])
    ['bn1', 'bn2', 'conv1', 'conv2', 'downsample_bn', 'downsample_conv']
    """

    features: int
    strides: int = 1
    norm: str = "batch"
    bn_momentum: float = 0.9
    bn_epsilon: float = 1e-5
    patches: bool = True

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool) -> jax.Array:
        _check_norm(self.norm)
        batch = self.norm == "batch"

        def norm(y, name):
            if not batch:
                return y
            return BatchNorm(self.bn_momentum, self.bn_epsilon, name=name)(y, use_running_average=use_running_average)

        conv = lambda k, s, name: Conv(self.features, k, s, use_bias=not batch, patches=self.patches, name=name)
        y = nn.relu(norm(conv(3, self.strides, "conv1")(x), "bn1"))  # (N, Ho, Wo, F)
        y = norm(conv(3, 1, "conv2")(y), "bn2")
        if self.strides != 1 or x.shape[-1] != self.features:
            x = norm(conv(1, self.strides, "downsample_conv")(x), "downsample_bn")  # (N, Ho, Wo, F)
        return nn.relu(y + x)


class ResNet(nn.Module):
    """CIFAR ResNet (ResNet-18 by default): 3 x 3 stem, stages of BasicBlocks, global average pool, dense head.

    See the module docstring for the architecture, padding, initialisation and parameter count.

    Attributes:
      stage_sizes: BasicBlocks per stage; stage ``i`` has ``width * 2**i`` channels and starts at
        stride 2 for ``i > 0``.
      width: channels of the stem and the first stage (64 for ResNet-18).
      num_outputs: logits.
      norm: ``"batch"`` (BatchNorm after every convolution) or ``"none"`` (no normalisation, a bias
        on every convolution; otherwise the same network).
      bn_momentum: ``running = bn_momentum * running + (1 - bn_momentum) * batch``.
      bn_epsilon: added to BatchNorm's variance.
      dropout: rate of the dropout before the dense head (0: none).
      patches: convolutions as matrix products; None: on the CPU only.

    Call ``apply(variables, x, use_running_average=..., deterministic=True)``:

    Args:
      x: (N, H, W, 3) images, NHWC float (32 x 32 for CIFAR).
      use_running_average: BatchNorm on the running statistics (eval mode) if True; if False on the
        batch's (train mode), updating ``batch_stats`` when that collection is mutable
        (``mutable=["batch_stats"]``) and leaving it as it is otherwise.
      deterministic: no dropout if True; else dropout with the ``"dropout"`` rng.

    Returns:
      (N, num_outputs) logits. Variables: ``params`` and, with ``norm="batch"``, ``batch_stats``.

    One stage of one block, width 4 (``ResNet()`` is ResNet-18 itself):

    >>> model = ResNet(stage_sizes=(1,), width=4)
    >>> x = jnp.linspace(-1.0, 1.0, 2 * 8 * 8 * 3).reshape(2, 8, 8, 3)
    >>> variables = model.init(jax.random.PRNGKey(1), x, use_running_average=False)
    >>> params = variables["params"]
    >>> sorted(params), sum(p.size for p in jax.tree.leaves(params)) == count(4, stage_sizes=(1,))
    (['bn1', 'conv1', 'fc', 'layer1_0'], True)
    >>> logits, updates = model.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    >>> logits.shape, sorted(updates["batch_stats"])
    ((2, 10), ['bn1', 'layer1_0'])
    >>> model.apply({"params": params, **updates}, x, use_running_average=True).shape
    (2, 10)
    """

    stage_sizes: tuple[int, ...] = (2, 2, 2, 2)  # ResNet-18
    width: int = 64  # ResNet-18's
    num_outputs: int = 10
    norm: str = "batch"  # Foret et al.'s; "none" for a plain (unnormalised) ResNet of the same widths
    bn_momentum: float = 0.9  # PyTorch's 0.1 in flax's convention
    bn_epsilon: float = 1e-5  # PyTorch's
    dropout: float = 0.0
    patches: bool | None = None  # convolutions as patch products; None: on the CPU only

    @nn.compact
    def __call__(self, x: jax.Array, *, use_running_average: bool, deterministic: bool = True) -> jax.Array:
        _check_norm(self.norm)
        patches = jax.default_backend() == "cpu" if self.patches is None else self.patches
        batch = self.norm == "batch"
        x = Conv(self.width, 3, 1, use_bias=not batch, patches=patches, name="conv1")(x)  # (N, 32, 32, w)
        if batch:
            x = BatchNorm(self.bn_momentum, self.bn_epsilon, name="bn1")(x, use_running_average=use_running_average)
        x = nn.relu(x)
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                x = BasicBlock(self.width * 2**i, 2 if i > 0 and j == 0 else 1, self.norm, self.bn_momentum,
                               self.bn_epsilon, patches, name=f"layer{i + 1}_{j}")(
                    x, use_running_average=use_running_average)  # (N, 32 / 2**i, 32 / 2**i, w 2**i)
        x = x.mean(axis=(1, 2))  # (N, c_{L-1})
        if self.dropout > 0:
            x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
        return nn.Dense(self.num_outputs, name="fc")(x)  # (N, num_outputs)
