"""The measurement as a library call: its guard against a Krylov miss, its columns, its precision.

Independent truths: the eigenvalues of a diagonal operator written down by hand, dense ``eigh``.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import curvature, measure, optimizers
from samedge.measure import MeasureSettings, MeasureState
from samedge.probes.topk import TopkCarry

N = 2000


def swap_problem(top: float, second: float, n: int = N, seed: int = 0):
    """A quadratic loss whose Hessian is diagonal: ``top`` and ``second`` above a bulk in [-0.5, 2]."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(-0.5, 2.0, n)
    d[0], d[1] = top, second
    d = jnp.asarray(d, jnp.float32)
    return (lambda w, batch: 0.5 * jnp.sum(d * w["w"] ** 2)), d


def topk_state(vectors, count: int, lambda_prev: float) -> MeasureState:
    """A GD measurement's state (its probes: topk, edge, alignment) with the top-k carry given."""
    carry = TopkCarry(vectors, jnp.asarray(count, jnp.int32), jnp.asarray(lambda_prev, jnp.float32))
    return MeasureState({"topk": carry, "edge": (), "alignment": ()})


def old_top_state(n: int = N, count: int = 1) -> MeasureState:
    """The state after a measurement whose top vector was the eigenvector of the (then) top, 10."""
    return topk_state(jnp.zeros((1, n)).at[0, 1].set(1.0), count, 10.0)


def test_swap_todays_rule_misses_the_new_top():
    """Today's rule (warm start + 1% noise, stop on the residual) stops on 10 although 11 exists."""
    loss, d = swap_problem(11.0, 10.0)
    matvec, _ = curvature.flat_hvp(lambda p: loss(p, None), {"w": jnp.ones(N)})
    noise = jax.random.normal(jax.random.PRNGKey(3), (N,))
    v0 = old_top_state().vectors[0] + 0.01 * noise / jnp.linalg.norm(noise)
    old = curvature.lanczos(matvec, v0, k=1, max_iters=64, tol=1e-3)
    assert float(old.values[0]) == pytest.approx(10.0, rel=1e-4) and float(old.residuals[0]) <= 1e-3
    assert int(old.num_matvecs) <= 3


def test_swap_the_guarded_measurement_reports_the_true_top():
    """The same warm start through the measurement: the minimum Krylov steps find 11 (dense truth)."""
    loss, d = swap_problem(11.0, 10.0)
    m = measure.measurement(loss, optimizers.build("gd", 0.1))
    row, state = m.measure({"w": jnp.ones(N)}, None, old_top_state(), jax.random.PRNGKey(3))
    truth = float(np.max(np.abs(np.asarray(d))))
    assert float(row["lambda_max"]) == pytest.approx(truth, rel=1e-4)
    assert int(row["converged"]) == 1 and int(row["certified"]) == 1
    assert abs(float(state.vectors[0, 0])) > 0.99  # the carried vector is the new top's


def test_swap_a_miss_is_flagged_and_corrected_by_the_cross_check():
    """A start with no random part at all (start_noise 0) sits in an invariant subspace: Lanczos
    stops on the old top, 10, and no rule can see 10.5 from there. When no cross-check is due, the
    row cannot know; at the next cross-check the row is marked uncertified and reports the true top."""
    loss, d = swap_problem(10.5, 10.0)
    truth = float(np.max(np.abs(np.asarray(d))))
    settings = MeasureSettings(crosscheck_every=5, start_noise=0.0, min_hvps=1)
    m = measure.measurement(loss, optimizers.build("gd", 0.1), settings)
    w = {"w": jnp.ones(N)}
    quiet, _ = m.measure(w, None, old_top_state(count=1), jax.random.PRNGKey(3))
    assert float(quiet["lambda_max"]) == pytest.approx(10.0, rel=1e-5)  # the miss
    assert np.isnan(float(quiet["crosscheck_lambda"]))
    row, state = m.measure(w, None, old_top_state(count=5), jax.random.PRNGKey(3))  # due: 5 % 5 == 0
    assert float(row["crosscheck_lambda"]) == pytest.approx(truth, rel=1e-3)
    assert float(row["lambda_max"]) == pytest.approx(truth, rel=1e-3)
    assert int(row["certified"]) == 0 and int(row["converged"]) == 1
    assert abs(float(state.vectors[0, 0])) > 0.99  # the next warm start carries the true top


