"""samedge as a library: the measurement called from a user's own loop, user tasks, user optimizers.

Each test names the property it checks and the independent truth it checks it against:

- a checkpoint of a CLI run plus the library calls (train 20 steps, one ``measurement``) give the
  run's next ``metrics.csv`` row (truth: the row the CLI wrote);
- a plain Python training loop with ``samedge.measurement`` gives the CLI run's rows (truth: the
  CLI run's ``metrics.csv``);
- bad inputs fail with one line naming the culprit and write nothing;
- float64 and float32 measurements agree with ``numpy.linalg.eigvalsh`` of ``jax.hessian``;
- an optimizer without a known edge leaves ``edge`` and ``ratio`` empty;
- a user task factory runs through the CLI and resumes exactly after a SIGKILL (truth: the same
  run in one go); the same factory runs as an installed plugin's entry point;
- a user optimizer entry runs, sweeps and reports (truth: its own closed-form edge), and its
  hyperparameters are taken wherever the built-in ones are (fit, resolve, expand_grid keywords).

The user's code lives in ``tests/fixtures`` (imported as ``tests.fixtures.<module>:<attr>``, the
way a user's package would be).
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import samedge
from samedge import checkpoint, cli, config, measure, optimizers, run, tasks, train
from samedge.errors import ConfigError
from samedge.store import read_run_config

ROOT = Path(__file__).resolve().parents[1]
TINY_MNIST = ["--set", "n_train=256", "--set", "n_test=64", "--set", "width=32", "--set", "depth=3"]
USER_TASK = "tests.fixtures.user_tasks:make_task"
TOY = "tests.fixtures.user_optimizers:toy"
# Columns of metrics.csv that the measurement does not give: the step and the clocks (and test_*).
NOT_MEASURED = {"step", "time_s", "measure_s"}
ROW_KEYS = ("lambda_max", "edge", "ratio", "loss", "grad_norm", "align_grad", "align_sam_grad", "hvps")


@pytest.fixture(autouse=True)
def _user_code_importable(monkeypatch):
    """``tests.fixtures...`` imports from the repository root (as ``python -m`` in it would); spawned
    sweep workers inherit this ``sys.path``."""
    monkeypatch.syspath_prepend(str(ROOT))


def _isolated_env(mp: pytest.MonkeyPatch, cache: Path) -> None:
    # Module-scoped fixtures are set up before conftest's per-test isolation: isolate them likewise.
    mp.setenv("SAMEDGE_CACHE_DIR", str(cache))
    mp.delenv("SAMEDGE_DATA_DIR", raising=False)
    mp.setenv("SAMEDGE_OFFLINE", "1")
    mp.setenv("SAMEDGE_JIT_CACHE", "off")


def _rows(run_dir: Path) -> list[dict]:
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _rel(a, b) -> float:
    """Relative difference of two numbers (CSV text or arrays); 0 for two NaNs, inf for one."""
    a, b = float(a), float(b)
    if a == b or (math.isnan(a) and math.isnan(b)):
        return 0.0
    if math.isnan(a) or math.isnan(b):
        return math.inf
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


# ---------------------------------------------------------------------------------------------
# 1, 2: a CLI run of SAM on a tiny MNIST MLP, and its rows reproduced by library calls
# ---------------------------------------------------------------------------------------------

MNIST_STEPS, MNIST_EVERY = 100, 20


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, data_dir):
    """One CLI run (measure and checkpoint every 20 steps, 100 steps): rows at 0, 20, ..., 100 and
    the last non-final checkpoint, at step 80."""
    out = tmp_path_factory.mktemp("mnist-sam") / "run"
    from samedge import plots

    with pytest.MonkeyPatch.context() as mp:
        _isolated_env(mp, tmp_path_factory.mktemp("cache"))
        mp.setattr(plots, "plot_run", lambda out: [])  # the run's figures are not what is tested here
        rc = cli.main(["run", "mnist", *TINY_MNIST, "--optimizer", "sam", "--lr", "0.1", "--rho", "0.1",
                       "--steps", str(MNIST_STEPS), "--measure-every", str(MNIST_EVERY),
                       "--checkpoint-every", str(MNIST_EVERY), "--data-dir", str(data_dir), "--out", str(out),
                       "--no-progress"])
    assert rc == 0
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == list(range(0, MNIST_STEPS + 1, MNIST_EVERY))
    cfg = config.from_dict(read_run_config(out)["run"])
    task = tasks.build_task(cfg.task, tasks.make_task_config(cfg.task, cfg.task_config), data_dir=data_dir,
                            seed=cfg.seed)
    opt = optimizers.build("sam", 0.1, rho=0.1)
    # One measurement for both tests below (its jitted function compiles once): the run's settings.
    m = samedge.measurement(task.loss_fn, opt, train.measure_settings(cfg, opt), accuracy_fn=task.accuracy_fn)
    return out, rows, cfg, task, opt, m


def _measured_columns(rows) -> list[str]:
    return [k for k in rows[0] if k not in NOT_MEASURED and not k.startswith("test_")]


def test_checkpoint_plus_library_calls_reproduce_the_next_row(mnist_run):
    """Property: a run's checkpoint holds everything its next measurement needs. From the step-80
    checkpoint (parameters, optimizer state, the probes' carries after the step-80 measurement: the
    warm-start vectors and the guard's memory, the count and the last lambda_max),
    ``train.make_chunk`` for 20 steps and one ``samedge.measurement`` call with key
    ``fold_in(PRNGKey(seed), 100)`` give the step-100 row.
    Truth: the step-100 row the CLI wrote; every measured column to 1e-6 relative (it is exact)."""
    out, rows, cfg, task, opt, m = mnist_run
    template = task.init_params(jax.random.PRNGKey(cfg.seed))
    fresh = m.init(template, jax.random.PRNGKey(0))
    ckpt = checkpoint.load(out, template, opt.init(template), fresh.carries)
    last = MNIST_STEPS - MNIST_EVERY
    assert ckpt.step == last and ckpt.seed == cfg.seed
    # The checkpoint's rows are the run's rows up to it (floats travel exactly: repr in the CSV).
    assert len(ckpt.rows) == len(rows) - 1
    for saved, written in zip(ckpt.rows, rows):
        as_text = {k: "" if v is None else repr(v) if isinstance(v, float) else str(v) for k, v in saved.items()}
        assert as_text == {k: v for k, v in written.items() if k in saved or v != ""}

    # The measurement state after the step-80 measurement: its probes' carries (checkpointed: the
    # warm-start vectors and the guard's memory, which the rows also hold).
    state = fresh._replace(carries=ckpt.measure)
    topk = ckpt.measure["topk"]
    assert int(topk.count) == measure.calls_since_cold(ckpt.rows) and float(topk.lambda_prev) == pytest.approx(ckpt.rows[-1]["lambda_max"])

    params, opt_state, losses = train.make_chunk(task, opt, MNIST_STEPS - last)(
        ckpt.params, ckpt.opt_state, task.data, jnp.asarray(last))
    assert np.all(np.isfinite(np.asarray(losses)))
    row, _ = m.measure(params, task.measure_batch_fn(task.data, MNIST_STEPS), state,
                       jax.random.fold_in(jax.random.PRNGKey(cfg.seed), MNIST_STEPS), opt_state)

    expected = rows[-1]
    columns = _measured_columns(rows)
    assert set(columns) == set(row), "the library row and the CLI row have other columns"
    worst = {k: _rel(row[k], expected[k]) for k in columns}
    print(f"checkpoint reproduction, largest relative difference: {max(worst.values()):.3g} "
          f"({max(worst, key=worst.get)})")
    assert max(worst.values()) <= 1e-6, worst


def test_own_python_loop_repeats_the_cli_run(mnist_run):
    """Property: ``samedge.measurement`` called from a user's plain Python loop (one
    ``opt.update(params, state, jax.value_and_grad(...))`` per step on ``task.batch_fn(data, t)``,
    measuring at steps 0, 20, ..., 100 with the run's keys) is the run's measurement.
    Truth: the CLI run's metrics.csv (its steps run as a lax.scan of the same update), to 1e-5 relative."""
    out, rows, cfg, task, opt, m = mnist_run
    assert m.settings == samedge.MeasureSettings()  # the defaults: top-1, tol 1e-3, at most 64 HVPs
    seed = jax.random.PRNGKey(cfg.seed)
    params = task.init_params(seed)
    state = opt.init(params)
    mstate = m.init(params, jax.random.fold_in(seed, train.INIT_KEY))

    @jax.jit
    def step(params, state, t):
        batch = task.batch_fn(task.data, t)
        params, state, _ = opt.update(params, state, jax.value_and_grad(lambda p: task.loss_fn(p, batch)))
        return params, state

    mine = []
    for t in range(MNIST_STEPS + 1):
        if t % MNIST_EVERY == 0:
            row, mstate = m.measure(params, task.measure_batch_fn(task.data, t), mstate, jax.random.fold_in(seed, t),
                                    state)
            mine.append(row)
        if t < MNIST_STEPS:
            params, state = step(params, state, t)

    assert len(mine) == len(rows)
    worst = {k: max(_rel(r[k], ref[k]) for r, ref in zip(mine, rows)) for k in ROW_KEYS}
    print(f"own loop vs CLI run, largest relative difference: {max(worst.values()):.3g} ({max(worst, key=worst.get)})")
    assert max(worst.values()) <= 1e-5, worst
    # The lambda_max the run reports is a real one: the loss at step 100 fell.
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"])


# ---------------------------------------------------------------------------------------------
# 3: bad inputs
# ---------------------------------------------------------------------------------------------

_DATA = np.ones((8, 3), np.float32)


def _init(key):
    return {"w": jnp.zeros(3)}


def _loss(params, batch):
    return jnp.mean((batch @ params["w"] - 1.0) ** 2)


def _vector_loss(params, batch):
    return batch @ params["w"]


def _int_leaf_init(key):
    return {"w": jnp.zeros(3), "count": jnp.zeros((), jnp.int32)}


def _string_leaf_init(key):
    return {"w": jnp.zeros(3), "name": "dense"}


class _Module:
    """Not an array: what a user passes when the model object is left inside the parameters."""


def _object_leaf_init(key):
    return {"w": jnp.zeros(3), "model": _Module()}


def _int_of_step_batch(data, step):
    start = int(step) % 4
    return data[start:start + 4]


def _numpy_batch(data, step):
    return np.asarray(data)[np.asarray(step) % 4:][:4]


@pytest.mark.parametrize("kwargs,culprit", [
    pytest.param(dict(loss_fn=_vector_loss), ["shape (8,)", "float32", "_vector_loss"], id="a-vector-loss"),
    pytest.param(dict(init_params=_int_leaf_init), ["['count']", "int32", "split the float parameters"],
                 id="b-int-leaf"),
    pytest.param(dict(init_params=_string_leaf_init), ["['name']", "str", "_string_leaf_init"], id="c-string-leaf"),
    pytest.param(dict(init_params=_object_leaf_init), ["['model']", "_Module", "_object_leaf_init"],
                 id="c-object-leaf"),
    pytest.param(dict(batch_fn=_int_of_step_batch), ["batch_fn", "_int_of_step_batch", "traced"], id="d-int-step"),
    pytest.param(dict(batch_fn=_numpy_batch), ["batch_fn", "_numpy_batch", "traced"], id="d-numpy-on-tracer"),
])
def test_make_task_refuses_bad_inputs_with_one_line(kwargs, culprit):
    """Property: make_task refuses a loss that is not a float scalar, integer and non-array parameter
    leaves, and a batch_fn JAX cannot trace, before any training, with a one-line ConfigError.
    Truth: the culprit (shape and dtype, leaf path, function name) appears in the message."""
    args = dict(init_params=_init, loss_fn=_loss) | kwargs
    with pytest.raises(ConfigError) as info:
        samedge.make_task("bad", args.pop("init_params"), args.pop("loss_fn"), _DATA, **args)
    message = str(info.value)
    assert "\n" not in message
    for part in culprit:
        assert part in message, message


@pytest.mark.parametrize("task,extra,culprit", [
    pytest.param("nonexistent_pkg.mod:factory", [], "nonexistent_pkg", id="e-no-module"),
    pytest.param("tests.fixtures.user_tasks:NOT_CALLABLE", [], "not callable", id="f-not-callable"),
    pytest.param("tests.fixtures.user_tasks:missing", [], "has no missing", id="f-missing-attr"),
    pytest.param("tests.fixtures.user_tasks:wrong_type", [], "returned a dict, not a samedge Task", id="g-wrong-type"),
    pytest.param(USER_TASK, ["--set", "bogus=1"], "bogus", id="h-unknown-set"),
    pytest.param(USER_TASK, ["--set", "n=many"], "n must be int", id="h-wrong-type-set"),
])
def test_cli_refuses_bad_task_sources_with_one_line_and_writes_nothing(task, extra, culprit, tmp_path, capsys):
    """Property: a task source that cannot be imported, is not callable, returns no Task, or gets a
    setting its dataclass config does not take: exit code 2, one line on stderr naming it.
    Truth: the output folder does not exist afterwards (checked before any data is read)."""
    out = tmp_path / "run"
    rc = cli.main(["run", task, *extra, "--steps", "4", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("samedge: error: ") and "Traceback" not in err
    assert culprit in err, err
    assert not out.exists()


def _nan_loss(params, batch):
    return jnp.mean(jnp.log(-jnp.abs(batch @ params["w"])))  # log of a negative number: NaN


def _sqrt_loss(params, batch):
    return jnp.sum(jnp.sqrt(params["w"]))  # NaN once gradient descent takes w below 0


def test_fit_with_a_nan_loss_stops_as_diverged_keeping_the_rows(tmp_path):
    """Property: a loss that is NaN ends the run as ``diverged`` (no exception), with the reason and
    every finite row kept, and no NaN row written.
    Truth: NaN at step 0 gives no rows and the reason 'step 0'; loss sum(sqrt(w)) from w = 1 under
    GD at lr 0.3 is finite at steps 0, 2, 4 and NaN at step 6 (w_t = 1 - 0.15 sum 1/sqrt(w) goes
    negative after step 5), so those rows are kept."""
    task = samedge.make_task("nan", lambda k: {"w": jnp.ones(3)}, _nan_loss, _DATA)
    summary = samedge.fit(task, "gd", lr=0.1, steps=20, measure_every=10, out=tmp_path / "nan", progress=False)
    assert summary["status"] == "diverged" and summary["steps_done"] == 0
    assert "nan" in summary["diverged_reason"] and "step 0" in summary["diverged_reason"]
    assert json.loads((tmp_path / "nan" / "summary.json").read_text())["status"] == "diverged"
    assert not (tmp_path / "nan" / "metrics.csv").exists()  # no made-up row

    task = samedge.make_task("nan-later", lambda k: {"w": jnp.ones(3)}, _sqrt_loss, _DATA)
    summary = samedge.fit(task, "gd", lr=0.3, steps=20, measure_every=2, out=tmp_path / "later", progress=False)
    assert summary["status"] == "diverged" and "step 6" in summary["diverged_reason"]
    rows = _rows(tmp_path / "later")
    assert [int(r["step"]) for r in rows] == [0, 2, 4]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    w = 1.0
    for _ in range(4):
        w -= 0.3 * 0.5 / math.sqrt(w)
    assert float(rows[2]["loss"]) == pytest.approx(3 * math.sqrt(w), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# 4: float64 and float32 against dense eigenvalues
# ---------------------------------------------------------------------------------------------


def _mlp_task(dtype):
    """A 3 -> 10 -> 10 -> 1 tanh MLP (161 parameters) on 32 synthetic points, all in ``dtype``."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(32, 3)).astype(dtype)
    y = np.sin(x.sum(1)).astype(dtype)
    sizes = [(3, 10), (10, 10), (10, 1)]

    def init_params(key):
        keys = jax.random.split(key, len(sizes))
        return [{"w": jax.random.normal(k, s, dtype) * float(1.5 / np.sqrt(s[0])), "b": jnp.full(s[1], 0.1, dtype)}
                for k, s in zip(keys, sizes)]

    def loss_fn(params, batch):
        h, target = batch
        for i, layer in enumerate(params):
            h = h @ layer["w"] + layer["b"]
            if i < len(params) - 1:
                h = jnp.tanh(h)
        return jnp.mean((h[:, 0] - target) ** 2)

    return samedge.make_task("mlp", init_params, loss_fn, (x, y))


@pytest.fixture(scope="module")
def dense64():
    """``params -> eigenvalues`` (by decreasing magnitude) of the float64 MLP task's dense Hessian,
    ``numpy.linalg.eigvalsh`` of ``jax.hessian``; compiled once for both tests, call it under x64."""
    from jax.flatten_util import ravel_pytree

    with jax.enable_x64(True):
        task = _mlp_task(np.float64)
        unravel = ravel_pytree(task.init_params(jax.random.PRNGKey(0)))[1]
        hessian = jax.jit(jax.hessian(lambda flat: task.loss_fn(unravel(flat), task.data)))

    def eigenvalues(params):
        flat = ravel_pytree(jax.tree.map(lambda a: np.asarray(a, np.float64), params))[0]
        assert flat.dtype == np.float64
        values = np.linalg.eigvalsh(np.asarray(hessian(flat), np.float64))
        return values[np.argsort(-np.abs(values))]

    return eigenvalues


def test_float64_measurement_matches_dense_eigvalsh(x64, dense64):
    """Property: under jax.enable_x64 a float64 model is measured in float64 (to Lanczos tol 1e-10).
    Truth: numpy.linalg.eigvalsh of the dense jax.hessian; the top-3 eigenvalues by magnitude to 1e-8
    relative, lambda_max = |lambda_1|."""
    task = _mlp_task(np.float64)
    assert task.info["n_params"] == 161
    params = task.init_params(jax.random.PRNGKey(1))
    assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))
    truth = dense64(params)
    m = samedge.measurement(task.loss_fn, samedge.optimizer("gd", 0.1),
                            samedge.MeasureSettings(topk=3, tol=1e-10, max_hvps=64))
    row, state = m.measure(params, task.data, m.init(params, jax.random.PRNGKey(2)), jax.random.PRNGKey(3))
    assert state.vectors.dtype == jnp.float64 and row["lambda_max"].dtype == jnp.float64
    assert float(row["lambda_max"]) == pytest.approx(abs(truth[0]), rel=1e-8)
    for i in range(3):
        assert float(row[f"lambda_{i + 1}"]) == pytest.approx(truth[i], rel=1e-8)
        assert float(row[f"resid_{i + 1}"]) <= 1e-10


def test_float32_measurement_matches_dense_eigvalsh(dense64):
    """Property: a float32 model is measured in float32, to its precision.
    Truth: numpy.linalg.eigvalsh of the float64 dense Hessian (under jax.enable_x64) at the same
    float32 point, to 1e-4."""
    task32 = _mlp_task(np.float32)
    params = task32.init_params(jax.random.PRNGKey(1))
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    m = samedge.measurement(task32.loss_fn, samedge.optimizer("gd", 0.1), samedge.MeasureSettings(tol=1e-5))
    row, _ = m.measure(params, task32.data, m.init(params, jax.random.PRNGKey(2)), jax.random.PRNGKey(3))
    assert row["lambda_max"].dtype == jnp.float32
    with jax.enable_x64(True):
        truth = dense64(params)
    assert float(row["lambda_max"]) == pytest.approx(abs(truth[0]), rel=1e-4)


# ---------------------------------------------------------------------------------------------
# 5: no known edge
# ---------------------------------------------------------------------------------------------


def test_optimizer_without_known_edge_leaves_edge_and_ratio_empty(tmp_path):
    """Property: SAM around Adam has no closed-form edge, so the run never makes one up: the edge and
    ratio columns are empty in every row, lambda_max is measured, the summary has no ratio median.
    Truth: lambda_max against the dense Hessian's at step 0 (the measurement is still real)."""
    from tests.fixtures import user_tasks

    task = user_tasks.make_task(user_tasks.QuadConfig(n=32))
    out = tmp_path / "run"
    summary = samedge.fit(task, samedge.sam(optax.adam(1e-3), rho=0.05), steps=20, measure_every=10, out=out,
                          progress=False, measure_sam_point=False)
    assert summary["status"] == "completed"
    assert summary.get("ratio_median") is None
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [0, 10, 20]
    assert "edge" in rows[0] and "ratio" in rows[0]
    assert all(r["edge"] == "" and r["ratio"] == "" for r in rows)
    assert all(r.get("gd_edge", "") == "" for r in rows)  # no single step size either
    assert all(float(r["lambda_max"]) > 0 for r in rows)
    params = task.init_params(jax.random.PRNGKey(0))
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    dense = np.linalg.eigvalsh(np.asarray(jax.jit(jax.hessian(lambda f: task.loss_fn(unravel(f), task.data)))(flat)))
    assert float(rows[0]["lambda_max"]) == pytest.approx(np.abs(dense).max(), rel=1e-3)


# ---------------------------------------------------------------------------------------------
# 6, 7: a user task factory through the CLI: exact resume after SIGKILL, and as an entry point
# ---------------------------------------------------------------------------------------------

WALL_COLUMNS = {"time_s", "measure_s"}
FACTORY_RUN = ["--set", "n=64", "--set", "lr_scale=1", "--steps", "60", "--measure-every", "10",
               "--checkpoint-every", "10", "--no-measure-sam-point", "--no-progress"]
HOLD_STEP = 30

# The CLI with RunStore.append patched to announce, then wait, after the row of HOLD (as in
# tests/test_resume.py): the kill point is chosen, not raced. The checkpoint of that step is
# written after its row, so the kill leaves metrics.csv one row ahead of the step-20 checkpoint.
HOLD_WRAPPER = r"""
import os, sys, time
from samedge import cli, store
hold, ready = int(os.environ["HOLD"]), os.environ["READY"]
append = store.RunStore.append
def held_append(self, row):
    append(self, row)
    if row["step"] == hold:
        open(ready, "w").close()
        while True:
            time.sleep(0.05)
store.RunStore.append = held_append
sys.exit(cli.main(sys.argv[1:]))
"""


def _subprocess_env(extra_path: str | None = None) -> dict:
    path = [str(ROOT / "src"), str(ROOT)] + ([extra_path] if extra_path else [])
    return os.environ | {"PYTHONPATH": os.pathsep.join(path), "JAX_PLATFORMS": "cpu", "SAMEDGE_OFFLINE": "1",
                         "SAMEDGE_JIT_CACHE": "off"}


def _samedge(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "samedge", *args], cwd=ROOT, env=env or _subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)


def _table(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in WALL_COLUMNS} for row in _rows(run_dir)]


@pytest.fixture(scope="module")
def plugin_run(tmp_path_factory):
    """The factory registered by a fake installed package under the entry-point group
    ``samedge.tasks`` as ``myquad`` (a dist-info folder on PYTHONPATH, what pip writes), run in one
    go through ``python -m samedge run myquad`` with the schedule of the resume test below."""
    site = tmp_path_factory.mktemp("site")
    info = site / "fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[samedge.tasks]\nmyquad = {USER_TASK}\n")
    out = tmp_path_factory.mktemp("plugin") / "A"
    r = _samedge("run", "myquad", *FACTORY_RUN, "--out", str(out), env=_subprocess_env(str(site)))
    return r, out


def test_task_registered_as_an_entry_point_runs(plugin_run):
    """Property: a factory an installed package registers under the entry-point group
    ``samedge.tasks`` is a task name for ``samedge run``, its ``--set`` values included.
    Truth: the run exits 0 with the rows of its schedule, records the task as ``myquad`` and the
    factory's config as set (n = 64 reached the factory: 64 training points)."""
    r, out = plugin_run
    assert r.returncode == 0, r.stderr[-2000:]
    assert [int(row["step"]) for row in _rows(out)] == list(range(0, 61, 10))
    saved = read_run_config(out)
    assert saved["run"]["task"] == "myquad" and saved["task_info"]["n_train"] == 64


def test_user_factory_through_cli_resumes_exactly_after_sigkill(plugin_run, tmp_path):
    """Property: a task given as ``package.module:factory`` runs through ``python -m samedge run``
    with ``--set`` values converted to its dataclass config's field types, is named safely on disk,
    and a run SIGKILLed after its step-30 row resumes (``samedge resume``) exactly.
    Truth: the same factory run in one go (the entry-point run above, the same code by another
    name): metrics.csv equal as text except the clocks."""
    r, a = plugin_run
    assert r.returncode == 0, r.stderr[-2000:]
    expected = _table(a)
    b = tmp_path / "B"
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_WRAPPER, "run", USER_TASK, *FACTORY_RUN, "--out", str(b)],
                            cwd=ROOT, env=_subprocess_env() | {"HOLD": str(HOLD_STEP), "READY": str(ready)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        end = time.monotonic() + 240
        while not ready.exists():
            if proc.poll() is not None:
                pytest.fail(f"run ended early ({proc.returncode}): {proc.stdout.read()[-2000:]}")
            assert time.monotonic() < end, "run never reached step 30"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert [int(row["step"]) for row in _table(b)] == [0, 10, 20, 30]
    assert not (b / "summary.json").exists()

    saved = read_run_config(b)
    assert saved["task_info"]["lr_scale_type"] == "float"  # --set lr_scale=1 reached the factory as 1.0
    assert saved["task_info"]["n_train"] == 64
    built = tasks.make_task_config(USER_TASK, {"lr_scale": 1, "n": "64"})
    assert isinstance(built.lr_scale, float) and built.lr_scale == 1.0 and built.n == 64
    name = run.default_out(config.from_dict(saved["run"]))
    assert name.parent == Path("runs") and re.fullmatch(r"[A-Za-z0-9._-]+", name.name), name
    assert name.name == "tests.fixtures.user_tasks-make_task-sam-lr0.1-rho0.1-s0"

    r = _samedge("resume", str(b), "--no-progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _table(b) == expected
    summary = json.loads((b / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_from"] == 20


# ---------------------------------------------------------------------------------------------
# 8: a user optimizer entry: run, sweep, report
# ---------------------------------------------------------------------------------------------


def test_user_optimizer_entry_runs_with_its_own_edge(tmp_path, data_dir, capsys):
    """Property: an optimizer registry entry in the user's module (``--optimizer module:ATTR``) runs
    through ``samedge run`` with its own hyperparameter (``--hparam damp=0.5``: the named flags are
    the built-in optimizers') and its own closed-form edge; a built-in flag it lacks is refused.
    Truth: the edge column equals 2/(eta (1 - damp)) = 40 at eta 0.1, damp 0.5; 2/eta = 20."""
    out = tmp_path / "run"
    rc = cli.main(["run", "mnist", *TINY_MNIST, "--optimizer", TOY, "--hparam", "damp=0.5", "--lr", "0.1",
                   "--steps", "10", "--measure-every", "5", "--data-dir", str(data_dir), "--out", str(out),
                   "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    rows = _rows(out)
    assert [int(r["step"]) for r in rows] == [0, 5, 10]
    for r in rows:
        assert float(r["edge"]) == pytest.approx(2 / (0.1 * (1 - 0.5)), rel=1e-6)
        assert float(r["gd_edge"]) == pytest.approx(20.0, rel=1e-6)
        assert float(r["ratio"]) == pytest.approx(float(r["lambda_max"]) / 40.0, rel=1e-6)
    cfg = config.from_dict(read_run_config(out)["run"])
    assert dict(cfg.hparams) == {"damp": 0.5}
    assert run.run_name(cfg) == "mnist-toy-lr0.1-d0.5-s0"
    # A hyperparameter it does not have is refused, naming it.
    rc = cli.main(["run", "mnist", *TINY_MNIST, "--optimizer", TOY, "--rho", "0.1", "--steps", "2",
                   "--out", str(tmp_path / "rho")])
    err = capsys.readouterr().err
    assert rc == 2 and "toy has no rho" in err and not (tmp_path / "rho").exists()


def test_user_optimizer_sweeps_and_reports(tmp_path, monkeypatch, capsys):
    """Property: ``samedge sweep`` over the user optimizer's own hyperparameter (``--hparam
    damp=0,0.5``) gives one run folder per value with distinct names; values of a hyperparameter it
    lacks (``--rho 0.1,0.3``) are ignored with a notice and never merged into its runs; the report
    lists both runs with distinct settings and labels the figures with the entry's label.
    Truth: the entry's edge, 2/(eta (1 - damp)), in each run's final_edge (20 and 40)."""
    from samedge import plots, report

    out = tmp_path / "sweep"
    rc = cli.main(["sweep", USER_TASK, "--optimizer", TOY, "--lr", "0.1", "--hparam", "damp=0,0.5",
                   "--rho", "0.1,0.3", "--set", "n=32", "--steps", "10", "--measure-every", "5",
                   "--eval-every", "10", "--workers", "2", "--out", str(out)])
    printed = capsys.readouterr()
    assert rc == 0, printed.out + printed.err
    assert "sweep: toy has no rho; its runs ignore the rho values given" in printed.out
    names = [f"tests.fixtures.user_tasks-make_task-toy-lr0.1-d{damp}-s0" for damp in ("0", "0.5")]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == names
    for name, damp in zip(names, (0.0, 0.5)):
        assert read_run_config(out / name)["run"]["hparams"] == {"damp": damp}  # no rho merged in

    titles = []
    original = plots.plot_grid

    def recording(panels, draw, out_stem, **kw):
        titles.extend(cell[1] for line in panels for cell in line if cell is not None)
        return original(panels, draw, out_stem, **kw)

    monkeypatch.setattr(plots, "plot_grid", recording)
    written = report.write_report(out)
    assert written[-1].name == "report.html" and (out / "summary.csv") in written
    with open(out / "summary.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert sorted(r["run"] for r in table) == names
    assert sorted(r["settings"] for r in table) == ["damp=0", "damp=0.5"]
    assert all(r["optimizer"] == TOY and r["status"] == "completed" for r in table)
    edges = {r["settings"]: float(r["final_edge"]) for r in table}
    assert edges["damp=0"] == pytest.approx(20.0) and edges["damp=0.5"] == pytest.approx(40.0)
    assert titles and all(t.endswith("(Toy)") for t in titles), titles
    assert set(titles) == {"eta=0.1, damp=0 (Toy)", "eta=0.1, damp=0.5 (Toy)"}


def test_fit_takes_the_hyperparameters_of_a_user_optimizer_entry(tmp_path):
    """Property: ``fit``'s keyword settings take "the optimizer's hyperparameters" (its docstring),
    so also those of a registry entry named by import path (``damp`` of the toy).
    Truth: the edge column is the entry's own 2/(eta (1 - damp)) = 40 at eta 0.1, damp 0.5."""
    from tests.fixtures import user_tasks

    task = user_tasks.make_task(user_tasks.QuadConfig(n=32))
    out = tmp_path / "run"
    summary = samedge.fit(task, TOY, lr=0.1, damp=0.5, steps=4, measure_every=2, out=out, progress=False)
    assert summary["status"] == "completed"
    assert all(float(r["edge"]) == pytest.approx(40.0) for r in _rows(out))
    assert read_run_config(out)["run"]["hparams"] == {"damp": 0.5}


def test_resolve_and_grid_take_user_hyperparameters_as_keywords():
    """Property: ``config.resolve`` ("hyperparameters ... may also be given as keywords (rho=0.1)")
    and ``sweep.expand_grid`` ("hyperparameter lists may also be keywords (rho=[0.1])") accept the
    keywords of the optimizer they are given, a user entry's included.
    Truth: the same settings passed through their ``hparams=`` argument, which works."""
    from samedge import sweep

    by_dict = config.resolve(USER_TASK, optimizer=TOY, lr=0.1, hparams={"damp": 0.5})
    assert dict(by_dict.hparams) == {"damp": 0.5}
    assert config.resolve(USER_TASK, optimizer=TOY, lr=0.1, damp=0.5) == by_dict
    grid = sweep.expand_grid(USER_TASK, optimizers=[TOY], lrs=[0.1], hparams={"damp": [0.0, 0.5]})
    assert sweep.expand_grid(USER_TASK, optimizers=[TOY], lrs=[0.1], damp=[0.0, 0.5]) == grid
