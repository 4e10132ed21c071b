"""The CIFAR ResNet-18: parameter count (formula vs the initialised shapes), the patch-product and XLA
convolutions agreeing (values and gradients, train and eval mode), PyTorch's stride-2 padding against
a NumPy loop, BatchNorm's running statistics, the unnormalised variant and dropout.

Shapes and counts are checked on the full ResNet-18 without computing anything (``jax.eval_shape``).
What computes runs on two stages of one block (``SMALL``): a stride-1 block with the identity
shortcut, then a stride-2 block with the projection, so every kind of convolution (3 x 3 at strides 1
and 2, 1 x 1 at stride 2) and both shortcuts are there, at a fraction of ResNet-18's compile time.
Parameters for those tests are drawn by NumPy: JAX's eager initialisation compiles a random kernel
for every new shape, about a second each on two cores."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from samedge.models.resnet import BasicBlock, Conv, ResNet, conv_lax, conv_patches, count


def size(tree) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(tree))


def shapes(model, image=32):
    return jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, image, image, 3)),
                                             use_running_average=False))


SMALL = (1, 1)


def random_variables(model, image=32, seed=0, stats=False):
    """``model``'s variables, drawn by NumPy: kernels normal with std sqrt(2 / fan_in) (sqrt(1 / fan_in)
    for the head), BatchNorm scales 1 + N(0, 0.1^2), biases N(0, 0.1^2); running mean 0 and variance 1,
    or with ``stats`` N(0, 0.1^2) and U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)

    def draw(path, s):
        name, kind = path[-1].key, path[0].key
        if kind == "batch_stats":
            if not stats:
                return jnp.zeros(s.shape) if name == "mean" else jnp.ones(s.shape)
            return jnp.asarray(rng.normal(0, 0.1, s.shape) if name == "mean" else rng.uniform(0.5, 1.5, s.shape),
                               jnp.float32)
        if name == "kernel":
            std = np.sqrt((2.0 if len(s.shape) == 4 else 1.0) / np.prod(s.shape[:-1]))
            return jnp.asarray(rng.normal(0, std, s.shape), jnp.float32)
        return jnp.asarray((name == "scale") + rng.normal(0, 0.1, s.shape), jnp.float32)

    return jax.tree_util.tree_map_with_path(draw, shapes(model, image))


def images(n=3, image=32, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(n, image, image, 3)), jnp.float32)  # (N, H, W, 3)


# --- (a) parameter count ---------------------------------------------------------------------------

def test_resnet18_parameter_count():
    variables = shapes(ResNet())
    assert size(variables["params"]) == count(64) == 11_173_962
    # By hand, 2724 w^2 + (27 + 75 n) w + 8 w K + K at w = 64, n = 2, K = 10.
    assert 2724 * 64**2 + (27 + 150) * 64 + 8 * 64 * 10 + 10 == 11_173_962
    # Running mean and variance for every BatchNorm: 2 * 75 w.
    assert size(variables["batch_stats"]) == 2 * 75 * 64


@pytest.mark.parametrize("width, norm, stages, outputs", [
    (1, "batch", (2, 2, 2, 2), 10), (3, "none", (2, 2, 2, 2), 10), (8, "batch", (1, 1), 100),
    (5, "none", (3,), 7), (2, "batch", (3, 4, 6, 3), 10)])
def test_count_formula_matches_initialised_shapes(width, norm, stages, outputs):
    model = ResNet(stage_sizes=stages, width=width, num_outputs=outputs, norm=norm)
    assert size(shapes(model, image=8)["params"]) == count(width, outputs, norm, stages)


def test_resnet34_layout_count():
    # The CIFAR ResNet-34 (BasicBlocks 3, 4, 6, 3) is the usual 21,282,122.
    assert count(64, stage_sizes=(3, 4, 6, 3)) == 21_282_122