def test_the_cross_check_is_a_lower_bound_at_its_looser_tolerance():
    """No miss (the warm start is the true top, 11, of a cluster 11, 10.95, ..., 10.8): the cold run
    stops at a residual of 1e-2 with a Ritz value below the truth and within about that tolerance of
    it, certifies the row, and costs fewer HVPs than a cold run to the measurement's own tolerance."""
    rng = np.random.default_rng(0)
    d = rng.uniform(-0.5, 2.0, N)
    d[:5] = [11.0, 10.95, 10.9, 10.85, 10.8]
    d = jnp.asarray(d, jnp.float32)
    loss = lambda w, batch: 0.5 * jnp.sum(d * w["w"] ** 2)  # noqa: E731
    truth = float(np.max(np.abs(np.asarray(d))))
    state = topk_state(jnp.zeros((1, N)).at[0, 0].set(1.0), 5, 11.0)
    rows = {}
    for cc_tol in (1e-2, 1e-3):
        m = measure.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(crosscheck_every=5,
                                                                                     crosscheck_tol=cc_tol))
        rows[cc_tol], _ = m.measure({"w": jnp.ones(N)}, None, state, jax.random.PRNGKey(4))
    row = rows[1e-2]
    assert float(row["lambda_max"]) == pytest.approx(truth, rel=1e-5)
    assert truth * (1 - 2e-2) <= float(row["crosscheck_lambda"]) <= truth * (1 + 1e-6)
    assert int(row["certified"]) == 1
    assert int(row["hvps_crosscheck"]) < int(rows[1e-3]["hvps_crosscheck"])


def test_a_jump_in_lambda_triggers_a_cross_check():
    loss, d = swap_problem(11.0, 10.0)
    m = measure.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(crosscheck_every=0))
    state = topk_state(old_top_state().vectors, 3, 5.0)
    row, _ = m.measure({"w": jnp.ones(N)}, None, state, jax.random.PRNGKey(0))  # 11 against 5: a jump
    assert np.isfinite(float(row["crosscheck_lambda"])) and int(row["hvps_crosscheck"]) > 0
    row, _ = m.measure({"w": jnp.ones(N)}, None, topk_state(jnp.zeros((1, N)).at[0, 0].set(1.0), 3, 11.0),
                       jax.random.PRNGKey(0))
    assert np.isnan(float(row["crosscheck_lambda"])) and int(row["hvps_crosscheck"]) == 0


