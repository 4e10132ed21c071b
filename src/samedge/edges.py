r"""Edges of stability: the largest Hessian eigenvalue an optimizer tolerates on a quadratic.

Every edge here comes from the same model. On a quadratic with Hessian eigenvalue :math:`\lambda`
along a unit vector :math:`u`, one step of the optimizer multiplies the component along :math:`u` by
a factor (or, with momentum, a 2x2 matrix) that depends on :math:`\lambda`; the iteration is stable
while that factor stays within :math:`[-1, 1]`. The edge is the :math:`\lambda` at which it reaches
:math:`-1`. For the adaptive optimizers (RMSProp, Adam, SAM over Adam) the model has a *frozen*
diagonal preconditioner :math:`P` (the one the next step uses) and the edge bounds the largest
eigenvalue of the preconditioned Hessian :math:`P^{-1} H` (computed as :math:`P^{-1/2} H P^{-1/2}`,
which is symmetric), as in Cohen et al. 2022, "Adaptive gradient methods at the edge of stability".
All functions are pure, accept Python floats or JAX/NumPy arrays, and never divide by zero for valid
inputs.

Weight decay (``weight_decay`` :math:`= \mathrm{wd}`, the optimizer's decay mask :math:`D`, a 0/1
diagonal). *Coupled* (GD, momentum, Nesterov and the SAM family: :math:`\mathrm{wd}\, D w` added to
the gradient the base steps with; SAM's ascent uses the loss gradient alone): the step descends
:math:`L(w) + \tfrac{\mathrm{wd}}{2} \|D w\|^2`, and its edge is given on the eigenvalue :math:`\mu`
of :math:`H + \mathrm{wd}\, D`, the operator the step sees. For GD and momentum it does not move
(:math:`2/\eta` on :math:`H + \mathrm{wd}\, D`, so :math:`\lambda_{\max}(H) \le 2/\eta - \mathrm{wd}`:
exact when :math:`D = I`, a sufficient condition otherwise). The SAM steps add the ascent's
:math:`\rho \lambda^2 / \|g\|` to the *loss* curvature :math:`\lambda = \mu - \mathrm{wd}` along an
eigenvector of :math:`H` that :math:`D` decays (:math:`D = I`, or an eigenvector wholly in the
decayed parameters): with :math:`c` the decay-free edge's curvature bound (:math:`2/\eta`;
:math:`(2 + 2\beta)/\eta` with momentum) the edge is :math:`\mu = \mathrm{wd} + \lambda^*` with
:math:`\lambda^*` the SAM root at :math:`c - \mathrm{wd}`. *Decoupled* (RMSProp, Adam and SAM over
Adam: AdamW's :math:`w' = w - \eta\,(\text{step} + \mathrm{wd}\, w)`): the step multiplies by
:math:`r = 1 - \eta\,\mathrm{wd}` besides its own update, and the edge on
:math:`\lambda_{\max}(P^{-1} H)` replaces :math:`2 + 2\beta_1` by :math:`(1 + r)(1 + \beta_1)`
(:math:`D = I`; with a mask no closed form is reported). At ``weight_decay = 0`` every function
returns exactly what it did without it.
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
    r"""Edge of gradient descent: :math:`2/\eta`, with coupled decay on :math:`H + \mathrm{wd}\, D`.

    GD multiplies the component along an eigenvector of eigenvalue :math:`\lambda` by
    :math:`1 - \eta\lambda`; that factor reaches :math:`-1` at :math:`\lambda = 2/\eta`. With decay the
    step is GD on :math:`H + \mathrm{wd}\, D`: the same edge on its eigenvalue, so
    :math:`\lambda_{\max}(H) \le 2/\eta - \mathrm{wd}` when :math:`D = I`.

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
    r"""Edge of normalised SAM, :math:`w' = w - \eta \nabla L(w + \rho\, g/\|g\|)`, in its stable form.

    On the quadratic the factor along the top eigenvector is
    :math:`1 - \eta\lambda\,(1 + \rho\lambda/\|g\|)`. Setting it to :math:`-1` gives
    :math:`\rho\lambda^2/\|g\| + \lambda - 2/\eta = 0`, whose positive root is
    :math:`\frac{\|g\|}{2\rho}\bigl(\sqrt{1 + 8\rho/(\eta\|g\|)} - 1\bigr)`; multiplying by the
    conjugate gives

    .. math::

        \lambda_{\mathrm{SAM}} = \frac{4}{\eta\,\bigl(1 + \sqrt{1 + 8\rho/(\eta\,\|g\|)}\bigr)},

    which equals :math:`2/\eta` at :math:`\rho = 0`, tends to 0 as :math:`\|g\| \to 0` (for
    :math:`\rho > 0`) and never divides by zero: ``grad_norm = 0`` with ``rho > 0`` gives exactly 0.

    >>> round(float(sam_edge(0.1, 0.0, 1.0)), 12)
    20.0
    >>> round(float(sam_edge(0.1, 0.1, 0.0)), 12)
    0.0

    With coupled decay (the ascent on the loss gradient):
    :math:`\mathrm{wd} + 2c/\bigl(1 + \sqrt{1 + 4c\rho/\|g\|}\bigr)`, :math:`c = 2/\eta - \mathrm{wd}`,
    on :math:`H + \mathrm{wd}\, D` (module docstring).

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
    r"""The paper's form :math:`\frac{\|g\|}{2\rho}\bigl(\sqrt{1 + 8\rho/(\eta\|g\|)} - 1\bigr)`.

    Kept for tests and for readers comparing with Long & Bartlett (2024); it cancels
    catastrophically when :math:`\rho/(\eta\|g\|)` is small and is undefined at :math:`\rho = 0`.
    """
    return (grad_norm / (2.0 * rho)) * (np.sqrt(1.0 + 8.0 * rho / (eta * grad_norm)) - 1.0)


def momentum_edge(eta, beta, weight_decay=0.0):
    r"""Edge of heavy-ball momentum, :math:`v' = \beta v + g,\ w' = w - \eta v'`: :math:`(2 + 2\beta)/\eta`.

    Along an eigenvector of eigenvalue :math:`\lambda` the coordinate obeys
    :math:`x_{t+1} = (1 + \beta - \eta\lambda)\, x_t - \beta x_{t-1}` (use
    :math:`\eta v_{t+1} = x_t - x_{t+1}`), with characteristic polynomial
    :math:`z^2 - (1 + \beta - \eta\lambda)\, z + \beta`. Its roots have product :math:`\beta < 1` and
    never cross :math:`+1` for :math:`\lambda > 0`; a root reaches :math:`-1` when
    :math:`1 + (1 + \beta - \eta\lambda) + \beta = 0`, i.e. at

    .. math::

        \lambda_{\mathrm{HB}} = \frac{2 + 2\beta}{\eta}.

    >>> round(float(momentum_edge(0.1, 0.9)), 12)
    38.0
    >>> momentum_edge(0.1, 0.0) == gd_edge(0.1)
    True

    Coupled decay: the same edge on :math:`H + \mathrm{wd}\, D`.
    """
    return (2.0 + 2.0 * beta) / eta + 0.0 * weight_decay


def nesterov_edge(eta, beta, weight_decay=0.0):
    r"""Edge of Nesterov momentum in optax's form: :math:`(2 + 2\beta) / (\eta\,(1 + 2\beta))`.

    The step (``optax.sgd(eta, momentum=beta, nesterov=True)``) is :math:`v' = g + \beta v`,
    :math:`w' = w - \eta\,(g + \beta v')` with :math:`g` the gradient at :math:`w`. Along an eigenvector
    the state :math:`(x, v)` is multiplied by

    .. math::

        \begin{pmatrix} 1 - \eta\lambda(1 + \beta) & -\eta\beta^2 \\ \lambda & \beta \end{pmatrix},

    whose trace is :math:`1 + \beta - \eta\lambda(1 + \beta)` and determinant
    :math:`\beta(1 - \eta\lambda)`. An eigenvalue reaches :math:`-1` when
    :math:`1 + \mathrm{tr} + \det = 2 + 2\beta - \eta\lambda(1 + 2\beta) = 0`; the other Jury conditions
    (:math:`1 - \mathrm{tr} + \det = \eta\lambda > 0`, :math:`|\det| < 1`) hold there.

    >>> round(float(nesterov_edge(0.1, 0.5)), 12)
    15.0
    >>> nesterov_edge(0.1, 0.0) == gd_edge(0.1)
    True

    Coupled decay: the same edge on :math:`H + \mathrm{wd}\, D`.
    """
    return (2.0 + 2.0 * beta) / (eta * (1.0 + 2.0 * beta)) + 0.0 * weight_decay


def usam_edge(eta, rho, weight_decay=0.0):
    r"""Edge of unnormalised SAM, :math:`w' = w - \eta \nabla L(w + \rho \nabla L(w))`, in its stable form.

    On the quadratic the ascent point's gradient along an eigenvector is
    :math:`\lambda(1 + \rho\lambda)\, x`, so the factor is :math:`1 - \eta\lambda(1 + \rho\lambda)`. It
    reaches :math:`-1` at :math:`\eta\lambda(1 + \rho\lambda) = 2`, i.e.
    :math:`\rho\lambda^2 + \lambda - 2/\eta = 0`, whose positive root times its conjugate gives

    .. math::

        \lambda_{\mathrm{USAM}} = \frac{4}{\eta\,\bigl(1 + \sqrt{1 + 8\rho/\eta}\bigr)},

    a constant (no gradient norm), equal to :math:`2/\eta` at :math:`\rho = 0`.

    >>> round(float(usam_edge(0.1, 0.1)), 12)
    10.0
    >>> round(float(usam_edge(0.1, 0.0)), 12)
    20.0

    Coupled decay (the ascent on the loss gradient):
    :math:`\mathrm{wd} + 2c/\bigl(1 + \sqrt{1 + 4c\rho}\bigr)`, :math:`c = 2/\eta - \mathrm{wd}`.
    """
    xp = _xp(eta, rho, weight_decay)
    if _is_zero(weight_decay):
        return 4.0 / (eta * (1.0 + xp.sqrt(1.0 + 8.0 * xp.asarray(rho) / eta)))
    return weight_decay + _sam_root(xp, 2.0 / eta - weight_decay, xp.asarray(rho))


def sam_momentum_edge(eta, rho, beta, grad_norm, weight_decay=0.0):
    r"""Edge of SAM feeding heavy-ball momentum, in its stable form.

    The step is :math:`v' = \beta v + \nabla L(w + \rho\, g/\|g\|)`, :math:`w' = w - \eta v'`. On the
    quadratic (:math:`\|g\|` held fixed) the SAM gradient along an eigenvector is
    :math:`\lambda(1 + \rho\lambda/\|g\|)\, x`: heavy ball on the effective curvature
    :math:`\lambda(1 + \rho\lambda/\|g\|)`, so by :func:`momentum_edge` the edge solves
    :math:`\eta\lambda(1 + \rho\lambda/\|g\|) = 2(1 + \beta)`. The positive root of
    :math:`(\rho/\|g\|)\lambda^2 + \lambda - 2(1 + \beta)/\eta = 0` times its conjugate gives

    .. math::

        \lambda = \frac{4(1 + \beta)}{\eta\,\bigl(1 + \sqrt{1 + 8\rho(1 + \beta)/(\eta\|g\|)}\bigr)},

    which is :func:`sam_edge` at :math:`\beta = 0` and :func:`momentum_edge` at :math:`\rho = 0`;
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
    r"""Edge of RMSProp in the preconditioned sharpness: :math:`\lambda_{\max}(P^{-1} H) = 2/\eta`.

    The step (``optax.rmsprop``: :math:`\nu' = \beta_2 \nu + (1 - \beta_2)\, g^2`, no bias correction,
    :math:`\epsilon` inside the square root) is :math:`w' = w - \eta\, g / P` with
    :math:`P = \sqrt{\nu' + \epsilon}`. With :math:`P` frozen, in the coordinates
    :math:`u = P^{1/2} w` it is gradient descent on :math:`P^{-1/2} H P^{-1/2}`, which has the
    eigenvalues of :math:`P^{-1} H`; GD's factor :math:`1 - \eta\mu` reaches :math:`-1` at
    :math:`\mu = 2/\eta`.

    >>> rmsprop_edge(0.01)
    200.0

    Decoupled decay (:math:`D = I`): :math:`(2 - \eta\,\mathrm{wd})/\eta` (the step multiplies by
    :math:`1 - \eta\,\mathrm{wd} - \eta\mu`).
    """
    return (2.0 - eta * weight_decay) / eta if not _is_zero(weight_decay) else 2.0 / eta


