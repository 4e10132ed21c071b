r"""Batch sharpness: the curvature of each minibatch's loss along its own gradient, and its SAM analogue.

For a minibatch :math:`B` of the training set, with :math:`L_B` its mean loss,
:math:`g_B = \nabla L_B(w)` and :math:`H_B = \nabla^2 L_B(w)`, the directional curvature of the
minibatch loss along its gradient is

.. math::

    q_B = \frac{g_B^\top H_B\, g_B}{\|g_B\|^2}

(a Rayleigh quotient of :math:`H_B`: :math:`\lambda_{\min}(H_B) \le q_B \le \lambda_{\max}(H_B)`).
Over the minibatches of the sampling scheme (:math:`B` uniform over the subsets of size :math:`b`, as
the training steps draw them) this module estimates

- ``batch_sharpness`` :math:`= \mathbb{E}_B[q_B]` (the mean of ratios), with its standard error;
- ``batch_sharpness_rom`` :math:`= \mathbb{E}_B[g_B^\top H_B g_B] / \mathbb{E}_B[\|g_B\|^2]` (the
  ratio of means);
- with an edge (SAM's, or any optimizer's :attr:`~samedge.steps.Optimizer.edge`):
  ``sam_batch_edge`` :math:`= \mathbb{E}_B[\mathrm{edge}(g_B)]` and ``sam_batch_ratio``
  :math:`= \mathbb{E}_B[q_B / \mathrm{edge}(g_B)]`.

Why :math:`q_B` (SGD). Andreyev & Beneventano (2024, "Edge of Stochastic Stability: Revisiting the
Edge of Stability for SGD", arXiv:2412.20553) show that minibatch SGD with step size :math:`\eta`
trains where *batch sharpness* rises to :math:`2/\eta` and hovers there (the Edge of Stochastic
Stability), while the full-batch :math:`\lambda_{\max}` stays below :math:`2/\eta` (lower for smaller
batches and larger steps). The one-dimensional reason: restricted to the line through :math:`w`
along :math:`u = g_B/\|g_B\|`, the minibatch loss's quadratic model is

.. math::

    f(s) = L_B + \|g_B\|\, s + \tfrac{1}{2} q_B s^2 ,

and the SGD step :math:`w - \eta g_B` is gradient descent on :math:`f` from :math:`s = 0`: the
distance to the line's minimiser :math:`s^* = -\|g_B\|/q_B` is multiplied by :math:`1 - \eta q_B`,
which leaves :math:`[-1, 1]` when :math:`q_B > 2/\eta`. Equivalently
:math:`L_B(w - \eta g_B) - L_B(w) = -\eta \|g_B\|^2 (1 - \eta q_B / 2)` to second order: the step
overshoots its own batch exactly when :math:`q_B > 2/\eta`. Versions of that paper differ on the
average: v1 (Dec 2024) tracked the mean of :math:`\lambda_{\max}(H_B)` ("MiniBS"); later versions
define Batch Sharpness as :math:`\mathbb{E}_B[g_B^\top H_B g_B / \|g_B\|^2]` (the expected directional
curvature of minibatch Hessians along their stochastic gradients); the authors' code has computed
both that mean of ratios and the ratio of means :math:`\mathbb{E}[g^\top H g] / \mathbb{E}[\|g\|^2]`.
Both are recorded here. The ratio of means is the one the expected one-step change of the batch loss
reads: :math:`\mathbb{E}[L_B(w - \eta g_B) - L_B(w)] = -\eta\, \mathbb{E}\|g_B\|^2 (1 - \eta\,
\mathrm{rom} / 2)` to second order, negative iff :math:`\mathrm{rom} < 2/\eta`; the mean of ratios
weights every batch equally, the ratio of means weights each by :math:`\|g_B\|^2`.

The SAM analogue. Normalised SAM on a minibatch, :math:`w' = w - \eta \nabla L_B(w + \rho\,
g_B/\|g_B\|)` (ascent and descent on the same minibatch, as :mod:`samedge.steps` does), ascends along
:math:`u`, the very line along which the minibatch quadratic has curvature :math:`q_B`. On that line
the ascent point is :math:`s = \rho` and the gradient there is :math:`f'(\rho) = \|g_B\| + \rho q_B`,
so the step moves :math:`s` from 0 to :math:`-\eta \|g_B\| (1 + \rho q_B/\|g_B\|)` and the distance to
:math:`s^*` is multiplied by

.. math::

    1 - \eta\, q_B \Bigl(1 + \frac{\rho\, q_B}{\|g_B\|}\Bigr),

the factor :func:`samedge.edges.sam_edge` is built on, with :math:`\lambda` replaced by :math:`q_B`
and :math:`\|g\|` by the batch's own :math:`\|g_B\|`. It reaches :math:`-1` exactly when :math:`q_B`
equals ``sam_edge(eta, rho, ||g_B||)``. So each batch has its own threshold, set by its own gradient
norm (SAM normalises by :math:`\|g_B\|`, not by the full gradient's norm): the natural comparison for
:math:`q_B` is the SAM-edge of :math:`\|g_B\|`, batch by batch, and the SAM counterpart of "batch
sharpness at :math:`2/\eta`" is

.. math::

    \mathtt{sam\_batch\_ratio} = \mathbb{E}_B\Bigl[\frac{q_B}{\lambda_{\mathrm{SAM}}(\eta, \rho, \|g_B\|)}\Bigr] \approx 1 .

``sam_batch_edge`` :math:`= \mathbb{E}_B[\lambda_{\mathrm{SAM}}(\eta, \rho, \|g_B\|)]` is the level to
plot ``batch_sharpness`` against (it is not the SAM-edge of :math:`\mathbb{E}\|g_B\|`: the edge is
concave in :math:`\|g\|`, so it is below that by Jensen). Minibatch gradients are longer than the
full gradient (:math:`\mathbb{E}\|g_B\|^2 = \|g\|^2` plus the sampling variance), so this edge sits
above the full-batch SAM-edge Long & Bartlett (2024) compare :math:`\lambda_{\max}` with. At
:math:`\rho = 0` it is :math:`2/\eta` and ``sam_batch_ratio`` is :math:`\eta\,
\mathtt{batch\_sharpness} / 2`: SGD's prediction. This is the same heuristic as the paper's (and as
the full-batch SAM-edge): one direction, a quadratic model, :math:`H_B` the same at :math:`w` and at
the ascent point, :math:`\|g_B\|` held fixed; that SAM settles at it is an empirical claim to test.

Momentum. For heavy ball :math:`v' = \beta v + g`, :math:`w' = w - \eta v'` on a fixed quadratic the
same one-dimensional argument gives the recursion :math:`x' = (1 + \beta - \eta q)\, x - \beta
x_{\mathrm{prev}}`, unstable from :math:`q = (2 + 2\beta)/\eta` on
(:func:`samedge.edges.momentum_edge`; the full-batch threshold of Cohen et al. 2021, Appendix, after
Goh 2017). It assumes the direction and its curvature persist over steps, which fresh minibatches
break: Andreyev, Ananthkumar, Walden, Poggio & Beneventano (2026, "Momentum Further Constrains
Sharpness at the Edge of Stochastic Stability", arXiv:2604.14108) report batch sharpness of SGD with
momentum plateauing at :math:`2(1 + \beta)/\eta` at large batches but at :math:`2(1 - \beta)/\eta` at
small ones, so no single momentum edge holds. Pass the optimizer's own edge as ``edge_fn``
(``lambda g: optimizer.edge(g, opt_state)``) to get the ratio to :math:`(2 + 2\beta)/\eta` (or
:func:`samedge.edges.sam_momentum_edge` for SAM with momentum), and read it with that caveat; this
module measures along :math:`g_B`, not along the momentum step.

Cost: per minibatch one gradient and one Hessian-vector product (forward-over-reverse, ``jax.jvp``
of ``jax.grad``; about 2-3 gradients), all on :math:`b` examples: 3-4 gradient-equivalents a batch,
:math:`n` batches in all. The relative standard error falls as :math:`\mathrm{cv}/\sqrt{n}` with
:math:`\mathrm{cv}` the coefficient of variation of :math:`q_B`: reaching ``rel_se = 0.01`` takes
:math:`n = (\mathrm{cv}/0.01)^2` batches (400 at :math:`\mathrm{cv} = 0.2`), so with the default
``max_batches = 200`` the stop at ``rel_se`` happens only when the :math:`q_B` vary by less than
about 14%; ``batch_sharpness_n`` says which.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from samedge import edges
from samedge.errors import ConfigError

__all__ = ["batch_curvature", "estimate", "from_batch_fn"]

_STEP_LIMIT = 2**31 - 1  # random steps for from_batch_fn: int32, and beyond any run's length


def _vdot(a, b):
    """``sum_leaves <a, b>`` of two like pytrees."""
    return sum(jnp.vdot(x, y).real for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _terms(loss_fn: Callable, params, batch):
    """``(q, ||g||^2, g^T H g, g)`` of ``loss_fn(., batch)`` at ``params``."""
    grad_fn = jax.grad(lambda p: loss_fn(p, batch))
    g = grad_fn(params)
    hg = jax.jvp(grad_fn, (params,), (g,))[1]  # forward-over-reverse: H g, exact
    g_norm_sq = _vdot(g, g)
    ghg = _vdot(g, hg)
    positive = g_norm_sq > 0
    q = jnp.where(positive, ghg / jnp.where(positive, g_norm_sq, 1.0), jnp.nan)
    return q, g_norm_sq, ghg, g


def batch_curvature(loss_fn: Callable, params, batch):
    """The curvature of one minibatch's loss along its own gradient.

    ``q_B = g_B^T H_B g_B / ||g_B||^2`` with ``g_B = grad L_B(params)`` and ``H_B`` the Hessian of
    ``L_B = loss_fn(., batch)``: a Rayleigh quotient of ``H_B``, so between its smallest and
    largest eigenvalues. ``H_B g_B`` is one exact Hessian-vector product (``jax.jvp`` of
    ``jax.grad``, forward-over-reverse; no finite differences).

    Args:
      loss_fn: ``(params, batch) -> scalar``, the mean loss over the batch.
      params: a pytree of float arrays.
      batch: the minibatch, any pytree ``loss_fn`` takes.

    Returns:
      ``(q, g_norm_sq, gHg)``, three scalars; ``q`` is NaN when ``g_B = 0`` (no direction).
      Jittable; costs one gradient and one HVP.

    >>> import jax.numpy as jnp
    >>> a = jnp.array([2.0, 1.0])
    >>> loss = lambda w, batch: 0.5 * jnp.sum(a * w ** 2)   # H = diag(2, 1); g = (2, 1) at w = (1, 1)
    >>> [round(float(x), 6) for x in batch_curvature(loss, jnp.ones(2), None)]   # 9 / 5
    [1.8, 5.0, 9.0]
    """
    return _terms(loss_fn, params, batch)[:3]


def from_batch_fn(batch_fn: Callable, data) -> Callable:
    """A ``sample_batch(key)`` for :func:`estimate` from a task's ``batch_fn(data, step)``: the batch of
    a uniformly random step in ``[0, 2**31 - 1)``.

    For a task whose steps draw independent minibatches (:func:`samedge.tasks.minibatch_fn`) this is
    a fresh minibatch of the training scheme (two of 200 draws share a step with probability
    ~1e-5); for an epoch-based shuffle (shakespeare) it is a uniformly placed batch of a random
    epoch's order. For a full-batch task every "minibatch" is the whole set: ``q`` is then the
    full-batch Hessian's curvature along the full gradient, with no spread.
    """

    def sample_batch(key):
        return batch_fn(data, jax.random.randint(key, (), 0, _STEP_LIMIT, jnp.int32))

    return sample_batch


def _check(max_batches, min_batches, rel_se, chunk, eta, rho, edge_fn):
    for name, value, low in (("max_batches", max_batches, 2), ("min_batches", min_batches, 2), ("chunk", chunk, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"batch sharpness {name} must be an integer >= {low}, got {value!r}")
    if min_batches > max_batches:
        raise ConfigError(f"batch sharpness min_batches {min_batches} exceeds max_batches {max_batches}")
    if isinstance(rel_se, (int, float)) and not (rel_se >= 0):
        raise ConfigError(f"batch sharpness rel_se must be >= 0, got {rel_se!r}")
    if rho is not None and eta is None:
        raise ConfigError("batch sharpness: rho needs eta (the SAM-edge is a function of both)")
    if edge_fn is not None and eta is not None:
        raise ConfigError("batch sharpness: give eta (and rho) or edge_fn, not both")


def estimate(loss_fn: Callable, params, sample_batch: Callable[[Any], Any], key, *, max_batches: int = 200,
             rel_se: float = 0.01, min_batches: int = 10, eta=None, rho=None,
             edge_fn: Callable | None = None, chunk: int = 1) -> dict:
    """Batch sharpness ``E_B[q_B]`` and its kin, over fresh minibatches until the standard error is small.

    Batch ``i`` is ``sample_batch(fold_in(key, i))`` (``i = 0, 1, ...``), independent draws of the
    sampling scheme; each gives ``q_B``, ``||g_B||^2`` and ``g_B^T H_B g_B`` (:func:`batch_curvature`).
    Running means and (co)variances are accumulated stably (Welford / Chan) inside one
    ``lax.while_loop``, which stops once ``n >= min_batches`` and
    ``se(q) <= rel_se * |mean(q)|``, or at ``n = max_batches``. See the module docstring for the
    theory (Andreyev & Beneventano 2024 for SGD; the SAM analogue).

    Args:
      loss_fn: ``(params, batch) -> scalar``, the mean loss over a batch.
      params: the point ``w``, a pytree of float arrays.
      sample_batch: ``key -> batch``, jittable: a fresh minibatch per key (for a task,
        :func:`from_batch_fn`).
      key: a PRNG key; the batches' keys are folded from it.
      max_batches: most batches (>= 2; rounded up to a multiple of ``chunk``).
      rel_se: stop when ``se / |mean|`` of ``q_B`` is at most this (0: always ``max_batches``).
      min_batches: batches taken at least before the rule may stop (>= 2).
      eta, rho: SAM's step size and radius (``rho`` ``None``: 0, SGD): the per-batch edge is then
        ``samedge.edges.sam_edge(eta, rho, ||g_B||)``.
      edge_fn: instead of ``eta``/``rho``, any per-batch edge ``g_B (pytree) -> scalar``, e.g.
        ``lambda g: optimizer.edge(g, opt_state)`` for a :class:`~samedge.steps.Optimizer`.
      chunk: batches evaluated together per loop iteration (``jax.vmap``): more throughput on an
        accelerator for ``chunk`` times the memory of one HVP; the stop is checked per chunk.
        The batches and so the results do not depend on it (to rounding).

    Returns:
      A dict of scalars: ``batch_sharpness`` (mean of ``q_B``), ``batch_sharpness_se`` (its
      standard error, ``sd / sqrt(n)``), ``batch_sharpness_rom`` (``mean(g^T H g) / mean(||g||^2)``),
      ``batch_sharpness_rom_se`` (delta method), ``batch_sharpness_n`` (batches used, int32) and
      ``batch_grad_norm`` (mean of ``||g_B||``); with an edge also ``sam_batch_edge`` (mean of the
      per-batch edge), ``sam_batch_ratio`` (mean of ``q_B / edge``) and ``sam_batch_ratio_se``.
      Jittable (``eta``, ``rho`` may be traced); costs ``n`` gradients and ``n`` HVPs.

    >>> import jax, jax.numpy as jnp
    >>> x = jnp.arange(8.0)                  # 8 examples; every batch's loss has curvature 1.5
    >>> loss = lambda w, batch: 0.75 * jnp.mean((w - batch) ** 2)
    >>> sample = lambda k: x[jax.random.choice(k, 8, (3,), replace=False)]
    >>> out = estimate(loss, jnp.array(20.0), sample, jax.random.PRNGKey(0), eta=0.5, rho=0.0)
    >>> [round(float(out[k]), 6) for k in ("batch_sharpness", "batch_sharpness_se", "batch_sharpness_rom")]
    [1.5, 0.0, 1.5]
    >>> int(out["batch_sharpness_n"]), round(float(out["sam_batch_edge"]), 6), round(float(out["sam_batch_ratio"]), 6)
    (10, 4.0, 0.375)
    """
    _check(max_batches, min_batches, rel_se, chunk, eta, rho, edge_fn)
    has_edge = eta is not None or edge_fn is not None
    if eta is not None:
        rho_ = 0.0 if rho is None else rho
        edge_fn = lambda g: edges.sam_edge(eta, rho_, jnp.sqrt(_vdot(g, g)))  # noqa: E731

    def one(k):
        q, gg, ghg, g = _terms(loss_fn, params, sample_batch(k))
        values = [q, ghg, gg, jnp.sqrt(gg)]
        if has_edge:
            e = jnp.asarray(edge_fn(g), q.dtype)
            values += [e, q / e]
        return jnp.stack([jnp.asarray(v, q.dtype) for v in values])

    dtype = jax.eval_shape(one, key).dtype
    k = 6 if has_edge else 4
    iters = -(-max_batches // chunk)

    def se_q(n, comoment):
        nf = jnp.maximum(n, 2).astype(dtype)
        return jnp.sqrt(jnp.maximum(comoment[0, 0], 0) / (nf - 1) / nf)

    def cond(state):
        i, n, mean, comoment = state
        done = (n >= min_batches) & (se_q(n, comoment) <= rel_se * jnp.abs(mean[0]))
        return (i < iters) & ~done

    def body(state):
        i, n, mean, comoment = state
        keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(i * chunk + jnp.arange(chunk))
        return (i + 1, *_merge(n, mean, comoment, jax.vmap(one)(keys)))  # one row per batch: (chunk, k)

    init = (jnp.asarray(0, jnp.int32), jnp.asarray(0, jnp.int32), jnp.zeros((k,), dtype), jnp.zeros((k, k), dtype))
    _, n, mean, comoment = jax.lax.while_loop(cond, body, init)
    return _summary(n, mean, comoment, se_q(n, comoment), has_edge)


def _merge(n, mean, comoment, x):
    """Chan et al.'s merge of running ``(n, mean, comoment)`` with the rows of ``x`` (``(b, k)``)."""
    dtype = mean.dtype
    b = x.shape[0]
    m_b = x.mean(0)
    d = x - m_b
    n_new = n + b
    delta = m_b - mean
    w = b / n_new.astype(dtype)
    return n_new, mean + delta * w, comoment + d.T @ d + jnp.outer(delta, delta) * (n.astype(dtype) * w)


def _summary(n, mean, comoment, se_q, has_edge: bool) -> dict:
    """:func:`estimate`'s columns from the running moments of ``(q, g'Hg, ||g||^2, ||g||[, edge, q/edge])``."""
    nf = n.astype(mean.dtype)
    cov = comoment / jnp.maximum(nf - 1, 1)  # sample (co)variances, ddof = 1
    rom = mean[1] / mean[2]
    # Delta method for a ratio of means: Var(abar / bbar) ~ Var(a - R b) / (n bbar^2).
    rom_var = (cov[1, 1] - 2 * rom * cov[1, 2] + rom**2 * cov[2, 2]) / (nf * mean[2] ** 2)
    out = {
        "batch_sharpness": mean[0],
        "batch_sharpness_se": se_q,
        "batch_sharpness_rom": rom,
        "batch_sharpness_rom_se": jnp.sqrt(jnp.maximum(rom_var, 0)),
        "batch_sharpness_n": n,
        "batch_grad_norm": mean[3],
    }
    if has_edge:
        out |= {
            "sam_batch_edge": mean[4],
            "sam_batch_ratio": mean[5],
            "sam_batch_ratio_se": jnp.sqrt(jnp.maximum(cov[5, 5], 0) / nf),
        }
    return out
