"""Edges of stability: the largest Hessian eigenvalue an optimizer tolerates on a quadratic.

Every edge here comes from the same model.
For the adaptive optimizers (RMSProp, Adam, SAM over Adam) the model has a *frozen* diagonal
preconditioner ``P`` (the one the next step uses) and the edge bounds the largest eigenvalue of the
preconditioned Hessian ``P^{-1} H`` (computed as ``P^{-1/2} H P^{-1/2}``, which is symmetric), as in
Cohen et al. 2022, "Adaptive gradient methods at the edge of stability". On a quadratic with Hessian eigenvalue ``lam`` along a
unit vector ``u``, one step of the optimizer multiplies the component along ``u`` by a factor (or, with
momentum, a 2x2 matrix) that depends on ``lam``; the iteration is stable while that factor stays
within [-1, 1]. The edge is the ``lam`` at which it reaches -1. All functions are pure, accept
Python floats or JAX/NumPy arrays, and never divide by zero for valid inputs.

Weight decay (``weight_decay = wd``, the optimizer's decay mask ``D``, a 0/1 diagonal). *Coupled*
(GD, momentum, Nesterov and the SAM family: ``wd D w`` added to the gradient the base steps with; SAM's
ascent uses the loss gradient alone): the step descends ``L(w) + (wd/2) ||D w||**2``, and its edge is
given on the eigenvalue ``mu`` of ``H + wd D``, the operator the step sees. For GD and momentum it does
not move (``2/eta`` on ``H + wd D``, so ``lambda_max(H) <= 2/eta - wd``: exact when ``D = I``, a
sufficient condition otherwise). The SAM steps add the ascent's ``rho lam**2 / ||g||`` to the
*loss* curvature ``lam = mu - wd`` along an eigenvector of ``H`` that ``D`` decays (``D = I``, or an
eigenvector wholly in the decayed parameters): with ``c`` the decay-free edge's curvature bound
(``2/eta``; ``(2 + 2 beta)/eta`` with momentum) the edge is ``mu = wd + lam*`` with ``lam*`` the SAM root
at ``c - wd``. *Decoupled* (RMSProp, Adam and SAM over Adam: AdamW's ``w' = w - eta (step + wd w)``):
the step multiplies by ``r = 1 - eta wd`` besides its own update, and the edge on ``lambda_max(P^-1 H)``
replaces ``2 + 2 beta1`` by ``(1 + r)(1 + beta1)`` (``D = I``; with a mask no closed form is reported).
At ``weight_decay = 0`` every function returns exactly what it did without it.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "gd_edge", "sam_edge", "sam_edge_paper_form",
    "momentum_edge", "nesterov_edge", "usam_edge", "sam_momentum_edge",
    "rmsprop_edge", "adam_edge", "sam_adam_pre_edge", "at_step_size",
]


def _xp(*values):
    """NumPy for concrete inputs, jax.numpy as soon as one input is a JAX array or tracer."""
    for v in values:
        if type(v).__module__.startswith("jax"):
            import jax.numpy as jnp

            return jnp
    return np


def gd_edge(eta, weight_decay=0.0):
    """Edge of gradient descent: ``2 / eta``, with coupled decay on ``H + wd D``.

    GD multiplies the component along an eigenvector of eigenvalue ``lam`` by ``1 - eta*lam``;
    that factor reaches -1 at ``lam = 2/eta``. With decay the step is GD on ``H + wd D``: the same
    edge on its eigenvalue, so ``lambda_max(H) <= 2/eta - wd`` when ``D = I``.

    >>> gd_edge(0.1), gd_edge(0.1, weight_decay=0.01)
    (20.0, 20.0)
    """
    return 2.0 / eta + 0.0 * weight_decay


def at_step_size(eta, edge_of):
    """``edge_of(eta)`` where the step size ``eta > 0``; NaN (no edge) where it is 0 (a schedule's warmup
    from 0, or its end): an edge of 2/0 would be infinite, not measured.

    >>> import jax.numpy as jnp
    >>> [float(x) for x in at_step_size(jnp.array([0.0, 0.5]), gd_edge)]
    [nan, 4.0]
    """
    import jax.numpy as jnp

    return jnp.where(eta > 0, edge_of(jnp.where(eta > 0, eta, 1.0)), jnp.nan)


def _is_zero(value) -> bool:
    return isinstance(value, (int, float)) and value == 0


def _sam_root(xp, c, ratio):
    """The positive root of ``ratio lam**2 + lam - c = 0``, ``2 c / (1 + sqrt(1 + 4 c ratio))``."""
    return 2.0 * c / (1.0 + xp.sqrt(1.0 + 4.0 * c * ratio))


def sam_edge(eta, rho, grad_norm, weight_decay=0.0):
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

    With coupled decay (the ascent on the loss gradient): ``wd + 2c/(1 + sqrt(1 + 4 c rho/||g||))``,
    ``c = 2/eta - wd``, on ``H + wd D`` (module docstring).

    >>> round(float(sam_edge(0.1, 0.0, 1.0, weight_decay=0.5)), 12)
    20.0
    """
    xp = _xp(eta, rho, grad_norm, weight_decay)
    eta = xp.asarray(eta, dtype=float) if xp is np else eta
    rho_over_g = _safe_ratio(xp, rho, grad_norm)
    if _is_zero(weight_decay):
        return 4.0 / (eta * (1.0 + xp.sqrt(1.0 + 8.0 * rho_over_g / eta)))
    return weight_decay + _sam_root(xp, 2.0 / eta - weight_decay, rho_over_g)


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


