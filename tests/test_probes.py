"""The probes: the interface (your own probe through ``measurement``, ``fit`` and ``--probe``; what is
refused), and each built-in probe called on its own, outside any measurement, against a dense truth.

Independent truths: ``numpy.linalg.eigh`` of ``jax.hessian`` in float64, Rayleigh quotients written
out with NumPy, GD on a diagonal quadratic in closed form (``w_t = (1 - eta h)^t w_0``).
"""

from __future__ import annotations

import csv
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

import samedge
from samedge import cli, measure, optimizers, probes, train
from samedge.config import RunConfig
from samedge.errors import ConfigError, RunDirError
from samedge.measure import MeasureSettings
from samedge.probes import adaptive, alignment, ascent, edge, outliers, stochastic, topk
from tests.fixtures.user_probes import GRAD_CURVATURE

N = 30


def _problem(seed=0, n=N):
    """A non-quadratic loss in float64 (a random quadratic plus a cosine term): its Hessian is dense."""
    rng = np.random.default_rng(seed)
    a = jnp.asarray(rng.normal(size=(n, n)))
    loss = lambda w, b: 0.5 * jnp.sum((a @ w) ** 2) / n + jnp.sum(jnp.cos(w))  # noqa: E731
    return loss, jnp.asarray(rng.normal(size=n))


def _hessian(loss, w, batch=None):
    return np.asarray(jax.hessian(lambda v: loss(v, batch))(w))


def _start(w, rows, seed=0):
    return measure.initial_vectors(w, rows, jax.random.PRNGKey(seed))


def _ctx(loss, w, opt, settings=None, **kw):
    return probes.context(loss, w, None, opt, settings or MeasureSettings(tol=1e-9), jax.random.PRNGKey(3), **kw)


# -- your own probe ------------------------------------------------------------------------------
def test_a_user_probe_through_measurement_matches_the_dense_rayleigh_quotient(x64):
    loss, w = _problem()
    m = samedge.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(tol=1e-9), probes=[GRAD_CURVATURE])
    assert [p.name for p in m.probes][-1] == "grad_curvature"
    state = m.init(w, jax.random.PRNGKey(0))
    assert int(state.carries["grad_curvature"]) == 0
    for i in range(2):
        row, state = m.measure(w, None, state, jax.random.PRNGKey(i))
    g = np.asarray(jax.grad(lambda v: loss(v, None))(w))
    assert float(row["grad_curvature"]) == pytest.approx(g @ _hessian(loss, w) @ g / (g @ g), rel=1e-12)
    assert int(row["grad_probe_calls"]) == 2 and int(state.carries["grad_curvature"]) == 2
    assert float(row["lambda_max"]) == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(_hessian(loss, w)))), rel=1e-9)


def test_a_probe_reads_the_columns_and_vectors_of_the_probes_before_it(x64):
    """``ctx.columns`` and ``ctx.carries`` hold what ran before; the start rows are random unit vectors."""
    loss, w = _problem(1)

    def measure_fn(ctx, carry, key):
        v1 = ctx.carries["topk"].vectors[0]
        rayleigh = v1 @ ctx.hvp(v1)
        return {"rayleigh_v1": rayleigh, "lambda_seen": ctx.columns["lambda_max"],
                "ratio_seen": ctx.columns["ratio"]}, carry

    probe = probes.Probe("reader", lambda params, start: start, measure_fn, rows=2)
    m = samedge.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(tol=1e-10), probes=[probe])
    state = m.init(w, jax.random.PRNGKey(0))
    assert state.carries["reader"].shape == (2, N)
    assert np.allclose(np.linalg.norm(np.asarray(state.carries["reader"]), axis=1), 1.0)
    row, _ = m.measure(w, None, state, jax.random.PRNGKey(1))
    assert float(row["lambda_seen"]) == float(row["lambda_max"]) and float(row["ratio_seen"]) == float(row["ratio"])
    top = np.linalg.eigvalsh(_hessian(loss, w))
    assert abs(float(row["rayleigh_v1"])) == pytest.approx(np.max(np.abs(top)), rel=1e-8)


def test_a_user_probe_leaves_the_built_in_columns_unchanged():
    loss, w = _problem(2)  # float32: no x64 here
    opt = optimizers.build("sam", 0.1, rho=0.05)
    settings = MeasureSettings(ascent_point=True, topk=2)
    rows = []
    for extra in ([], [GRAD_CURVATURE]):
        m = samedge.measurement(loss, opt, settings, probes=extra)
        row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
        rows.append(row)
    assert set(rows[1]) - set(rows[0]) == {"grad_curvature", "grad_probe_calls"}
    assert all(np.asarray(rows[0][k]).tobytes() == np.asarray(rows[1][k]).tobytes() for k in rows[0])