def adam_edge(eta, beta1, weight_decay=0.0):
    r"""Edge of Adam in the preconditioned sharpness: :math:`(2 + 2\beta_1) / (\eta\,(1 - \beta_1))`.

    Adam as optax has it: :math:`m' = \beta_1 m + (1 - \beta_1)\, g` (an exponential average),
    bias-corrected by :math:`1 - \beta_1^t` (which tends to 1, so the steady state ignores it),
    :math:`w' = w - \eta\, \hat m / P` with :math:`P = \sqrt{\hat v} + \epsilon` (:math:`\epsilon`
    outside the square root). With :math:`P` frozen, along an eigenvector of
    :math:`P^{-1/2} H P^{-1/2}` with eigenvalue :math:`\mu` (:math:`u = P^{1/2} w` coordinates)
    :math:`x_{t+1} = x_t - \eta m_{t+1}`, :math:`m_{t+1} = \beta_1 m_t + (1 - \beta_1)\mu x_t`, whose
    characteristic polynomial is :math:`z^2 - (1 + \beta_1 - \eta(1 - \beta_1)\mu)\, z + \beta_1`. A
    root reaches :math:`-1` when

    .. math::

        2 + 2\beta_1 = \eta\,(1 - \beta_1)\,\mu .

    At :math:`\beta_1 = 0.9` this is the :math:`38/\eta` of Cohen et al. (2022); at
    :math:`\beta_1 = 0` it is RMSProp's :math:`2/\eta`.

    >>> round(float(adam_edge(0.01, 0.9)), 9)
    3800.0
    >>> adam_edge(0.1, 0.0) == rmsprop_edge(0.1)
    True

    Decoupled decay (AdamW, :math:`D = I`): :math:`x_{t+1} = r x_t - \eta m_{t+1}` with
    :math:`r = 1 - \eta\,\mathrm{wd}`, whose characteristic polynomial
    :math:`z^2 - (r + \beta_1 - \eta(1 - \beta_1)\mu)\, z + r\beta_1` has a root at :math:`-1` when
    :math:`\eta(1 - \beta_1)\mu = (1 + r)(1 + \beta_1)`: the edge
    :math:`(2 - \eta\,\mathrm{wd})(1 + \beta_1)/(\eta(1 - \beta_1))`.

    >>> round(float(adam_edge(0.01, 0.9, weight_decay=10.0)), 9)
    3610.0
    """
    return _adam_a(eta, beta1, weight_decay)


