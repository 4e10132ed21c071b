"""The original method, re-implemented as the baseline samedge is measured against.

Long & Bartlett estimate the top Hessian eigenvalue by power iteration on finite-difference
Hessian-vector products: ``H v ~ (grad L(w + h v) - grad L(w - h v)) / (2 h)`` with ``h = 1e-3``
for a unit ``v``, stopping when two successive estimates differ by less than 0.1%. Each product
costs two gradients. Here it is compiled as one program (one ``lax.while_loop``), so the
comparison with Lanczos is of the methods, not of eager against compiled code.
"""

from __future__ import annotations

from typing import Callable

import jax
from jax.flatten_util import ravel_pytree

from samedge import curvature

FD_STEP = 1e-3  # the original method's finite-difference step on a unit vector
STOP_CHANGE = 1e-3  # stop when successive estimates change by less than 0.1%


def fd_hvp(loss_fn: Callable, params, h: float = FD_STEP):
    """Central finite-difference ``v -> (g(w + h v) - g(w - h v)) / (2 h)`` on flat ``(n,)`` vectors."""
    flat, unravel = ravel_pytree(params)
    grad_flat = jax.grad(lambda x: loss_fn(unravel(x)))

    def matvec(v):
        v = v.astype(flat.dtype)
        return (grad_flat(flat + h * v) - grad_flat(flat - h * v)) / (2 * h)

    return matvec, flat.shape[0]


def fd_power_iteration(loss_fn: Callable, params, v0, *, h: float = FD_STEP, tol: float = STOP_CHANGE,
                       max_iters: int = 1000) -> curvature.Eigen:
    """The baseline: power iteration on :func:`fd_hvp`, stopped on a relative change below ``tol``.

    ``num_matvecs`` counts finite-difference products (two gradients each).
    """
    matvec, _ = fd_hvp(loss_fn, params, h)
    return curvature.power_iteration(matvec, v0, max_iters=max_iters, tol=tol)