@pytest.mark.parametrize("make, message", [
    (lambda: [GRAD_CURVATURE, GRAD_CURVATURE], "probe name(s) grad_curvature given twice"),
    (lambda: [probes.Probe("topk", lambda p, s: (), lambda c, k, x: ({}, k))], "probe name(s) topk given twice"),
    (lambda: [probes.Probe("x", lambda p, s: (), lambda c, k, x: ({"lambda_max": c.loss}, k))],
     "column 'lambda_max' is written by an earlier probe"),
    (lambda: [probes.Probe("x", lambda p, s: (), lambda c, k, x: ({"v": c.flat_grad}, k))], "a column is a scalar"),
    (lambda: [probes.Probe("x", lambda p, s: (), lambda c, k, x: {"v": c.loss})], "must return (columns, carry)"),
    (lambda: [probes.Probe("x", lambda p, s: (), lambda c, k, x: ({"a b": c.loss}, k))], "column name 'a b'"),
    (lambda: [probes.Probe("a/b", lambda p, s: (), lambda c, k, x: ({}, k))], "probe name 'a/b'"),
    (lambda: [lambda ctx: 1.0], "a probe must be a samedge.probes.Probe"),
])
def test_what_is_refused_in_one_line(make, message):
    loss = lambda w, b: jnp.sum(w ** 2)  # noqa: E731
    w = jnp.ones(3)
    with pytest.raises(ConfigError) as err:
        m = samedge.measurement(loss, optimizers.build("gd", 0.1), probes=make())
        m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_user_probe_through_fit_follows_gd_in_closed_form(tmp_path):
    """GD on 0.5 sum(h w^2): w_t = (1 - eta h)^t w_0, g = h w, so g'Hg/g'g = sum(h^3 w^2)/sum(h^2 w^2)."""
    h = np.array([3.0, 1.0, 0.5, 0.2])
    task = samedge.make_task("quad", lambda k: {"w": jnp.ones(4)}, lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2),
                             jnp.asarray(h, jnp.float32))
    eta = 0.3
    out = tmp_path / "run"
    summary = samedge.fit(task, "gd", lr=eta, steps=40, measure_every=10, out=out, progress=False,
                          probes=[GRAD_CURVATURE])
    assert summary["status"] == "completed"
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        w = (1 - eta * h) ** int(row["step"])
        truth = np.sum(h ** 3 * w ** 2) / np.sum(h ** 2 * w ** 2)
        assert float(row["grad_curvature"]) == pytest.approx(truth, rel=1e-5)
    assert [int(r["grad_probe_calls"]) for r in rows] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["run"]["probes"] == ["grad_curvature"]
    # resuming a run whose probe was an object needs the object again
    cfg = RunConfig(task="quad", preset=None, probes=("grad_curvature",))
    with pytest.raises(RunDirError, match="passed as a Python object; pass it again"):
        train.resolve_probes(cfg)
    assert train.resolve_probes(cfg, [GRAD_CURVATURE]) == (GRAD_CURVATURE,)


def test_a_user_probe_from_the_cli_survives_a_resume(tmp_path, data_dir, capsys):
    """``--probe package.module:PROBE``: its columns join metrics.csv, its carry is checkpointed (the
    call count goes on across the resume), and the curvature along g is at most lambda_max."""
    out = tmp_path / "run"
    args = ["run", "mnist", "--set", "n_train=64", "--set", "n_test=32", "--set", "width=8", "--set", "depth=3",
            "--optimizer", "gd", "--lr", "0.1", "--steps", "40", "--measure-every", "10", "--checkpoint-every", "10",
            "--data-dir", str(data_dir), "--out", str(out), "--no-progress",
            "--probe", "tests.fixtures.user_probes:GRAD_CURVATURE"]
    assert cli.main(args) == 0
    with open(out / "metrics.csv", newline="") as f:
        whole = list(csv.DictReader(f))
    assert [int(r["grad_probe_calls"]) for r in whole] == [1, 2, 3, 4, 5]
    assert all(0 < float(r["grad_curvature"]) <= float(r["lambda_max"]) * (1 + 1e-3) for r in whole)
    # cut the run back to its step-20 checkpoint's rows and resume: the same rows come back
    from samedge import checkpoint

    lines = (out / "metrics.csv").read_text().splitlines()
    (out / "metrics.csv").write_text("\n".join(lines[:4]) + "\n")  # header + steps 0, 10, 20
    (out / "summary.json").unlink()
    raw = checkpoint.step_of(out)
    assert raw == 30  # the last checkpoint before the final step
    assert cli.main(["resume", str(out), "--data-dir", str(data_dir), "--no-progress"]) == 0
    with open(out / "metrics.csv", newline="") as f:
        again = list(csv.DictReader(f))
    assert [int(r["grad_probe_calls"]) for r in again] == [1, 2, 3, 4, 5]
    assert [r["grad_curvature"] for r in again] == [r["grad_curvature"] for r in whole]


