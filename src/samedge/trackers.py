"""Trackers: a run's rows sent, as they are written, to TensorBoard, Weights & Biases or MLflow.

``metrics.csv`` stays the record of a run; a tracker is a live copy beside a researcher's other
experiments. Each ``metrics.csv`` row goes to every tracker as scalars at its step under the same
column names, the training loss of every step between two check points as ``train_loss`` (the loss
before the step, on its batch, at its step), the resolved config as hyperparameters when the
tracker's run starts, and the run's figures as images at the end. :func:`start` opens the trackers
of one run and returns a :class:`Trackers` that fans each call out to them: ``samedge run --log``,
``samedge.fit(..., log=[...])`` and your own loop (``Trackers.log(row)``) all go through it.

Failures never cost data: a tracker that raises, at its start (not installed, no credentials) or at
any later call (a full disk), gets one warning line on stderr and is dropped; the run goes on.

Each tracker library is imported inside its tracker, when a run starts it: none is needed by the
rest of samedge (the extras ``samedge[tensorboard]``, ``samedge[wandb]``, ``samedge[mlflow]``).

- :class:`TensorBoard`: tensorboardX writes the event files (numpy and protobuf only, no TensorFlow
  nor PyTorch), by default in ``<run folder>/tensorboard``, so ``tensorboard --logdir <sweep folder>``
  shows a whole sweep.
- :class:`WandB`: one W&B run per samedge run, its files in ``<run folder>/wandb``; offline (synced
  later with ``wandb sync``) unless ``WANDB_MODE`` says otherwise or an API key is found and the W&B
  host answers within 3 s, so a run never waits on a network that is not there.
- :class:`MLflow`: ``MLFLOW_TRACKING_URI`` or the URI given, else one SQLite store per run in
  ``<run folder>/mlflow.db`` (parallel sweep workers never write one store; watch a sweep in one UI
  through an MLflow server, which serialises the writes).

A resumed run recomputes the rows and losses after its checkpoint, which a killed run may have sent
already; each tracker continues its own run (its ids are kept in ``<run folder>/trackers.json``) so
that every step appears once. TensorBoard can hide events: the new event file starts with a purge
at the checkpoint step (``purge_step``: TensorBoard discards what the earlier files hold from that
step on), and the checkpoint's own row is sent again. MLflow cannot delete a metric's values: the
tracker asks the store for the last step it holds and sends only later ones (the values are the
same: a resumed run reproduces its rows exactly). W&B keeps a run's steps increasing: an online run
is resumed by its id (``resume="allow"``) and sent only the steps from W&B's next one on; an offline
run cannot be resumed in place, so a resume writes a second offline folder with the same run id,
from the checkpoint step on, for ``wandb sync`` to upload into that run (how W&B merges the two is
its own affair: it needs the network, and samedge's tests do not check it). A tracker added at a
resume gets the rows up to the checkpoint first (their training losses were not kept).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from samedge.errors import ConfigError, one_line

__all__ = ["NAMES", "TRAIN_LOSS", "RECORD", "RunInfo", "Tracker", "Memory", "TensorBoard", "WandB", "MLflow",
           "Trackers", "make", "make_all", "start", "flatten", "scalars_of"]

NAMES = ("tensorboard", "wandb", "mlflow")  # the built-in trackers, as ``--log`` names them
EXTRAS = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow"}  # what each one imports
TRAIN_LOSS = "train_loss"  # the per-step training loss's name (metrics.csv's ``loss`` is the measurement's)
RECORD = "trackers.json"  # in the run folder: each tracker's ids, so that a resume continues its run
WANDB_TIMEOUT_S = 3.0  # how long the W&B host may take to accept a connection before a run goes offline
MLFLOW_BATCH = 1000  # MLflow's most metrics in one log_batch call
MLFLOW_PARAMS = 100  # and its most parameters
MLFLOW_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class RunInfo(NamedTuple):
    """What a tracker is told when a run starts."""

    folder: Path  # the run folder
    name: str  # the run's name (the folder's name by default)
    config: dict  # the resolved config (nested dicts allowed; :func:`flatten` makes it flat)
    resume_step: int | None  # a resumed run: the checkpoint step it continues from; a new run: None
    record: dict  # what this tracker kept for this run last time (its ids; see :attr:`Tracker.record`), or {}


class Tracker:
    """A tracker: subclass it, or write any object with these methods, and pass it where a name goes
    (``samedge.fit(..., log=[MyTracker()])``, :func:`start`).

    The calls come in increasing step order (several at one step: a row and the training loss there);
    steps before the one :meth:`start` returned are not sent.
    """

    name = "tracker"  # also the key of its record in ``trackers.json``
    record: dict | None = None  # set by :meth:`start`: what a resumed run needs to continue this tracker's run

    def start(self, run: RunInfo) -> int:
        """Open the tracker's run.

        Args:
          run: the run folder, name, config and, for a resumed run, the checkpoint step and this
            tracker's record.

        Returns:
          The first step to send (0: everything; a resumed run gets the rows up to the checkpoint
          again from here on).
        """
        return 0

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Send ``values`` (name -> float) at ``step``.

        Args:
          step: the step.
          values: the scalars.

        Returns:
          None.
        """
        raise NotImplementedError

    def series(self, key: str, first_step: int, values: Sequence[float]) -> None:
        """Send one scalar at consecutive steps: ``values[i]`` at ``first_step + i``.

        Args:
          key: the scalar's name.
          first_step: the step of ``values[0]``.
          values: the values.

        Returns:
          None.
        """
        for i, v in enumerate(values):
            self.scalars(first_step + i, {key: v})

    def images(self, step: int, paths: Sequence[Path]) -> None:
        """Send the figures (PNG files) at ``step``; each is named by its file's stem.

        Args:
          step: the step (the last one sent).
          paths: the PNG files.

        Returns:
          None.
        """

    def close(self, status: str) -> None:
        """End the tracker's run.

        Args:
          status: the samedge run's end: ``completed``, ``diverged``, ``interrupted`` or ``failed``.

        Returns:
          None.
        """