def test_lambda_top_is_the_largest_algebraic_eigenvalue():
    """Negative curvature dominating: lambda_max = |most negative|, lambda_top the largest value."""
    d = jnp.asarray(np.concatenate([[-7.0, 3.0], np.linspace(-1, 1, 98)]), jnp.float32)
    loss = lambda w, b: 0.5 * jnp.sum(d * w ** 2)  # noqa: E731
    m = measure.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(tol=1e-6, min_hvps=30))
    row, _ = m.measure(jnp.ones(100), None, m.init(jnp.ones(100), jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    assert float(row["lambda_max"]) == pytest.approx(7.0, rel=1e-5)
    assert float(row["lambda_1"]) == pytest.approx(-7.0, rel=1e-5)
    assert float(row["lambda_top"]) == pytest.approx(3.0, rel=1e-4)


def test_unconverged_rows_say_so():
    loss, _ = swap_problem(11.0, 10.9)
    m = measure.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(max_hvps=4, min_hvps=1, tol=1e-8))
    w = jnp.ones(N)
    row, _ = m.measure({"w": w}, None, m.init({"w": w}, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    assert int(row["converged"]) == 0 and int(row["certified"]) == 0 and int(row["hvps"]) == 4


def test_the_measurement_program_asks_for_full_precision_products():
    """On accelerators float32 matmuls default to reduced precision; the lowered measurement pins
    every dot product to HIGHEST (on the CPU it changes nothing)."""
    x = jnp.ones((8, 4))
    loss = lambda p, b: jnp.mean((b @ p["w"]) ** 2)  # noqa: E731
    m = measure.measurement(loss, optimizers.build("sam", 0.1, rho=0.1))
    params = {"w": jnp.ones((4, 3))}
    state = m.init(params, jax.random.PRNGKey(0))
    # the jitted program inside measure: lower it through a jit of the call itself
    text = jax.jit(lambda p, b, s, k: m.measure(p, b, s, k)).lower(params, x, state, jax.random.PRNGKey(1)).as_text()
    dots = [ln for ln in text.splitlines() if "dot_general" in ln]
    assert dots and all("HIGHEST" in ln for ln in dots), dots[:3]


def test_float64_measurement_matches_dense_eigh(x64):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 60))
    h = jnp.asarray(a @ a.T / 60)
    loss = lambda w, b: 0.5 * w @ h @ w + jnp.sum(jnp.sin(w))  # noqa: E731
    w = jnp.asarray(rng.normal(size=60))
    m = measure.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(tol=1e-10, dtype="float64"))
    row, state = m.measure(w.astype(jnp.float32), None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    w32 = w.astype(jnp.float32).astype(jnp.float64)  # the point the measurement saw, in float64
    dense = np.linalg.eigvalsh(np.asarray(jax.hessian(lambda v: loss(v, None))(w32)))
    assert state.vectors.dtype == jnp.float64
    assert float(row["lambda_max"]) == pytest.approx(np.max(np.abs(dense)), rel=1e-9)


@pytest.mark.parametrize("name", ["rmsprop", "adam", "sam_adam", "sam_adam_pre"])
def test_preconditioned_sharpness_against_dense_eigh(name, x64):
    """lambda_max(P^-1/2 H P^-1/2) with P read from a live optax state, against dense eigh (float64);
    for SAM over Adam, the linearised step's top mode against the dense P^-1 (H + rho H^2/|g|)."""
    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(40, 40)))
    loss = lambda w, b: 0.5 * jnp.sum((a @ w) ** 2) / 40 + jnp.sum(jnp.cos(w))  # noqa: E731
    opt = optimizers.build(name, 0.01)
    w = jnp.asarray(rng.normal(size=40))
    st = opt.init(w)
    for _ in range(5):
        w, st, _ = opt.update(w, st, jax.value_and_grad(lambda q: loss(q, None)))
    m = measure.measurement(loss, opt, MeasureSettings(tol=1e-9))
    row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), st)
    g = jax.grad(lambda q: loss(q, None))(w)
    p = np.asarray(opt.preconditioner(st, g))
    h = np.asarray(jax.hessian(lambda q: loss(q, None))(w))
    s = np.diag(p ** -0.5)
    assert float(row["precond_sharpness"]) == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(s @ h @ s))), rel=1e-5)
    hp = optimizers.resolve_hparams(name)
    if name == "sam_adam":
        mu = np.max(np.linalg.eigvals(np.diag(1 / p) @ (h + hp["rho"] * h @ h / np.linalg.norm(g))).real)
        assert float(row["step_mu"]) == pytest.approx(mu, rel=1e-5)
        eta_eff = 0.01 * (1 - hp["beta1"]) / (1 + hp["beta1"])
        assert float(row["step_radius"]) == pytest.approx(abs(1 - eta_eff * mu), rel=1e-6)
        assert "edge" not in row
    else:
        assert float(row["ratio"]) == pytest.approx(float(row["precond_sharpness"]) / float(row["edge"]), rel=1e-12)
        assert float(row["precond_edge"]) == float(row["edge"])


