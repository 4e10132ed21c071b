"""Edges of stability: the largest Hessian eigenvalue an optimizer tolerates on a quadratic.

Every edge here comes from the same model. On a quadratic with Hessian eigenvalue ``lam`` along a
unit vector ``u``, one step of the optimizer multiplies the component along ``u`` by a factor (or, with
momentum, a 2x2 matrix) that depends on ``lam``; the iteration is stable while that factor stays
within [-1, 1]. The edge is the ``lam`` at which it reaches -1. All functions are pure, accept
Python floats or JAX/NumPy arrays, and never divide by zero for valid inputs.
"""

from __future__ import annotations

import numpy as np

__all__ = ["gd_edge", "sam_edge", "sam_edge_paper_form"]


def _xp(*values):
    """NumPy for concrete inputs, jax.numpy as soon as one input is a JAX array or tracer."""
    for v in values:
        if type(v).__module__.startswith("jax"):
            import jax.numpy as jnp

            return jnp
    return np


def gd_edge(eta):
    """Edge of gradient descent: ``2 / eta``.

    GD multiplies the component along an eigenvector of eigenvalue ``lam`` by ``1 - eta*lam``;
    that factor reaches -1 at ``lam = 2/eta``.

    >>> gd_edge(0.1)
    20.0
    """
    return 2.0 / eta


def sam_edge(eta, rho, grad_norm):
    """Edge of normalised SAM, ``w' = w - eta * grad L(w + rho g/||g||)``, in its stable form.

    On the quadratic the factor along the top eigenvector is ``1 - eta*lam*(1 + rho*lam/||g||)``.
    Setting it to -1 gives ``rho*lam**2/||g|| + lam - 2/eta = 0`` whose positive root is
    ``(||g||/(2 rho)) (sqrt(1 + 8 rho/(eta ||g||)) - 1)``; multiplying by the conjugate gives

        sam_edge = 4 / (eta * (1 + sqrt(1 + 8 rho / (eta ||g||))))

    which equals ``2/eta`` at ``rho = 0``, tends to 0 as ``||g|| -> 0`` (for ``rho > 0``) and never
    divides by zero: ``grad_norm = 0`` with ``rho > 0`` gives exactly 0.

    >>> round(float(sam_edge(0.1, 0.0, 1.0)), 12)
    20.0
    >>> round(float(sam_edge(0.1, 0.1, 0.0)), 12)
    0.0
    """
    xp = _xp(eta, rho, grad_norm)
    eta = xp.asarray(eta, dtype=float) if xp is np else eta
    rho_over_g = _safe_ratio(xp, rho, grad_norm)
    return 4.0 / (eta * (1.0 + xp.sqrt(1.0 + 8.0 * rho_over_g / eta)))


def _safe_ratio(xp, rho, grad_norm):
    """``rho / ||g||`` with 0/0 = 0 (no ascent, GD) and rho/0 = inf (edge 0)."""
    rho = xp.asarray(rho)
    grad_norm = xp.asarray(grad_norm)
    positive = grad_norm > 0
    safe_g = xp.where(positive, grad_norm, 1.0)
    return xp.where(positive, rho / safe_g, xp.where(rho > 0, xp.inf, 0.0))


def sam_edge_paper_form(eta, rho, grad_norm):
    """The paper's form ``(||g||/(2 rho)) (sqrt(1 + 8 rho/(eta ||g||)) - 1)``.

    Kept for tests and for readers comparing with Long & Bartlett (2024); it cancels
    catastrophically when ``rho/(eta ||g||)`` is small and is undefined at ``rho = 0``.
    """
    return (grad_norm / (2.0 * rho)) * (np.sqrt(1.0 + 8.0 * rho / (eta * grad_norm)) - 1.0)
