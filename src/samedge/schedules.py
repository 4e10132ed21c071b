"""Learning-rate schedules for a run: constant, cosine or step decay, each with a linear warmup.

A schedule is an optax schedule ``count -> eta_t`` (``count``: the updates applied so far, as optax
counts them): pass one as the step size of :func:`samedge.optimizers.build` (any optax schedule
works) and the optimizer evaluates its edge at the step size of the step being measured; the
measurement's row at step ``t`` uses ``eta_t``, the step size of the update from ``w_t``
(:mod:`samedge.probes.edge`: the ``lr`` column; ``edge`` and ``gd_edge`` empty where ``eta_t = 0``).
:func:`make` builds the CLI's three kinds.

>>> s = make("cosine", 0.1, total_steps=100, warmup_steps=10)
>>> [round(float(s(t)), 4) for t in (0, 5, 10, 55, 100)]
[0.0, 0.05, 0.1, 0.05, 0.0]
>>> make("constant", 0.1, total_steps=100)
0.1
"""

from __future__ import annotations

import optax

from samedge.errors import ConfigError

__all__ = ["SCHEDULES", "STEP_BOUNDARIES", "STEP_FACTOR", "make"]

SCHEDULES = ("constant", "cosine", "step")
STEP_BOUNDARIES = (0.5, 0.75)  # "step": eta x STEP_FACTOR at these fractions of the run
STEP_FACTOR = 0.1


def make(kind: str, peak: float, total_steps: int, warmup_steps: int = 0):
    """The step size of a run as an optax schedule (or ``peak`` itself: constant without warmup).

    Args:
      kind: ``"constant"``; ``"cosine"`` (from ``peak`` to 0 at ``total_steps``, after the warmup:
        ``optax.warmup_cosine_decay_schedule``); ``"step"`` (``peak``, times 0.1 at half and three
        quarters of the run).
      peak: the step size after the warmup (``--lr``).
      total_steps: the run's steps.
      warmup_steps: a linear warmup from 0 to ``peak`` over these first steps (0: none).

    Returns:
      A float (constant, no warmup: nothing about the run changes) or an optax schedule.

    >>> s = make("step", 1.0, total_steps=8, warmup_steps=2)
    >>> [round(float(s(t)), 3) for t in range(8)]
    [0.0, 0.5, 1.0, 1.0, 0.1, 0.1, 0.01, 0.01]
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if not (isinstance(warmup_steps, int) and 0 <= warmup_steps < max(total_steps, 1)):
        raise ConfigError(f"--warmup-steps must be an integer in [0, steps = {total_steps}), got {warmup_steps!r}")
    if kind == "constant" and warmup_steps == 0:
        return peak
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1), 0.0)
    if kind == "constant":
        after = optax.constant_schedule(peak)
    else:
        bounds = {int(f * total_steps) - warmup_steps: STEP_FACTOR for f in STEP_BOUNDARIES}
        after = optax.piecewise_constant_schedule(peak, bounds)
    if warmup_steps == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup_steps), after], [warmup_steps])