def test_names_and_shapes_do_not_depend_on_the_convolution_form():
    a, b = shapes(ResNet(width=4, patches=True)), shapes(ResNet(width=4, patches=False))
    assert jax.tree.map(lambda s: s.shape, a) == jax.tree.map(lambda s: s.shape, b)
    p = a["params"]
    assert p["conv1"]["kernel"].shape == (3, 3, 3, 4) and "bias" not in p["conv1"]
    assert p["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 4, 8)
    assert "downsample_conv" not in p["layer1_0"] and "downsample_conv" not in p["layer2_1"]
    assert p["layer4_1"]["conv2"]["kernel"].shape == (3, 3, 32, 32)
    assert p["fc"]["kernel"].shape == (32, 10)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        shapes(ResNet(width=2, norm="layer"))
    with pytest.raises(ValueError, match="unknown norm"):
        count(2, norm="group")


def test_he_normal_fan_out_initialisation():
    # torchvision's kaiming_normal_(mode="fan_out"): std sqrt(2 / (k k out)), not truncated.
    kernel = Conv(256).init(jax.random.PRNGKey(3), jnp.zeros((1, 4, 4, 64)))["params"]["kernel"]
    std = np.sqrt(2 / (9 * 256))
    assert abs(float(kernel.std()) / std - 1) < 0.02
    assert float(jnp.abs(kernel).max()) > 3.5 * std  # tails a 2-sigma truncation would cut


# --- (b) patch products == XLA convolution, values and gradients ------------------------------------

def loss_and_logits(model, params, stats, x, labels, train):
    logits = model.apply({"params": params, "batch_stats": stats}, x, use_running_average=not train)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


@pytest.mark.parametrize("train", [True, False])
def test_patch_and_xla_convolutions_agree_with_gradients(train):
    x, labels = images(3), jnp.array([0, 3, 7])
    # In eval mode, running statistics away from (0, 1): not the identity normalisation.
    variables = random_variables(ResNet(SMALL, width=4), seed=1, stats=not train)
    stats = variables["batch_stats"]
    out = {}
    for patches in (True, False):
        model = ResNet(SMALL, width=4, patches=patches)
        f = jax.value_and_grad(lambda p, m=model: loss_and_logits(m, p, stats, x, labels, train), has_aux=True)
        out[patches] = jax.jit(f)(variables["params"])
    (loss_p, logits_p), grad_p = out[True]
    (loss_x, logits_x), grad_x = out[False]
    np.testing.assert_allclose(logits_p, logits_x, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss_p, loss_x, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(grad_p), jax.tree.leaves(grad_x)):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale, err_msg=jax.tree_util.keystr(path))
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grad_p))


# --- (c) PyTorch's padding ---------------------------------------------------------------------------

