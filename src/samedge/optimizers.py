"""The optimizer registry: one entry per optimizer holds every fact about it.

An :class:`Entry` says what an optimizer is called and how it is labelled, which hyperparameters it
has (with defaults, valid ranges and the tag that names its run folders), the optax base it steps
through, its ascent point (or none), its closed-form edge of stability (derived in
:mod:`samedge.edges`) and when it is another optimizer in disguise (SAM at rho = 0 takes exactly
the GD step). Every other module asks the registry: the configuration, the run-folder name, the
sweep grid, the measurement's ascent point, the theory checks, the figure labels and the CLI flags.

Adding an optimizer is adding one :class:`Entry` to :data:`BUILTIN` (plus its edge, derived, in
:mod:`samedge.edges`). An entry can also live in your own module: pass ``"package.module:NAME"``
wherever an optimizer name is asked for (``samedge run mnist --optimizer mypkg.opts:toy``); the
entry is imported by that path, so sweep workers and ``samedge resume`` find it in new processes.

>>> opt = build("sam", 0.1, rho=0.05)
>>> opt.name, opt.lr, opt.ascent_point is not None
('sam', 0.1, True)
>>> get("sam").equivalent({"rho": 0.0})
('gd', {})
>>> run_name_tags("sam_momentum", {"rho": 0.1, "momentum": 0.9})
'-rho0.1-m0.9'
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import optax

from samedge import edges, steps
from samedge.errors import ConfigError

__all__ = ["Hyper", "Entry", "BUILTIN", "get", "names", "build", "resolve_hparams", "run_name_tags",
           "describe", "all_hypers"]


@dataclass(frozen=True)
class Hyper:
    """One hyperparameter of an optimizer (the step size ``lr`` is every optimizer's, not listed).

    Attributes:
      name: the setting's name (``rho``); also its CLI flag (``--rho``).
      default: the value when none is given.
      help: one line for ``--help``.
      low: smallest valid value (inclusive).
      high: the value it must stay below, or ``None``.
      tag: the run-folder tag (``-rho0.1``); the name when empty.
    """

    name: str
    default: float
    help: str
    low: float = 0.0
    high: float | None = None
    tag: str = ""
    quiet: bool = False  # at its default it is left out of a run's settings, name and config.json

    def check(self, value) -> float:
        """``value`` as a float, or :class:`ConfigError` naming the flag and the valid range."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or value < self.low or (self.high is not None and value >= self.high):
            bound = f"in [{self.low:g}, {self.high:g})" if self.high is not None else f">= {self.low:g}"
            raise ConfigError(f"--{self.name.replace('_', '-')} must be {bound}, got {value!r}")
        return float(value)


@dataclass(frozen=True)
class Entry:
    """Everything about one optimizer.

    Attributes:
      name: the registry name (``--optimizer NAME``).
      label: a short label for figures (``SAM``).
      summary: one line for help texts.
      hypers: its hyperparameters besides the step size.
      base: ``(lr, **hparams) -> optax.GradientTransformation``, the transformation it steps through.
      ascent: ``(params, grad, state, **hparams) -> point`` where the step takes its gradient, or ``None``.
      edge: ``(lr, grad_norm, **hparams) -> edge``, the closed form from :mod:`samedge.edges`, or
        ``None`` (then runs report lambda and leave the edge empty).
      edge_formula: the edge written out, for tables and figures.
      edge_needs_grad_norm: whether the edge depends on ``||g||``.
      reduces_to: ``hparams -> (name, hparams)`` when these settings make it another optimizer
        exactly (SAM at rho = 0 is GD), else ``None``.
      preconditioner: ``(state, grad, **hparams) -> P`` for an adaptive optimizer: the diagonal
        preconditioner its next step divides by; its edge then bounds ``lambda_max(P^{-1} H)``.
      edge_norm: ``(grad, state, **hparams) -> ||.||``, the gradient norm its edge depends on
        (default ``||g||``; ``||P^{-1/2} g||`` for an ascent in the preconditioner's geometry).
      linear_step: ``(hvp, grad, state, lr, **hparams) -> (matvec, eta_eff)`` for a step with no
        closed-form edge (see :class:`samedge.steps.Optimizer`).
      decay: how its ``weight_decay`` enters: ``"coupled"`` (``wd D w`` added to the gradient the base
        steps with, as Foret et al.'s SGD; SAM's ascent uses the loss gradient alone), ``"decoupled"``
        (``-eta wd D w`` added to the base's update, as ``optax.adamw``) or ``""`` (no weight decay).
        ``edge`` and ``edge_norm`` are then called with ``weight_decay=`` when it is not 0; ``base``,
        ``ascent``, ``preconditioner`` and ``linear_step`` never see it.
    """

    name: str
    label: str
    summary: str
    base: Callable[..., optax.GradientTransformation]
    hypers: tuple[Hyper, ...] = ()
    ascent: Callable | None = None
    edge: Callable | None = None
    edge_formula: str = "no known edge"
    edge_needs_grad_norm: bool = False
    reduces_to: Callable[[Mapping], tuple[str, dict] | None] | None = field(default=None, compare=False)
    preconditioner: Callable | None = None
    edge_norm: Callable | None = None
    linear_step: Callable | None = None
    decay: str = ""

    @property
    def hyper_names(self) -> tuple[str, ...]:
        return tuple(h.name for h in self.hypers)

    def defaults(self) -> dict:
        """``{name: default}`` of its hyperparameters."""
        return {h.name: h.default for h in self.hypers}

    def equivalent(self, hparams: Mapping) -> tuple[str, dict] | None:
        """``(name, hparams)`` of the optimizer these settings amount to, or ``None``."""
        return None if self.reduces_to is None else self.reduces_to(dict(hparams))

    def ascends(self, hparams: Mapping) -> bool:
        """Whether the step really leaves ``w`` for its gradient (False for SAM at rho = 0)."""
        return self.ascent is not None and self.equivalent(hparams) is None

    def build(self, lr, *, decay_mask="weights", **hparams) -> steps.Optimizer:
        """The :class:`~samedge.steps.Optimizer` at step size ``lr`` and ``hparams`` (defaults
        fill the rest). Values may be traced arrays (:mod:`samedge.theory` vmaps over them).
        ``decay_mask``: which leaves ``weight_decay`` decays (:func:`decay_mask_fn`)."""
        hp = self.defaults() | hparams
        unknown = sorted(set(hp) - set(self.hyper_names))
        if unknown:
            raise ConfigError(f"{self.name} has no setting(s) {', '.join(unknown)}")
        wd = hp.pop(WEIGHT_DECAY.name, 0.0)
        decays = not (isinstance(wd, (int, float)) and wd == 0)
        mask = decay_mask_fn(decay_mask) if decays else None
        base = self._base_with_decay(lr, wd, mask, hp) if decays else self.base(lr, **hp)
        lr_at = _lr_at(lr) if callable(lr) else None  # a schedule: the step size of the step measured
        eta = (lambda state: lr) if lr_at is None else lr_at
        edge = None
        edge_kw = {WEIGHT_DECAY.name: wd} if decays else {}
        closed = not (decays and self.decay == "decoupled" and decay_mask != "all")  # AdamW's form needs D = I
        if self.edge is not None and closed:
            norm = self.edge_norm or (lambda grad, state, **_: steps.global_norm(grad))

            def edge(grad, state, _f=self.edge):
                if lr_at is None:
                    return _f(lr, norm(grad, state, **hp), **hp, **edge_kw)
                return edges.at_step_size(lr_at(state), lambda e: _f(e, norm(grad, state, **hp), **hp, **edge_kw))
        linear_step = None if self.linear_step is None else (
            lambda hvp, grad, state: self.linear_step(hvp, grad, state, eta(state), **hp))
        # decoupled decay in a linearised step: SAM over Adam's (any mask), or masked RMSProp and Adam's
        if decays and self.decay == "decoupled" and (self.linear_step is not None or (not closed and self.ascent is None)):
            linear_step = self._masked_adamw_step(linear_step, eta, wd, mask, hp)
        extra = dict(
            preconditioner=None if self.preconditioner is None else (lambda state, grad: self.preconditioner(state, grad, **hp)),
            linear_step=linear_step, lr_at=lr_at)
        if decays and self.decay == "coupled":
            extra["decay"] = _decay_diagonal(wd, mask)
        number = None if callable(lr) else lr
        if self.ascent is None:
            return steps.descent(base, name=self.name, edge=edge, lr=number, **extra)
        return steps.ascent(base, lambda p, g, state=None: self.ascent(p, g, state, **hp), name=self.name, edge=edge,
                            lr=number, **extra)

    def _masked_adamw_step(self, linear_step, eta, wd, mask, hp):
        """The linearised step of decoupled decay under a mask (no closed form): along an eigenvector
        with ``D = I``, ``x' = (1 - eta wd) x - eta m'`` is unstable at ``eta_eff (mu + wd (1 + beta1)/(1 -
        beta1)) = 2`` with ``eta_eff = eta (1 - beta1)/(1 + beta1)`` (:func:`edges.adam_edge`), so the
        operator is the step's own (``P^-1/2 H P^-1/2``, or SAM over Adam's) plus ``wd (1 + beta1)/(1 -
        beta1) D``: exact at ``D = I`` and, for any mask, at ``beta1 = 0`` (then GD on it); with
        ``beta1 > 0`` and a mask, a linearisation (``D`` and ``P^-1 H`` need not commute)."""
        import jax
        import jax.numpy as jnp
        from jax.flatten_util import ravel_pytree

        b1 = hp.get(BETA1.name, 0.0)
        c = wd * (1 + b1) / (1 - b1)

        def step(hvp, grad, state):
            if linear_step is not None:
                matvec, eta_eff = linear_step(hvp, grad, state)
            else:
                s = 1.0 / jnp.sqrt(ravel_pytree(self.preconditioner(state, grad, **hp))[0])

                def matvec(v):
                    return s * hvp(s * v)

                eta_eff = eta(state) * (1 - b1) / (1 + b1)
            d = ravel_pytree(jax.tree.map(lambda g, m: jnp.full(g.shape, 1.0 if m else 0.0, g.dtype), grad,
                                          mask(grad)))[0]
            return (lambda v: matvec(v) + c * d * v), eta_eff

        return step

    def _base_with_decay(self, lr, wd, mask, hp):
        """The base with weight decay: coupled, ``wd D w`` added to the gradient before the base; decoupled
        (``optax.adamw``'s form), the base's direction at step size -1 (its update itself), plus ``wd D w``,
        then scaled by ``-eta_t`` (a number or a schedule)."""
        if self.decay == "coupled":
            return optax.chain(optax.add_decayed_weights(wd, mask), self.base(lr, **hp))
        if self.decay == "decoupled":
            return optax.chain(self.base(-1.0, **hp), optax.add_decayed_weights(wd, mask),
                               optax.scale_by_learning_rate(lr))
        raise ConfigError(f"{self.name} has no weight decay")


DECAY_MASKS = ("weights", "all")


def decay_mask_fn(mask) -> Callable:
    """``params -> pytree of bools``: which leaves weight decay reaches.

    ``"weights"`` (the default, the common practice): leaves of two or more dimensions (dense and
    convolution kernels, embeddings), not biases nor normalisation scales; ``"all"``: every leaf;
    or your own callable (an optax mask).

    >>> import jax.numpy as jnp
    >>> decay_mask_fn("weights")({"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)})
    {'bias': False, 'kernel': True}
    """
    import jax

    if callable(mask):
        return mask
    if mask == "weights":
        return lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    if mask == "all":
        return lambda params: jax.tree.map(lambda p: True, params)
    raise ConfigError(f"--decay-mask must be one of {', '.join(DECAY_MASKS)}, got {mask!r}")


def _lr_at(schedule) -> Callable:
    """``state -> eta_t``: the schedule at the optimizer state's update count (optax's ``count``, the
    updates applied so far: the step size of the next update)."""

    def lr_at(state):
        counted = _find_state(state, "count")
        if counted is None:
            raise ConfigError("a learning-rate schedule needs an optimizer state that counts its updates")
        return schedule(counted.count)

    return lr_at


def _decay_diagonal(wd, mask):
    """``params -> wd D`` as a pytree like ``params`` (the decayed leaves hold ``wd``, the rest 0): the
    diagonal the measurement adds to ``H`` for ``lambda_max_reg``."""
    import jax
    import jax.numpy as jnp

    def diagonal(params):
        return jax.tree.map(lambda p, m: jnp.full(p.shape, wd if m else 0.0, p.dtype), params, mask(params))

    return diagonal


DEFAULT = "sam"  # the optimizer of a run that names none
RHO = Hyper("rho", 0.1, "radius rho of the ascent step")
MOMENTUM = Hyper("momentum", 0.9, "momentum beta", high=1.0, tag="m")
BETA1 = Hyper("beta1", 0.9, "first-moment decay beta1 (Adam)", high=1.0, tag="b1")
BETA2 = Hyper("beta2", 0.999, "second-moment decay beta2 (Adam; RMSProp's decay)", high=1.0, tag="b2")
EPS = Hyper("eps", 1e-8, "epsilon of the adaptive preconditioner", tag="eps")
WEIGHT_DECAY = Hyper("weight_decay", 0.0, "weight decay wd: coupled (L2 added to the gradient) for gd, sam, "
                     "momentum, nesterov, usam, sam_momentum; decoupled (AdamW) for rmsprop, adam, sam_adam, "
                     "sam_adam_pre", tag="wd", quiet=True)


def _rms_preconditioner(state, grad, beta2, eps, **_):
    """``P = sqrt(nu' + eps)`` with ``nu' = beta2 nu + (1 - beta2) g**2`` (``optax.rmsprop``: eps inside
    the square root, no bias correction): the preconditioner of the next step."""
    import jax
    import jax.numpy as jnp

    nu = jax.tree.map(lambda n, g: (1 - beta2) * g ** 2 + beta2 * n, _find_state(state, "nu").nu, grad)
    return jax.tree.map(lambda n: jnp.sqrt(n + eps), nu)


def _find_state(state, attr: str):
    """The first part of an optax state (a tree of tuples, as ``optax.chain`` builds) with ``attr``: the
    base's moments wherever decay or a schedule chained it in."""
    if attr in getattr(state, "_fields", ()):  # a NamedTuple state with that field (not tuple.count)
        return state
    if isinstance(state, tuple):
        for part in state:
            found = _find_state(part, attr)
            if found is not None:
                return found
    return None


def _adam_preconditioner(state, grad, beta2, eps, **_):
    """``P = sqrt(v_hat) + eps`` with ``v' = beta2 v + (1 - beta2) g**2`` bias-corrected by
    ``1 - beta2**(t + 1)`` (``optax.adam``: eps outside the square root): the next step's."""
    import jax
    import jax.numpy as jnp

    s = _find_state(state, "nu")
    count = s.count + 1
    nu = jax.tree.map(lambda n, g: (1 - beta2) * g ** 2 + beta2 * n, s.nu, grad)
    correction = 1 - jnp.asarray(beta2, jnp.result_type(float)) ** count
    return jax.tree.map(lambda n: jnp.sqrt(n / correction.astype(n.dtype)) + eps, nu)


def _pre_norm(grad, state, beta2, eps, **_):
    """``||P^{-1/2} g||``: the gradient norm in the preconditioner's geometry."""
    import jax

    p = _adam_preconditioner(state, grad, beta2, eps)
    return steps.global_norm(jax.tree.map(lambda g, q: g / q ** 0.5, grad, p))


def _pre_ascent(params, grad, state, rho, beta2, eps, **_):
    """``w + rho P^{-1} g / ||P^{-1/2} g||``: SAM's ascent in the preconditioner's geometry."""
    import jax
    import jax.numpy as jnp

    p = _adam_preconditioner(state, grad, beta2, eps)
    norm = _pre_norm(grad, state, beta2, eps)
    scale = jnp.where(norm > 0, rho / jnp.where(norm > 0, norm, 1.0), 0.0)
    return jax.tree.map(lambda w, g, q: w + (scale * g / q).astype(w.dtype), params, grad, p)


def _sam_adam_linear_step(hvp, grad, state, lr, rho, beta1, beta2, eps):
    """SAM (Euclidean ascent) over Adam, linearised with ``P`` and ``||g||`` frozen: the step map's
    top mode is the top eigenvalue ``mu`` of ``P^{-1} (H + rho H**2 / ||g||)``, taken in the symmetric
    form ``S (H + rho H**2/||g||) S`` with ``S = P^{-1/2}`` (a similar matrix: ``P^{-1}`` and
    ``H + rho H**2/||g||`` are both symmetric positive semi-definite when H is, so ``mu`` is real);
    Adam's EMA momentum is unstable at ``eta (1 - beta1) mu = 2 + 2 beta1`` (:func:`edges.adam_edge`)."""
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    p = ravel_pytree(_adam_preconditioner(state, grad, beta2, eps))[0]
    s = 1.0 / jnp.sqrt(p)
    g = steps.global_norm(grad)
    c = jnp.where(g > 0, rho / jnp.where(g > 0, g, 1.0), 0.0)

    def matvec(v):
        hv = hvp(s * v)
        return s * (hv + c * hvp(hv))

    return matvec, lr * (1 - beta1) / (1 + beta1)

def _decay_of(hp) -> dict:
    """``{"weight_decay": wd}`` when ``hp`` decays, else ``{}`` (the quiet default): what an optimizer
    that reduces to another at rho = 0 passes on."""
    wd = hp.get(WEIGHT_DECAY.name, 0.0)
    return {WEIGHT_DECAY.name: wd} if wd else {}


BUILTIN: dict[str, Entry] = {e.name: e for e in (
    Entry("gd", "GD", "gradient descent w' = w - eta g",
          base=lambda lr: optax.sgd(lr), hypers=(WEIGHT_DECAY,), decay="coupled",
          edge=lambda lr, g, weight_decay=0.0: edges.gd_edge(lr, weight_decay), edge_formula="2/eta"),
    Entry("sam", "SAM", "sharpness-aware minimisation w' = w - eta grad L(w + rho g/|g|)",
          base=lambda lr, rho: optax.sgd(lr), hypers=(RHO, WEIGHT_DECAY), decay="coupled",
          ascent=lambda p, g, s, rho: steps.sam_ascent_point(p, g, rho),
          edge=lambda lr, g, rho, weight_decay=0.0: edges.sam_edge(lr, rho, g, weight_decay),
          edge_formula="4/(eta (1 + sqrt(1 + 8 rho/(eta |g|))))", edge_needs_grad_norm=True,
          reduces_to=lambda hp: ("gd", _decay_of(hp)) if hp["rho"] == 0 else None),
    Entry("momentum", "heavy ball", "heavy-ball momentum v' = beta v + g, w' = w - eta v'",
          base=lambda lr, momentum: optax.sgd(lr, momentum=momentum), hypers=(MOMENTUM, WEIGHT_DECAY),
          decay="coupled", edge=lambda lr, g, momentum, weight_decay=0.0: edges.momentum_edge(lr, momentum, weight_decay),
          edge_formula="(2 + 2 beta)/eta"),
    Entry("nesterov", "Nesterov", "Nesterov momentum (optax's form)",
          base=lambda lr, momentum: optax.sgd(lr, momentum=momentum, nesterov=True),
          hypers=(MOMENTUM, WEIGHT_DECAY), decay="coupled",
          edge=lambda lr, g, momentum, weight_decay=0.0: edges.nesterov_edge(lr, momentum, weight_decay),
          edge_formula="(2 + 2 beta)/(eta (1 + 2 beta))"),
    # USAM's rho multiplies the raw gradient, not a unit vector, so SAM's radius does not carry over:
    # on quick MNIST lr 0.5 with rho 0.1 stays at 0.87 x its edge after 1000 steps, rho 0.5 sits at it.
    Entry("usam", "USAM", "unnormalised SAM w' = w - eta grad L(w + rho g)",
          base=lambda lr, rho: optax.sgd(lr), hypers=(replace(RHO, default=0.5), WEIGHT_DECAY), decay="coupled",
          ascent=lambda p, g, s, rho: steps.usam_ascent_point(p, g, rho),
          edge=lambda lr, g, rho, weight_decay=0.0: edges.usam_edge(lr, rho, weight_decay) + 0.0 * g,
          edge_formula="4/(eta (1 + sqrt(1 + 8 rho/eta)))",
          reduces_to=lambda hp: ("gd", _decay_of(hp)) if hp["rho"] == 0 else None),
    Entry("sam_momentum", "SAM + momentum", "SAM's gradient feeding heavy-ball momentum",
          base=lambda lr, rho, momentum: optax.sgd(lr, momentum=momentum), hypers=(RHO, MOMENTUM, WEIGHT_DECAY),
          decay="coupled", ascent=lambda p, g, s, rho, momentum: steps.sam_ascent_point(p, g, rho),
          edge=lambda lr, g, rho, momentum, weight_decay=0.0: edges.sam_momentum_edge(lr, rho, momentum, g,
                                                                                    weight_decay),
          edge_formula="4 (1 + beta)/(eta (1 + sqrt(1 + 8 rho (1 + beta)/(eta |g|))))",
          edge_needs_grad_norm=True,
          reduces_to=lambda hp: ("momentum", {"momentum": hp["momentum"]} | _decay_of(hp)) if hp["rho"] == 0 else None),
    Entry("rmsprop", "RMSProp", "RMSProp (optax.rmsprop: eps inside the square root, no bias correction)",
          base=lambda lr, beta2, eps: optax.rmsprop(lr, decay=beta2, eps=eps),
          hypers=(replace(BETA2, default=0.9), EPS, WEIGHT_DECAY), preconditioner=_rms_preconditioner,
          decay="decoupled", edge=lambda lr, g, beta2, eps, weight_decay=0.0: edges.rmsprop_edge(lr, weight_decay) + 0.0 * g,
          edge_formula="lambda_max(P^-1 H) = 2/eta"),
    Entry("adam", "Adam", "Adam (optax.adam: bias-corrected moments, eps outside the square root)",
          base=lambda lr, beta1, beta2, eps: optax.adam(lr, b1=beta1, b2=beta2, eps=eps),
          hypers=(BETA1, BETA2, EPS, WEIGHT_DECAY), preconditioner=_adam_preconditioner, decay="decoupled",
          edge=lambda lr, g, beta1, beta2, eps, weight_decay=0.0: edges.adam_edge(lr, beta1, weight_decay) + 0.0 * g,
          edge_formula="lambda_max(P^-1 H) = (2 + 2 beta1)/(eta (1 - beta1))"),
    Entry("sam_adam", "SAM + Adam", "SAM's Euclidean ascent, then Adam's step on the ascent point's gradient",
          base=lambda lr, rho, beta1, beta2, eps: optax.adam(lr, b1=beta1, b2=beta2, eps=eps),
          # rho 0.01: on quick MNIST at eta 1e-3 the step radius then sits at 0.98 (RESULTS.md)
          hypers=(replace(RHO, default=0.01), BETA1, BETA2, EPS, WEIGHT_DECAY), preconditioner=_adam_preconditioner,
          decay="decoupled", ascent=lambda p, g, s, rho, **_: steps.sam_ascent_point(p, g, rho),
          linear_step=_sam_adam_linear_step,
          edge_formula="none in closed form: step_radius = 1 at the edge",
          reduces_to=lambda hp: ("adam", {k: hp[k] for k in ("beta1", "beta2", "eps")} | _decay_of(hp))
          if hp["rho"] == 0 else None),
    Entry("sam_adam_pre", "SAM + Adam (P-ascent)", "SAM over Adam, ascent w + rho P^-1 g/|P^-1/2 g|",
          base=lambda lr, rho, beta1, beta2, eps: optax.adam(lr, b1=beta1, b2=beta2, eps=eps),
          # rho is a radius in u = P^1/2 w, where P ~ 1e-3: 1e-3 puts quick MNIST at its edge (0.997)
          hypers=(replace(RHO, default=1e-3), BETA1, BETA2, EPS, WEIGHT_DECAY), preconditioner=_adam_preconditioner,
          decay="decoupled", ascent=_pre_ascent, edge_norm=_pre_norm,
          edge=lambda lr, g, rho, beta1, beta2, eps, weight_decay=0.0: edges.sam_adam_pre_edge(lr, rho, beta1, g,
                                                                                             weight_decay),
          edge_formula="2a/(1 + sqrt(1 + 4 rho a/|P^-1/2 g|)), a = (2 + 2 beta1)/(eta (1 - beta1))",
          edge_needs_grad_norm=True,
          reduces_to=lambda hp: ("adam", {k: hp[k] for k in ("beta1", "beta2", "eps")} | _decay_of(hp))
          if hp["rho"] == 0 else None),
)}


def names() -> tuple[str, ...]:
    """The built-in optimizers' names, in registry order.

    >>> names()[:2]
    ('gd', 'sam')
    """
    return tuple(BUILTIN)


def get(name: str) -> Entry:
    """The entry called ``name``: a built-in, or ``"package.module:ATTR"`` naming an :class:`Entry`.

    Args:
      name: a registry name or an import path.

    Returns:
      The :class:`Entry`; :class:`ConfigError` (one line) when there is none.

    >>> get("gd").edge_formula
    '2/eta'
    """
    if not isinstance(name, str):
        raise ConfigError(f"an optimizer name must be a string, got {name!r}")
    if name in BUILTIN:
        return BUILTIN[name]
    if ":" in name:
        from samedge import checks

        entry = checks.load_object(name, "optimizer")
        if not isinstance(entry, Entry):
            raise ConfigError(f"optimizer {name!r}: {name.replace(':', '.')} is not a samedge.optimizers.Entry")
        return entry
    raise ConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(BUILTIN)} "
                      f"(or package.module:ENTRY)")