def momentum_edge(eta, beta, weight_decay=0.0):
    """Edge of heavy-ball momentum, ``v' = beta v + g; w' = w - eta v'``: ``(2 + 2 beta) / eta``.

    Along an eigenvector of eigenvalue ``lam`` the coordinate obeys
    ``x_{t+1} = (1 + beta - eta lam) x_t - beta x_{t-1}`` (use ``eta v_{t+1} = x_t - x_{t+1}``), with
    characteristic polynomial ``z**2 - (1 + beta - eta lam) z + beta``. Its roots have product
    ``beta < 1`` and never cross ``+1`` for ``lam > 0``; a root reaches ``-1`` when
    ``1 + (1 + beta - eta lam) + beta = 0``, i.e. at ``lam = (2 + 2 beta) / eta``.

    >>> round(float(momentum_edge(0.1, 0.9)), 12)
    38.0
    >>> momentum_edge(0.1, 0.0) == gd_edge(0.1)
    True

    Coupled decay: the same edge on ``H + wd D``.
    """
    return (2.0 + 2.0 * beta) / eta + 0.0 * weight_decay


def nesterov_edge(eta, beta, weight_decay=0.0):
    """Edge of Nesterov momentum in optax's form: ``(2 + 2 beta) / (eta (1 + 2 beta))``.

    The step (``optax.sgd(eta, momentum=beta, nesterov=True)``) is ``v' = g + beta v``,
    ``w' = w - eta (g + beta v')`` with ``g`` the gradient at ``w``. Along an eigenvector the state
    ``(x, v)`` is multiplied by ``[[1 - eta lam (1 + beta), -eta beta**2], [lam, beta]]``, whose
    trace is ``1 + beta - eta lam (1 + beta)`` and determinant ``beta (1 - eta lam)``. An eigenvalue
    reaches ``-1`` when ``1 + trace + det = 2 + 2 beta - eta lam (1 + 2 beta) = 0``; the other Jury
    conditions (``1 - trace + det = eta lam > 0``, ``|det| < 1``) hold there.

    >>> round(float(nesterov_edge(0.1, 0.5)), 12)
    15.0
    >>> nesterov_edge(0.1, 0.0) == gd_edge(0.1)
    True

    Coupled decay: the same edge on ``H + wd D``.
    """
    return (2.0 + 2.0 * beta) / (eta * (1.0 + 2.0 * beta)) + 0.0 * weight_decay


