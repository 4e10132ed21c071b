"""The training loop end to end on a tiny MNIST: schedule, columns, edges, divergence."""

import math

import numpy as np
import pytest

from samedge import analysis, config, edges, tasks, train
from samedge.store import RunStore, read_json, read_metrics

TINY = dict(n_train=128, n_test=64, width=16, depth=3)


SMALL = dict(n_train=32, n_test=8, width=4, depth=3)  # small enough for a dense Hessian


@pytest.fixture(scope="module")
def tiny_task(data_dir):
    return tasks.build_task("mnist", tasks.make_task_config("mnist", TINY), data_dir=data_dir)


@pytest.fixture(scope="module")
def small_task(data_dir):
    return tasks.build_task("mnist", tasks.make_task_config("mnist", SMALL), data_dir=data_dir)


def _measure_row(task, cfg, params):
    """One measurement of ``cfg``'s optimizer at ``params`` on the whole training set."""
    import jax

    from samedge import measure

    opt = train.build_optimizer(cfg)
    m = measure.measurement(task.loss_fn, opt, train.measure_settings(cfg, opt), accuracy_fn=task.accuracy_fn)
    return m.measure(params, task.data, m.init(params, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))[0]


def test_the_runs_measurement_donates_its_workspace(tiny_task):
    """The program train() calls aliases the Krylov workspace to its output (reused in place)."""
    import jax
    import jax.numpy as jnp

    cfg = config.resolve("mnist", "quick", task_overrides=TINY, steps=10, measure_every=5)
    opt = train.build_optimizer(cfg)
    _, init, measure_at = train._make_measure(cfg, tiny_task, opt)
    params = tiny_task.init_params(jax.random.PRNGKey(0))
    state = init(params)
    pointer = state.workspace.unsafe_buffer_pointer()
    row, new = measure_at(params, tiny_task.data, jnp.asarray(0), state, opt.init(params))
    assert new.workspace.unsafe_buffer_pointer() == pointer
    assert not new.vectors.is_deleted() and not state.vectors.is_deleted()  # only the workspace is donated
    assert np.isfinite(float(row["lambda_max"]))


def test_schedule():
    assert train.schedule(100, 25) == [0, 25, 50, 75, 100]
    assert train.schedule(90, 25) == [0, 25, 50, 75, 90]
    assert train.schedule(5, 25) == [0, 5]


def test_sam_run_rows_and_edges(tiny_task, tmp_path):
    cfg = config.resolve("mnist", "quick", task_overrides=TINY, optimizer="sam", lr=0.1, rho=0.1,
                         steps=30, measure_every=10, eval_every=20, measure_sam_point=True)
    store = RunStore.create(tmp_path / "run", {"run": cfg.to_dict()})
    summary = train.train(cfg, tiny_task, store, progress=False)
    assert summary["status"] == "completed" and summary["steps_done"] == 30
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows] == [0, 10, 20, 30]
    assert [r["step"] for r in rows if r["test_loss"] is not None] == [0, 20, 30]
    for r in rows:
        # The recorded edge is the SAM-edge at the recorded gradient norm, and ratio = lambda / edge.
        assert r["edge"] == pytest.approx(float(edges.sam_edge(0.1, 0.1, r["grad_norm"])), rel=1e-5)
        assert r["gd_edge"] == pytest.approx(20.0)
        assert r["ratio"] == pytest.approx(r["lambda_max"] / r["edge"], rel=1e-5)
        assert r["resid_1"] <= 1e-3 or r["hvps"] == cfg.lanczos_max_iters
        assert 0 <= r["align_grad"] <= 1 and 0 <= r["align_sam_grad"] <= 1
        assert r["lambda_max_sam"] > 0
    saved = read_json(tmp_path / "run" / "summary.json")
    assert saved["status"] == "completed"
    # Each row's measurement time lies inside the run's clock; the summary adds them up.
    assert all(0 < r["measure_s"] for r in rows)
    assert all(b["time_s"] - a["time_s"] >= b["measure_s"] for a, b in zip(rows, rows[1:]))
    assert saved["measure_time_s"] == pytest.approx(sum(r["measure_s"] for r in rows), rel=1e-9)
    assert 0 < saved["measure_share"] < 1
    assert saved["measure_share"] == pytest.approx(saved["measure_time_s"] / saved["wall_time_s"], rel=1e-9)


