"""samedge: the stability of optimizers in deep learning, measured exactly.

The library, in four parts (each a module; the names below are loaded on first use, so importing
the package does nothing but define them):

- measurement: :func:`measurement` (:mod:`samedge.measure`), callable from any JAX training loop,
  made of probes (:class:`Probe`, :mod:`samedge.probes`), your own among them;
- optimizers: :func:`optimizer` (a registry entry with its closed-form edge, :mod:`samedge.optimizers`)
  and the step shapes around any optax base, :func:`descent`, :func:`ascent`, :func:`sam`, :func:`usam`
  (:mod:`samedge.steps`);
- tasks: :func:`make_task` (:mod:`samedge.tasks`);
- training: :func:`fit` (:mod:`samedge.run`), the whole run machinery on your own task.

>>> import samedge
>>> samedge.optimizer("gd", 0.5).lr
0.5
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "measurement": ("samedge.measure", "measurement"),
    "MeasureSettings": ("samedge.measure", "MeasureSettings"),
    "MeasureState": ("samedge.measure", "MeasureState"),
    "Probe": ("samedge.probes", "Probe"),
    "optimizer": ("samedge.optimizers", "build"),
    "Optimizer": ("samedge.steps", "Optimizer"),
    "make_task": ("samedge.tasks", "make_task"),
    "Task": ("samedge.tasks", "Task"),
    "fit": ("samedge.run", "fit"),
}

_EXPORTS |= {name: ("samedge.steps", name) for name in "descent ascent sam usam".split()}  # the step shapes

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'samedge' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