def test_the_workspace_is_reused_in_place_and_an_old_state_still_works():
    """The state's Krylov workspace is donated: the next state's is the same memory (no fresh
    mapping per call). An old state passed again gets a fresh buffer and measures the same."""
    loss, d = swap_problem(11.0, 10.0)
    m = measure.measurement(loss, optimizers.build("gd", 0.1))
    w = {"w": jnp.ones(N)}
    s0 = m.init(w, jax.random.PRNGKey(0))
    assert s0.workspace.shape == (curvature.basis_rows(m.settings.max_hvps), N)
    pointer = s0.workspace.unsafe_buffer_pointer()
    row1, s1 = m.measure(w, None, s0, jax.random.PRNGKey(1))
    assert s1.workspace.unsafe_buffer_pointer() == pointer and s0.workspace.is_deleted()
    row2, s2 = m.measure(w, None, s1, jax.random.PRNGKey(2))
    again, _ = m.measure(w, None, s1, jax.random.PRNGKey(2))  # s1 again: its workspace went to s2
    assert float(again["lambda_max"]) == float(row2["lambda_max"]) == pytest.approx(11.0, rel=1e-5)
    assert int(again["hvps"]) == int(row2["hvps"])


def test_a_cross_check_restarts_the_count_to_the_next_one():
    """``count`` is the calls since the last cold run: a jump's cross-check sets it to 1, so the
    periodic one comes ``crosscheck_every`` calls after it, not on a fixed grid."""
    loss, d = swap_problem(11.0, 10.0)
    m = measure.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(crosscheck_every=3))
    w = {"w": jnp.ones(N)}
    jumped = topk_state(old_top_state().vectors, 2, 5.0)
    row, state = m.measure(w, None, jumped, jax.random.PRNGKey(0))  # 11 against 5: a jump, not yet due
    assert int(row["hvps_crosscheck"]) > 0 and int(state.carries["topk"].count) == 1
    taken = []
    for i in range(4):
        row, state = m.measure(w, None, state, jax.random.PRNGKey(i + 1))
        taken.append(int(row["hvps_crosscheck"]) > 0)
    assert taken == [False, False, True, False]  # counts 1, 2, then 3 = crosscheck_every
    assert int(state.carries["topk"].count) == 2
    rows = [{"hvps_crosscheck": 0}] * 3 + [{"hvps_crosscheck": 7}, {"hvps_crosscheck": 0}]
    assert measure.calls_since_cold(rows) == 2 and measure.calls_since_cold(rows[:1]) == 1


def _spectrum_loss(spectrum, seed=0):
    """A quadratic loss whose Hessian has ``spectrum`` in a random orthonormal basis (float64)."""
    n = len(spectrum)
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(n, n)))
    h = jnp.asarray((q * np.asarray(spectrum)) @ q.T)
    return lambda w, batch: 0.5 * w["w"] @ h @ w["w"]


def test_thick_restart_top_k_and_tracking_with_a_small_basis(x64):
    """top-3 and the tracked outliers in a basis of 8 and 16 rows (restarting) agree with the spectrum
    written down; the workspace keeps max_basis rows from call to call and the rows say how often
    the runs restarted."""
    spectrum = np.concatenate([[9.0, -8.5, 7.0, 6.0], np.linspace(-1.0, 2.0, 396)])
    loss = _spectrum_loss(spectrum)
    w = {"w": jnp.ones(400)}
    for max_basis, track in ((8, 0.0), (16, 0.5)):
        settings = MeasureSettings(topk=3, tol=1e-6, max_hvps=400, max_basis=max_basis, track_fraction=track,
                                   track_max=4, dtype="float64")
        m = measure.measurement(loss, optimizers.build("gd", 0.2), settings)  # edge 10: threshold 5 when tracking
        state = m.init(w, jax.random.PRNGKey(0))
        for call in range(2):  # a random start, then a warm one
            row, state = m.measure(w, None, state, jax.random.PRNGKey(call + 1))
            assert state.workspace.shape == (max_basis, 400)  # the basis never grows past max_basis rows
            np.testing.assert_allclose([float(row[f"lambda_{i}"]) for i in (1, 2, 3)], [9.0, -8.5, 7.0], rtol=1e-6)
            assert int(row["converged"]) == 1
        if track:
            assert int(row["n_outliers"]) == 3
            np.testing.assert_allclose([float(row[f"outlier_{i}"]) for i in (1, 2, 3)], [9.0, 7.0, 6.0], rtol=1e-6)
        else:
            assert "n_outliers" not in row
        assert int(row["restarts"]) >= (1 if max_basis == 8 else 0)


