"""Where the sharpness lives: the opt-in probes ``layers``, ``gauss_newton`` and ``trace``.

Independent truths, in float64: slices of ``jax.hessian`` and ``numpy.linalg.eigh`` (the blocks'
top eigenvalues, the top eigenvector's mass per block); an explicit ``J^T H_out J`` from
``jax.jacfwd`` of the outputs and ``jax.hessian`` of the loss in them (Gauss-Newton); the exact
trace and Hutchinson's variance ``2 (||H||_F^2 - sum_i H_ii^2)`` (trace). Then the names on the
command line, the task's outputs, a run with all three, its figure and its report.
"""

from __future__ import annotations

import csv
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import samedge
from samedge import cli, measure, optimizers, plots, probes, report, sharding, tasks, train
from samedge.config import RunConfig
from samedge.errors import ConfigError, SamedgeError
from samedge.measure import MeasureSettings
from samedge.models.mlp import MLP
from samedge.probes import gauss_newton as gn_mod
from samedge.probes import layers as layers_mod
from samedge.probes import trace as trace_mod

EXACT = MeasureSettings(tol=1e-11, max_hvps=80, min_hvps=8)  # every block's Krylov space fills: exact


def _mlp_problem(seed=0, loss="ce"):
    """A 5 -> 4 -> 4 -> 3 tanh MLP (59 parameters) on 8 examples, float64: outputs, their loss, the loss."""
    rng = np.random.default_rng(seed)
    model = MLP(width=4, depth=3, num_outputs=3, activation="tanh")
    x = jnp.asarray(rng.normal(size=(8, 5)))
    labels = jnp.asarray(rng.integers(0, 3, size=8))
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(seed), x[:1])
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float64), shapes)
    params = jax.tree.map(lambda a: jnp.asarray(0.6 * rng.normal(size=a.shape)), params)  # biases nonzero too
    output_fn = lambda p, b: model.apply(p, b[0])  # noqa: E731
    if loss == "ce":
        output_loss = lambda out, b: tasks.cross_entropy(out, b[1])  # noqa: E731
        batch = (x, labels)
    else:
        output_loss = lambda out, b: tasks.square_loss(out, b[1])  # noqa: E731
        batch = (x, jax.nn.one_hot(labels, 3, dtype=jnp.float64))
    loss_fn = lambda p, b: output_loss(output_fn(p, b), b)  # noqa: E731
    return params, batch, output_fn, output_loss, loss_fn


def _dense(loss_fn, params, batch):
    flat, unravel = ravel_pytree(params)
    return np.asarray(jax.jit(jax.hessian(lambda v, b: loss_fn(unravel(v), b)))(flat, batch))


