"""The paper's CNN: parameter count from the architecture formula, shapes, a second implementation of
the forward pass, and the Glorot-normal initialisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge.models.cnn import CNN
from samedge.tasks import cifar10 as cifar_task


def count(params) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def formula(blocks, convs, base, image=32, c_in=3, outputs=10) -> int:
    """Conv (3 x 3 x c_in x c_out kernel + c_out bias) and LayerNorm (c_out scale + c_out bias) for
    every convolution; each block halves both sides; the dense read-out takes the flattened map."""
    total, c_prev = 0, c_in
    for i in range(blocks):
        c = base * 2**i
        for _ in range(convs):
            total += 9 * c_prev * c + c + 2 * c
            c_prev = c
    side = image // 2**blocks
    return total + side * side * c_prev * outputs + outputs


def test_paper_preset_parameter_count():
    cfg = cifar_task.Config(**cifar_task.PRESETS["paper"].task)
    model = CNN(blocks=cfg.blocks, convs_per_block=cfg.convs_per_block, base_channels=cfg.base_channels)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
    # By hand: conv 3->16: 9*3*16 + 16 = 448, LN 32; conv 16->32: 9*16*32 + 32 = 4640, LN 64;
    # dense from 8*8*32 = 2048 to 10: 20480 + 10 = 20490. Total 25,674.
    assert count(shapes) == 448 + 32 + 4640 + 64 + 20490 == formula(2, 1, 16) == 25_674
    # The quick-size orientation: 8 base channels give 11,690 parameters.
    assert count(jax.eval_shape(CNN(base_channels=8).init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))) == 11_690


@pytest.mark.parametrize("blocks, convs, base, image", [(1, 1, 2, 32), (3, 2, 2, 8), (2, 3, 4, 8)])
def test_shapes_and_count_for_other_architectures(blocks, convs, base, image):
    model = CNN(blocks=blocks, convs_per_block=convs, base_channels=base)
    x = jnp.zeros((5, image, image, 3))
    params = model.init(jax.random.PRNGKey(1), x)
    assert count(params) == formula(blocks, convs, base, image=image)
    assert model.apply(params, x).shape == (5, 10)
    side = image // 2**blocks
    assert params["params"]["Dense_0"]["kernel"].shape == (side * side * base * 2 ** (blocks - 1), 10)
    kernels = [params["params"][f"Conv_{j}"]["kernel"].shape for j in range(blocks * convs)]
    assert [k[-1] for k in kernels] == [base * 2**i for i in range(blocks) for _ in range(convs)]
    assert all(k[:2] == (3, 3) for k in kernels)


def reference_forward(params, x, blocks, convs):
    """The same network written with lax primitives: conv (NHWC, HWIO, SAME), ReLU, LayerNorm over
    channels with eps 1e-6, 2 x 2 max pool, flatten, dense."""
    p = params["params"]
    j = 0
    for _ in range(blocks):
        for _ in range(convs):
            conv, ln = p[f"Conv_{j}"], p[f"LayerNorm_{j}"]
            x = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC")) + conv["bias"]
            x = jnp.maximum(x, 0.0)
            mu = x.mean(-1, keepdims=True)
            var = ((x - mu) ** 2).mean(-1, keepdims=True)
            x = (x - mu) / jnp.sqrt(var + 1e-6) * ln["scale"] + ln["bias"]
            j += 1
        x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    x = x.reshape(x.shape[0], -1)
    return x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]


@pytest.mark.parametrize("patches", [True, False])
def test_forward_matches_a_second_implementation(x64, patches):
    model = CNN(blocks=2, convs_per_block=2, base_channels=3, patches=patches)
    x = jax.random.normal(jax.random.PRNGKey(2), (4, 8, 8, 3), jnp.float64)
    params = jax.tree.map(lambda v: v.astype(jnp.float64), model.init(jax.random.PRNGKey(3), x))
    # Random LayerNorm scales and biases, so their placement is checked too.
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 0.3 * jax.random.normal(jax.random.PRNGKey(len(str(path))), v.shape, v.dtype)
        if "LayerNorm" in str(path) else v, params)
    np.testing.assert_allclose(model.apply(params, x), reference_forward(params, x, 2, 2), rtol=1e-9, atol=1e-9)


def test_glorot_normal_initialisation():
    params = CNN(base_channels=16).init(jax.random.PRNGKey(4), jnp.zeros((1, 32, 32, 3)))["params"]
    # Glorot: variance 2 / (fan_in + fan_out); for a 3 x 3 convolution both fans count the window.
    for w, fan_in, fan_out in [(params["Dense_0"]["kernel"], 2048, 10),
                               (params["Conv_1"]["kernel"], 9 * 16, 9 * 32)]:
        std = np.sqrt(2.0 / (fan_in + fan_out))
        assert np.std(np.asarray(w)) == pytest.approx(std, rel=0.05)
        # Truncated at two standard deviations of the underlying normal, whose scale is raised by
        # 1 / 0.8796 so that the truncated one has the Glorot variance.
        assert np.abs(np.asarray(w)).max() <= 2.0 * std / 0.87962566 + 1e-6
    assert np.all(np.asarray(params["Conv_0"]["bias"]) == 0.0)
    assert np.all(np.asarray(params["LayerNorm_0"]["scale"]) == 1.0)


def test_patch_convolution_and_pool_match_lax_on_odd_sizes(x64):
    # Odd sides, several channels, a random bias-free kernel: the patch product is XLA's convolution,
    # the reshape pool is reduce_window's VALID pool (the odd last row and column dropped).
    from samedge.models.cnn import conv3x3_patches, max_pool_2x2

    x = jax.random.normal(jax.random.PRNGKey(5), (3, 7, 9, 4), jnp.float64)
    kernel = jax.random.normal(jax.random.PRNGKey(6), (3, 3, 4, 5), jnp.float64)
    want = jax.lax.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(conv3x3_patches(x, kernel), want, rtol=1e-12, atol=1e-12)
    pooled = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    np.testing.assert_array_equal(max_pool_2x2(x), pooled)


def test_both_forms_give_the_same_hessian_vector_product(x64):
    # The Hessian is what samedge measures: the patch form must not change it.
    from samedge import curvature

    x = jax.random.normal(jax.random.PRNGKey(7), (6, 8, 8, 3), jnp.float64)
    y = jax.nn.one_hot(jnp.arange(6) % 10, 10)
    fast, slow = CNN(base_channels=2, patches=True), CNN(base_channels=2, patches=False)
    params = jax.tree.map(lambda v: v.astype(jnp.float64), fast.init(jax.random.PRNGKey(8), x))
    hv = {}
    for name, model in (("fast", fast), ("slow", slow)):
        matvec, n = curvature.flat_hvp(lambda p: 0.5 * jnp.mean(jnp.sum((model.apply(p, x) - y) ** 2, -1)), params)
        hv[name] = matvec(jax.random.normal(jax.random.PRNGKey(9), (n,), jnp.float64))
    np.testing.assert_allclose(hv["fast"], hv["slow"], rtol=1e-9, atol=1e-12)
