"""Which part of the Hessian makes the sharpness: the Gauss-Newton part's top eigenvalue.

A loss written as outputs plus a loss on them, ``L(w) = l(f(w))`` (``f = output_fn(., batch)``, the
logits; ``l = output_loss(., batch)``), has the Hessian

    H = J^T H_out J + sum_i (dl/df_i) grad^2 f_i  =  G + (the rest),

with ``J = df/dw`` the Jacobian of the outputs and ``H_out = grad^2 l`` the loss's Hessian in the
outputs. ``G``, the Gauss-Newton matrix, is positive semi-definite when ``l`` is convex in the outputs
(square loss, softmax cross-entropy), and the Hessian's outliers are known to come from it (Sagun et
al. 2017; Papyan 2020). Columns:

- ``gn_lambda_max`` = lambda_max(G), by Lanczos on ``v -> J^T (H_out (J v))`` (a Jacobian-vector product
  forward, a vector-Jacobian product back; ``J`` is never formed), warm-started from its own vector;
- ``gn_over_lambda_top`` = ``gn_lambda_max / lambda_top``, against the Hessian's largest *algebraic*
  eigenvalue (the top-k probe's; ``G`` is PSD, so compare it with the top of the spectrum, not with a
  negative eigenvalue of larger magnitude): 1 when the top of the Hessian is all Gauss-Newton, above
  1 when the rest pulls it down, below when the rest adds to it;
- ``resid_gn``, ``hvps_gn``: the relative residual and the products spent.

Cost: one warm-started Lanczos run (``min_hvps`` to ``max_hvps`` products; 8-9 on quick MNIST). One
product is the linearised outputs and their transpose (the forward pass itself once per
measurement, by ``jax.linearize``): 0.65 of an HVP's time on quick MNIST, 0.83 on quick CIFAR-10
(measured on 2 CPU cores). With ``chunk_size`` (a run's ``--chunk-size``) or a batch padded over
devices, each product is the gradient of the mean over the examples of ``<H_out J v, f(w')>`` (the
first factor held constant), chunked or unpadded like the loss: a forward, its tangent and a backward
pass, 0.7-1.5 HVPs. Carry: the previous top vector of G.

The task gives ``output_fn`` and ``output_loss`` (:func:`samedge.make_task`; the built-in tasks do,
a model with state with the outputs the measured loss uses: batch statistics, dropout off); with
``output_loss(output_fn(w, b), b) == loss_fn(w, b)``.

>>> import jax, jax.numpy as jnp
>>> from samedge import measurement, optimizers, MeasureSettings
>>> x = jnp.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
>>> f = lambda w, b: jnp.tanh(b @ w["v"])           # outputs (3,)
>>> l = lambda out, b: 0.5 * jnp.sum(out ** 2)       # H_out = I
>>> loss = lambda w, b: l(f(w, b), b)
>>> w = {"v": jnp.array([0.0, 0.0])}                  # tanh'(0) = 1: J = x, G = x^T x
>>> m = measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(tol=1e-6), probes=[gauss_newton(f, l)])
>>> row, _ = m.measure(w, x, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
>>> round(float(row["gn_lambda_max"]), 4), round(float(row["gn_over_lambda_top"]), 4)  # (7 + sqrt 13)/2; H = G
(5.3028, 1.0)
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from samedge.probes import Context, Probe, top_eigen, warm_start

__all__ = ["gauss_newton", "gn_matvec", "NAME"]

NAME = "gauss_newton"


def _out_hessian_product(output_loss: Callable, out, tangent, batch):
    """``H_out t``: the loss's Hessian in the outputs times ``t`` (forward over reverse)."""
    return jax.jvp(jax.grad(lambda o: output_loss(o, batch)), (out,), (tangent,))[1]


