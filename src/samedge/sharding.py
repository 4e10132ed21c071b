"""Data parallelism: one run over several devices, with JAX's own sharding.

:func:`shard_task` returns a :class:`~samedge.tasks.Task` whose batches are split along their
leading (example) axis over a one-dimensional :class:`jax.sharding.Mesh` with the axis
:data:`AXIS` (``"batch"``). Nothing else changes: the training loop, the measurement and the
checkpoints run as they are, because ``jax.jit`` propagates the shardings of its inputs through
the program (GSPMD): each device computes the loss and gradient of its slice of the batch, and XLA
inserts the all-reduce that sums the slices. No ``pmap``, no ``shard_map``, no hand-written
collective.

What lives where:

- **Training data** (``task.data``). A leaf that ``batch_fn`` or ``measure_batch_fn`` hands back
  unchanged as (part of) the batch, as the full-batch tasks (MNIST, CIFAR-10) do with their
  ``(x, y)`` and shakespeare does with its fixed measurement batch (``measure_batch > 0``), is
  placed split along its leading axis: each device holds ``N / n`` rows and no device ever holds
  the whole set. Every other leaf is **replicated** on every device: shakespeare's token stream
  (one byte a character, about 1 MB) is replicated, because each step gathers random windows
  from all of it.
- **Batches** that ``batch_fn`` computes (shakespeare's gathered windows) are constrained with
  :func:`jax.lax.with_sharding_constraint` to the same split: every device gathers its own
  ``B / n`` windows from its replica of the tokens.
- **Parameters, optimizer state and the Lanczos vectors** stay replicated (:func:`replicate`):
  at these sizes (the paper's MLP has 2.8M parameters, 11 MB) splitting them would buy no memory
  worth having and cost a collective per layer; each Hessian-vector product is a replicated
  ``(n,)`` vector after its all-reduce, and so is every Lanczos basis vector. The basis
  (``lanczos_max_iters x n``: 64 x 2.8M floats, 0.7 GB for the paper's MLP) is then held by every
  device, as it is by the one device of an unsplit run.
- **Evaluation** (``task.evaluate``) runs on one device of this process, on a copy of the
  replicated parameters: the test set is not split.

The loss over a split batch is the same mean as on one device; only the order of the additions
differs (the sum of per-device partial sums), so results agree with one device to float32
rounding, about 1e-6 relative.

**Batches that do not divide over the devices** (``N`` examples, ``n`` devices, ``N mod n != 0``)
are padded and the padding cancelled exactly, when ``uneven="pad"`` (the default): the batch gets
``p = (-N) mod n`` extra rows, copies of its first ``p`` rows (real examples, so the loss there is
finite), and the wrapped loss is::

    L = (N + p) / N * loss_fn(params, padded_batch) - p / N * loss_fn(params, first_p_rows)

which equals ``loss_fn(params, batch)`` whenever ``loss_fn`` is a mean over the batch's examples,
plus any term of the parameters alone: the task contract (``Task.loss_fn``, a MEAN over the
batch); the same holds for ``accuracy_fn``. Gradients, Hessian-vector products and so every
measurement are exact for the same reason (they are linear in the loss). The ``p < n`` extra rows
cost ``p/N`` more work. A loss that is not such a mean (a batch statistic, a token-weighted mean
over windows of different lengths) would be changed: pass ``uneven="refuse"`` to get a
:class:`~samedge.errors.ConfigError` naming the batch size, the device count and sizes that
divide. A padded batch reaches ``loss_fn`` as a :class:`PaddedBatch`, which only the wrapped
``loss_fn`` and ``accuracy_fn`` of the returned task unpack.

A run's results do not depend on the device count (to rounding), and neither do its files: a
checkpoint holds host copies of the replicated parameters (``jax.device_get``), so a run
checkpointed on 2 devices continues on 1 or 4. ``task.info`` is left unchanged for that reason
(a resumed run checks it).

Several hosts
-------------
A run can span the GPUs of several machines; JAX runs one process per host ("multi-controller"):

1. In every process, before any other JAX call (before a task is built)::

       jax.distributed.initialize(coordinator_address="host0:8476", num_processes=2, process_id=i)

   (on Slurm, Open MPI or a TPU pod the three arguments are found on their own:
   ``jax.distributed.initialize()``).
2. ``jax.devices()`` then lists the devices of all processes (global devices) and
   ``jax.local_devices()`` this process's own. :func:`devices_for` takes from ``jax.devices()``,
   so ``devices_for(None)`` is every device of every host and the mesh spans them all; with
   several processes a run must use all of them (a subset is refused).
3. The data must be loaded in every process: each process builds the task (the built-in tasks
   read the whole data set), and :func:`shard_task` assembles the global arrays with
   :func:`jax.make_array_from_process_local_data` (each process passes the full array and the
   global shape, and contributes the rows its own devices hold). A data set too large for one
   host would instead load only its own rows and pass them with the global shape.
4. Every process runs the same training loop; the values the loop reads back (losses, rows) are
   replicated, so every process sees them. Only process 0 (``jax.process_index() == 0``) should
   write the run folder.

Ray sweeps give a run a whole multi-GPU node instead: ``samedge sweep ... --backend ray
--gpus-per-run 8`` reserves 8 GPUs of one node for each run, Ray sets ``CUDA_VISIBLE_DEVICES`` to
them, and the run's ``devices_for(None)`` is those 8. A Ray task is one process on one node, so a
run never spans nodes under Ray; use ``jax.distributed`` (above) for that. With the local sweep
backend, set ``--devices 1`` (or ``CUDA_VISIBLE_DEVICES`` per worker) so that parallel workers do
not all spread over the same GPUs.

Example (one CPU device; with ``XLA_FLAGS=--xla_force_host_platform_device_count=4`` the same
code splits the 8 rows into 4 shards of 2):

>>> import jax, jax.numpy as jnp
>>> from samedge import tasks
>>> task = tasks.make_task("line", lambda k: {"w": jnp.zeros(2)},
...                        lambda p, b: jnp.mean((b[:, 0] * p["w"][0] + p["w"][1] - b[:, 1]) ** 2),
...                        jnp.ones((8, 2)))
>>> sharded = shard_task(task, devices_for(1))
>>> tuple(sharded.data.sharding.spec), len(sharded.data.addressable_shards)
(('batch',), 1)
>>> params = sharded.init_params(jax.random.PRNGKey(0))
>>> float(sharded.loss_fn(params, sharded.batch_fn(sharded.data, 0)))
1.0
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from samedge.errors import ConfigError
from samedge.tasks import Task

__all__ = ["AXIS", "UNEVEN", "PaddedBatch", "devices_for", "make_mesh", "replicate", "batch_sharding",
           "shard_task", "for_run", "is_sharded", "describe"]

AXIS = "batch"  # the mesh axis the examples are split over
UNEVEN = ("pad", "refuse")  # what shard_task does with a batch that does not divide over the devices


def devices_for(n: int | None = None) -> list:
    """The devices a run uses: the first ``n`` of ``jax.devices()``, or all of them.

    ``jax.devices()`` is the default backend's devices of every process (global devices; with
    one process, the local ones), so with ``jax.distributed`` the run spans every host.

    Args:
      n: how many devices; ``None`` for all of them.

    Returns:
      A list of ``jax.Device``. A :class:`ConfigError` when ``n`` is not a positive integer, when it
      exceeds the devices that exist, or when it is not all of them in a multi-process run.

    >>> len(devices_for()) == jax.device_count(), devices_for(1) == jax.devices()[:1]
    (True, True)
    """
    devices = list(jax.devices())
    if n is None:
        return devices
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"--devices must be a positive integer, got {n!r}")
    n = int(n)
    if n > len(devices):
        platform = devices[0].platform
        hint = (f"; on CPU, set XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts "
                f"to get {n} virtual devices" if platform == "cpu" else "")
        raise ConfigError(f"--devices {n}: only {len(devices)} {platform} device{'s' if len(devices) != 1 else ''} "
                          f"here ({jax.process_count()} process{'es' if jax.process_count() != 1 else ''}){hint}")
    if jax.process_count() > 1 and n != len(devices):
        raise ConfigError(f"--devices {n}: a run over {jax.process_count()} processes uses all "
                          f"{len(devices)} devices (leave --devices unset)")
    return devices[:n]


def make_mesh(devices: Sequence) -> Mesh:
    """A one-dimensional mesh over ``devices`` with the axis :data:`AXIS`, of type ``Auto``.

    ``Auto`` (not JAX's default ``Explicit``): shardings propagate through ``jit`` by GSPMD, so
    functions written for one device (the task's loss, the optimizer, the measurement) run as
    they are.

    Args:
      devices: the devices (e.g. from :func:`devices_for`).

    Returns:
      The :class:`jax.sharding.Mesh`.

    >>> make_mesh(devices_for(1)).axis_names
    ('batch',)
    """
    devices = list(devices)
    if not devices:
        raise ConfigError("a mesh needs at least one device")
    return jax.make_mesh((len(devices),), (AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Arrays split along their leading axis over the mesh axis :data:`AXIS`."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _put(x, sharding: NamedSharding, *, process_local: bool | None = None) -> jax.Array:
    """``x`` (the whole array, the same in every process) placed with ``sharding``.

    One process: :func:`jax.device_put`. Several (or ``process_local=True``):
    :func:`jax.make_array_from_process_local_data` with the global shape, each process putting
    the rows its devices hold.
    """
    if process_local is None:
        process_local = jax.process_count() > 1
    if not process_local:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_process_local_data(sharding, host, host.shape)


def replicate(tree, mesh: Mesh):
    """Every array of ``tree`` replicated on every device of ``mesh``.

    For the parameters, the optimizer state and the Lanczos vectors (the ``MeasureState``): they
    are small next to the data, and replicated they need no collective but the gradient's
    all-reduce.

    Args:
      tree: a pytree of arrays (the same values in every process).
      mesh: the mesh (:func:`make_mesh`).

    Returns:
      The pytree of :class:`jax.Array` with ``NamedSharding(mesh, PartitionSpec())``.

    >>> w = replicate({"w": jnp.ones(3)}, make_mesh(devices_for(1)))
    >>> w["w"].sharding.is_fully_replicated
    True
    """
    sharding = _replicated(mesh)
    return jax.tree.map(lambda x: _put(x, sharding), tree)


@jax.tree_util.register_pytree_node_class
class PaddedBatch:
    """A batch padded to divide over the devices (see the module docstring).

    Attributes:
      rows: the batch with ``pad`` rows appended (copies of its first ``pad`` rows), split over
        the devices.
      head: those first ``pad`` rows, replicated.
      n: the real number of examples; ``pad`` is ``len(rows) - n``.
    """

    def __init__(self, rows, head, n: int):
        self.rows, self.head, self.n = rows, head, n

    def tree_flatten(self):
        return (self.rows, self.head), self.n

    @classmethod
    def tree_unflatten(cls, n, children):
        return cls(*children, n)

    def __repr__(self) -> str:
        return f"PaddedBatch(n={self.n}, pad={_leading(self.rows) - self.n})"

    def mean_of(self, fn: Callable, params):
        """``fn``'s mean over the ``n`` real examples, from its means over ``rows`` and ``head``."""
        total, pad = _leading(self.rows), _leading(self.rows) - self.n
        return (total / self.n) * fn(params, self.rows) - (pad / self.n) * fn(params, self.head)


def _leading(tree) -> int:
    return int(jax.tree.leaves(tree)[0].shape[0])


def _pad_rows(x, pad: int):
    """``x`` with ``pad`` rows appended: rows ``0, 1, ..`` of ``x`` again (cyclically when ``pad > len(x)``)."""
    if pad == 0:
        return x
    idx = np.arange(pad) % x.shape[0]
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.concatenate([x, xp.take(x, idx, axis=0)], axis=0)


def _passthrough(fn: Callable, data) -> list[int | None]:
    """For each array ``fn(data, step)`` returns, the index of the ``data`` leaf it is (unchanged), else None."""
    closed = jax.make_jaxpr(fn)(data, jnp.asarray(0, jnp.int32))
    invars = {id(v): i for i, v in enumerate(closed.jaxpr.invars[:-1])}  # the last invar is the step
    return [invars.get(id(v)) for v in closed.jaxpr.outvars]


def _batch_size(fn: Callable, data, what: str, name: str) -> int:
    shapes = jax.tree.leaves(jax.eval_shape(fn, data, jnp.asarray(0, jnp.int32)))
    sizes = {s.shape[0] if s.ndim else None for s in shapes}
    if not shapes or None in sizes or len(sizes) != 1:
        raise ConfigError(f"cannot split task {name!r} over devices: {what} must return arrays that share a "
                          f"leading example axis, got shapes {[tuple(s.shape) for s in shapes]}")
    return sizes.pop()


def _divisors_hint(size: int, n: int) -> str:
    below, above = (size // n) * n, -(-size // n) * n
    fits = [d for d in range(n - 1, 0, -1) if size % d == 0][:1]
    sizes = ", ".join(str(s) for s in (below, above) if s > 0)
    return f"use a batch of {sizes} (a multiple of {n})" + (f", or {fits[0]} devices" if fits else "")


def shard_task(task: Task, devices: Sequence, *, uneven: str = "pad") -> Task:
    """``task`` with its batches split over ``devices`` along their leading axis.

    Args:
      task: the task (built on one device as usual).
      devices: the devices (:func:`devices_for`); their order is the mesh's.
      uneven: a batch whose size does not divide over the devices is padded with exact
        cancellation (``"pad"``, the default; needs ``loss_fn`` and ``accuracy_fn`` to be means
        over the examples) or refused (``"refuse"``: a :class:`ConfigError` naming the batch size,
        the device count and sizes that divide).

    Returns:
      A new :class:`~samedge.tasks.Task`, the same in name, config and ``info``: its ``data`` lies
      on the mesh (the leaves that are batches split along axis 0, the rest replicated); its
      ``batch_fn`` and ``measure_batch_fn`` return batches split along axis 0 (a
      :class:`PaddedBatch` when padded); ``init_params`` returns replicated parameters;
      ``loss_fn`` and ``accuracy_fn`` unpack padded batches; ``evaluate`` runs on one local
      device. Every batch's arrays must share a leading example axis (else :class:`ConfigError`).
    """
    if uneven not in UNEVEN:
        raise ConfigError(f"uneven must be one of {', '.join(UNEVEN)}, got {uneven!r}")
    mesh = make_mesh(devices)
    n = mesh.size
    split, replicated = batch_sharding(mesh), _replicated(mesh)
    leaves, treedef = jax.tree.flatten(task.data)
    fns = {"batch_fn": task.batch_fn}
    if task.measure_batch_fn is not task.batch_fn:
        fns["measure_batch_fn"] = task.measure_batch_fn

    plans, pads = {}, {}  # per function: (pass-through map, real size, pad); per data leaf: its pad
    for what, fn in fns.items():
        size = _batch_size(fn, task.data, what, task.name)
        pad = (-size) % n
        if pad and task.stateful:
            raise ConfigError(f"task {task.name!r} has model state (BatchNorm): its batch statistics would count "
                              f"padded examples, so the {'measurement ' if what != 'batch_fn' else ''}batch of {size} "
                              f"examples must divide over {n} devices; {_divisors_hint(size, n)}")
        if pad and uneven == "refuse":
            raise ConfigError(f"task {task.name!r}: the {'measurement ' if what != 'batch_fn' else ''}batch of "
                              f"{size} examples does not divide over {n} devices; {_divisors_hint(size, n)}")
        through = _passthrough(fn, task.data)
        for i in through:
            if i is not None:
                if pads.get(i, pad) != pad:
                    raise ConfigError(f"task {task.name!r}: data leaf {i} is a batch of two different sizes")
                pads[i] = pad
        plans[what] = (through, size, pad)

    placed = [_put(_pad_rows(np.asarray(x), pads[i]) if pads.get(i) else x, split) if i in pads
              else _put(x, replicated) for i, x in enumerate(leaves)]

    def wrap(fn, through, size, pad):
        def batch_fn(data, step):
            out = fn(data, step)
            arrays, out_def = jax.tree.flatten(out)
            # a data leaf handed back unchanged is already padded; a computed array is padded here
            padded = [x if i is not None else _pad_rows(x, pad) for x, i in zip(arrays, through)]
            rows = [jax.lax.with_sharding_constraint(x, split) for x in padded]
            if not pad:
                return jax.tree.unflatten(out_def, rows)
            head = [jax.lax.with_sharding_constraint(x[:pad], replicated) for x in padded]
            return PaddedBatch(jax.tree.unflatten(out_def, rows), jax.tree.unflatten(out_def, head), size)

        return batch_fn

    wrapped = {what: wrap(fns[what], *plans[what]) for what in fns}

    def unpadded(fn):
        if fn is None:
            return None

        def mean(params, batch):
            if isinstance(batch, PaddedBatch):
                return batch.mean_of(fn, params)
            return fn(params, batch)

        return mean

    def init_params(key):
        return replicate(task.init_params(key), mesh)

    local = mesh.local_devices[0]

    def evaluate(params, *state):  # a task with model state passes it after the parameters
        return task.evaluate(*jax.tree.map(lambda x: _on_one_device(x, local), (params, *state)))

    def init_state(key):
        return replicate(task.init_state(key), mesh)

    return dataclasses.replace(
        task,
        init_params=init_params,
        loss_fn=unpadded(task.loss_fn),
        accuracy_fn=unpadded(task.accuracy_fn),
        data=jax.tree.unflatten(treedef, placed),
        batch_fn=wrapped["batch_fn"],
        measure_batch_fn=wrapped.get("measure_batch_fn", wrapped["batch_fn"]),
        evaluate=evaluate,
        init_state=init_state if task.stateful else None,
    )


def is_sharded(task: Task) -> bool:
    """Whether ``task`` is already split over several devices (some data array lies on a mesh of
    more than one device with the axis :data:`AXIS`)."""
    for x in jax.tree.leaves(task.data):
        sh = getattr(x, "sharding", None)
        if isinstance(sh, NamedSharding) and sh.mesh.axis_names == (AXIS,) and sh.mesh.size > 1:
            return True
    return False


def for_run(task: Task, devices: int | None = None, *, uneven: str = "pad") -> Task:
    """The task a run trains: ``task`` split over :func:`devices_for` ``(devices)`` when that is
    more than one device, else ``task`` itself (one device: the programs stay exactly as they are).

    A task already split (:func:`is_sharded`, e.g. passed in by a caller who split it) is returned
    as it is.

    Args:
      task: the task.
      devices: the device count (``--devices``); ``None`` for every device of the default backend.
      uneven: as in :func:`shard_task`.

    Returns:
      The task to train.

    >>> from samedge import tasks
    >>> t = tasks.make_task("line", lambda k: {"w": jnp.zeros(2)}, lambda p, b: jnp.mean(b @ p["w"]), jnp.ones((8, 2)))
    >>> for_run(t, 1) is t
    True
    """
    chosen = devices_for(devices)
    if len(chosen) == 1 or is_sharded(task):
        return task
    return shard_task(task, chosen, uneven=uneven)


def _on_one_device(x, device):
    """A replicated array's copy on ``device`` (one of this process's); anything else as it is."""
    if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1 and x.sharding.is_fully_replicated:
        for shard in x.addressable_shards:
            if shard.device == device:
                return shard.data
        return x.addressable_data(0)
    return x


def describe(devices: Sequence) -> dict:
    """What a run's devices are, for its log: count, platform, kind and processes.

    >>> describe(devices_for(1))["devices"]
    1
    """
    devices = list(devices)
    return {"devices": len(devices), "platform": devices[0].platform, "device_kind": devices[0].device_kind,
            "processes": len({d.process_index for d in devices})}