def usam_edge(eta, rho, weight_decay=0.0):
    """Edge of unnormalised SAM, ``w' = w - eta grad L(w + rho grad L(w))``, in its stable form.

    On the quadratic the ascent point's gradient along an eigenvector is ``lam (1 + rho lam) x``,
    so the factor is ``1 - eta lam (1 + rho lam)``. It reaches -1 at ``eta lam (1 + rho lam) = 2``,
    i.e. ``rho lam**2 + lam - 2/eta = 0``, whose positive root times its conjugate gives

        usam_edge = 4 / (eta * (1 + sqrt(1 + 8 rho / eta)))

    a constant (no gradient norm), equal to ``2/eta`` at ``rho = 0``.

    >>> round(float(usam_edge(0.1, 0.1)), 12)
    10.0
    >>> round(float(usam_edge(0.1, 0.0)), 12)
    20.0

    Coupled decay (the ascent on the loss gradient): ``wd + 2c/(1 + sqrt(1 + 4 c rho))``, ``c = 2/eta - wd``.
    """
    xp = _xp(eta, rho, weight_decay)
    if _is_zero(weight_decay):
        return 4.0 / (eta * (1.0 + xp.sqrt(1.0 + 8.0 * xp.asarray(rho) / eta)))
    return weight_decay + _sam_root(xp, 2.0 / eta - weight_decay, xp.asarray(rho))


def sam_momentum_edge(eta, rho, beta, grad_norm, weight_decay=0.0):
    """Edge of SAM feeding heavy-ball momentum, in its stable form.

    The step is ``v' = beta v + grad L(w + rho g/||g||)``, ``w' = w - eta v'``. On the quadratic
    (``||g||`` held fixed) the SAM gradient along an eigenvector is ``lam (1 + rho lam/||g||) x``:
    heavy ball on the effective curvature ``lam (1 + rho lam/||g||)``, so by :func:`momentum_edge`
    the edge solves ``eta lam (1 + rho lam/||g||) = 2 (1 + beta)``. The positive root of
    ``(rho/||g||) lam**2 + lam - 2 (1 + beta)/eta = 0`` times its conjugate gives

        sam_momentum_edge = 4 (1 + beta) / (eta (1 + sqrt(1 + 8 rho (1 + beta) / (eta ||g||))))

    which is :func:`sam_edge` at ``beta = 0`` and :func:`momentum_edge` at ``rho = 0``;
    ``grad_norm = 0`` with ``rho > 0`` gives 0.

    >>> round(float(sam_momentum_edge(0.1, 0.0, 0.9, 1.0)), 12)
    38.0
    >>> round(float(sam_momentum_edge(0.1, 0.1, 0.0, 1.0)), 12) == round(float(sam_edge(0.1, 0.1, 1.0)), 12)
    True
    """
    xp = _xp(eta, rho, beta, grad_norm, weight_decay)
    eta = xp.asarray(eta, dtype=float) if xp is np else eta
    rho_over_g = _safe_ratio(xp, rho, grad_norm)
    if not _is_zero(weight_decay):  # coupled decay: wd + the SAM root at (2 + 2 beta)/eta - wd
        return weight_decay + _sam_root(xp, (2.0 + 2.0 * beta) / eta - weight_decay, rho_over_g)
    c = 1.0 + beta
    return 4.0 * c / (eta * (1.0 + xp.sqrt(1.0 + 8.0 * c * rho_over_g / eta)))


def rmsprop_edge(eta, weight_decay=0.0):
    """Edge of RMSProp in the preconditioned sharpness: ``lambda_max(P^{-1} H) = 2 / eta``.

    The step (``optax.rmsprop``: ``nu' = beta2 nu + (1 - beta2) g**2``, no bias correction, eps inside
    the square root) is ``w' = w - eta g / P`` with ``P = sqrt(nu' + eps)``. With ``P`` frozen, in the
    coordinates ``u = P^{1/2} w`` it is gradient descent on ``P^{-1/2} H P^{-1/2}``, which has the
    eigenvalues of ``P^{-1} H``; GD's factor ``1 - eta mu`` reaches -1 at ``mu = 2/eta``.

    >>> rmsprop_edge(0.01)
    200.0

    Decoupled decay (``D = I``): ``(2 - eta wd) / eta`` (the step multiplies by ``1 - eta wd - eta mu``).
    """
    return (2.0 - eta * weight_decay) / eta if not _is_zero(weight_decay) else 2.0 / eta