class Memory(Tracker):
    """A tracker that keeps what it gets, in memory: for tests, notebooks and examples.

    >>> mem = Memory()
    >>> mem.start(RunInfo(Path("."), "r", {"lr": 0.1}, None, {}))
    0
    >>> mem.scalars(0, {"loss": 1.0}); mem.series("train_loss", 0, [1.0, 0.5])
    >>> mem.steps
    {0: {'loss': 1.0, 'train_loss': 1.0}, 1: {'train_loss': 0.5}}
    """

    name = "memory"

    def __init__(self):
        self.steps: dict[int, dict[str, float]] = {}  # step -> name -> value (the last one sent)
        self.sent: list[tuple[int, str]] = []  # every (step, name) in the order sent: repeats show here
        self.config: dict | None = None
        self.figures: list[Path] = []
        self.status: str | None = None

    def start(self, run: RunInfo) -> int:
        self.config = run.config
        return 0

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self.steps.setdefault(step, {}).update(values)
        self.sent += [(step, k) for k in values]

    def images(self, step: int, paths: Sequence[Path]) -> None:
        self.figures += [Path(p) for p in paths]

    def close(self, status: str) -> None:
        self.status = status


def _relative(path: Path, folder: Path) -> str:
    """``path`` relative to the run folder when inside it (a moved run folder still matches its record)."""
    try:
        return str(path.resolve().relative_to(folder.resolve()))
    except ValueError:
        return str(path.resolve())