def test_measured_lambda_max_is_the_hessian_norm(small_task, x64):
    # Independent truth: the dense Hessian of the same loss at the same parameters.
    import jax

    from samedge import curvature, measure, steps

    small = small_task
    cfg = config.resolve("mnist", "quick", task_overrides=SMALL, optimizer="gd", lr=0.5, topk=2, lanczos_tol=1e-6)
    params = small.init_params(jax.random.PRNGKey(0))
    row = _measure_row(small, cfg, params)
    dense = np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(lambda p: small.loss_fn(p, small.data), params)))
    top = dense[np.argsort(-np.abs(dense))][:2]
    assert float(row["lambda_max"]) == pytest.approx(abs(top[0]), rel=1e-4)
    assert float(row["lambda_2"]) == pytest.approx(top[1], rel=1e-3)
    assert float(row["ratio"]) == pytest.approx(0.5 * abs(top[0]) / 2, rel=1e-4)


@pytest.mark.parametrize("name", ["sam", "gd"])
def test_alignments_against_dense_eigenvector(small_task, x64, name):
    # Independent truth: the top eigenvector of the dense Hessian, the gradient by jax.grad and the
    # SAM gradient written out here (not through samedge.steps).
    import jax
    from jax.flatten_util import ravel_pytree

    from samedge import curvature, measure, steps

    small = small_task
    cfg = config.resolve("mnist", "quick", task_overrides=SMALL, optimizer=name, lr=0.1,
                         rho=0.2 if name == "sam" else None, lanczos_tol=1e-8)
    params = small.init_params(jax.random.PRNGKey(1))
    row = _measure_row(small, cfg, params)
    loss = lambda p: small.loss_fn(p, small.data)
    dense_values, dense_vectors = np.linalg.eigh(np.asarray(curvature.dense_hessian(loss, params)))
    top = dense_vectors[:, np.argmax(np.abs(dense_values))]
    g = jax.grad(loss)(params)
    flat_g = np.asarray(ravel_pytree(g)[0])
    if name == "sam":
        norm = np.linalg.norm(flat_g)
        descent = np.asarray(ravel_pytree(jax.grad(loss)(jax.tree.map(lambda w, d: w + 0.2 * d / norm, params, g)))[0])
    else:
        descent = flat_g
    cosine = lambda a: abs(a @ top) / np.linalg.norm(a)
    assert float(row["align_grad"]) == pytest.approx(cosine(flat_g), rel=1e-5, abs=1e-8)
    assert float(row["align_sam_grad"]) == pytest.approx(cosine(descent), rel=1e-5, abs=1e-8)
    if name == "sam":
        assert abs(cosine(descent) - cosine(flat_g)) > 1e-3  # the two columns measure different gradients


def test_divergence_stops_the_run_and_keeps_rows(tiny_task, tmp_path):
    cfg = config.resolve("mnist", "quick", task_overrides=TINY, optimizer="gd", lr=500.0,
                         steps=60, measure_every=5, eval_every=60)
    store = RunStore.create(tmp_path / "run", {"run": cfg.to_dict()})
    summary = train.train(cfg, tiny_task, store, progress=False)
    assert summary["status"] == "diverged"
    rows = read_metrics(tmp_path / "run")
    assert len(rows) >= 1 and all(math.isfinite(r["loss"]) for r in rows)
    assert summary["steps_done"] < 60


def test_ratio_stats_use_the_second_half():
    rows = [{"step": s, "ratio": r} for s, r in zip(range(0, 110, 10), [0.1] * 5 + [0.95, 1.0, 1.05, 1.0, 1.2, 1.0])]
    stats = analysis.ratio_stats(rows)
    assert stats["ratio_count"] == 6  # steps 50..100
    assert stats["ratio_median"] == pytest.approx(1.0)
    assert stats["ratio_within_10pct"] == pytest.approx(5 / 6)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer, lr, steps", [("sam", 0.2, 500), ("gd", 1.0, 400)])
def test_each_optimizer_reaches_its_own_edge(data_dir, tmp_path, optimizer, lr, steps):
    """The science, small: SAM's lambda_max settles at its SAM-edge, far below 2/eta; GD's at 2/eta."""
    overrides = dict(n_train=500, n_test=100, width=64, depth=4)
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", overrides), data_dir=data_dir)
    cfg = config.resolve("mnist", "quick", task_overrides=overrides, optimizer=optimizer, lr=lr, rho=0.1 if optimizer == "sam" else None,
                         steps=steps, measure_every=25, eval_every=steps, measure_sam_point=False)
    summary = train.train(cfg, task, None, progress=False)
    assert summary["status"] == "completed"
    assert 0.9 <= summary["ratio_median"] <= 1.1
    if optimizer == "sam":
        assert summary["final_edge"] < 0.5 * summary["final_gd_edge"]