def adam_edge(eta, beta1, weight_decay=0.0):
    """Edge of Adam in the preconditioned sharpness: ``(2 + 2 beta1) / (eta (1 - beta1))``.

    Adam as optax has it: ``m' = beta1 m + (1 - beta1) g`` (an exponential average), bias-corrected
    by ``1 - beta1**t`` (which tends to 1, so the steady state ignores it), ``w' = w - eta m_hat / P``
    with ``P = sqrt(v_hat) + eps`` (eps outside the square root). With ``P`` frozen, along an
    eigenvector of ``P^{-1/2} H P^{-1/2}`` with eigenvalue ``mu`` (``u = P^{1/2} w`` coordinates)
    ``x_{t+1} = x_t - eta m_{t+1}``, ``m_{t+1} = beta1 m_t + (1 - beta1) mu x_t``, whose
    characteristic polynomial is ``z**2 - (1 + beta1 - eta (1 - beta1) mu) z + beta1``. A root
    reaches -1 when ``2 + 2 beta1 = eta (1 - beta1) mu``. At ``beta1 = 0.9`` this is the ``38/eta`` of
    Cohen et al. (2022); at ``beta1 = 0`` it is RMSProp's ``2/eta``.

    >>> round(float(adam_edge(0.01, 0.9)), 9)
    3800.0
    >>> adam_edge(0.1, 0.0) == rmsprop_edge(0.1)
    True

    Decoupled decay (AdamW, ``D = I``): ``x_{t+1} = r x_t - eta m_{t+1}`` with ``r = 1 - eta wd``, whose
    characteristic polynomial ``z**2 - (r + beta1 - eta (1 - beta1) mu) z + r beta1`` has a root at -1
    when ``eta (1 - beta1) mu = (1 + r)(1 + beta1)``: the edge ``(2 - eta wd)(1 + beta1)/(eta (1 - beta1))``.

    >>> round(float(adam_edge(0.01, 0.9, weight_decay=10.0)), 9)
    3610.0
    """
    return _adam_a(eta, beta1, weight_decay)


def _adam_a(eta, beta1, weight_decay):
    if _is_zero(weight_decay):
        return (2.0 + 2.0 * beta1) / (eta * (1.0 - beta1))
    return (2.0 - eta * weight_decay) * (1.0 + beta1) / (eta * (1.0 - beta1))


def sam_adam_pre_edge(eta, rho, beta1, pre_grad_norm, weight_decay=0.0):
    """Edge of SAM over Adam with the ascent in the preconditioner's geometry, in ``lambda_max(P^{-1} H)``.

    The step ascends to ``w + rho P^{-1} g / ||P^{-1/2} g||`` and takes Adam's step with the gradient
    there. In ``u = P^{1/2} w`` (``P`` frozen) the gradient is ``P^{-1/2} g``, the Hessian
    ``H_u = P^{-1/2} H P^{-1/2}``, the ascent ``u + rho g_u / ||g_u||`` and Adam's step plain
    EMA-momentum descent: SAM with momentum on ``H_u`` with gradient norm
    ``G = ||g_u|| = ||P^{-1/2} g||`` (the norm that enters). Along an eigenvector of ``H_u`` with
    eigenvalue ``mu`` the SAM gradient is ``mu (1 + rho mu / G) x``: Adam on the effective curvature
    ``mu (1 + rho mu / G)``, so by :func:`adam_edge` the edge solves
    ``(rho / G) mu**2 + mu - a = 0`` with ``a = (2 + 2 beta1) / (eta (1 - beta1))``, whose positive
    root is ``2 a / (1 + sqrt(1 + 4 rho a / G))`` (the stable form). At ``beta1 = 0`` it is
    :func:`sam_edge` on ``H_u``; at ``rho = 0`` it is :func:`adam_edge`.

    >>> round(float(sam_adam_pre_edge(0.1, 0.0, 0.9, 1.0)), 9) == round(float(adam_edge(0.1, 0.9)), 9)
    True
    >>> round(float(sam_adam_pre_edge(0.1, 0.1, 0.0, 0.5)), 9) == round(float(sam_edge(0.1, 0.1, 0.5)), 9)
    True
    """
    xp = _xp(eta, rho, beta1, pre_grad_norm, weight_decay)
    eta = xp.asarray(eta, dtype=float) if xp is np else eta
    a = _adam_a(eta, beta1, weight_decay)  # decoupled decay: (2 - eta wd)(1 + beta1)/(eta (1 - beta1))
    rho_over_g = _safe_ratio(xp, rho, pre_grad_norm)
    return 2.0 * a / (1.0 + xp.sqrt(1.0 + 4.0 * a * rho_over_g))