class TensorBoard(Tracker):
    """TensorBoard event files, written by tensorboardX (no TensorFlow): ``pip install 'samedge[tensorboard]'``.

    Args:
      logdir: a folder for the event files of many runs (each run in ``logdir/<run name>``); default:
        each run's own ``<run folder>/tensorboard``.
      flush_secs: how often the event file is flushed (seconds): what "live" means.

    A new run removes the event files an earlier run of the same folder left there; a resumed run
    starts its event file with a purge at the checkpoint step and sends the checkpoint's row again.
    The config goes in as TensorBoard hyperparameters (the HParams tab, with ``lambda_max``,
    ``ratio`` and ``loss`` as its metrics) and as a JSON text.

    >>> TensorBoard("tb").logdir    # nothing is imported until a run starts
    'tb'
    """

    name = "tensorboard"

    def __init__(self, logdir=None, *, flush_secs: int = 10):
        self.logdir = logdir
        self.flush_secs = flush_secs
        self._writer = None

    def start(self, run: RunInfo) -> int:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams

        where = Path(self.logdir) / run.name if self.logdir is not None else run.folder / "tensorboard"
        continuing = run.resume_step is not None and run.record.get("dir") == _relative(where, run.folder)
        if not continuing:  # the events of an earlier run in this folder (--overwrite) are not this run's
            for old in where.glob("events.out.tfevents.*"):
                old.unlink()
        first = run.resume_step if continuing else 0
        self._writer = SummaryWriter(logdir=str(where), purge_step=first if continuing else None,
                                     flush_secs=self.flush_secs)
        self.record = {"dir": _relative(where, run.folder)}
        if first == 0:  # a purge at step 0 hides the config written before: write it again
            flat = flatten(run.config)
            experiment, session, _ = hparams(flat, {"lambda_max": 0.0, "ratio": 0.0, "loss": 0.0})
            self._writer.file_writer.add_summary(experiment)
            self._writer.file_writer.add_summary(session)
            self._writer.add_text("config", "```\n" + json.dumps(run.config, indent=1, default=str) + "\n```", 0)
        return first

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        for key, value in values.items():
            self._writer.add_scalar(key, value, step)

    def images(self, step: int, paths: Sequence[Path]) -> None:
        from matplotlib.image import imread

        for path in paths:
            self._writer.add_image(f"figures/{Path(path).stem}", imread(path), step, dataformats="HWC")

    def close(self, status: str) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _wandb_mode() -> str | None:
    """``None`` (W&B reads ``WANDB_MODE``) when the environment sets it; else ``online`` when an API
    key is found and the W&B host accepts a connection within :data:`WANDB_TIMEOUT_S`, ``offline``
    otherwise: never a login prompt, never a wait on a network that is not there."""
    import netrc
    import socket
    from urllib.parse import urlparse

    if os.environ.get("WANDB_MODE"):
        return None
    url = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai")
    host = url.hostname or "api.wandb.ai"
    key = os.environ.get("WANDB_API_KEY")
    if not key:
        try:
            key = (netrc.netrc().authenticators(host) or (None, None, None))[2]
        except (OSError, netrc.NetrcParseError):
            key = None
    if not key:
        return "offline"
    try:
        socket.create_connection((host, url.port or (443 if url.scheme == "https" else 80)),
                                 timeout=WANDB_TIMEOUT_S).close()
    except OSError:
        return "offline"
    return "online"


class WandB(Tracker):
    """A Weights & Biases run per samedge run: ``pip install 'samedge[wandb]'``.

    Args:
      project: the W&B project (default ``$WANDB_PROJECT``, else ``samedge``).
      mode: ``online``, ``offline`` or ``disabled``; default: ``$WANDB_MODE``, else online only with
        an API key and a W&B host that answers (:func:`_wandb_mode`), else offline.
      **init: more ``wandb.init`` arguments (``entity``, ``group``, ``tags``, ``settings`` ...).

    The run's files go to ``<run folder>/wandb``, its name is the run folder's, its config the
    run's. W&B's console capture is off (``settings=wandb.Settings(console="off")``) unless
    ``settings`` is given.

    >>> WandB("my-project").project
    'my-project'
    """

    name = "wandb"

    def __init__(self, project: str | None = None, *, mode: str | None = None, **init: Any):
        self.project = project
        self.mode = mode
        self.init = init
        self._run = None

    def start(self, run: RunInfo) -> int:
        import secrets

        import wandb

        continuing = run.resume_step is not None and bool(run.record.get("id"))
        run_id = run.record["id"] if continuing else secrets.token_hex(8)
        init = dict(self.init)
        init.setdefault("settings", wandb.Settings(console="off"))
        self._run = wandb.init(project=self.project or os.environ.get("WANDB_PROJECT") or "samedge",
                               name=run.name, id=run_id, dir=str(run.folder), config=run.config,
                               resume="allow", mode=self.mode or _wandb_mode(), **init)
        self.record = {"id": run_id}
        if not continuing:
            return 0
        # online: W&B's next step in the resumed run (it refuses smaller ones); offline: a new folder
        return max(run.resume_step, int(getattr(self._run, "step", 0) or 0))

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def images(self, step: int, paths: Sequence[Path]) -> None:
        import wandb

        self._run.log({f"figures/{Path(p).stem}": wandb.Image(str(p)) for p in paths}, step=step)

    def close(self, status: str) -> None:
        if self._run is not None:
            run, self._run = self._run, None
            run.finish(exit_code=0 if status in ("completed", "diverged") else 1)