def resolve_hparams(name: str, given: Mapping[str, Any] | None = None) -> dict:
    """The full, validated hyperparameters of ``name``: its defaults, then ``given``.

    Args:
      name: an optimizer (see :func:`get`).
      given: values set explicitly; a key the optimizer does not have is an error.

    Returns:
      ``{hyperparameter: float}`` in the entry's order; a quiet one (``weight_decay``) only when it is
      not at its default, so that runs without it keep their settings, names and ``config.json``.

    >>> resolve_hparams("sam", {"rho": 0.3})
    {'rho': 0.3}
    >>> resolve_hparams("gd", {"rho": 0.3})
    Traceback (most recent call last):
    ...
    samedge.errors.ConfigError: gd has no rho (its settings: lr, weight_decay)
    """
    entry = get(name)
    given = dict(given or {})
    unknown = [k for k in given if k not in entry.hyper_names]
    if unknown:
        own = ", ".join(("lr",) + entry.hyper_names)
        raise ConfigError(f"{entry.name} has no {', '.join(unknown)} (its settings: {own})")
    hp = entry.defaults() | given
    checked = {h.name: h.check(hp[h.name]) for h in entry.hypers}
    return {h.name: checked[h.name] for h in entry.hypers if not (h.quiet and checked[h.name] == h.default)}


