"""The measurement: an optimizer's curvature against its edge, callable from any JAX training loop.

:func:`measurement` returns, in the manner of optax, a pair of pure functions with a NamedTuple
state: ``init(params, key) -> MeasureState`` and ``measure(params, batch, state, key, opt_state,
data) -> (row, state)``. At a point ``w`` and a batch it computes ``loss``, ``grad_norm`` = ``||g||``
(``g = grad L(w)``) and ``acc`` when an accuracy function is given, then runs its **probes**
(:mod:`samedge.probes`), each a room of its own with its columns, its carry and its tests, in this
order (:func:`builtin_probes` chooses them from the settings and the optimizer):

- :mod:`~samedge.probes.topk`: the top-k eigenpairs of ``H = grad^2 L(w)`` by Lanczos on exact
  (forward-over-reverse) HVPs, warm-started: ``lambda_1..k``, ``resid_1..k``, ``hvps``,
  ``lambda_max`` = ``||H||_2`` (the paper's quantity), ``lambda_top`` (the largest algebraic eigenvalue),
  and the guard: ``converged``, ``crosscheck_lambda``, ``hvps_crosscheck``, ``certified``;
- :mod:`~samedge.probes.adaptive` (an optimizer with a preconditioner, or a linearised step):
  ``precond_sharpness`` = lambda_max(P^-1 H), ``step_radius``;
- :mod:`~samedge.probes.stochastic` (``batch_sharpness``): batch sharpness over fresh minibatches and
  ``lambda_max_full``;
- :mod:`~samedge.probes.decay` (coupled weight decay): ``lambda_max_reg`` = ``||H + wd D||``, the curvature
  the step sees (the edge refers to it);
- :mod:`~samedge.probes.edge`: ``edge`` (absent when the optimizer has no known edge), ``gd_edge`` =
  2/eta, ``ratio`` = the optimizer's own sharpness / edge;
- :mod:`~samedge.probes.alignment`: ``align_grad``, ``align_sam_grad``;
- :mod:`~samedge.probes.ascent` (``ascent_point``): ``lambda_max_sam`` at the ascent point;
- :mod:`~samedge.probes.outliers` (``track_fraction``): every eigenvalue above a fraction of the edge;
- then yours (``probes=...``).

``measure`` is jitted once per settings: calling it again with new parameters, batches, states or
keys of the same shapes does not recompile. Random draws come only from the ``key`` passed in. Its
matrix products run at full float32 precision on accelerators (``jax.default_matmul_precision
("highest")``, scoped to the measurement; training keeps the default), and ``dtype="float64"``
measures in float64 (on CPU; needs ``jax.config.update("jax_enable_x64", True)``). Every Lanczos run
builds its basis in one Krylov workspace carried in the state and donated to the call.

>>> import jax, jax.numpy as jnp
>>> from samedge import optimizers
>>> h = jnp.diag(jnp.array([3.0, 1.0, 0.5]))
>>> loss = lambda w, batch: 0.5 * w["x"] @ h @ w["x"]
>>> m = measurement(loss, optimizers.build("gd", 0.5))
>>> w = {"x": jnp.ones(3)}
>>> state = m.init(w, jax.random.PRNGKey(0))
>>> row, state = m.measure(w, None, state, jax.random.PRNGKey(1))
>>> round(float(row["lambda_max"]), 4), float(row["edge"]), round(float(row["ratio"]), 4)
(3.0, 4.0, 0.75)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from samedge import checks, chunking, curvature, probes as probes_mod
from samedge.probes import adaptive, alignment, ascent, decay, edge, gauss_newton, layers, outliers, stochastic, trace
from samedge.probes import topk as topk_probe
from samedge.probes.topk import calls_since_cold
from samedge.steps import Optimizer

__all__ = ["MeasureSettings", "MeasureState", "Measurement", "measurement", "builtin_probes", "initial_vectors",
           "calls_since_cold", "split_workspace", "from_vectors", "OPT_IN", "opt_in"]


@dataclass(frozen=True)
class MeasureSettings:
    """What a measurement computes and how hard it tries.

    Attributes:
      topk: eigenpairs of the Hessian reported (``lambda_1..k``).
      tol: Lanczos stops when each of them has relative residual <= ``tol``.
      max_hvps: most Hessian-vector products one Lanczos run may spend (its basis size).
      track_fraction: 0 = off; else also every eigenvalue above this fraction of the edge.
      track_max: most eigenvalues tracked that way.
      ascent_point: also ``lambda_max_sam`` at the optimizer's ascent point (if it has one).
      min_hvps: Krylov steps spent at least before the residual may stop Lanczos (see
        :func:`samedge.curvature.lanczos`): 8 find a larger eigenvalue the warm start lacks on the
        constructed swap operator; the quick tasks spend 12-19 anyway.
      start_noise: weight of the random unit vector added to the (unit) warm start. It gives every
        direction a component of about ``start_noise / sqrt(n)`` for Lanczos to amplify; the
        warm start's own accuracy costs about one HVP more at 0.1 than at 0.01.
      crosscheck_every: a cold random-start Lanczos run once this many calls have passed since the
        last cold run (0: never), so that a miss lasts at most that many calls; also whenever
        lambda_max changes by more than ``jump`` relative, or the new top vector's ``|cos|`` with the
        previous one falls below ``align_jump`` (such a run restarts the count).
      crosscheck_tol: the residual at which the cold run stops. Its top Ritz value is a lower bound
        of the largest eigenvalue, so a value above ``lambda_max * (1 + 2 tol)`` proves a miss at
        any ``crosscheck_tol``; the looser it is, the smaller the miss it can overlook (about
        ``crosscheck_tol`` relative: at 1e-2 a miss of a few percent is found, one of 0.5% may
        not be). A cold run whose Ritz value passes that bound runs on to ``tol``. At 1e-2 a
        cold run costs 8-13 HVPs on the quick MNIST benchmark against 17-23 at 1e-3.
      jump, align_jump: the thresholds above.
      dtype: ``None`` (the parameters' own) or ``"float64"``.
      batch_sharpness: 0 = off; else at most this many fresh minibatches for the batch sharpness
        (:mod:`samedge.batch_sharpness`: mean and ratio-of-means of ``q_B``, the per-batch edge)
        and ``lambda_max_full``, the top eigenvalue of the full batch's Hessian (needs ``data``).
      batch_sharpness_rel_se: stop the batches once the relative standard error is this small.
      chunk_size: 0 = one pass; else the loss (and accuracy) over any batch larger than this is
        computed ``chunk_size`` examples at a time (:func:`samedge.chunking.chunked_mean`): every
        gradient and HVP of the measurement in the memory of one chunk, exactly for a mean loss.
      full_batch: also ``lambda_max_full`` (the full-batch probe, given ``full_batch_fn``: the task's
        measurement set) without batch sharpness.
      max_basis: 0 = unbounded (every Lanczos run keeps a basis of up to ``max_hvps + 1`` rows); else
        the most rows of the Krylov basis, the one workspace every Lanczos run of the measurement
        builds in: a full basis restarts thick (:func:`samedge.curvature.lanczos`), so memory is
        ``max_basis x n`` floats whatever the HVPs. Needs ``topk + 5`` rows at least (and
        ``track_max + 5`` when tracking). It bounds the basis only: the carried vectors (``topk``,
        one per adaptive, step-radius and full-batch probe, ``track_max`` tracked) are held besides it.
    """

    topk: int = 1
    tol: float = 1e-3
    max_hvps: int = 64
    track_fraction: float = 0.0
    track_max: int = 12
    ascent_point: bool = False
    min_hvps: int = 8
    start_noise: float = 0.1
    crosscheck_every: int = 10
    crosscheck_tol: float = 1e-2
    jump: float = 0.25
    align_jump: float = 0.3
    dtype: str | None = None
    batch_sharpness: int = 0
    batch_sharpness_rel_se: float = 0.01
    chunk_size: int = 0
    max_basis: int = 0
    full_batch: bool = False

    def validate(self) -> "MeasureSettings":
        from samedge.errors import ConfigError

        if not (isinstance(self.topk, int) and 1 <= self.topk <= self.max_hvps):
            raise ConfigError(f"topk must be an integer in [1, max_hvps={self.max_hvps}], got {self.topk!r}")
        if not self.tol > 0:
            raise ConfigError(f"tol must be > 0, got {self.tol!r}")
        if not self.crosscheck_tol > 0:
            raise ConfigError(f"crosscheck_tol must be > 0, got {self.crosscheck_tol!r}")
        if not 0 <= self.track_fraction < 1:
            raise ConfigError(f"track_fraction must be in [0, 1), got {self.track_fraction!r}")
        if not (isinstance(self.crosscheck_every, int) and self.crosscheck_every >= 0):
            raise ConfigError(f"crosscheck_every must be an integer >= 0, got {self.crosscheck_every!r}")
        if self.dtype not in (None, "float32", "float64"):
            raise ConfigError(f"the measurement dtype must be float32 or float64, got {self.dtype!r}")
        if not (isinstance(self.chunk_size, int) and self.chunk_size >= 0):
            raise ConfigError(f"chunk_size must be an integer >= 0, got {self.chunk_size!r}")
        if not (isinstance(self.max_basis, int) and (self.max_basis == 0 or self.max_basis >= self.topk + 5)):
            raise ConfigError(f"max_basis must be 0 (unbounded) or an integer >= topk + 5 = {self.topk + 5}, "
                              f"got {self.max_basis!r}")
        if self.max_basis and self.track_fraction > 0 and self.max_basis < self.track_max + 5:
            raise ConfigError(f"tracking {self.track_max} eigenvalues needs max_basis >= track_max + 5 = "
                              f"{self.track_max + 5}, got {self.max_basis}")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise ConfigError("a float64 measurement needs 64-bit JAX: jax.config.update('jax_enable_x64', True) "
                              "before anything else (the CLI does it for --measure-dtype float64)")
        return self


class MeasureState(NamedTuple):
    """What one measurement hands the next: ``carries``, each probe's carry by name (the built-in
    ``topk`` one a :class:`~samedge.probes.topk.TopkCarry`: the top-k vectors, the warm start of the
    next Lanczos runs, and the guard's memory; see :mod:`samedge.probes`); ``workspace``, the buffer
    every Lanczos run of the measurement builds its Krylov basis in
    (:func:`samedge.curvature.krylov_workspace`; its contents carry nothing), handed from call to call
    so that a donating caller reuses its memory in place (``None``: each run allocates its own)."""

    carries: dict
    workspace: jax.Array | None = None

    @property
    def vectors(self) -> jax.Array:
        """``(k, n)``: the top-k eigenvector estimates (``carries["topk"].vectors``)."""
        return self.carries[topk_probe.NAME].vectors


class Measurement(NamedTuple):
    """``init(params, key) -> MeasureState`` and ``measure(params, batch, state, key, opt_state=None,
    data=None, model_state=None) -> (row, MeasureState)``; ``settings``; ``probes``, the probes it runs, in order;
    ``lower``, with ``measure``'s arguments: the compiled program's ``jax.stages.Lowered``, whose
    ``.compile().memory_analysis()`` tells the memory a call needs before it runs (see
    :func:`measurement`)."""

    init: Callable[[Any, jax.Array], MeasureState]
    measure: Callable[..., tuple[dict, MeasureState]]
    settings: MeasureSettings
    probes: tuple = ()
    lower: Callable[..., Any] | None = None


def split_workspace(state: MeasureState) -> tuple[MeasureState, jax.Array | None]:
    """``(state without its workspace, workspace)``, for a jitted call that donates the workspace
    alone (``donate_argnums``) and leaves the rest of the state the caller's.

    An old state passed again has a workspace already donated to the call that returned a newer
    one: it gets a fresh buffer of the same shape (the contents never matter).

    Args:
      state: a :class:`MeasureState`.

    Returns:
      The state with ``workspace=None``, and the workspace to pass (and donate) beside it.

    >>> rest, ws = split_workspace(MeasureState(jnp.ones((1, 3)), workspace=jnp.zeros((8, 3))))
    >>> rest.workspace is None, ws.shape
    (True, (8, 3))
    """
    ws = state.workspace
    if isinstance(ws, jax.Array) and not isinstance(ws, jax.core.Tracer) and ws.is_deleted():
        ws = jnp.zeros(ws.shape, ws.dtype)
    return state._replace(workspace=None), ws


def initial_vectors(params, k: int, key) -> jax.Array:
    """``(k, n)`` random unit start vectors for the first measurement.

    Args:
      params: the parameter pytree (gives ``n`` and the dtype).
      k: number of vectors.
      key: a PRNG key.

    Returns:
      A ``(k, n)`` array of unit rows.

    >>> initial_vectors({"a": jnp.zeros(3)}, 2, jax.random.PRNGKey(0)).shape
    (2, 3)
    """
    flat = ravel_pytree(params)[0]
    v = jax.random.normal(key, (k, flat.shape[0]))
    return (v / jnp.linalg.norm(v, axis=1, keepdims=True)).astype(flat.dtype)


def builtin_probes(settings: MeasureSettings, optimizer: Optimizer, *, batch_fn: Callable | None = None,
                   full_batch_fn: Callable | None = None) -> tuple[probes_mod.Probe, ...]:
    """The built-in probes a measurement at ``settings`` runs for ``optimizer``, in their fixed order.

    ``topk`` always; ``precond`` for an optimizer with a preconditioner, ``step_radius`` for one with
    a linearised step; ``batch_sharpness`` when ``settings.batch_sharpness``, ``full_batch`` (given
    ``full_batch_fn``) then or when ``settings.full_batch``; ``decay`` for coupled weight decay; ``edge`` (after the sharpness probes: ``ratio`` reads them);
    ``alignment``; ``ascent_point`` when ``settings.ascent_point`` and the optimizer has one;
    ``outliers`` when ``settings.track_fraction > 0``.

    Args:
      settings: the measurement's settings.
      optimizer: the optimizer measured.
      batch_fn: ``(data, step) -> batch``, the training scheme's minibatches (batch sharpness).
      full_batch_fn: ``data -> batch``, the full batch (``lambda_max_full``).

    Returns:
      The probes, in order.

    >>> from samedge import optimizers
    >>> [p.name for p in builtin_probes(MeasureSettings(ascent_point=True), optimizers.build("sam", 0.1))]
    ['topk', 'edge', 'alignment', 'ascent_point']
    """
    if settings.batch_sharpness and batch_fn is None:
        from samedge.errors import ConfigError

        raise ConfigError("batch sharpness needs the training scheme's batch_fn (measurement(..., batch_fn=...))")
    chosen = [topk_probe.topk(settings)]
    if optimizer.preconditioner is not None:
        chosen.append(adaptive.precond(settings))
    if optimizer.linear_step is not None:
        chosen.append(adaptive.step_radius(settings))
    if settings.batch_sharpness:
        chosen.append(stochastic.batch_sharpness(settings, batch_fn))
    if (settings.batch_sharpness or settings.full_batch) and full_batch_fn is not None:
        chosen.append(stochastic.full_batch(settings, full_batch_fn))
    if optimizer.decay is not None:
        chosen.append(decay.decay(settings))
    chosen += [edge.edge(), alignment.alignment()]
    if settings.ascent_point and optimizer.ascent_point is not None:
        chosen.append(ascent.ascent_point(settings))
    if settings.track_fraction > 0:
        chosen.append(outliers.outliers(settings))
    return tuple(chosen)


# The opt-in probes a plain name gives (``--probe layers``), each ``samedge.probes.<name>.<name>``.
OPT_IN = ("layers", "gauss_newton", "trace")


def opt_in(name: str, settings: MeasureSettings | None = None, task=None, *,
           chunk_size: int = 0) -> probes_mod.Probe:
    """The opt-in probe ``name`` (one of :data:`OPT_IN`) at its defaults, as ``--probe NAME`` runs it.

    Args:
      name: ``"layers"`` (:func:`samedge.probes.layers.layers`), ``"gauss_newton"``
        (:func:`samedge.probes.gauss_newton.gauss_newton`) or ``"trace"`` (:func:`samedge.probes.trace.trace`).
      settings: the measurement's :class:`~samedge.measure.MeasureSettings` (sizes the Krylov
        workspace the Lanczos probes declare; ``None``: the defaults').
      task: the :class:`~samedge.tasks.Task`; ``gauss_newton`` takes its ``output_fn`` and ``output_loss``.
      chunk_size: ``gauss_newton``'s products over ``chunk_size`` examples at a time (the run's ``--chunk-size``).

    Returns:
      The :class:`~samedge.probes.Probe`; a one-line :class:`samedge.errors.ConfigError` for another name, or for
      ``gauss_newton`` on a task without its outputs.

    >>> [opt_in(n).name for n in OPT_IN]
    ['layers', 'gauss_newton', 'trace']
    """
    from samedge.errors import ConfigError

    if name not in OPT_IN:
        raise ConfigError(f"unknown probe {name!r}: the opt-in ones are {', '.join(OPT_IN)}; give your own as "
                          f"package.module:PROBE")
    if name == "layers":
        return layers.layers(settings)
    if name == "trace":
        return trace.trace()
    if task is None:  # no task: the probe refuses at its first measurement, naming what to add
        return gauss_newton.gauss_newton(None, None, settings)
    if getattr(task, "output_fn", None) is None or getattr(task, "output_loss", None) is None:
        raise ConfigError(f"--probe gauss_newton: task {getattr(task, 'name', '?')!r} does not give its loss as "
                          f"outputs plus a loss on them; add output_fn=(params, batch) -> outputs and output_loss=(outputs, "
                          f"batch) -> loss to make_task")
    return gauss_newton.gauss_newton(task.output_fn, task.output_loss, settings, chunk_size=chunk_size)


def measurement(loss_fn: Callable, optimizer: Optimizer, settings: MeasureSettings | None = None, *,
                accuracy_fn: Callable | None = None, batch_fn: Callable | None = None,
                full_batch_fn: Callable | None = None, probes=(), stateful: bool = False) -> Measurement:
    """The measurement of ``optimizer``'s curvature and edge on ``loss_fn``.

    Args:
      loss_fn: ``(params, batch) -> scalar``; params a pytree of float32 or float64 arrays.
      optimizer: a :class:`samedge.steps.Optimizer` (from :func:`samedge.optimizers.build`, or your
        own around any optax base): gives the edge, 2/eta, the descent gradient and the ascent point.
      settings: :class:`MeasureSettings` (default: top-1, tolerance 1e-3, at most 64 HVPs).
      accuracy_fn: ``(params, batch) -> scalar`` reported as ``acc``, or ``None``.
      batch_fn: ``(data, step) -> batch``, the training scheme's minibatches (batch sharpness).
      full_batch_fn: ``data -> batch``, the full batch (``lambda_max_full``).
      probes: your own :class:`samedge.probes.Probe` s, run after the built-in ones
        (:func:`builtin_probes`), in the order given.
      stateful: ``loss_fn`` and ``accuracy_fn`` take ``(params, model_state, batch)``: a model with
        state measured with its state as constants (BatchNorm's running statistics in eval mode);
        ``measure`` then takes ``model_state=``, which it reads and never changes. The Hessian is
        that of ``params -> loss_fn(params, model_state, batch)``.

    Returns:
      A :class:`Measurement`. ``init(params, key)`` draws the probes' random unit start vectors
      (the built-in ones' in one block, yours each from a key of its own) and calls their ``init``.
      ``measure(params, batch, state, key, opt_state=None, data=None)`` computes ``loss``,
      ``grad_norm`` (and ``acc``), then runs the probes in order, and returns the row (a dict of
      scalar arrays, see the module docstring) and the new state; ``opt_state`` is what the
      optimizer's edge reads besides the gradient (``None`` is fine for the built-in optimizers
      without a preconditioner); ``data`` is needed by the batch sharpness probes. The state's
      ``workspace`` is donated to the call and comes back in the new state (the same memory): keep
      using the returned state; an old one passed again gets a fresh workspace. Inside your own
      ``jax.jit``, donate the workspace there to get the same reuse (:func:`split_workspace`).
    """
    settings = (settings or MeasureSettings()).validate()
    builtin = builtin_probes(settings, optimizer, batch_fn=batch_fn, full_batch_fn=full_batch_fn)
    extra = tuple(probes_mod.check_probe(p) for p in (probes or ()))
    _check_unique(builtin, extra)
    everything = builtin + extra  # the order they run in
    at_state = _measured_losses(loss_fn, accuracy_fn, settings, stateful)
    cast = _caster(settings.dtype)

    def measure(params, batch, state, workspace, key, opt_state, data, model_state):
        with jax.default_matmul_precision("highest"):  # full float32 products on accelerators
            params, batch = cast(params), cast(batch)
            loss_fn, accuracy_fn = at_state(cast(model_state))
            ctx = probes_mod.context(loss_fn, params, batch, optimizer, settings, key, opt_state=opt_state,
                                     data=data, cast=cast, workspace=workspace, previous=state.carries)
            if accuracy_fn is not None:
                ctx = ctx._replace(columns=ctx.columns | {"acc": accuracy_fn(params, batch)})
            columns, carries, workspace = _run_probes(everything, ctx)
            return columns, MeasureState(carries, workspace)

    # the workspace is donated (reused in place); the rest of the state stays the caller's
    compiled = jax.jit(measure, donate_argnums=3)
    checked: set = set()

    def measure_call(params, batch, state: MeasureState, key, opt_state=None, data=None, model_state=None):
        signature = (jax.tree.structure(params), tuple((x.shape, str(x.dtype)) for x in jax.tree.leaves(params)))
        if stateful and model_state is None:
            from samedge.errors import ConfigError

            raise ConfigError("this measurement reads a model state (stateful=True): pass model_state=")
        if signature not in checked:  # once per parameter structure: a trace, no compute
            checks.float_params(params)
            checks.scalar_loss(at_state(model_state)[0], params, batch)
            checked.add(signature)
        rest, ws = split_workspace(state)
        return compiled(params, batch, rest, ws, key, opt_state, data, model_state)

    def init(params, key) -> MeasureState:
        checks.float_params(params)
        return _init_state(builtin, extra, cast(params), key, settings.max_basis)

    def lower(params, batch, state: MeasureState, key, opt_state=None, data=None, model_state=None):
        rest, ws = split_workspace(state)
        return compiled.lower(params, batch, rest, ws, key, opt_state, data, model_state)

    return Measurement(init, measure_call, settings, everything, lower)


def _check_unique(builtin, extra) -> None:
    """A one-line :class:`samedge.errors.ConfigError` when two probes share a name."""
    names = [p.name for p in builtin + extra]
    if len(set(names)) != len(names):
        from samedge.errors import ConfigError

        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"probe name(s) {', '.join(twice)} given twice (the built-in ones: "
                          f"{', '.join(p.name for p in builtin)})")


def _measured_losses(loss_fn: Callable, accuracy_fn: Callable | None, settings: MeasureSettings,
                     stateful: bool) -> Callable:
    """``model_state -> (loss, accuracy)``: the measured loss and accuracy as ``(params, batch)``
    functions, jitted, in chunks when ``settings.chunk_size``, with a stateful model's state given."""
    # The loss (and accuracy) as jitted units: the measurement differentiates the loss at several
    # places (gradient, the HVPs of every Lanczos run, the ascent gradient); jitted, its Python (a
    # flax model's apply) is traced once instead of at each, which halves the tracing and lowering
    # of the measurement's program (0.6 s -> 0.25 s on quick MNIST).
    if stateful:  # jitted with the state as an argument; closed over it (a traced value) per call
        loss3 = jax.jit(loss_fn)
        acc3 = None if accuracy_fn is None else jax.jit(accuracy_fn)
    elif settings.chunk_size:
        loss_fn = chunking.chunked_mean(loss_fn, settings.chunk_size)
        accuracy_fn = None if accuracy_fn is None else chunking.chunked_mean(accuracy_fn, settings.chunk_size)
    if not stateful:
        loss_fn = jax.jit(loss_fn)
        accuracy_fn = None if accuracy_fn is None else jax.jit(accuracy_fn)

    def at_state(model_state):
        """The measured loss and accuracy, ``(params, batch)``, at the model state given."""
        if not stateful:
            return loss_fn, accuracy_fn
        loss = lambda p, b: loss3(p, model_state, b)  # noqa: E731
        acc = None if acc3 is None else (lambda p, b: acc3(p, model_state, b))
        if settings.chunk_size:
            loss = chunking.chunked_mean(loss, settings.chunk_size)
            acc = None if acc is None else chunking.chunked_mean(acc, settings.chunk_size)
        return loss, acc

    return at_state


def _init_state(builtin, extra, point, key, max_basis: int = 0) -> MeasureState:
    """The probes' first carries and the workspace (sized for the longest Lanczos run of any probe).

    The built-in probes' start vectors are one block drawn from ``key``, split in their order (the
    layout, and so the numbers, of every earlier version); yours are drawn each from its own key."""
    block = initial_vectors(point, sum(p.rows for p in builtin), key)
    carries, i = {}, 0
    for p in builtin:
        carries[p.name] = p.init(point, block[i:i + p.rows])
        i += p.rows
    for p in extra:
        carries[p.name] = p.init(point, initial_vectors(point, p.rows, probes_mod.probe_key(key, p.name)))
    iters = max(p.workspace_iters for p in builtin + extra)
    return MeasureState(carries, curvature.krylov_workspace(block.shape[1], iters, block.dtype, max_basis))


def _run_probes(probes, ctx: probes_mod.Context):
    """Each probe in turn on ``ctx``, which gathers their columns and carries; the workspace threads
    through the probes that return it."""
    columns, carries, workspace = dict(ctx.columns), {}, ctx.workspace
    for p in probes:
        ctx = ctx._replace(columns=dict(columns), carries=dict(carries), workspace=workspace)
        out = p.measure(ctx, ctx.previous[p.name], probes_mod.probe_key(ctx.key, p.name))
        if not isinstance(out, tuple) or len(out) not in (2, 3):
            from samedge.errors import ConfigError

            raise ConfigError(f"probe {p.name!r}: measure must return (columns, carry) or (columns, carry, "
                              f"workspace), got {type(out).__name__}")
        probes_mod.check_columns(p.name, out[0], columns)
        columns |= out[0]
        carries[p.name] = out[1]
        if len(out) == 3:
            workspace = out[2]
    return columns, carries, workspace


def _caster(dtype: str | None) -> Callable:
    if dtype is None:
        return lambda tree: tree
    target = jnp.dtype(dtype)
    return lambda tree: jax.tree.map(
        lambda x: x.astype(target) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def from_vectors(m: Measurement, state: MeasureState, vectors, rows=()) -> MeasureState:
    """``state`` with the carries of a format-1 checkpoint: one ``(rows, n)`` block of warm-start
    vectors (top-k, then preconditioned, step, full batch, tracked: the built-in probes' ``rows`` in
    order), the guard's memory rebuilt from the run's ``rows`` (:func:`calls_since_cold`, the last
    ``lambda_max``).

    Args:
      m: the measurement.
      state: a state of ``m`` (from ``m.init``).
      vectors: the checkpoint's block.
      rows: the run's rows so far.

    Returns:
      The state; a one-line :class:`samedge.errors.RunDirError` when the block does not fit ``m``.
    """
    from samedge.errors import RunDirError

    carries, i = dict(state.carries), 0
    vectors = jnp.asarray(vectors)
    if vectors.ndim != 2 or vectors.shape[0] != sum(p.rows for p in m.probes):
        raise RunDirError(f"the checkpoint's warm-start vectors {tuple(vectors.shape)} do not fit this run's "
                          f"probes ({', '.join(f'{q.name} {q.rows}' for q in m.probes if q.rows)} rows)")
    for p in m.probes:
        if p.rows == 0:
            continue
        block = vectors[i:i + p.rows]
        old = carries[p.name]
        if p.name == topk_probe.NAME:
            last = rows[-1]["lambda_max"] if rows else float("nan")
            carries[p.name] = old._replace(vectors=block.astype(old.vectors.dtype),
                                           count=jnp.asarray(calls_since_cold(rows), old.count.dtype),
                                           lambda_prev=jnp.asarray(last, old.lambda_prev.dtype))
        else:
            carries[p.name] = block.astype(old.dtype)
        i += p.rows
    return state._replace(carries=carries)