@pytest.mark.parametrize("flag, message", [
    ("tests.fixtures.user_probes:NOT_A_PROBE", "is not a samedge.probes.Probe"),
    ("tests.fixtures.user_probes:MISSING", "has no MISSING"),
    ("no_such_module:X", "cannot import no_such_module"),
    ("GRAD_CURVATURE", "--probe expects package.module:PROBE"),
])
def test_a_bad_probe_flag_is_one_line(tmp_path, data_dir, capsys, flag, message):
    code = cli.main(["run", "mnist", "--steps", "1", "--data-dir", str(data_dir), "--out", str(tmp_path / "r"),
                     "--probe", flag])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


# -- each built-in probe on its own ----------------------------------------------------------------
def test_topk_alone_gives_the_top_pairs_and_starts_the_guard(x64):
    loss, w = _problem(3)
    settings = MeasureSettings(topk=3, tol=1e-10)
    probe = topk.topk(settings)
    columns, carry, _ = probe.measure(_ctx(loss, w, optimizers.build("gd", 0.1), settings),
                                      probe.init(w, _start(w, 3)), jax.random.PRNGKey(0))
    dense = np.linalg.eigvalsh(_hessian(loss, w))
    top = dense[np.argsort(-np.abs(dense))][:3]
    assert [float(columns[f"lambda_{i}"]) for i in (1, 2, 3)] == pytest.approx(top, rel=1e-9)
    assert float(columns["lambda_top"]) == pytest.approx(dense.max(), rel=1e-9)
    assert int(carry.count) == 1 and float(carry.lambda_prev) == pytest.approx(abs(top[0]))
    assert int(columns["hvps_crosscheck"]) == 0  # the first call is itself a cold start


@pytest.mark.parametrize("name", ["rmsprop", "sam_adam"])
def test_the_adaptive_probes_alone_match_the_dense_preconditioned_hessian(x64, name):
    loss, w = _problem(4)
    opt = optimizers.build(name, 0.01)
    state = opt.init(w)
    for _ in range(4):
        w, state, _ = opt.update(w, state, jax.value_and_grad(lambda q: loss(q, None)))
    settings = MeasureSettings(tol=1e-10)
    ctx = _ctx(loss, w, opt, settings, opt_state=state)
    p = np.asarray(opt.preconditioner(state, jax.grad(lambda q: loss(q, None))(w)))
    h = _hessian(loss, w)
    pre = adaptive.precond(settings)
    columns, carry, _ = pre.measure(ctx, pre.init(w, _start(w, 1)), None)
    s = np.diag(p ** -0.5)
    assert float(columns["precond_sharpness"]) == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(s @ h @ s))),
                                                                rel=1e-8)
    assert carry.shape == (1, N)
    if name == "sam_adam":
        radius = adaptive.step_radius(settings)
        columns, _, _ = radius.measure(ctx, radius.init(w, _start(w, 1)), None)
        g = np.asarray(jax.grad(lambda q: loss(q, None))(w))
        rho = optimizers.resolve_hparams(name)["rho"]
        mu = np.max(np.linalg.eigvals(np.diag(1 / p) @ (h + rho * h @ h / np.linalg.norm(g))).real)
        assert float(columns["step_mu"]) == pytest.approx(mu, rel=1e-7)
    with pytest.raises(ConfigError, match="reads its optimizer state"):
        pre.measure(ctx._replace(opt_state=None), pre.init(w, _start(w, 1)), None)


