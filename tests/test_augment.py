"""Augmentation: random crop of the zero-padded image and random horizontal flip.

Independent truths: a NumPy loop (pad, slice, ``[:, ::-1]``) fed the same per-image draws gives the
same arrays, bit for bit; the draws are uniform (chi-square over the (2p+1)^2 shifts, flips near
1/2, fixed keys so nothing can flake); padding 0 without flips is the identity; the wrapped
``batch_fn`` is a pure function of (key, step), jitted or not, and leaves the labels alone.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import augment
from samedge.errors import ConfigError


def numpy_crop_flip(images, dy, dx, flipped, padding):
    """The reference: per image, pad by ``padding`` zeros, slice the H x W window, mirror it."""
    images = np.asarray(images)
    n, h, w, _ = images.shape
    out = np.empty_like(images)
    for i in range(n):
        padded = np.pad(images[i], ((padding, padding), (padding, padding), (0, 0)))
        y0, x0 = padding + int(dy[i]), padding + int(dx[i])
        window = padded[y0:y0 + h, x0:x0 + w]
        out[i] = window[:, ::-1] if flipped[i] else window
    return out


def _images(shape, seed=0):
    # NumPy draws: no compilation per shape (each jitted program costs ~0.5 s on a busy CPU)
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape, dtype=np.float32))


@pytest.mark.parametrize("shape, padding, flip, seed", [
    ((16, 32, 32, 3), 4, True, 0),   # CIFAR
    ((7, 5, 9, 2), 2, False, 1),     # not square, odd sizes, shifts only
    ((9, 3, 4, 2), 5, True, 2),      # padding beyond the image: some windows are all zeros
])
def test_crop_flip_equals_numpy_loop_on_the_same_draws(shape, padding, flip, seed):
    images, key = _images(shape, seed), jax.random.PRNGKey(seed)
    # under jit, as in a training step (crop_flip is jitted itself: an eager call runs the same program)
    d, got = jax.jit(lambda x, k: (augment.draws(k, shape[0], padding, flip),
                                   augment.crop_flip(x, k, padding=padding, flip=flip)))(images, key)
    want = numpy_crop_flip(images, np.asarray(d.dy), np.asarray(d.dx), np.asarray(d.flipped), padding)
    assert got.shape == images.shape and got.dtype == images.dtype
    np.testing.assert_array_equal(np.asarray(got), want)
    assert d.dy.dtype == d.dx.dtype == jnp.int32 and d.flipped.dtype == jnp.bool_
    assert bool(d.flipped.any()) == flip
    if padding >= shape[1]:
        assert (np.abs(want).reshape(shape[0], -1).max(axis=1) == 0).any()  # the case it was chosen for


def test_crop_flip_keeps_dtype_and_values():
    base = (np.arange(4 * 6 * 6 * 2) % 7 + 1).reshape(4, 6, 6, 2)
    key = jax.random.PRNGKey(5)
    d, half, ints = jax.jit(lambda k, a, b: (augment.draws(k, 4, 2, True), augment.crop_flip(a, k, padding=2),
                                             augment.crop_flip(b, k, padding=2)))(
        key, jnp.asarray(base, jnp.bfloat16), jnp.asarray(base, jnp.int32))
    want = numpy_crop_flip(base, d.dy, d.dx, d.flipped, 2)
    assert half.dtype == jnp.bfloat16 and ints.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(half.astype(jnp.float32)), want)
    np.testing.assert_array_equal(np.asarray(ints), want)


def test_draws_are_uniform_over_shifts_and_fair_over_flips():
    p, per_cell = 4, 400
    cells = (2 * p + 1) ** 2
    n = cells * per_cell
    d, off = jax.jit(lambda k: (augment.draws(k, n, p, True), augment.draws(k, n, p, False)))(jax.random.PRNGKey(0))
    dy, dx = np.asarray(d.dy), np.asarray(d.dx)
    assert dy.min() == dx.min() == -p and dy.max() == dx.max() == p
    counts = np.zeros((2 * p + 1, 2 * p + 1))
    np.add.at(counts, (dy + p, dx + p), 1)
    # 80 degrees of freedom: mean 80, sd 12.6; 160 is far beyond any plausible draw (fixed key anyway)
    chi2 = float(((counts - per_cell) ** 2 / per_cell).sum())
    assert chi2 < 160, chi2
    assert counts.min() > 0.75 * per_cell and counts.max() < 1.25 * per_cell
    # flips: sd of the fraction is 0.0028; flips independent of the shift (both halves near 1/2)
    flipped = np.asarray(d.flipped)
    assert abs(flipped.mean() - 0.5) < 0.02
    assert abs(flipped[dx < 0].mean() - 0.5) < 0.03 and abs(flipped[dx > 0].mean() - 0.5) < 0.03
    # the flips come from their own key: without them the shifts are the same
    np.testing.assert_array_equal(np.asarray(off.dy), dy)
    np.testing.assert_array_equal(np.asarray(off.dx), dx)
    assert not bool(off.flipped.any())


def test_no_padding_no_flip_is_the_identity_and_no_padding_only_mirrors():
    images = _images((8, 6, 5, 3), 1)
    run = jax.jit(lambda x, k: (augment.crop_flip(x, k, padding=0, flip=False), augment.crop_flip(x, k, padding=0),
                                augment.draws(k, 8, 0, True)))
    for seed in range(3):
        same, mirrored, d = run(images, jax.random.PRNGKey(seed))
        np.testing.assert_array_equal(np.asarray(same), np.asarray(images))
        assert not d.dy.any() and not d.dx.any()
        flipped = np.asarray(d.flipped)[:, None, None, None]
        np.testing.assert_array_equal(np.asarray(mirrored),
                                      np.where(flipped, np.asarray(images)[:, :, ::-1], np.asarray(images)))


def _cifar_like(n=16):
    return _images((n, 8, 8, 3), 2), jnp.asarray(np.random.default_rng(3).integers(0, 10, n), jnp.int32)


def _step_dependent(data, step):
    return data[0] + step, data[1]  # the batch itself changes with the step, as a minibatch does


def test_augmented_batch_fn_is_a_pure_function_of_key_and_step():
    data = _cifar_like()
    key = jax.random.PRNGKey(7)
    fn = augment.augmented_batch_fn(_step_dependent, key)
    x3, y3 = fn(data, 3)
    # the step's batch, augmented with fold_in(key, step)
    np.testing.assert_array_equal(np.asarray(x3),
                                  np.asarray(augment.crop_flip(data[0] + 3, jax.random.fold_in(key, 3))))
    # same key and step: bit-identical, eager, jitted with a traced step, inside a scan
    np.testing.assert_array_equal(np.asarray(fn(data, 3)[0]), np.asarray(x3))
    jitted = jax.jit(fn)
    for step in (0, 3, 11):
        eager_x, eager_y = fn(data, step)
        jit_x, jit_y = jitted(data, jnp.int32(step))
        np.testing.assert_array_equal(np.asarray(jit_x), np.asarray(eager_x))
        np.testing.assert_array_equal(np.asarray(jit_y), np.asarray(eager_y))
    scanned = jax.jit(lambda d: jax.lax.scan(lambda c, t: (c, fn(d, t)[0]), 0, jnp.arange(4))[1])(data)
    for step in range(4):
        np.testing.assert_array_equal(np.asarray(scanned[step]), np.asarray(fn(data, step)[0]))
    # another step or another key: other crops of the same images
    fixed = augment.augmented_batch_fn(lambda d, t: d, key)
    assert not np.array_equal(np.asarray(fixed(data, 3)[0]), np.asarray(fixed(data, 4)[0]))
    other = augment.augmented_batch_fn(lambda d, t: d, jax.random.PRNGKey(8))
    assert not np.array_equal(np.asarray(fixed(data, 3)[0]), np.asarray(other(data, 3)[0]))


class Batch(NamedTuple):
    labels: jax.Array
    images: jax.Array


def test_augmented_batch_fn_leaves_labels_untouched_for_each_batch_structure():
    images, labels = _cifar_like()
    key = jax.random.PRNGKey(0)
    want = np.asarray(augment.crop_flip(images, jax.random.fold_in(key, 5), padding=2, flip=False))
    for batch, leaf, label_leaf in (((images, labels), 0, 1), ([images, labels], 0, 1),
                                    (Batch(labels, images), 1, 0), ({"x": images, "y": labels}, "x", "y")):
        out = augment.augmented_batch_fn(lambda d, t: d, key, image_leaf=leaf, padding=2, flip=False)(batch, 5)
        assert type(out) is type(batch)
        assert out[label_leaf] is labels  # passed through, not even copied
        np.testing.assert_array_equal(np.asarray(out[leaf]), want)


def test_bad_arguments_are_refused_in_one_line():
    images = jnp.zeros((2, 4, 4, 1))
    with pytest.raises(ConfigError, match="padding must be an integer >= 0"):
        augment.crop_flip(images, jax.random.PRNGKey(0), padding=-1)
    with pytest.raises(ConfigError, match="padding must be an integer >= 0"):
        augment.augmented_batch_fn(lambda d, t: d, jax.random.PRNGKey(0), padding=2.0)
    with pytest.raises(ConfigError, match=r"shape \(N, H, W, C\)"):
        augment.crop_flip(jnp.zeros((4, 4, 1)), jax.random.PRNGKey(0))
    fn = augment.augmented_batch_fn(lambda d, t: d, jax.random.PRNGKey(0), image_leaf=...)
    with pytest.raises(ConfigError, match="tuples, lists or mappings"):
        fn(_BatchObject(images), 0)


class _BatchObject:
    def __init__(self, images):
        self.images = images

    def __getitem__(self, item):
        return self.images