def _adam_a(eta, beta1, weight_decay):
    if _is_zero(weight_decay):
        return (2.0 + 2.0 * beta1) / (eta * (1.0 - beta1))
    return (2.0 - eta * weight_decay) * (1.0 + beta1) / (eta * (1.0 - beta1))


def sam_adam_pre_edge(eta, rho, beta1, pre_grad_norm, weight_decay=0.0):
    r"""Edge of SAM over Adam with the ascent in the preconditioner's geometry, in :math:`\lambda_{\max}(P^{-1} H)`.

    The step ascends to :math:`w + \rho P^{-1} g / \|P^{-1/2} g\|` and takes Adam's step with the
    gradient there. In :math:`u = P^{1/2} w` (:math:`P` frozen) the gradient is :math:`P^{-1/2} g`, the
    Hessian :math:`H_u = P^{-1/2} H P^{-1/2}`, the ascent :math:`u + \rho\, g_u / \|g_u\|` and Adam's
    step plain EMA-momentum descent: SAM with momentum on :math:`H_u` with gradient norm
    :math:`G = \|g_u\| = \|P^{-1/2} g\|` (the norm that enters). Along an eigenvector of :math:`H_u` with
    eigenvalue :math:`\mu` the SAM gradient is :math:`\mu(1 + \rho\mu/G)\, x`: Adam on the effective
    curvature :math:`\mu(1 + \rho\mu/G)`, so by :func:`adam_edge` the edge solves
    :math:`(\rho/G)\mu^2 + \mu - a = 0` with :math:`a = (2 + 2\beta_1)/(\eta(1 - \beta_1))`, whose
    positive root is, in the stable form,

    .. math::

        \mu = \frac{2a}{1 + \sqrt{1 + 4\rho a / G}} .

    At :math:`\beta_1 = 0` it is :func:`sam_edge` on :math:`H_u`; at :math:`\rho = 0` it is
    :func:`adam_edge`.

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