def _block_index(params, group=None):
    """Each block's coordinates in the raveled vector, found by raveling a tree of indicator leaves."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    names = [layers_mod.block_of(path, group) for path, _ in leaves]
    out = {}
    for name in set(names):
        ones = [jnp.full(leaf.shape, float(n == name)) for (_, leaf), n in zip(leaves, names)]
        marked = jax.tree_util.tree_unflatten(jax.tree.structure(params), ones)
        out[name] = np.flatnonzero(np.asarray(ravel_pytree(marked)[0]))
    return out


def _run(loss_fn, params, batch, extra, settings=EXACT, calls=1):
    m = samedge.measurement(loss_fn, optimizers.build("gd", 0.1), settings, probes=extra)
    state = m.init(params, jax.random.PRNGKey(0))
    for i in range(calls):
        row, state = m.measure(params, batch, state, jax.random.PRNGKey(i + 1))
    return row, state


# -- layers --------------------------------------------------------------------------------------
def _alone(probe, loss_fn, params, batch, settings=EXACT, columns=None):
    """``probe.measure`` on its own (no measurement around it), jitted: ``(carry, key) -> (columns, carry)``."""
    ctx = probes.context(loss_fn, params, batch, optimizers.build("gd", 0.1), settings, jax.random.PRNGKey(3))
    ctx = ctx._replace(columns=ctx.columns | dict(columns or {}))
    return jax.jit(lambda carry, key: probe.measure(ctx, carry, key)[:2])


def test_layers_in_a_measurement_match_slices_of_the_dense_hessian(x64):
    params, batch, _, _, loss_fn = _mlp_problem()
    h = _dense(loss_fn, params, batch)
    index = _block_index(params)
    assert layers_mod.block_names(params) == sorted(index) == ["Dense_0", "Dense_1", "Dense_2"]
    row, state = _run(loss_fn, params, batch, [layers_mod.layers(EXACT)])
    lam, vec = np.linalg.eigh(h)
    u = vec[:, np.argmax(np.abs(lam))]
    for name, idx in index.items():
        block = np.linalg.eigvalsh(h[np.ix_(idx, idx)])
        assert float(row[f"lambda_max/{name}"]) == pytest.approx(np.max(np.abs(block)), rel=1e-8)
        assert float(row[f"lambda_max/{name}"]) <= float(row["lambda_max"]) * (1 + 1e-12)  # interlacing
        assert float(row[f"mass/{name}"]) == pytest.approx(np.sum(u[idx] ** 2), abs=1e-8)
        # the carried row holds the block's top eigenvector, inside the block
        b_vec = np.linalg.eigh(h[np.ix_(idx, idx)])[1][:, np.argmax(np.abs(block))]
        assert abs(np.asarray(state.carries["layers"][0])[idx] @ b_vec) == pytest.approx(1.0, abs=1e-8)
    assert sum(float(row[f"mass/{n}"]) for n in index) == pytest.approx(1.0, abs=1e-12)
    assert float(row["resid_layers"]) <= 1e-11 and int(row["hvps_layers"]) >= 8 * len(index)


def test_layers_alone_on_blocks_that_are_not_contiguous(x64):
    """Every bias one block, every kernel another (``group=`` a function of the path): the blocks'
    coordinates interleave in the raveled vector. Alone (no top-k before it) the probe gives no mass;
    a second call from its own carry spends no more HVPs than the first."""
    params, batch, _, _, loss_fn = _mlp_problem(1)
    h = _dense(loss_fn, params, batch)
    by_leaf = lambda parts: parts[-1]  # noqa: E731
    index = _block_index(params, by_leaf)
    assert layers_mod.block_names(params, by_leaf) == sorted(index) == ["bias", "kernel"]
    probe = layers_mod.layers(EXACT, group=by_leaf)
    call = _alone(probe, loss_fn, params, batch)
    columns, carry = call(probe.init(params, measure.initial_vectors(params, 1, jax.random.PRNGKey(0))),
                          jax.random.PRNGKey(4))
    assert not any(k.startswith("mass/") for k in columns)
    for name, idx in index.items():
        truth = np.max(np.abs(np.linalg.eigvalsh(h[np.ix_(idx, idx)])))
        assert float(columns[f"lambda_max/{name}"]) == pytest.approx(truth, rel=1e-8)
    again, _ = call(carry, jax.random.PRNGKey(5))
    assert int(again["hvps_layers"]) <= int(columns["hvps_layers"])


def test_block_names_reduce_to_column_characters():
    p = {"params": {"attn out": {"w": jnp.ones(2)}, "Block_10": {"k": jnp.ones(1)}, "Block_9": {"k": jnp.ones(1)}}}
    assert layers_mod.block_names(p) == ["Block_9", "Block_10", "attn_out"]
    assert layers_mod.block_names(p, 1) == ["Block_9", "Block_10", "attn_out"]
    assert layers_mod.block_names([jnp.ones(2), jnp.ones(3)]) == ["0", "1"]
    assert layers_mod.block_names(jnp.ones(3)) == ["params"]


# -- Gauss-Newton --------------------------------------------------------------------------------
def _explicit_gn(output_fn, output_loss, params, batch):
    """``J^T H_out J`` with ``J`` from ``jax.jacfwd`` and ``H_out`` from ``jax.hessian``, both dense."""
    flat, unravel = ravel_pytree(params)

    @jax.jit
    def parts(flat, batch):
        out = output_fn(unravel(flat), batch)
        jac = jax.jacfwd(lambda v: output_fn(unravel(v), batch).ravel())(flat)  # (NC, n)
        h_out = jax.hessian(lambda o: output_loss(o.reshape(out.shape), batch))(out.ravel())  # (NC, NC)
        return jac, h_out

    jac, h_out = map(np.asarray, parts(flat, batch))
    return jac.T @ h_out @ jac


@pytest.mark.parametrize("loss", ["ce", "square"])
def test_gauss_newton_matches_an_explicit_jt_hout_j(x64, loss):
    params, batch, output_fn, output_loss, loss_fn = _mlp_problem(2, loss)
    g = _explicit_gn(output_fn, output_loss, params, batch)
    top_g, top_h = np.max(np.linalg.eigvalsh(g)), np.max(np.linalg.eigvalsh(_dense(loss_fn, params, batch)))
    assert np.min(np.linalg.eigvalsh(g)) > -1e-12  # PSD: a loss convex in the outputs
    v = np.random.default_rng(0).normal(size=g.shape[0])
    # the product, three ways: linearised, in chunks of 3 of the 8 examples (a tail of 2), padded over devices
    x, y = batch
    padded = sharding.PaddedBatch((jnp.concatenate([x, x[:2]]), jnp.concatenate([y, y[:2]])), (x[:2], y[:2]), 8)
    for b, chunk in ((batch, 0), (batch, 3), (padded, 0)):
        mv = jax.jit(lambda p, b, v: gn_mod.gn_matvec(output_fn, output_loss, p, b, chunk_size=chunk)(v))
        got = np.asarray(mv(params, b, jnp.asarray(v)))
        assert np.allclose(got, g @ v, rtol=1e-10, atol=1e-12), (chunk, type(b).__name__)
    probe = gn_mod.gauss_newton(output_fn, output_loss, EXACT)
    columns, carry = _alone(probe, loss_fn, params, batch, columns={"lambda_top": jnp.asarray(top_h)})(
        probe.init(params, measure.initial_vectors(params, 1, jax.random.PRNGKey(0))), jax.random.PRNGKey(1))
    assert float(columns["gn_lambda_max"]) == pytest.approx(top_g, rel=1e-8)
    assert float(columns["gn_over_lambda_top"]) == pytest.approx(top_g / top_h, rel=1e-8)
    assert float(columns["resid_gn"]) <= 1e-11
    top_vec = np.linalg.eigh(g)[1][:, -1]
    assert abs(np.asarray(carry[0]) @ top_vec) == pytest.approx(1.0, abs=1e-8)


def test_gauss_newton_on_a_model_with_batchnorm_uses_the_measured_outputs(x64):
    """stateful_classification's outputs are the measured loss's (batch statistics, dropout off):
    ``output_loss(output_fn)`` is ``loss_fn``, and in a measurement the probe matches the explicit
    ``J^T H_out J``."""
    import flax.linen as nn

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, *, use_running_average, deterministic=True):
            x = nn.BatchNorm(use_running_average=use_running_average)(nn.Dense(4)(x))
            return nn.Dense(3)(nn.Dropout(0.5, deterministic=deterministic)(nn.tanh(x)))

    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)), rng.integers(0, 3, size=12).astype(np.int32)
    task = tasks.stateful_classification("toy", None, Net(), (x, y), (x, y), source="toy", batch_size=0)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), task.init_params(jax.random.PRNGKey(0)))
    batch = (jnp.asarray(x), jnp.asarray(y))
    both = jax.jit(lambda p, b: (task.output_loss(task.output_fn(p, b), b), task.loss_fn(p, b)))(params, batch)
    assert float(both[0]) == pytest.approx(float(both[1]), rel=1e-14)
    g = _explicit_gn(task.output_fn, task.output_loss, params, batch)
    row, _ = _run(task.loss_fn, params, batch, [gn_mod.gauss_newton(task.output_fn, task.output_loss, EXACT)])
    assert float(row["gn_lambda_max"]) == pytest.approx(np.max(np.linalg.eigvalsh(g)), rel=1e-8)
    assert float(row["gn_over_lambda_top"]) == pytest.approx(float(row["gn_lambda_max"]) / float(row["lambda_top"]))


def test_the_built_in_tasks_give_their_loss_as_outputs(data_dir):
    from samedge.data import shakespeare as sh
    from samedge.tasks import shakespeare as sh_task
    from tests.test_tasks_shakespeare import TINY, corpus_text

    built = [tasks.build_task("mnist", tasks.make_task_config("mnist", {"n_train": 32, "n_test": 16, "width": 8,
                                                                       "depth": 2}), data_dir=data_dir),
             sh_task.build(sh_task.Config(**TINY), corpus=sh.Corpus(corpus_text(), "synthetic"))]
    for task in built:
        params = task.init_params(jax.random.PRNGKey(0))
        batch = task.measure_batch_fn(task.data, 0)
        both = jax.jit(lambda p, b: (task.output_loss(task.output_fn(p, b), b), task.loss_fn(p, b)))(params, batch)
        assert float(both[0]) == pytest.approx(float(both[1]), rel=1e-6), task.name


# -- trace ---------------------------------------------------------------------------------------
def _dense_problem(n=30, seed=0):
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(size=(n, n)))
    loss = lambda w, b: 0.5 * jnp.sum((a @ w) ** 2) / n + jnp.sum(jnp.cos(w))  # noqa: E731
    w = jnp.asarray(rng.normal(size=n))
    return loss, w, np.asarray(jax.hessian(lambda v: loss(v, None))(w))


def test_trace_is_within_three_standard_errors_and_its_error_shrinks_as_one_over_sqrt_n(x64):
    loss, w, h = _dense_problem()
    exact = np.trace(h)
    sigma = math.sqrt(2 * (np.sum(h ** 2) - np.sum(np.diag(h) ** 2)))  # Hutchinson's standard deviation
    ctx = probes.context(loss, w, None, optimizers.build("gd", 0.1), MeasureSettings(), jax.random.PRNGKey(0))
    fixed = jax.jit(lambda key, n: trace_mod.hutchinson(ctx.hvp, w.shape[0], key, rel_se=0.0, min_samples=n,
                                                        max_samples=n, dtype=jnp.float64), static_argnums=1)
    for seed in range(4):
        se = {}
        for n in (100, 400):
            out = fixed(jax.random.PRNGKey(seed), n)
            assert int(out["trace_n"]) == n
            assert abs(float(out["trace"]) - exact) <= 3 * float(out["trace_se"]), (seed, n)
            se[n] = float(out["trace_se"])
        assert se[400] * 20 == pytest.approx(sigma, rel=0.2)  # s / sqrt(400): the sample std is sigma
        assert 0.4 <= se[400] / se[100] <= 0.62, seed  # 1/sqrt(4) = 0.5


def test_trace_stops_on_its_relative_error_or_at_its_cap(x64):
    loss, w, h = _dense_problem(seed=1)
    settings = MeasureSettings()
    ctx = probes.context(loss, w, None, optimizers.build("gd", 0.1), settings, jax.random.PRNGKey(0))
    columns, _ = trace_mod.trace(rel_se=0.05, max_samples=1000).measure(ctx, (), jax.random.PRNGKey(1))
    n = int(columns["trace_n"])
    assert 10 <= n < 1000 and float(columns["trace_se"]) <= 0.05 * abs(float(columns["trace"]))
    # a saddle with trace 0 never meets a relative rule: the cap stops it
    sym = np.array([[1.0, 2.0, 0.0], [2.0, -1.0, 0.5], [0.0, 0.5, 0.0]])
    ctx0 = probes.context(lambda v, b: 0.5 * v @ jnp.asarray(sym) @ v, jnp.ones(3), None, optimizers.build("gd", 0.1),
                          settings, jax.random.PRNGKey(0))
    columns, _ = trace_mod.trace(rel_se=0.05, max_samples=64).measure(ctx0, (), jax.random.PRNGKey(1))
    assert int(columns["trace_n"]) == 64 and abs(float(columns["trace"])) <= 3 * float(columns["trace_se"])
    with pytest.raises(ConfigError, match="min_samples"):
        trace_mod.trace(min_samples=1)


# -- names, tasks, columns -------------------------------------------------------------------------
def _line_task(outputs=True):
    x = jnp.asarray(np.random.default_rng(0).normal(size=(16, 2)), jnp.float32)
    y = x @ jnp.array([1.0, -2.0])
    kw = dict(output_fn=lambda p, b: jnp.tanh(b[0] @ p["w"]), output_loss=lambda o, b: jnp.mean((o - b[1]) ** 2))
    return samedge.make_task("line", lambda k: {"w": jnp.full(2, 0.1)},
                             lambda p, b: jnp.mean((jnp.tanh(b[0] @ p["w"]) - b[1]) ** 2), (x, y),
                             **(kw if outputs else {}))


def test_plain_names_resolve_to_the_opt_in_probes_and_a_given_object_wins():
    task = _line_task()
    cfg = RunConfig(task="line", preset=None, probes=("layers", "gauss_newton", "trace"))
    got = train.resolve_probes(cfg, task=task, settings=MeasureSettings(max_hvps=40))
    assert [p.name for p in got] == ["layers", "gauss_newton", "trace"]
    assert [p.workspace_iters for p in got] == [40, 40, 0]
    mine = probes.Probe("trace", lambda params, start: (), lambda ctx, carry, key: ({"mine": ctx.loss}, carry))
    assert train.resolve_probes(RunConfig(task="line", preset=None, probes=("trace",)), [mine], task=task) == (mine,)
    assert cli._probe_paths(["layers", "tests.fixtures.user_probes:GRAD_CURVATURE"])[0] == "layers"
    with pytest.raises(SamedgeError, match="--probe expects package.module:PROBE or one of layers"):
        cli._probe_paths(["lambda"])


@pytest.mark.parametrize("make, message", [
    (lambda: train.resolve_probes(RunConfig(task="line", preset=None, probes=("gauss_newton",)),
                                  task=_line_task(outputs=False)), "add output_fn=(params, batch) -> outputs"),
    (lambda: train.resolve_probes(RunConfig(task="line", preset=None, probes=("gauss_newton",), measure_mode="eval"),
                                  task=_line_task()), "does not take --measure-mode eval"),
    (lambda: samedge.make_task("x", lambda k: {"w": jnp.ones(2)}, lambda p, b: jnp.sum(p["w"]), jnp.ones(3),
                               output_fn=lambda p, b: p["w"]), "go together"),
    (lambda: samedge.make_task("x", lambda k: {"w": jnp.ones(2)}, lambda p, b: jnp.sum(p["w"]), jnp.ones(3),
                               output_fn=lambda p, b: p["w"], output_loss=lambda o, b: o),
     "output_loss(output_fn(params, batch), batch): the loss must return a float scalar"),
    (lambda: measure.opt_in("curvature"), "unknown probe 'curvature'"),
    (lambda: _run(lambda w, b: jnp.sum(w ** 2), jnp.ones(2), None, [measure.opt_in("gauss_newton")]),
     "gauss_newton needs the loss as outputs"),
])
def test_what_the_where_probes_refuse_in_one_line(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("column, ok", [("lambda_max/Dense_0", True), ("mass/a.b-c", True), ("a/b/c", True),
                                        ("a//b", False), ("/a", False), ("a/", False), ("a b", False)])
def test_column_names_take_slash_separated_parts(column, ok):
    if ok:
        probes.check_columns("p", {column: jnp.zeros(())}, {})
    else:
        with pytest.raises(ConfigError, match="in parts joined by /"):
            probes.check_columns("p", {column: jnp.zeros(())}, {})


# -- a run with all three --------------------------------------------------------------------------
def test_a_run_with_the_three_probes_writes_finite_columns_a_figure_and_a_report(tmp_path, data_dir):
    out = tmp_path / "run"
    args = ["run", "mnist", "--set", "n_train=64", "--set", "n_test=32", "--set", "width=8", "--set", "depth=3",
            "--optimizer", "sam", "--lr", "0.1", "--steps", "20", "--measure-every", "10",
            "--data-dir", str(data_dir), "--out", str(out), "--no-progress",
            "--probe", "layers", "--probe", "gauss_newton", "--probe", "trace"]
    assert cli.main(args) == 0
    with open(out / "metrics.csv", newline="") as f:
        whole = list(csv.DictReader(f))
    blocks = ["Dense_0", "Dense_1", "Dense_2"]
    wanted = ([f"lambda_max/{b}" for b in blocks] + [f"mass/{b}" for b in blocks]
              + ["resid_layers", "hvps_layers", "gn_lambda_max", "gn_over_lambda_top", "resid_gn", "hvps_gn",
                 "trace", "trace_se", "trace_n"])
    assert len(whole) == 3
    for r in whole:
        assert all(math.isfinite(float(r[k])) for k in wanted), r
        assert float(r["gn_lambda_max"]) > 0 and abs(sum(float(r[f"mass/{b}"]) for b in blocks) - 1) < 1e-4
    assert (out / "layers.png").exists() and (out / "layers.pdf").exists()
    # the report: summary.csv's statistics, the section, the layers grid
    written = report.write_report(out, tmp_path / "report")
    with open(tmp_path / "report" / "summary.csv", newline="") as f:
        row, = list(csv.DictReader(f))
    assert row["top_mass_block"] in blocks and float(row["gn_over_lambda_top_median"]) > 0
    assert "## Where the sharpness lives" in (tmp_path / "report" / "report.md").read_text()
    assert any(p.name.startswith("layers_") for p in written)
    figs = plots.run_figures(out)
    try:
        left, right = figs["layers"].axes[:2]
        assert {ln.get_gid() for ln in left.lines} >= {f"lambda_max/{b}" for b in blocks} | {"lambda_max", "edge",
                                                                                               "gn_lambda_max"}
        assert right.get_ylabel() == plots.YLABEL["mass"] and right.get_ylim() == (0.0, 1.0)
    finally:
        import matplotlib.pyplot as plt

        for fig in figs.values():
            plt.close(fig)