def build(name: str, lr, *, decay_mask="weights", **hparams) -> steps.Optimizer:
    """The optimizer ``name`` at step size ``lr`` (its defaults fill missing hyperparameters).

    Args:
      name: a registry name or import path (see :func:`get`).
      lr: the step size eta.
      decay_mask: which leaves ``weight_decay`` reaches (:func:`decay_mask_fn`: ``"weights"``,
        ``"all"`` or a callable).
      **hparams: its hyperparameters (``rho``, ``momentum``, ``weight_decay`` ...).

    Returns:
      A :class:`~samedge.steps.Optimizer` with its closed-form edge attached.

    >>> import jax.numpy as jnp
    >>> float(build("gd", 0.1).edge(jnp.ones(3), None))
    20.0
    """
    return get(name).build(lr, decay_mask=decay_mask, **hparams)


def run_name_tags(name: str, hparams: Mapping) -> str:
    """The part of a run folder's name that its hyperparameters give, e.g. ``-rho0.1``.

    >>> run_name_tags("gd", {})
    ''
    """
    entry = get(name)
    return "".join(f"-{h.tag or h.name}{hparams[h.name]:g}" for h in entry.hypers if h.name in hparams)


def describe(name: str, lr, hparams: Mapping) -> str:
    """A one-line label such as ``sam lr=0.1 rho=0.05`` (progress bars, figure titles).

    >>> describe("momentum", 0.1, {"momentum": 0.9})
    'momentum lr=0.1 momentum=0.9'
    """
    entry = get(name)
    parts = [entry.name if ":" not in name else name.rpartition(":")[2]]
    if lr is not None:
        parts.append(f"lr={lr:g}")
    parts += [f"{h.name}={hparams[h.name]:g}" for h in entry.hypers if h.name in hparams]
    return " ".join(parts)


def all_hypers() -> dict[str, Hyper]:
    """Every hyperparameter of the built-in optimizers by name (the first entry's wins): the CLI
    builds its flags from these.

    >>> sorted(all_hypers())
    ['beta1', 'beta2', 'eps', 'momentum', 'rho', 'weight_decay']
    """
    out: dict[str, Hyper] = {}
    for entry in BUILTIN.values():
        for h in entry.hypers:
            out.setdefault(h.name, h)
    return out