class MLflow(Tracker):
    """An MLflow run per samedge run: ``pip install 'samedge[mlflow]'``.

    Args:
      tracking_uri: the tracking store or server (``http://127.0.0.1:5000``, ``sqlite:///runs.db``);
        default ``$MLFLOW_TRACKING_URI``, else a SQLite store in the run folder (``mlflow.db``, the
        artifacts in ``mlflow-artifacts``): one store per run, which parallel sweep workers never share.
      experiment: the MLflow experiment (created when missing).

    The config goes in as parameters (:func:`flatten`: ``hparams.rho``, ``task_config.width``), the
    figures as artifacts under ``figures/``, the samedge status as the tag ``samedge.status``.

    >>> MLflow("http://127.0.0.1:5000").experiment
    'samedge'
    """

    name = "mlflow"

    def __init__(self, tracking_uri: str | None = None, *, experiment: str = "samedge"):
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self._client = None
        self._run_id = None

    def start(self, run: RunInfo) -> int:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        given = self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
        uri = given or f"sqlite:///{(run.folder / 'mlflow.db').resolve()}"
        self._client = client = MlflowClient(tracking_uri=uri)
        continuing = (run.resume_step is not None and bool(run.record.get("run_id"))
                      and run.record.get("uri") == given)
        if continuing:
            self._run_id = run.record["run_id"]
            client.update_run(self._run_id, status="RUNNING")
            first = self._last_step() + 1
        else:
            artifacts = None if given else (run.folder / "mlflow-artifacts").resolve().as_uri()
            experiment = self._experiment(artifacts)
            self._run_id = client.create_run(experiment, run_name=run.name,
                                             tags={"samedge.folder": str(run.folder.resolve())}).info.run_id
            params = [Param(k, str(v)) for k, v in flatten(run.config).items()]
            for i in range(0, len(params), MLFLOW_PARAMS):
                client.log_batch(self._run_id, params=params[i:i + MLFLOW_PARAMS])
            first = 0
        self.record = {"run_id": self._run_id, "uri": given}
        return first

    def _experiment(self, artifacts: str | None) -> str:
        """The experiment's id, created when missing (another process may create it meanwhile)."""
        found = self._client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        try:
            return self._client.create_experiment(self.experiment, artifact_location=artifacts)
        except Exception:
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                raise
            return found.experiment_id

    def _last_step(self) -> int:
        """The largest step of any metric the run holds (-1 for none)."""
        keys = self._client.get_run(self._run_id).data.metrics
        return max((m.step for k in keys for m in self._client.get_metric_history(self._run_id, k)), default=-1)

    def _send(self, metrics) -> None:
        for i in range(0, len(metrics), MLFLOW_BATCH):
            self._client.log_batch(self._run_id, metrics=metrics[i:i + MLFLOW_BATCH])

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._send([Metric(k, float(v), now, step) for k, v in values.items()])

    def series(self, key: str, first_step: int, values: Sequence[float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._send([Metric(key, float(v), now, first_step + i) for i, v in enumerate(values)])

    def images(self, step: int, paths: Sequence[Path]) -> None:
        for path in paths:
            self._client.log_artifact(self._run_id, str(path), artifact_path="figures")

    def close(self, status: str) -> None:
        if self._run_id is not None:
            run_id, self._run_id = self._run_id, None
            self._client.set_tag(run_id, "samedge.status", status)
            self._client.set_terminated(run_id, status=MLFLOW_STATUS.get(status, "FAILED"))


_BUILTIN = {"tensorboard": TensorBoard, "wandb": WandB, "mlflow": MLflow}


def make(spec) -> Tracker:
    """A tracker from its ``--log`` spelling, or a tracker object as it is.

    Args:
      spec: ``tensorboard``, ``wandb`` or ``mlflow``, optionally ``=WHERE``: ``tensorboard=DIR`` (a
        log folder for many runs), ``wandb=PROJECT``, ``mlflow=URI`` (a tracking store or server);
        or an object with ``start``, ``scalars`` and ``close`` (:class:`Tracker`).

    Returns:
      The tracker (its library is not imported yet). An unknown name is a one-line
      :class:`~samedge.errors.ConfigError`.

    >>> make("tensorboard=logs").logdir, make("wandb=edges").project, make("mlflow").tracking_uri
    ('logs', 'edges', None)
    >>> make("neptune")
    Traceback (most recent call last):
    ...
    samedge.errors.ConfigError: --log neptune: unknown tracker; choose tensorboard, wandb or mlflow (each NAME or NAME=WHERE)
    """
    if not isinstance(spec, str):
        missing = [m for m in ("start", "scalars", "close") if not callable(getattr(spec, m, None))]
        if missing:
            raise ConfigError(f"a tracker needs the methods start, scalars and close; {type(spec).__name__} "
                              f"lacks {', '.join(missing)}")
        return spec
    name, _, where = spec.partition("=")
    name = name.strip().lower()
    if name not in _BUILTIN:
        raise ConfigError(f"--log {spec}: unknown tracker; choose {', '.join(NAMES[:-1])} or {NAMES[-1]} "
                          f"(each NAME or NAME=WHERE)")
    return _BUILTIN[name](where.strip() or None)


def make_all(log) -> list:
    """The trackers of a ``log`` argument: :func:`make` of each.

    Args:
      log: ``None``, one spec or tracker object, or a list of them.

    Returns:
      The trackers, in order.

    >>> [t.name for t in make_all(["tensorboard", "mlflow=sqlite:///runs.db"])], make_all(None)
    (['tensorboard', 'mlflow'], [])
    """
    if log is None:
        return []
    if isinstance(log, (str, Tracker)) or not isinstance(log, Iterable):
        log = [log]
    return [make(spec) for spec in log]


def flatten(config: Mapping, prefix: str = "") -> dict:
    """A nested config as one flat dict of numbers, booleans and strings (hyperparameters, MLflow
    parameters): nested keys joined by dots, lists joined by commas, anything else as its string.

    Args:
      config: the config (``RunConfig.to_dict()``, or any mapping).
      prefix: put before every key.

    Returns:
      The flat dict.

    >>> flatten({"lr": 0.1, "hparams": {"rho": 0.05}, "probes": ["a", "b"], "lr_schedule": None})
    {'lr': 0.1, 'hparams.rho': 0.05, 'probes': 'a,b', 'lr_schedule': 'None'}
    """
    out: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= flatten(value, name + ".")
        elif isinstance(value, (list, tuple)):
            out[name] = ",".join(map(str, value))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def scalars_of(row: Mapping) -> dict[str, float]:
    """The columns of a measurement row a tracker takes: every value that is one number, as a float
    (JAX and NumPy scalars included); ``step``, empty cells (``None``) and NaN left out: samedge
    writes NaN where a quantity was not computed at that step (``crosscheck_lambda`` between
    cross-checks, ``edge`` at eta_t = 0), and a chart should show no point there, as for an empty cell.

    Args:
      row: the row (``metrics.csv``'s, or ``measurement(...).measure``'s first output).

    Returns:
      Name -> float, in the row's order.

    >>> scalars_of({"step": 3, "loss": np.float32(0.5), "edge": None, "converged": 1, "cross": float("nan")})
    {'loss': 0.5, 'converged': 1.0}
    """
    out = {}
    for key, value in row.items():
        if key == "step" or value is None or isinstance(value, str):
            continue
        try:
            array = np.asarray(value)
            if array.size != 1 or not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
                continue
            number = float(array.reshape(()))
        except (TypeError, ValueError):
            continue
        if not math.isnan(number):
            out[key] = number
    return out


def _stretches(values: Sequence[float]):
    """``(offset, values)`` for each stretch of consecutive values that are not NaN.

    >>> list(_stretches([1.0, float("nan"), 2.0, 3.0]))
    [(0, [1.0]), (2, [2.0, 3.0])]
    """
    start = None
    for i, v in enumerate(list(values) + [math.nan]):
        if not math.isnan(v) and start is None:
            start = i
        elif math.isnan(v) and start is not None:
            yield start, list(values[start:i])
            start = None


def _series(tracker, key: str, first_step: int, values: list) -> None:
    """``tracker.series``, or its scalars one step at a time for a tracker without one."""
    if hasattr(tracker, "series"):
        tracker.series(key, first_step, values)
    else:
        for i, v in enumerate(values):
            tracker.scalars(first_step + i, {key: v})


def _warn(tracker, when: str, exc: BaseException) -> None:
    """The one line a failing tracker gets before it is dropped."""
    name = getattr(tracker, "name", type(tracker).__name__)
    hint = ""
    if isinstance(exc, ImportError) and name in EXTRAS:
        hint = f"; pip install 'samedge[{name}]'"
    print(f"samedge: warning: tracker {name} dropped, it failed at {when} ({type(exc).__name__}: "
          f"{one_line(exc, 200)}){hint}; the run goes on without it", file=sys.stderr, flush=True)


class Trackers:
    """The trackers of one run, each call fanned out to all of them (made by :func:`start`).

    A tracker that raises is dropped with one warning line on stderr; the others, and the run, go
    on. Use it as a context manager in your own loop (closed as ``completed``, or ``failed`` when
    the block raises), or call :meth:`close`.

    >>> import tempfile
    >>> mem = Memory()
    >>> with start([mem], tempfile.mkdtemp(), config={"lr": 0.1}) as log:
    ...     log.log({"step": 0, "loss": 1.0, "edge": None})
    ...     log.log_losses(0, [1.0, 0.9])
    >>> mem.steps, mem.config, mem.status
    ({0: {'loss': 1.0, 'train_loss': 1.0}, 1: {'train_loss': 0.9}}, {'lr': 0.1}, 'completed')
    """

    def __init__(self):
        self._live: list[list] = []  # [tracker, first step to send]
        self._last_step: int | None = None
        self._closed = False

    @property
    def names(self) -> list[str]:
        """The names of the trackers still live."""
        return [getattr(t, "name", type(t).__name__) for t, _ in self._live]

    def __bool__(self) -> bool:
        return bool(self._live)

    def _add(self, tracker, first: int) -> None:
        self._live.append([tracker, first])

    def _call(self, entry, when: str, fn) -> None:
        try:
            fn(entry[0])
        except Exception as exc:  # any failure of a tracker: one line, and it is dropped
            self._live = [e for e in self._live if e is not entry]
            _warn(entry[0], when, exc)

    def log(self, row: Mapping, step: int | None = None) -> None:
        """Send a measurement row: each of its numbers (:func:`scalars_of`) as a scalar at its step.

        Args:
          row: the row; its ``step`` is the step unless ``step`` is given (a row of
            ``measurement(...).measure`` has none: pass it).
          step: the step.

        Returns:
          None.
        """
        step = int(row["step"] if step is None else step)
        values = scalars_of(row)
        self._last_step = step if self._last_step is None else max(self._last_step, step)
        for entry in list(self._live):
            if step >= entry[1]:
                self._call(entry, f"step {step}", lambda t: t.scalars(step, values))

    def log_losses(self, first_step: int, losses) -> None:
        """Send the training loss of consecutive steps as :data:`TRAIN_LOSS`.

        Args:
          first_step: the step of ``losses[0]``.
          losses: one loss a step (the loss before the step, on its batch).

        Returns:
          None.
        """
        values = [float(v) for v in np.asarray(losses, dtype=np.float64).reshape(-1)]
        if not values:
            return
        last = first_step + len(values) - 1
        self._last_step = last if self._last_step is None else max(self._last_step, last)
        for offset, stretch in _stretches(values):  # a diverged chunk's NaN losses: no point, as in a row
            for entry in list(self._live):
                first = first_step + offset
                skip = max(0, entry[1] - first)
                if skip < len(stretch):
                    a, b = first + skip, first + len(stretch) - 1
                    self._call(entry, f"step {a}" if a == b else f"steps {a}-{b}",
                               lambda t: _series(t, TRAIN_LOSS, first + skip, stretch[skip:]))

    def log_images(self, paths: Sequence, step: int | None = None) -> None:
        """Send figures (PNG files), named by their stems.

        Args:
          paths: the files.
          step: the step (default: the last step sent).

        Returns:
          None.
        """
        paths = [Path(p) for p in paths]
        step = step if step is not None else (self._last_step or 0)
        if not paths:
            return
        for entry in list(self._live):
            if hasattr(entry[0], "images"):
                self._call(entry, "the figures", lambda t: t.images(step, paths))

    def close(self, status: str = "completed") -> None:
        """End every tracker's run (once; later calls do nothing).

        Args:
          status: the run's end: ``completed``, ``diverged``, ``interrupted`` or ``failed``.

        Returns:
          None.
        """
        if self._closed:
            return
        self._closed = True
        for entry in list(self._live):
            self._call(entry, "the end", lambda t: t.close(status))
        self._live.clear()

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close("completed" if exc_type is None else "failed")


def _read_record(folder: Path) -> dict:
    from samedge.store import read_json

    try:
        data = read_json(folder / RECORD)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def start(log, folder, *, config: Mapping | None = None, name: str | None = None, resume_step: int | None = None,
          history: Iterable[Mapping] = ()) -> Trackers:
    """Open the trackers of one run.

    Args:
      log: tracker names or specs (:func:`make`: ``"tensorboard"``, ``"mlflow=URI"`` ...) or tracker
        objects; one or a list.
      folder: the run folder (created if missing): TensorBoard's events, W&B's files and the default
        MLflow store go there, and ``trackers.json``, each tracker's ids.
      config: the run's config, sent as hyperparameters.
      name: the run's name in the trackers (default: the folder's name).
      resume_step: for a resumed run, the checkpoint step it continues from (0 without a
        checkpoint); each tracker then continues its run (see the module's docstring).
      history: the rows the run already has (a resumed run: those up to the checkpoint), sent to
        the trackers that do not hold them.

    Returns:
      The :class:`Trackers`; those that failed to start were dropped, each with one warning line. An
      unknown name raises :class:`~samedge.errors.ConfigError` before anything starts.
    """
    from samedge.store import write_json_atomic

    made = make_all(log)
    folder = Path(folder)
    group = Trackers()
    if not made:
        return group
    folder.mkdir(parents=True, exist_ok=True)
    before = _read_record(folder)
    records = dict(before) if resume_step is not None else {}  # a new run: an earlier run's ids are not its
    for tracker in made:
        key = getattr(tracker, "name", type(tracker).__name__)
        info = RunInfo(folder, name or folder.name, dict(config or {}), resume_step, dict(records.get(key) or {}))
        try:
            first = int(tracker.start(info) or 0)
        except Exception as exc:
            _warn(tracker, "its start", exc)
            close = getattr(tracker, "close", None)
            try:  # whatever it opened before it failed
                if close is not None:
                    close("failed")
            except Exception:
                pass
            continue
        group._add(tracker, first)
        if getattr(tracker, "record", None):
            records[key] = tracker.record
    if records != before:
        try:
            write_json_atomic(folder / RECORD, records)
        except OSError as exc:  # the run goes on; only a later resume would start new tracker runs
            print(f"samedge: warning: cannot write {folder / RECORD} ({one_line(exc, 200)}); a resume will start "
                  f"new tracker runs", file=sys.stderr, flush=True)
    for row in history:
        group.log(row)
    return group