def test_the_stochastic_probes_alone_on_full_batches(x64):
    """With full batches every 'minibatch' is the whole set: q = g'Hg/g'g exactly, no spread; and the
    full batch's top eigenvalue is that of the Hessian on all the data, not on the measured batch."""
    rng = np.random.default_rng(5)
    x, y = jnp.asarray(rng.normal(size=(40, 6))), jnp.asarray(rng.normal(size=40))
    loss = lambda w, b: jnp.mean((jnp.tanh(b[0] @ w) - b[1]) ** 2)  # noqa: E731
    w = jnp.asarray(rng.normal(size=6))
    settings = MeasureSettings(tol=1e-10, batch_sharpness=20)
    opt = optimizers.build("gd", 0.1)
    ctx = probes.context(loss, w, (x[:10], y[:10]), opt, settings, jax.random.PRNGKey(0), data=(x, y))
    bs = stochastic.batch_sharpness(settings, lambda data, step: data)
    columns, _ = bs.measure(ctx, (), None)
    g = np.asarray(jax.grad(loss)(w, (x, y)))
    h = _hessian(loss, w, (x, y))
    assert float(columns["batch_sharpness"]) == pytest.approx(g @ h @ g / (g @ g), rel=1e-9)
    assert int(columns["batch_sharpness_n"]) == 10 and float(columns["batch_sharpness_se"]) < 1e-12
    assert float(columns["sam_batch_edge"]) == pytest.approx(20.0)  # GD: 2/eta per batch
    full = stochastic.full_batch(settings, lambda data: data)
    columns, carry, _ = full.measure(ctx, full.init(w, _start(w, 1)), None)
    assert float(columns["lambda_max_full"]) == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(h))), rel=1e-9)
    with pytest.raises(ConfigError, match="pass measure"):
        bs.measure(ctx._replace(data=None), (), None)


def test_edge_alone_divides_the_optimizers_own_sharpness():
    loss = lambda w, b: jnp.sum(w ** 2)  # noqa: E731
    w = jnp.ones(3)
    ctx = _ctx(loss, w, optimizers.build("gd", 0.5))
    columns, _ = edge.edge().measure(ctx._replace(columns=ctx.columns | {"lambda_max": jnp.asarray(3.0)}), (), None)
    assert float(columns["edge"]) == 4.0 and float(columns["gd_edge"]) == 4.0 and float(columns["ratio"]) == 0.75
    adam = optimizers.build("adam", 0.1)
    ctx = _ctx(loss, w, adam, opt_state=adam.init(w))
    both = ctx.columns | {"lambda_max": jnp.asarray(3.0), "precond_sharpness": jnp.asarray(6.0)}
    columns, _ = edge.edge().measure(ctx._replace(columns=both), (), None)
    assert float(columns["ratio"]) == pytest.approx(6.0 / float(columns["edge"]))
    assert float(columns["precond_ratio"]) == float(columns["ratio"]) and "precond_edge" in columns


def test_alignment_alone_is_the_cosine_with_the_given_top_vector():
    loss = lambda w, b: 0.5 * jnp.sum(jnp.array([3.0, 1.0, 2.0]) * w ** 2)  # noqa: E731
    w = jnp.array([1.0, 2.0, -1.0])
    ctx = _ctx(loss, w, optimizers.build("gd", 0.1))
    v1 = jnp.array([[1.0, 0.0, 0.0]])
    ctx = ctx._replace(carries={"topk": topk.TopkCarry(v1)})
    columns, _ = alignment.alignment().measure(ctx, (), None)
    g = np.array([3.0, 2.0, -2.0])
    assert float(columns["align_grad"]) == pytest.approx(3.0 / np.linalg.norm(g), rel=1e-6)
    assert float(columns["align_sam_grad"]) == float(columns["align_grad"])  # GD descends along g


def test_ascent_point_alone_matches_the_dense_hessian_there(x64):
    loss, w = _problem(6)
    rho = 0.3
    settings = MeasureSettings(tol=1e-10)
    opt = optimizers.build("sam", 0.1, rho=rho)
    ctx = _ctx(loss, w, opt, settings)
    start = topk.TopkCarry(_start(w, 1))
    columns, _, _ = ascent.ascent_point(settings).measure(ctx._replace(carries={"topk": start}), (), None)
    g = jax.grad(lambda v: loss(v, None))(w)
    point = w + rho * g / jnp.linalg.norm(g)
    dense = np.linalg.eigvalsh(_hessian(loss, point))
    assert float(columns["lambda_max_sam"]) == pytest.approx(np.max(np.abs(dense)), rel=1e-9)


def test_outliers_alone_are_every_eigenvalue_above_the_fraction_of_the_edge(x64):
    d = jnp.asarray(np.concatenate([[9.0, 8.0, 7.5, 6.2], np.linspace(-1, 2, 36)]))
    loss = lambda w, b: 0.5 * jnp.sum(d * w ** 2)  # noqa: E731
    w = jnp.ones(40)
    settings = MeasureSettings(tol=1e-8, track_fraction=0.6, track_max=6)
    ctx = _ctx(loss, w, optimizers.build("gd", 0.2), settings)  # edge 10: outliers above 6
    probe = outliers.outliers(settings)
    columns, carry, _ = probe.measure(ctx._replace(columns=ctx.columns | {"edge": jnp.asarray(10.0)}),
                                      probe.init(w, jnp.zeros((6, 40))), None)
    assert int(columns["n_outliers"]) == 4
    assert [float(columns[f"outlier_{i}"]) for i in (1, 2, 3, 4)] == pytest.approx([9.0, 8.0, 7.5, 6.2], rel=1e-7)
    assert np.isnan(float(columns["outlier_5"])) and carry.shape == (6, 40)
    assert probe.measure(ctx, carry, None)[0] == {}  # no edge: nothing to compare with