def test_thick_restart_settings_are_checked():
    with pytest.raises(Exception, match="max_basis must be 0"):
        MeasureSettings(topk=3, max_basis=7).validate()
    with pytest.raises(Exception, match="track_max"):
        MeasureSettings(max_basis=10, track_fraction=0.5, track_max=12).validate()
    m = measure.measurement(lambda w, b: jnp.sum(w ** 2), optimizers.build("gd", 0.1))  # unbounded: no column
    row, _ = m.measure(jnp.ones(20), None, m.init(jnp.ones(20), jax.random.PRNGKey(0)), jax.random.PRNGKey(1))
    assert "restarts" not in row


def test_thick_restart_memory_of_one_measurement_is_params_basis_and_a_few_vectors():
    """The compiled measurement of a 1.6 x 10^7-parameter MLP (shapes only: nothing is allocated) with a
    basis of 12 rows takes as arguments the parameters, the basis and the top vector, and needs at
    most 7 more n-vectors of scratch (the HVP's own, the Lanczos vector, the result): no hidden copy of
    the basis or of a block of its rows (at 10^8 parameters, one n-vector is 0.4 GB)."""
    from samedge.models.mlp import MLP

    model = MLP(width=2800, depth=4, num_outputs=10, activation="tanh")
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 784))))
    n = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    assert n > 1.5e7
    batch = (jax.ShapeDtypeStruct((64, 784), jnp.float32), jax.ShapeDtypeStruct((64, 10), jnp.float32))
    loss = lambda p, b: jnp.mean((model.apply(p, b[0]) - b[1]) ** 2)  # noqa: E731
    m = measure.measurement(loss, optimizers.build("gd", 0.1), MeasureSettings(max_basis=12))
    state = jax.eval_shape(m.init, params, jax.random.PRNGKey(0))
    assert state.workspace.shape == (12, n)
    memory = m.lower(params, batch, state, jax.random.PRNGKey(1)).compile().memory_analysis()
    vectors = lambda size: size / (4 * n)  # noqa: E731
    assert vectors(memory.argument_size_in_bytes) == pytest.approx(1 + 12 + 1, abs=0.05)
    assert vectors(memory.alias_size_in_bytes) == pytest.approx(12, abs=0.01)  # the basis is updated in place
    assert vectors(memory.temp_size_in_bytes) <= 7.0, vectors(memory.temp_size_in_bytes)


def test_lr_schedule_and_weight_decay_chained_adam_reads_its_moments(x64):
    """AdamW under a warmup schedule (decay and schedule chained around Adam's moments): the
    preconditioned sharpness uses Adam's own nu, found by type in the chained state (P computed here
    from optax's ScaleByAdamState directly), and the edge is AdamW's at eta_t."""
    import optax

    from samedge import edges, schedules

    rng = np.random.default_rng(1)
    a = jnp.asarray(rng.normal(size=(40, 40)))
    loss = lambda w, b: 0.5 * jnp.sum((a @ w) ** 2) / 40 + jnp.sum(jnp.cos(w))  # noqa: E731
    sched = schedules.make("cosine", 0.01, total_steps=20, warmup_steps=4)
    opt = optimizers.build("adam", sched, weight_decay=0.5, decay_mask="all")
    w = jnp.asarray(rng.normal(size=40))
    st = opt.init(w)
    for _ in range(6):
        w, st, _ = opt.update(w, st, jax.value_and_grad(lambda q: loss(q, None)))
    (adam,) = [s for s in jax.tree.leaves(st, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
               if isinstance(s, optax.ScaleByAdamState)]
    g = jax.grad(lambda q: loss(q, None))(w)
    nu = 0.999 * adam.nu + 0.001 * g ** 2
    p = np.sqrt(np.asarray(nu) / (1 - 0.999 ** (int(adam.count) + 1))) + 1e-8
    h = np.asarray(jax.hessian(lambda q: loss(q, None))(w))
    s = np.diag(p ** -0.5)
    m = measure.measurement(loss, opt, MeasureSettings(tol=1e-9))
    row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), st)
    assert float(row["precond_sharpness"]) == pytest.approx(np.max(np.abs(np.linalg.eigvalsh(s @ h @ s))), rel=1e-5)
    eta_t = float(sched(6))
    assert float(row["lr"]) == pytest.approx(eta_t, rel=1e-6)  # optax's schedule keeps float32 constants
    assert float(row["edge"]) == pytest.approx(edges.adam_edge(float(row["lr"]), 0.9, 0.5), rel=1e-6)
    assert float(row["edge"]) < edges.adam_edge(eta_t, 0.9)  # decoupled decay lowers the edge