def gn_matvec(output_fn: Callable, output_loss: Callable, params, batch, *, chunk_size: int = 0) -> Callable:
    """The Gauss-Newton product ``v -> J^T H_out J v`` at ``(params, batch)`` on flat vectors.

    ``J = d output_fn(w, batch)/dw`` at ``params``, ``H_out = grad^2 output_loss(., batch)`` at the
    outputs. Without chunks, the outputs are linearised once (``jax.linearize``) and each product is
    the linear map ``J v``, ``H_out`` on it, and its transpose ``J^T``; with ``chunk_size`` (or a
    batch with a ``mean_of`` method, :class:`samedge.sharding.PaddedBatch`) the product is
    ``grad_w' E_chunks[<stop_gradient(H_out J v), output_fn(w', chunk)>]`` at ``w' = params``, the
    mean taken like the loss's (:func:`samedge.chunking.chunked_mean`), exact for a loss that is a
    mean over the examples.

    Args:
      output_fn: ``(params, batch) -> outputs`` (any pytree of arrays).
      output_loss: ``(outputs, batch) -> scalar``.
      params: the point, a pytree.
      batch: the batch.
      chunk_size: examples per pass (0: one pass).

    Returns:
      ``(n,) -> (n,)``, symmetric positive semi-definite for a loss convex in the outputs.

    >>> x = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    >>> mv = gn_matvec(lambda w, b: b @ w, lambda o, b: jnp.sum(o ** 2), jnp.zeros(2), x)
    >>> mv(jnp.array([1.0, 0.0])).tolist()   # 2 x^T x e_1
    [20.0, 28.0]
    """
    flat, unravel = ravel_pytree(params)
    mean_of = getattr(batch, "mean_of", None)
    if not chunk_size and mean_of is None:
        out, lin = jax.linearize(lambda p: output_fn(p, batch), params)
        back = jax.linear_transpose(lin, params)

        def matvec(v):
            h_jv = _out_hessian_product(output_loss, out, lin(unravel(v.astype(flat.dtype))), batch)
            return ravel_pytree(back(h_jv)[0])[0]

        return matvec

    def matvec(v):
        tangent = unravel(v.astype(flat.dtype))

        def form(p, b):  # the mean over b's examples of <H_out J v, f(p)>: its gradient at params is G v
            out, jv = jax.jvp(lambda q: output_fn(q, b), (params,), (tangent,))
            h_jv = jax.lax.stop_gradient(_out_hessian_product(output_loss, out, jv, b))
            now = output_fn(p, b)
            return sum(jnp.vdot(u, o) for u, o in zip(jax.tree.leaves(h_jv), jax.tree.leaves(now)))

        if mean_of is not None:
            mean = lambda p: mean_of(form, p)  # noqa: E731
        else:
            from samedge import chunking

            chunked = chunking.chunked_mean(form, chunk_size)
            mean = lambda p: chunked(p, batch)  # noqa: E731
        return ravel_pytree(jax.grad(mean)(params))[0]

    return matvec


def gauss_newton(output_fn: Callable | None, output_loss: Callable | None, settings=None, *,
                 chunk_size: int = 0) -> Probe:
    """The Gauss-Newton probe, named ``gauss_newton`` (see the module docstring).

    Args:
      output_fn: ``(params, batch) -> outputs``, the task's (``None``: the probe refuses to measure,
        naming what to add).
      output_loss: ``(outputs, batch) -> scalar``, with ``output_loss(output_fn(w, b), b)`` the loss measured.
      settings: the measurement's :class:`~samedge.measure.MeasureSettings` (sizes the workspace it
        declares; ``None``: the top-k probe's, at the same ``max_hvps``).
      chunk_size: products over this many examples at a time (a run's ``--chunk-size``; 0: one pass).

    Returns:
      The :class:`~samedge.probes.Probe` (one start row).

    Alone, on a linear model with the mean square loss over 2 outputs (``H_out = I``, so ``H = G = x'x``):

    >>> import jax
    >>> from samedge import measure, optimizers, probes
    >>> x = jnp.array([[1.0, 0.0], [0.0, 3.0]])
    >>> f, l = (lambda w, b: b @ w), (lambda out, b: jnp.mean(out ** 2))
    >>> ctx = probes.context(lambda w, b: l(f(w, b), b), jnp.ones(2), x, optimizers.build("gd", 0.1),
    ...                      measure.MeasureSettings(), jax.random.PRNGKey(0))
    >>> p = gauss_newton(f, l)
    >>> columns, _ = p.measure(ctx, p.init(jnp.ones(2), jnp.array([[0.6, 0.8]])), jax.random.PRNGKey(1))
    >>> round(float(columns["gn_lambda_max"]), 4)   # x'x = diag(1, 9)
    9.0
    """

    def measure(ctx: Context, carry, key):
        if output_fn is None or output_loss is None:
            from samedge.errors import ConfigError

            raise ConfigError("gauss_newton needs the loss as outputs plus a loss on them: give the task "
                              "output_fn=(params, batch) -> outputs and output_loss=(outputs, batch) -> loss")
        matvec = gn_matvec(output_fn, output_loss, ctx.params, ctx.batch, chunk_size=chunk_size)
        v0 = warm_start(carry[0], key, ctx.settings.start_noise).astype(ctx.flat_grad.dtype)
        e = top_eigen(ctx, matvec, v0)
        lam = jnp.abs(e.values[0])  # G is PSD: its largest-magnitude eigenvalue is its largest
        columns = {"gn_lambda_max": lam, "resid_gn": e.residuals[0], "hvps_gn": e.num_matvecs}
        if "lambda_top" in ctx.columns:
            columns["gn_over_lambda_top"] = lam / ctx.columns["lambda_top"]
        new = e.vectors[:1].astype(carry.dtype)
        return (columns, new, e.workspace) if ctx.workspace is not None else (columns, new)

    iters = settings.max_hvps if settings is not None else 0
    return Probe(NAME, lambda params, start: start, measure, rows=1, workspace_iters=iters)