def reference_conv(x, kernel, stride):
    """Direct loops: zero-pad (k - 1) // 2 on every side, out[n, i, j, f] = sum over the window at
    (stride i, stride j) of the padded input, as torch.nn.Conv2d(padding=(k - 1) // 2) computes it."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    k = kernel.shape[0]
    p = (k - 1) // 2
    n, h, w, c = x.shape
    padded = np.zeros((n, h + 2 * p, w + 2 * p, c))
    padded[:, p:p + h, p:p + w] = x
    ho, wo = (h + 2 * p - k) // stride + 1, (w + 2 * p - k) // stride + 1
    out = np.zeros((n, ho, wo, kernel.shape[-1]))
    for b, i, j in itertools.product(range(n), range(ho), range(wo)):
        window = padded[b, stride * i:stride * i + k, stride * j:stride * j + k]  # (k, k, C)
        out[b, i, j] = np.einsum("yxc,yxcf->f", window, kernel)
    return out


@pytest.mark.parametrize("k, stride, side", [(3, 2, 6), (3, 2, 7), (3, 1, 5), (1, 2, 6), (1, 2, 7), (1, 1, 4)])
def test_convolutions_pad_like_pytorch(k, stride, side):
    rng = np.random.default_rng(side)
    x = jnp.asarray(rng.normal(size=(2, side, side, 2)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, 2, 3)), jnp.float32)
    want = reference_conv(x, kernel, stride)
    assert want.shape[1] == (side + 2 * ((k - 1) // 2) - k) // stride + 1
    got_p, got_x = conv_patches(x, kernel, stride), conv_lax(x, kernel, stride)
    np.testing.assert_allclose(got_p, want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_x, want, rtol=1e-5, atol=1e-5)
    p = (k - 1) // 2
    explicit = jax.lax.conv_general_dilated(x, kernel, (stride, stride), ((p, p), (p, p)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(got_p, explicit, rtol=1e-5, atol=1e-5)


def test_same_padding_at_stride_two_is_not_pytorchs():
    # XLA's 'SAME' pads an even side (0, 1) at stride 2: the windows move one pixel down and right.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 6, 6, 2)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(3, 3, 2, 3)), jnp.float32)
    same = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    assert same.shape == conv_patches(x, kernel, 2).shape
    assert not np.allclose(same, reference_conv(x, kernel, 2), atol=1e-3)


# --- (d) BatchNorm's running statistics --------------------------------------------------------------

# Eager from here on, all on (4, 8, 8, 3) images and the SMALL width-4 network: eager JAX compiles each
# operation once for its shapes, so these tests share that work (jit would compile each function anew).

def test_train_mode_updates_running_statistics_by_the_momentum_formula():
    x = images(4, image=8, seed=2)
    model = ResNet(SMALL, width=4, bn_momentum=0.8)
    variables = random_variables(model, seed=1)
    init_stats = variables["batch_stats"]
    logits, upd = model.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    stats = upd["batch_stats"]
    # The stem's BatchNorm sees the stem convolution's output.
    h = np.asarray(conv_lax(x, variables["params"]["conv1"]["kernel"]), np.float64)  # (N, 8, 8, 4)
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))  # biased variance
    np.testing.assert_allclose(stats["bn1"]["mean"], 0.8 * 0 + 0.2 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["bn1"]["var"], 0.8 * 1 + 0.2 * var, rtol=1e-4)
    # Every running statistic moved.
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(init_stats)):
        assert not np.allclose(a, b)
    # Train mode without a mutable batch_stats normalises the same way and keeps nothing.
    logits_immutable = model.apply(variables, x, use_running_average=False)
    np.testing.assert_allclose(logits_immutable, logits, rtol=1e-5, atol=1e-6)


def test_eval_mode_uses_and_keeps_running_statistics():
    x = images(4, image=8, seed=2)
    model = ResNet(SMALL, width=4, bn_momentum=0.0)  # running statistics := the last batch's
    variables = random_variables(model, seed=1)
    evaluate = lambda v, x: model.apply(v, x, use_running_average=True, mutable=["batch_stats"])
    logits_train, upd = model.apply(variables, x, use_running_average=False, mutable=["batch_stats"])
    trained = {"params": variables["params"], **upd}
    logits_eval, kept = evaluate(trained, x)
    # Eval mode leaves the statistics as they are...
    for a, b in zip(jax.tree.leaves(kept["batch_stats"]), jax.tree.leaves(upd["batch_stats"])):
        np.testing.assert_array_equal(a, b)
    # ...and uses them: on the batch they came from, eval mode is train mode.
    np.testing.assert_allclose(logits_eval, logits_train, rtol=1e-4, atol=1e-5)
    # With the initial statistics (0, 1) the output differs; and each image is normalised alone.
    assert not np.allclose(evaluate(variables, x)[0], logits_eval, atol=1e-3)
    np.testing.assert_allclose(evaluate(trained, x[:1])[0][0], logits_eval[0], rtol=1e-4, atol=1e-5)


# --- (e) the unnormalised variant --------------------------------------------------------------------

def test_norm_none_has_no_batch_stats_and_biased_convolutions():
    model = ResNet(width=3, norm="none")
    variables = shapes(model)
    assert set(variables) == {"params"}
    leaves = {jax.tree_util.keystr(path): s.shape for path, s in jax.tree_util.tree_leaves_with_path(variables)}
    kernels = [p for p, s in leaves.items() if len(s) == 4]
    assert len(kernels) == 1 + 16 + 3  # stem, two per block, three projections
    for p in kernels:
        assert leaves[p.replace("'kernel'", "'bias'")] == (leaves[p][-1],)
    assert not any("bn" in p for p in leaves)
    # It runs without any mutable collection, train or eval mode alike.
    small, x = ResNet(SMALL, width=4, norm="none"), images(4, image=8)
    v = random_variables(small)
    np.testing.assert_array_equal(small.apply(v, x, use_running_average=False),
                                  small.apply(v, x, use_running_average=True))


def test_block_without_norm_keeps_the_identity_shortcut():
    block = BasicBlock(4, norm="none")
    variables = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0), jnp.zeros((1, 4, 4, 4)),
                                                  use_running_average=True))
    assert sorted(variables["params"]) == ["conv1", "conv2"]
    # Zero kernels and biases: the block is relu(x).
    zero = jax.tree.map(lambda s: jnp.zeros(s.shape), variables)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(1, 4, 4, 4)), jnp.float32)
    np.testing.assert_array_equal(block.apply(zero, x, use_running_average=True), jax.nn.relu(x))


# --- (f) dropout -------------------------------------------------------------------------------------

def test_dropout_only_when_not_deterministic():
    model = ResNet(SMALL, width=4, dropout=0.5)
    x = images(4, image=8)
    variables = random_variables(model)
    run = lambda det, key: model.apply(variables, x, use_running_average=True, deterministic=det,
                                       rngs={"dropout": jax.random.PRNGKey(key)})
    np.testing.assert_array_equal(run(True, 1), run(True, 2))
    np.testing.assert_array_equal(run(True, 1), model.apply(variables, x, use_running_average=True))
    np.testing.assert_array_equal(run(False, 1), run(False, 1))
    assert not np.allclose(run(False, 1), run(False, 2))
    assert not np.allclose(run(False, 1), run(True, 1))