@pytest.mark.parametrize("beta1", [0.0, 0.9])
def test_weight_decay_masked_adamw_reads_its_step_radius(beta1, x64):
    """AdamW with a mask has no closed-form edge: its step radius is |1 - eta_eff mu| with mu the top
    eigenvalue of P^-1/2 H P^-1/2 + wd (1 + beta1)/(1 - beta1) D, here against dense eigh (kernel decayed,
    bias not); at D = I the radius is 1 exactly where the closed form puts the edge."""
    from jax.flatten_util import ravel_pytree

    from samedge import edges

    rng = np.random.default_rng(2)
    a = jnp.asarray(rng.normal(size=(12, 12)))
    loss = lambda w, b: 0.5 * jnp.sum((a @ w["k"].ravel()) ** 2) / 12 + jnp.sum(jnp.cos(w["b"]))  # noqa: E731
    w = {"k": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=5))}
    wd, eta = 3.0, 0.01
    opt = optimizers.build("adam", eta, beta1=beta1, weight_decay=wd)  # the default mask: the kernel
    st = opt.init(w)
    for _ in range(4):
        w, st, _ = opt.update(w, st, jax.value_and_grad(lambda q: loss(q, None)))
    m = measure.measurement(loss, opt, MeasureSettings(tol=1e-10, max_hvps=100))
    row, _ = m.measure(w, None, m.init(w, jax.random.PRNGKey(0)), jax.random.PRNGKey(1), st)
    assert "edge" not in row  # no closed form under a mask
    g = jax.grad(lambda q: loss(q, None))(w)
    p = np.asarray(ravel_pytree(opt.preconditioner(st, g))[0])
    flat, unravel = ravel_pytree(w)
    h = np.asarray(jax.hessian(lambda x: loss(unravel(x), None))(flat))
    d = np.asarray(ravel_pytree({"b": jnp.zeros(5), "k": jnp.ones((3, 4))})[0])
    s = np.diag(p ** -0.5)
    eigs = np.linalg.eigvalsh(s @ h @ s + wd * (1 + beta1) / (1 - beta1) * np.diag(d))
    mu = eigs[np.argmax(np.abs(eigs))]  # the top mode by magnitude, as the step radius reads it
    assert float(row["step_mu"]) == pytest.approx(mu, rel=1e-8)
    eta_eff = eta * (1 - beta1) / (1 + beta1)
    assert float(row["step_radius"]) == pytest.approx(abs(1 - eta_eff * mu), rel=1e-8)
    # SAM over Adam has no closed form whatever the mask: its step radius carries the decay term too
    sam = optimizers.build("sam_adam", eta, beta1=beta1, weight_decay=wd, decay_mask="all")
    plain = optimizers.build("sam_adam", eta, beta1=beta1)
    hvp = lambda v: jnp.asarray(h) @ v  # noqa: E731
    mu_decay = _top(sam.linear_step(hvp, g, st)[0], flat.size)
    mu_plain = _top(plain.linear_step(hvp, g, st)[0], flat.size)
    assert mu_decay == pytest.approx(mu_plain + wd * (1 + beta1) / (1 - beta1), rel=1e-8)
    # D = I: the radius reaches 1 where AdamW's closed form puts the edge
    a_edge = edges.adam_edge(eta, beta1, wd)
    assert abs(1 - eta_eff * (a_edge + wd * (1 + beta1) / (1 - beta1))) == pytest.approx(1.0, rel=1e-12)


def _top(matvec, n):
    """The largest eigenvalue of a symmetric operator given as a matvec, by dense eigh."""
    m = np.stack([np.asarray(matvec(jnp.eye(n)[i])) for i in range(n)])
    return float(np.max(np.linalg.eigvalsh((m + m.T) / 2)))