def test_the_built_in_probes_run_in_their_fixed_order():
    settings = MeasureSettings(ascent_point=True, track_fraction=0.5, batch_sharpness=10)
    names = [p.name for p in measure.builtin_probes(settings, optimizers.build("sam_adam", 0.01),
                                                    batch_fn=lambda d, s: d, full_batch_fn=lambda d: d)]
    assert names == ["topk", "precond", "step_radius", "batch_sharpness", "full_batch", "edge", "alignment",
                     "ascent_point", "outliers"]
    # the start rows in that order are the layout of a format-1 checkpoint's block of vectors
    assert [p.rows for p in measure.builtin_probes(settings, optimizers.build("sam_adam", 0.01),
                                                   batch_fn=lambda d, s: d, full_batch_fn=lambda d: d)] == \
        [1, 1, 1, 0, 1, 0, 0, 0, 12]


def test_probe_keys_differ_by_name_and_a_flat_grad_is_the_raveled_gradient():
    key = jax.random.PRNGKey(0)
    assert not np.array_equal(probes.probe_key(key, "a"), probes.probe_key(key, "b"))
    ctx = _ctx(lambda w, b: jnp.sum(w["x"] ** 2) + jnp.sum(w["y"]), {"x": jnp.ones(2), "y": jnp.ones(3)},
               optimizers.build("gd", 0.1))
    assert np.array_equal(ctx.flat_grad, ravel_pytree(ctx.grad)[0])


@pytest.mark.parametrize("mask", ["weights", "all"])
def test_weight_decay_masked_operator_matches_dense_eigh(x64, mask):
    """``lambda_max_reg`` is ||H + wd D|| of a small MLP with biases (D: its kernels, or everything),
    against dense eigh of the Hessian plus that diagonal; ``lambda_max`` stays the loss's own, the
    edge stays 2/eta and the ratio reads the decayed curvature."""
    from tests.test_curvature import small_model_loss

    loss, params = small_model_loss(3)
    wd, eta = 0.7, 0.1
    opt = optimizers.build("gd", eta, weight_decay=wd, decay_mask=mask)
    m = measure.measurement(lambda p, b: loss(p), opt, MeasureSettings(tol=1e-8, max_hvps=200))
    row, _ = m.measure(params, None, m.init(params, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    flat_mask = ravel_pytree(jax.tree.map(lambda p, k: jnp.full(p.shape, bool(k)), params,
                                          optimizers.decay_mask_fn(mask)(params)))[0]
    h = np.asarray(_dense(loss, params))
    reg = np.linalg.eigvalsh(h + np.diag(wd * np.asarray(flat_mask, float)))
    assert 0 < flat_mask.sum() < flat_mask.size or mask == "all"
    assert float(row["lambda_max_reg"]) == pytest.approx(np.max(np.abs(reg)), rel=1e-7)
    assert float(row["lambda_max"]) == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(h))), rel=1e-7)
    assert float(row["edge"]) == pytest.approx(2 / eta) and float(row["ratio"]) == pytest.approx(
        float(row["lambda_max_reg"]) * eta / 2, rel=1e-12)


def _dense(loss, params):
    from samedge import curvature

    return curvature.dense_hessian(loss, params)


def test_weight_decay_adds_nothing_at_its_default():
    """At weight decay 0 (the default) nothing changes: no decay probe, no new column, the same state."""
    opt = optimizers.build("sam", 0.1)
    assert opt.decay is None and "weight_decay" not in optimizers.resolve_hparams("sam", {"weight_decay": 0.0})
    assert "decay" not in [p.name for p in measure.builtin_probes(MeasureSettings(), opt)]
    assert "decay" in [p.name for p in measure.builtin_probes(MeasureSettings(), optimizers.build("sam", 0.1, weight_decay=1e-3))]
    # decoupled decay (AdamW) has no lambda_max_reg: its edge is on P^-1 H
    assert optimizers.build("adam", 1e-3, weight_decay=1e-2, decay_mask="all").decay is None
