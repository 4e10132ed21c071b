"""Curvature against dense truth: HVPs equal H @ v, Lanczos equals eigh, residuals are honest."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from samedge import curvature
from samedge.models.mlp import MLP


def small_model_loss(seed=0, width=12, n=24, dtype=None):
    """A 3-layer ReLU MLP with square loss on random data: 10*12 + 12*12 + 12*3 + 27 = 327 parameters.

    Data and parameters come from NumPy in float64 and are cast to ``dtype`` (default: float64 under
    x64, else float32), so the same problem exists at both precisions.
    """
    dtype = dtype or (jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, 10)), dtype)
    y = jnp.asarray(np.eye(3)[rng.integers(0, 3, n)], dtype)
    model = MLP(width=width, depth=3, num_outputs=3)
    shapes = model.init(jax.random.PRNGKey(seed), x[:1])
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) / np.sqrt(p.shape[0]), dtype), shapes)
    return (lambda p: jnp.mean((model.apply(p, x) - y) ** 2)), params


def sorted_by_magnitude(values):
    return values[np.argsort(-np.abs(values))]


@pytest.mark.parametrize("seed", [0, 1])
def test_hvp_equals_dense_hessian_times_v(x64, seed):
    loss, params = small_model_loss(seed)
    matvec, n = curvature.flat_hvp(loss, params)
    assert 250 <= n <= 400
    h = curvature.dense_hessian(loss, params)
    v = jax.random.normal(jax.random.PRNGKey(seed + 7), (n,))
    np.testing.assert_allclose(matvec(v), h @ v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed,reorth", [(0, "partial"), (1, "partial"), (2, "partial"), (0, "full")])
def test_lanczos_top3_matches_dense_eigh(x64, seed, reorth):
    loss, params = small_model_loss(seed)
    matvec, n = curvature.flat_hvp(loss, params)
    truth = sorted_by_magnitude(np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(loss, params))))
    v0 = jax.random.normal(jax.random.PRNGKey(seed), (n,))
    eig = jax.jit(lambda v: curvature.lanczos(matvec, v, k=3, max_iters=120, tol=1e-8, reorth=reorth))(v0)
    np.testing.assert_allclose(np.asarray(eig.values), truth[:3], rtol=1e-5)
    assert int(eig.num_matvecs) < 120  # it stopped on the residual, not on the budget
    # The residuals it reports are the true ones, ||H v - lam v|| / |lam|.
    h = np.asarray(curvature.dense_hessian(loss, params))
    for lam, vec, res in zip(np.asarray(eig.values), np.asarray(eig.vectors), np.asarray(eig.residuals)):
        true_res = np.linalg.norm(h @ vec - lam * vec) / abs(lam)
        assert float(res) == pytest.approx(true_res, rel=1e-3, abs=1e-10)
        assert true_res <= 1e-8 * 1.01


def test_lanczos_on_a_chosen_spectrum_both_orderings(x64):
    n = 200
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(3), (n, n)))
    spectrum = jnp.concatenate([jnp.array([5.0, 4.0, -4.5]), jnp.linspace(-1.0, 1.0, n - 3)])
    a = (q * spectrum) @ q.T
    v0 = jax.random.normal(jax.random.PRNGKey(4), (n,))
    lm = curvature.lanczos(lambda v: a @ v, v0, k=3, max_iters=100, tol=1e-10)
    np.testing.assert_allclose(lm.values, [5.0, -4.5, 4.0], rtol=1e-9)
    la = curvature.lanczos(lambda v: a @ v, v0, k=2, max_iters=100, tol=1e-10, which="LA")
    np.testing.assert_allclose(la.values, [5.0, 4.0], rtol=1e-9)


@pytest.mark.parametrize("fill", [0.0, np.nan, 1e30])
def test_lanczos_in_a_reused_workspace_ignores_its_contents(x64, fill):
    """A workspace holding anything (NaN, huge values, an earlier run's basis) gives the same run as
    a fresh basis: no row is read before it is written or cleared. Dense eigh is the truth."""
    loss, params = small_model_loss(0)
    matvec, n = curvature.flat_hvp(loss, params)
    truth = sorted_by_magnitude(np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(loss, params))))
    v0 = jax.random.normal(jax.random.PRNGKey(5), (n,))
    run = jax.jit(lambda v, ws: curvature.lanczos(matvec, v, k=2, max_iters=40, tol=1e-8, workspace=ws),
                  donate_argnums=1)
    fresh = curvature.lanczos(matvec, v0, k=2, max_iters=40, tol=1e-8)
    assert fresh.workspace is None
    ws = jnp.full((curvature.basis_rows(40) + 8, n), fill)  # more rows than needed are fine
    for _ in range(2):  # the second run starts from the first one's basis
        eig = run(v0, ws)
        ws = eig.workspace
        np.testing.assert_allclose(np.asarray(eig.values), truth[:2], rtol=1e-6)
        np.testing.assert_allclose(np.asarray(eig.values), np.asarray(fresh.values), rtol=1e-12)
        assert int(eig.num_matvecs) == int(fresh.num_matvecs)
        assert np.all(np.isfinite(np.asarray(eig.vectors)))
    with pytest.raises(ValueError, match="workspace"):
        curvature.lanczos(matvec, v0, max_iters=40, workspace=jnp.zeros((curvature.basis_rows(40) - 8, n)))


def test_lanczos_tolerance_as_a_function_of_the_ritz_value(x64):
    """A tolerance loose below a bound and tight above it: the run with the bound above the top
    eigenvalue stops as early as the loose tolerance alone, the one with the bound below it runs as
    long as the tight tolerance alone (and reaches its accuracy)."""
    n = 200
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(3), (n, n)))
    spectrum = jnp.concatenate([jnp.array([5.0, 4.9, 4.8]), jnp.linspace(-1.0, 1.0, n - 3)])
    a = (q * spectrum) @ q.T
    v0 = jax.random.normal(jax.random.PRNGKey(4), (n,))
    run = lambda tol: curvature.lanczos(lambda v: a @ v, v0, k=1, max_iters=100, tol=tol)  # noqa: E731
    loose, tight = run(1e-2), run(1e-8)
    assert int(loose.num_matvecs) < int(tight.num_matvecs)
    switch = lambda bound: lambda theta: jnp.where(jnp.abs(theta) > bound, 1e-8, 1e-2)  # noqa: E731
    assert int(run(switch(6.0)).num_matvecs) == int(loose.num_matvecs)
    above = run(switch(4.0))
    assert int(above.num_matvecs) == int(tight.num_matvecs)
    assert float(above.values[0]) == pytest.approx(5.0, rel=1e-12)


def test_warm_start_needs_fewer_matvecs(x64):
    loss, params = small_model_loss(0)
    matvec, n = curvature.flat_hvp(loss, params)
    cold = curvature.lanczos(matvec, jax.random.normal(jax.random.PRNGKey(0), (n,)), k=1, max_iters=100, tol=1e-6)
    nudge = 1e-3 * jax.random.normal(jax.random.PRNGKey(1), (n,))
    warm = curvature.lanczos(matvec, cold.vectors[0] + nudge, k=1, max_iters=100, tol=1e-6)
    assert int(warm.num_matvecs) < int(cold.num_matvecs)
    assert float(warm.values[0]) == pytest.approx(float(cold.values[0]), rel=1e-8)


def test_lanczos_agrees_with_matfree(x64):
    from matfree import decomp

    n = 300
    rng = np.random.default_rng(5)
    m = rng.normal(size=(n, n))
    a = jnp.asarray((m + m.T) / 2)  # a hard spectrum: no outlier
    v0 = jnp.asarray(rng.normal(size=n))
    ours = curvature.lanczos(lambda v: a @ v, v0, k=1, max_iters=60, tol=0.0)  # tol 0: spend all 60
    assert int(ours.num_matvecs) == 60
    result = decomp.tridiag_sym(60, reortho="full")(lambda v: a @ v, v0 / jnp.linalg.norm(v0))
    t = result.J if hasattr(result, "J") else result[1]
    theirs = np.linalg.eigvalsh(np.asarray(t))
    np.testing.assert_allclose(abs(float(ours.values[0])), np.max(np.abs(theirs)), rtol=1e-9)


def test_power_iteration_finds_the_top_eigenvalue(x64):
    n = 100
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(6), (n, n)))
    a = (q * jnp.concatenate([jnp.array([3.0]), jnp.linspace(0.0, 1.5, n - 1)])) @ q.T
    eig = curvature.power_iteration(lambda v: a @ v, jnp.ones(n), max_iters=500, tol=1e-12)
    assert float(eig.values[0]) == pytest.approx(3.0, rel=1e-9)
    assert float(eig.residuals[0]) < 1e-5


def test_power_iteration_stops_early_on_close_eigenvalues(x64):
    # The original method's flaw: a small change between estimates is not convergence.
    n = 100
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(7), (n, n)))
    a = (q * jnp.concatenate([jnp.array([1.0, 0.97]), jnp.linspace(0.0, 0.9, n - 2)])) @ q.T
    v0 = jax.random.normal(jax.random.PRNGKey(8), (n,))
    power = curvature.power_iteration(lambda v: a @ v, v0, max_iters=1000, tol=1e-3)
    lanczos = curvature.lanczos(lambda v: a @ v, v0, k=1, max_iters=100, tol=1e-6)
    assert abs(float(lanczos.values[0]) - 1.0) < 1e-9
    assert abs(float(power.values[0]) - 1.0) > 10 * abs(float(lanczos.values[0]) - 1.0)


def test_alignment():
    g = jnp.array([3.0, 4.0, 0.0])
    assert float(curvature.alignment(g, jnp.array([0.0, 2.0, 0.0]))) == pytest.approx(0.8)
    assert float(curvature.alignment(g, jnp.array([0.0, -1.0, 0.0]))) == pytest.approx(0.8)
    assert float(curvature.alignment(jnp.zeros(3), g)) == 0.0


def test_lanczos_float32_on_a_model_is_accurate():
    loss, params = small_model_loss(2)
    matvec, n = curvature.flat_hvp(loss, params)
    with jax.enable_x64(True):
        loss64, params64 = small_model_loss(2, dtype=jnp.float64)
        truth = sorted_by_magnitude(np.linalg.eigvalsh(np.asarray(curvature.dense_hessian(loss64, params64))))[0]
    eig = curvature.lanczos(matvec, jnp.ones(n, jnp.float32), k=1, max_iters=64, tol=1e-3)
    # A relative residual r bounds the eigenvalue error by about r^2 / gap; 1e-4 is ample here.
    assert float(eig.values[0]) == pytest.approx(truth, rel=1e-4)


# --- Partial reorthogonalisation -------------------------------------------------------------------


def _outliers_and_bulk(n=3000, seed=0):
    """A float32 diagonal operator whose top eigenvalues (100, 95, 90, 50) stand far above a bulk in
    [-1, 10]: they converge within a few steps, and from then on plain Lanczos loses orthogonality
    to them (Paige) and finds them again as ghost copies."""
    rng = np.random.default_rng(seed)
    d = jnp.asarray(np.concatenate([[100.0, 95.0, 90.0, 50.0], rng.uniform(-1.0, 10.0, n - 4)]), jnp.float32)
    return (lambda v: d * v), n


def _run_to(matvec, n, steps, **kw):
    """A Lanczos run of exactly ``steps`` matvecs (the tolerance can't stop it) and its basis's
    departure from orthonormality, ``max |Q^T Q - I|`` over the rows built."""
    run = jax.jit(lambda v0: curvature.lanczos(matvec, v0, k=6, max_iters=steps, min_iters=steps, tol=0.0,
                                               workspace=curvature.krylov_workspace(n, steps), **kw))
    eig = run(jnp.ones(n, jnp.float32))
    q = np.asarray(eig.workspace[: int(eig.num_matvecs) + 1], np.float64)
    return eig, np.abs(q @ q.T - np.eye(q.shape[0])).max()


def test_partial_reorth_keeps_the_basis_semi_orthogonal(monkeypatch):
    """Simon's estimate calls a Gram-Schmidt pass on some steps, not all, and those keep every
    ``|q_i . q_k|`` within ``sqrt(eps)``: the top eigenvalues come out once each, as with full
    reorthogonalisation. Without any pass the same run loses orthogonality and repeats 100."""
    matvec, n = _outliers_and_bulk()
    steps = 80
    eps = float(jnp.finfo(jnp.float32).eps)
    partial, departure = _run_to(matvec, n, steps)
    full, departure_full = _run_to(matvec, n, steps, reorth="full")
    assert 0 < int(partial.reorths) < steps and int(full.reorths) == steps
    assert departure <= np.sqrt(eps) and departure_full <= 100 * eps
    top = [100.0, 95.0, 90.0, 50.0]
    np.testing.assert_allclose(np.asarray(partial.values[:4]), top, rtol=2e-6)
    np.testing.assert_allclose(np.asarray(full.values[:4]), top, rtol=2e-6)
    # the same run with the passes switched off: ghosts
    monkeypatch.setattr(curvature, "_orthogonalise", lambda w, basis, last: w)
    plain, departure_plain = _run_to(matvec, n, steps)
    assert departure_plain > 0.1
    assert np.sum(np.abs(np.asarray(plain.values) - 100.0) < 1e-3) >= 2


def test_partial_reorth_through_thick_restarts():
    """In a bounded basis of 16 rows the estimate is carried through 5 restarts: fewer passes than
    matvecs, the basis semi-orthogonal at the end (run to fill it exactly: 15 steps, then 8 a cycle)
    and the top eigenvalues each once."""
    matvec, n = _outliers_and_bulk()
    steps = 15 + 8 * 5
    eps = float(jnp.finfo(jnp.float32).eps)
    run = jax.jit(lambda v0: curvature.lanczos(matvec, v0, k=3, max_iters=steps, min_iters=steps, tol=0.0,
                                               max_basis=16, workspace=curvature.krylov_workspace(n, steps, max_basis=16)))
    eig = run(jnp.ones(n, jnp.float32))
    assert int(eig.restarts) == 5 and int(eig.num_matvecs) == steps
    assert 0 < int(eig.reorths) < steps
    q = np.asarray(eig.workspace, np.float64)
    assert np.abs(q @ q.T - np.eye(16)).max() <= np.sqrt(eps)
    np.testing.assert_allclose(np.asarray(eig.values), [100.0, 95.0, 90.0], rtol=2e-6)


def test_partial_reorth_on_a_clustered_spectrum(x64):
    """Eigenvalues 1, 1 - 1e-6, 1 - 2e-6 above a bulk: partial reorthogonalisation resolves the
    cluster to 1e-10 (float64), like dense eigh, using fewer passes than matvecs."""
    n = 300
    spectrum = np.concatenate([[1.0, 1.0 - 1e-6, 1.0 - 2e-6], np.linspace(-0.5, 0.5, n - 3)])
    matvec = _spectrum_operator(spectrum, seed=5)
    v0 = jax.random.normal(jax.random.PRNGKey(1), (n,))
    eig = curvature.lanczos(matvec, v0, k=3, max_iters=200, tol=1e-12)
    np.testing.assert_allclose(np.asarray(eig.values), spectrum[:3], rtol=0, atol=1e-10)
    assert int(eig.reorths) < int(eig.num_matvecs)


# --- A bounded basis: thick restart ---------------------------------------------------------------


def _spectrum_operator(spectrum, seed=3):
    """A dense symmetric matrix with the given eigenvalues, in a random orthonormal basis."""
    n = len(spectrum)
    q, _ = jnp.linalg.qr(jax.random.normal(jax.random.PRNGKey(seed), (n, n)))
    a = (q * jnp.asarray(spectrum)) @ q.T
    return lambda v: a @ v


@pytest.mark.parametrize("seed", [0, 1])
def test_thick_restart_matches_dense_eigh(x64, seed):
    """A basis of 10 rows (k = 3) restarts several times and still reaches dense eigh's top-3 to
    1e-10, with honest residuals, in a workspace of exactly 10 rows that holds NaN to begin with."""
    loss, params = small_model_loss(seed)
    matvec, n = curvature.flat_hvp(loss, params)
    h = np.asarray(curvature.dense_hessian(loss, params))
    truth = sorted_by_magnitude(np.linalg.eigvalsh(h))
    v0 = jax.random.normal(jax.random.PRNGKey(seed), (n,))
    ws = jnp.full((10, n), jnp.nan)
    run = jax.jit(lambda v, ws: curvature.lanczos(matvec, v, k=3, max_iters=600, tol=1e-11, max_basis=10,
                                                  workspace=ws))
    eig = run(v0, ws)
    assert int(eig.restarts) >= 2 and int(eig.num_matvecs) < 600
    assert eig.workspace.shape == (10, n)  # the basis never grew past max_basis rows
    np.testing.assert_allclose(np.asarray(eig.values), truth[:3], rtol=1e-10)
    for lam, vec, res in zip(np.asarray(eig.values), np.asarray(eig.vectors), np.asarray(eig.residuals)):
        true_res = np.linalg.norm(h @ vec - lam * vec) / abs(lam)
        assert true_res <= 1e-10 and float(res) == pytest.approx(true_res, rel=1e-2, abs=1e-13)
    np.testing.assert_allclose(np.asarray(eig.vectors @ eig.vectors.T), np.eye(3), atol=1e-9)
    with pytest.raises(ValueError, match="workspace"):  # a workspace smaller than max_basis is refused
        curvature.lanczos(matvec, v0, k=3, max_iters=600, max_basis=10, workspace=jnp.zeros((9, n)))


def test_thick_restart_on_a_clustered_spectrum(x64):
    """Three eigenvalues 1e-3 apart above a bulk: a basis of 12 rows separates them to 1e-9, and agrees
    with the unbounded run, which needs more rows than that."""
    spectrum = np.concatenate([[5.0, 4.995, 4.99], np.linspace(-1.0, 1.0, 297)])
    matvec = _spectrum_operator(spectrum)
    v0 = jax.random.normal(jax.random.PRNGKey(4), (300,))
    bounded = curvature.lanczos(matvec, v0, k=3, max_iters=800, tol=1e-10, max_basis=12)
    unbounded = curvature.lanczos(matvec, v0, k=3, max_iters=300, tol=1e-10)
    assert int(unbounded.num_matvecs) > 12 and int(bounded.restarts) >= 1
    np.testing.assert_allclose(np.asarray(bounded.values), [5.0, 4.995, 4.99], rtol=1e-9)
    np.testing.assert_allclose(np.asarray(unbounded.values), [5.0, 4.995, 4.99], rtol=1e-9)


def test_thick_restart_on_a_degenerate_spectrum(x64):
    """A triple top eigenvalue: one start vector sees a single direction of its eigenspace (so the
    next pair is the next distinct eigenvalue), bounded or not; the restart keeps the basis orthonormal
    and the eigenvectors of -6 and 5 come out right."""
    spectrum = np.concatenate([[5.0, 5.0, 5.0, -6.0], np.linspace(-1.0, 1.0, 196)])
    matvec = _spectrum_operator(spectrum, seed=5)
    v0 = jax.random.normal(jax.random.PRNGKey(6), (200,))
    bounded = curvature.lanczos(matvec, v0, k=2, max_iters=400, tol=1e-10, max_basis=8)
    unbounded = curvature.lanczos(matvec, v0, k=2, max_iters=200, tol=1e-10)
    assert int(bounded.restarts) >= 1
    np.testing.assert_allclose(np.asarray(bounded.values), [-6.0, 5.0], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(bounded.values), np.asarray(unbounded.values), rtol=1e-10)
    for lam, vec in zip(np.asarray(bounded.values), np.asarray(bounded.vectors)):
        assert np.linalg.norm(np.asarray(matvec(jnp.asarray(vec))) - lam * vec) <= 1e-9 * abs(lam)


def test_thick_restart_without_a_restart_is_the_unbounded_run(x64):
    """A bounded basis that the run never fills changes nothing: the same numbers, bit for bit."""
    loss, params = small_model_loss(0)
    matvec, n = curvature.flat_hvp(loss, params)
    v0 = jax.random.normal(jax.random.PRNGKey(9), (n,))
    unbounded = curvature.lanczos(matvec, v0, k=1, max_iters=64, tol=1e-3)
    bounded = curvature.lanczos(matvec, v0, k=1, max_iters=64, tol=1e-3, max_basis=int(unbounded.num_matvecs) + 2)
    assert int(bounded.restarts) == 0 and int(bounded.num_matvecs) == int(unbounded.num_matvecs)
    assert np.array_equal(np.asarray(bounded.values), np.asarray(unbounded.values))
    assert np.array_equal(np.asarray(bounded.vectors), np.asarray(unbounded.vectors))


def test_thick_restart_largest_algebraic_and_the_outliers(x64):
    """``which="LA"`` and :func:`lanczos_above` in a bounded basis find what dense truth says: the two
    largest values above a larger negative one, and every eigenvalue above a threshold."""
    spectrum = np.concatenate([[9.0, -8.5, 7.0, 6.0, 5.5], np.linspace(-1.0, 2.0, 395)])
    matvec = _spectrum_operator(spectrum, seed=7)
    v0 = jax.random.normal(jax.random.PRNGKey(8), (400,))
    la = curvature.lanczos(matvec, v0, k=2, which="LA", max_iters=400, tol=1e-10, max_basis=8)
    np.testing.assert_allclose(np.asarray(la.values), [9.0, 7.0], rtol=1e-10)
    assert int(la.restarts) >= 1
    out = curvature.lanczos_above(matvec, v0, 5.0, k_max=6, max_iters=400, tol=1e-8, max_basis=12)
    assert int(out.count) == 4 and int(out.restarts) >= 1
    np.testing.assert_allclose(np.asarray(out.values[:4]), [9.0, 7.0, 6.0, 5.5], rtol=1e-8)
    with pytest.raises(ValueError, match="too small"):
        curvature.lanczos_above(matvec, v0, 5.0, k_max=6, max_iters=400, max_basis=9)
