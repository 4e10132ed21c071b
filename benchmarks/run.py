"""samedge's speed, as ratios that hold across noisy machines, in one process.

    PYTHONPATH=src /work/venv/bin/python benchmarks/run.py

Prints a table and, as its last line, one JSON object:

- ``p1_sam_step_over_two_grads``: a SAM step's time inside the compiled training chunk over twice
  the time of one compiled gradient, as the median over 7 interleaved rounds (a 10-step chunk,
  then 10 gradients; a round's gradient time is their median), worst over the quick tasks that import
  (each of the paper's tasks, ``samedge.tasks.PAPER_TASKS``; a task whose module or data is missing is
  skipped; cifar10-resnet, whose step carries BatchNorm's state, is timed by ``resnet_conv.py`` and
  ``gpu_check.py``).
- ``p2_lanczos_time_over_power``, ``p2_lanczos_relerr``, ``p2_power_relerr``: at a trained
  quick-MNIST point (400 SAM steps: at the edge, top eigenvalues close), the time our Lanczos takes
  to reach relative error <= 1e-4 (stopping on its own residual rule: the loosest residual
  tolerance among 1e-3, 3e-4, 1e-4, 3e-5 that gets there) over the time the original method
  (power iteration on central finite-difference HVPs, step 1e-3, stopped at a 0.1% change; see
  ``baselines.py``) takes to stop, both from the same random start, as the median over 7
  interleaved rounds (one call of each); errors against a 100-step float64 Lanczos.
- ``p3_tracking_overhead``: the share of a whole quick-MNIST SAM run's wall time (default preset,
  default cadence, compiles included, empty compilation cache) spent in the curvature measurement;
  ``p3_tracking_overhead_warm_cache`` the same run again with its programs in the persistent
  compilation cache (``samedge.jit_cache``: every later run of the CLI reads them); also the steady
  share (without the first measurement), and the other quick tasks at their own default cadence.
  The figures are the run's own: each row's ``measure_s`` and the summary's ``measure_share``.
- ``measure_over_hvp_floor``: the steady measurement seconds of the P3 run's trajectory over the sum,
  per check point, of its HVPs (cross-checks included) times one HVP in a bare compiled loop timed
  right after that measurement at the same parameters, each side the best of 3 (the measurement
  repeated from the same state: the same HVPs) (:func:`floor_along_run`): 1 when the measurement is
  nothing but its HVPs. ``measure_over_hvp_floor_single``: the same with each measurement's one
  first call (the form before 7 Dec 2026). ``measure_over_hvp_floor_run``: the warm P3 run's own steady
  seconds over its HVPs times one HVP timed at the P2 point just before and after that run
  (``hvp_floor_s``), the figure's first form, whose two sides are timed a minute apart.
- ``time_over_lobpcg``, ``hvps_over_lobpcg``: along the same pinned run, samedge's measurement (top-1,
  tolerance 1e-3, warm-started, its guard's cross-checks counted) over LOBPCG warm-started from its
  own previous top eigenvector (central flows' method: ``jax.experimental.sparse.linalg.lobpcg_standard``
  at the tolerance that means a relative residual of 1e-3; its HVPs counted on every product), steady
  calls; with each one's worst relative error against a float64 truth at every point
  (:func:`lobpcg_along_run`). Goals (issue 28): <= 0.5 and <= 1.0.
- ``peak_rss_mb``: the process's peak resident memory (``resource.getrusage``).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

import baselines
import points
from samedge import curvature, jit_cache, tasks, train

P2_TARGET = 1e-4
P2_ROUNDS = 7
TOLERANCES = (1e-3, 3e-4, 1e-4, 3e-5)


def p1_task(name: str) -> dict:
    """SAM step (in a compiled chunk) over two gradients on the quick preset of ``name``, interleaved."""
    cfg, task = points.quick_task(name, optimizer="sam")
    optimizer = train.build_optimizer(cfg)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    state = optimizer.init(params)

    @jax.jit
    def gradient(params, data, step):
        return jax.value_and_grad(task.loss_fn)(params, task.batch_fn(data, step))

    length = 10
    chunk = train.make_chunk(task, optimizer, length)
    params, state, losses = chunk(params, state, task.data, jnp.asarray(0))  # compile
    jax.block_until_ready((losses, gradient(params, task.data, jnp.asarray(0))))  # compile
    # Interleaved rounds (a chunk of steps, then as many gradients): a slow spell of a shared
    # machine falls on both sides of a round's ratio instead of on one side of the whole figure.
    # Wall time is what counts; CPU time (all threads) is also kept: other jobs disturb it less.
    ratios, ratios_cpu, per_step, grads = [], [], [], []
    for i in range(1, 8):
        start, start_cpu = time.perf_counter(), time.process_time()
        params, state, losses = chunk(params, state, task.data, jnp.asarray(i * length))
        jax.block_until_ready(losses)
        step_s, step_cpu = (time.perf_counter() - start) / length, (time.process_time() - start_cpu) / length
        round_grads, round_cpu = [], []
        for j in range(length):
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(gradient(params, task.data, jnp.asarray(j)))
            round_grads.append(time.perf_counter() - start)
            round_cpu.append(time.process_time() - start_cpu)
        per_step.append(step_s)
        grads.append(statistics.median(round_grads))
        ratios.append(step_s / (2 * grads[-1]))
        ratios_cpu.append(step_cpu / (2 * statistics.median(round_cpu)))
    return {"task": name, "sam_step_s": statistics.median(per_step), "grad_s": statistics.median(grads),
            "ratio": statistics.median(ratios), "ratio_cpu": statistics.median(ratios_cpu),
            "ratio_range": (min(ratios), max(ratios))}


def p1() -> tuple[list[dict], dict[str, str]]:
    """P1 rows of the quick tasks, and the tasks skipped with why."""
    results, skipped = [], {}
    for name in tasks.PAPER_TASKS:
        try:
            tasks.task_module(name)
        except Exception as exc:  # a task still being built on another branch
            skipped[name] = f"{type(exc).__name__}: {exc}"
            continue
        try:
            results.append(p1_task(name))
        except Exception as exc:  # e.g. its data is not on this machine
            skipped[name] = f"{type(exc).__name__}: {exc}"
    return results, skipped


def p2() -> dict:
    cfg, task, params = points.trained_point()
    lam, truth_resid = points.truth(task, params)
    v0 = points.random_start(params)
    err = lambda eig: abs(abs(float(eig.values[0])) - lam) / lam

    @jax.jit
    def baseline(params, data, v0):
        return baselines.fd_power_iteration(lambda p: task.loss_fn(p, data), params, v0)

    base, base_s = points.timed(baseline, params, task.data, v0)
    out = {"truth": lam, "truth_resid": truth_resid, "power_s": base_s, "power_relerr": err(base),
           "power_fd_hvps": int(base.num_matvecs), "lanczos": []}
    for tol in TOLERANCES:
        @jax.jit
        def lanczos(params, data, v0, tol=tol):
            matvec, _ = curvature.flat_hvp(lambda p: task.loss_fn(p, data), params)
            return curvature.lanczos(matvec, v0, k=1, max_iters=cfg.lanczos_max_iters, tol=tol)

        eig, seconds = points.timed(lanczos, params, task.data, v0)
        out["lanczos"].append({"tol": tol, "s": seconds, "relerr": err(eig), "hvps": int(eig.num_matvecs)})
        if err(eig) <= P2_TARGET:
            break
    # The figure: the two timed in interleaved rounds (one call each), the median of the rounds'
    # ratios, so that a slow spell of a shared machine falls on both sides of a round's ratio.
    ratios = []
    for _ in range(P2_ROUNDS):
        t = time.perf_counter()
        jax.block_until_ready(baseline(params, task.data, v0))
        t_base = time.perf_counter() - t
        t = time.perf_counter()
        jax.block_until_ready(lanczos(params, task.data, v0))
        ratios.append((time.perf_counter() - t) / t_base)
    out["ratio"], out["ratio_range"] = statistics.median(ratios), (min(ratios), max(ratios))
    return out


def hvp_floor(loop, length: int, reps: int = 5) -> float:
    """Seconds of one exact HVP at the trained quick-MNIST point, the best of ``reps`` runs of ``loop``
    (:func:`points.hvp_loop` of ``length`` HVPs)."""
    cfg, task, params = points.trained_point()
    return points.hvp_seconds(loop, length, params, task.data, reps)


def p3(name: str = "mnist", **overrides) -> dict:
    """A whole quick SAM run of task ``name`` (the preset, or ``overrides`` of its settings); the run
    times its own measurements (``measure_s``)."""
    cfg, task = points.quick_task(name, optimizer="sam", **overrides)
    rows: list[dict] = []
    summary = train.train(cfg, task, progress=False, on_row=rows.append)
    seconds = [r["measure_s"] for r in rows]
    wall = summary["wall_time_s"]
    hvps = [int(r["hvps"]) + int(r.get("hvps_sam") or 0) + int(r.get("hvps_crosscheck") or 0) for r in rows]
    return {"task": name, "wall_s": wall, "measure_s": summary["measure_time_s"], "first_measure_s": seconds[0],
            "measurements": len(rows), "steps": cfg.steps,
            "overhead": summary["measure_share"],
            # without the first measurement (its compile and cold start), against the wall time less it
            "overhead_steady": sum(seconds[1:]) / (wall - seconds[0]),
            "hvps_median": statistics.median(hvps), "hvps_max": max(hvps),
            "steady_measure_s": sum(seconds[1:]), "steady_hvps": sum(hvps[1:]),
            "measure_every": cfg.measure_every, "measure_sam_point": cfg.measure_sam_point,
            "lanczos_tol": cfg.lanczos_tol, "ratio_median": summary.get("ratio_median"),
            "lambda_max": {r["step"]: r["lambda_max"] for r in rows}, "status": summary["status"]}


def floor_along_run(reps: int = 3) -> dict:
    """The measurement against its floor at every check point of the pinned quick-MNIST SAM run.

    Trains the P3 run's trajectory with its own measurement (:func:`points.measured_run`), each
    measurement timed ``reps`` times from the same incoming state (the same work, the same HVPs), and
    after it times a bare compiled loop of HVPs at the same parameters (:func:`points.hvp_seconds` of
    :func:`points.hvp_loop`, the best of ``reps``). Returns the steady (after the first) measurement
    seconds over the sum of each point's HVPs times its own floor, both sides the best of ``reps``
    (``ratio``), and the same with each measurement's first call alone (``ratio_single``, the figure's
    form until 7 Dec 2026: one call, which a stall of a shared machine lengthens, against the floor's
    best of ``reps``, which drops it). Each ratio's two sides are timed seconds apart at the same point.
    """
    cfg, task = points.quick_task("mnist", optimizer="sam")
    length = 16
    loop = points.hvp_loop(task, length)
    best, first, floors, hvps = [], [], [], []
    for seg, row, measure_s in points.measured_run(cfg, task, repeats=reps):
        best.append(min(measure_s))
        first.append(measure_s[0])
        hvps.append(int(row["hvps"]) + int(row.get("hvps_crosscheck") or 0))
        floors.append(points.hvp_seconds(loop, length, seg.params, task.data, reps))
    floor_s = sum(h * f for h, f in zip(hvps[1:], floors[1:]))
    return {"ratio": sum(best[1:]) / floor_s, "ratio_single": sum(first[1:]) / floor_s,
            "measure_s": sum(best[1:]), "measure_single_s": sum(first[1:]), "hvps": sum(hvps[1:]),
            "floor_ms": (1e3 * min(floors[1:]), 1e3 * max(floors[1:])),
            "per_point": [s / (h * f) for s, h, f in zip(best[1:], hvps[1:], floors[1:])]}


LOBPCG_RESID = 1e-3  # the relative residual both methods are asked for


def lobpcg_top(loss_fn, max_iters: int = 200):
    """A jitted ``(params, data, x0) -> (lambda, x (n,), iterations, hvps)``: the top eigenpair of the
    Hessian by ``jax.experimental.sparse.linalg.lobpcg_standard`` (central flows' method), from ``x0``.

    LOBPCG finds the largest *algebraic* eigenvalue (at these points also the largest in magnitude)
    and counts an eigenpair converged when ``||A v - lambda v|| < tol * 10 n (lambda + ||A v||)``;
    with ``||A v|| ~ lambda`` the relative residual is then ``< 20 n tol``, so ``tol = 1e-3 / (20 n)``
    asks for the relative residual of 1e-3 samedge stops at. Its HVPs are counted by a host callback
    on every product (the columns of each block; the zero block it applies once to check its input is
    left out): jax's implementation applies A to the 3 columns of [X, P, R] and again to the new X,
    4 HVPs an iteration for one eigenpair.
    """
    import numpy as np
    from jax.experimental.sparse.linalg import lobpcg_standard

    counter = [0]

    def count(block):
        if np.any(block):
            counter[0] += block.shape[1]

    @jax.jit
    def solve(params, data, x0):
        matvec, n = curvature.flat_hvp(lambda p: loss_fn(p, data), params)

        def block(x):  # (n, c) -> (n, c): one HVP a column
            jax.debug.callback(count, x)
            return jax.vmap(matvec, in_axes=1, out_axes=1)(x)

        theta, x, iters = lobpcg_standard(block, x0[:, None], m=max_iters, tol=LOBPCG_RESID / (20 * n))
        return theta[0], x[:, 0], iters

    def call(params, data, x0):
        counter[0] = 0
        theta, x, iters = jax.block_until_ready(solve(params, data, x0))
        return theta, x, iters, counter[0]

    return call


def lobpcg_along_run() -> dict:
    """samedge's measurement (top-1, tolerance 1e-3, its guard's cross-checks included) and LOBPCG
    warm-started from its own previous top eigenvector, at every check point of the pinned quick-MNIST
    SAM run, both against a float64 Lanczos truth at the point. Steady calls: all but the first (its
    compile and cold start)."""
    from samedge import measure, train as train_mod

    cfg, task = points.quick_task("mnist", optimizer="sam")
    optimizer = train_mod.build_optimizer(cfg)
    m = measure.measurement(task.loss_fn, optimizer, measure.MeasureSettings(tol=LOBPCG_RESID))
    lobpcg = lobpcg_top(task.loss_fn)
    state, x, rows = None, None, []
    for i, (seg, _, _) in enumerate(points.measured_run(cfg, task)):
        lam, _ = points.truth(task, seg.params)
        if state is None:
            state = m.init(seg.params, jax.random.PRNGKey(0))
            x = points.random_start(seg.params)
        start = time.perf_counter()
        row, state = m.measure(seg.params, task.data, state, jax.random.PRNGKey(i + 1), seg.opt_state)
        row = jax.device_get(row)
        ours_s = time.perf_counter() - start
        start = time.perf_counter()
        theta, x, iters, hvps = lobpcg(seg.params, task.data, x)
        lob_s = time.perf_counter() - start
        rows.append({"step": seg.step, "truth": lam, "ours_s": ours_s, "ours_hvps": int(row["hvps"]) + int(row["hvps_crosscheck"]),
                     "ours_relerr": abs(float(row["lambda_max"]) - lam) / lam, "lobpcg_s": lob_s, "lobpcg_hvps": hvps,
                     "lobpcg_iters": int(iters), "lobpcg_relerr": abs(float(theta) - lam) / lam})
    steady = rows[1:]
    return {"time_over_lobpcg": sum(r["ours_s"] for r in steady) / sum(r["lobpcg_s"] for r in steady),
            "hvps_over_lobpcg": sum(r["ours_hvps"] for r in steady) / sum(r["lobpcg_hvps"] for r in steady),
            "ours_worst_relerr": max(r["ours_relerr"] for r in rows),
            "lobpcg_worst_relerr": max(r["lobpcg_relerr"] for r in rows), "rows": rows}


def print_p3(r: dict, label: str) -> None:
    print(f"  {r['task']:<12} {label:<11} {r['steps']:>5} {r['measure_every']:>6} {r['wall_s']:>7.1f} "
          f"{r['measure_s']:>8.1f} {r['first_measure_s']:>6.2f} {r['hvps_median']:>5g} {r['overhead']:>9.3f} "
          f"{r['overhead_steady']:>7.3f}  {r['ratio_median']:.3f} {r['status']}")


def main() -> int:
    # A fresh persistent compilation cache, as a first run on a new machine has: P3 runs the quick
    # MNIST run twice, cold and then warm.
    cache = tempfile.mkdtemp(prefix="samedge-bench-jit-")
    jit_cache.enable(cache)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} x{jax.device_count()}; compilation cache {cache}")
    p1_rows, skipped = p1()
    print("\nP1  SAM step (in a compiled chunk) / 2 gradients, quick presets")
    print(f"{'task':<12} {'SAM step ms':>12} {'gradient ms':>12} {'ratio':>7} {'rounds':>13} {'ratio (CPU time)':>17}")
    for r in p1_rows:
        lo, hi = r["ratio_range"]
        print(f"{r['task']:<12} {1e3 * r['sam_step_s']:>12.2f} {1e3 * r['grad_s']:>12.2f} {r['ratio']:>7.3f} "
              f"{lo:>6.3f}-{hi:<6.3f} {r['ratio_cpu']:>17.3f}")
    for name, why in skipped.items():
        print(f"  skipped {name}: {why}")

    r2 = p2()
    print(f"\nP2  top eigenvalue at a trained quick-MNIST point; truth {r2['truth']:.7f} "
          f"(float64 Lanczos, residual {r2['truth_resid']:.1e})")
    print(f"{'method':<34} {'products':>9} {'time s':>8} {'rel. error':>11}")
    print(f"{'FD power iteration (baseline)':<34} {r2['power_fd_hvps']:>9} {r2['power_s']:>8.3f} "
          f"{r2['power_relerr']:>11.2e}")
    for r in r2["lanczos"]:
        print(f"{'Lanczos, residual tol ' + format(r['tol'], 'g'):<34} {r['hvps']:>9} {r['s']:>8.3f} {r['relerr']:>11.2e}")
    print("  (an FD product costs two gradients, an exact HVP about 1.7)")
    lo, hi = r2["ratio_range"]
    print(f"  Lanczos / power iteration over {P2_ROUNDS} interleaved rounds: median {r2['ratio']:.3f} "
          f"(rounds {lo:.3f}-{hi:.3f})")
    chosen = r2["lanczos"][-1]

    print("\nP3  share of a whole quick SAM run's wall time spent measuring, default preset and cadence")
    print("    (cold: the first run of these programs, compiles included; warm: the same run again, its")
    print("    compiled programs read from the persistent compilation cache, as any later run reads them)")
    print(f"  {'task':<12} {'cache':<11} {'steps':>5} {'every':>6} {'wall s':>7} {'measure':>8} {'first':>6} "
          f"{'HVPs':>5} {'overhead':>9} {'steady':>7}  ratio status")
    r3 = p3("mnist")
    print_p3(r3, "cold")
    length = 20
    loop = points.hvp_loop(points.trained_point()[1], length)
    floor_before = hvp_floor(loop, length)  # the floor on both sides of the warm run: a slow spell of a
    r3w = p3("mnist")                       # shared machine then falls on both sides of the ratio
    floor_after = hvp_floor(loop, length)
    print_p3(r3w, "warm")
    others = []
    for name in tasks.PAPER_TASKS:
        if name == "mnist" or name in skipped:
            continue
        others.append(p3(name))
        print_p3(others[-1], "cold")
    print(f"  (MNIST: Lanczos tol {r3['lanczos_tol']:g}, SAM-point measurement "
          f"{'on' if r3['measure_sam_point'] else 'off'}; HVPs per measurement median {r3['hvps_median']:g}, "
          f"max {r3['hvps_max']})")

    floor = (floor_before + floor_after) / 2
    over_floor_run = r3w["steady_measure_s"] / (r3w["steady_hvps"] * floor)
    print(f"\nThe measurement against its floor: one HVP in a bare compiled loop {1e3 * floor_before:.2f} ms before "
          f"and {1e3 * floor_after:.2f} ms after the warm run; its steady measurements {r3w['steady_measure_s']:.2f} s "
          f"for {r3w['steady_hvps']} HVPs: {over_floor_run:.3f} x the mean floor")
    along = floor_along_run()
    print(f"The same trajectory, each measurement followed by the floor at its own point "
          f"({along['floor_ms'][0]:.2f}-{along['floor_ms'][1]:.2f} ms an HVP), both the best of 3: "
          f"{along['measure_s']:.2f} s for {along['hvps']} HVPs, {along['ratio']:.3f} x their floors (per point "
          f"{min(along['per_point']):.3f}-{max(along['per_point']):.3f}); each measurement's first call alone "
          f"{along['measure_single_s']:.2f} s, {along['ratio_single']:.3f} x")
    lob = lobpcg_along_run()
    print(f"\nThe peer's method: LOBPCG (jax.experimental.sparse.linalg.lobpcg_standard) warm-started from its "
          f"previous top eigenvector along the same run, against samedge's measurement, both at relative residual "
          f"{LOBPCG_RESID:g}")
    print(f"  {'step':>5} {'truth':>10} {'ours s':>7} {'HVPs':>5} {'rel. err':>9} {'LOBPCG s':>9} {'HVPs':>5} "
          f"{'iters':>5} {'rel. err':>9}")
    for r in lob["rows"]:
        print(f"  {r['step']:>5} {r['truth']:>10.5f} {r['ours_s']:>7.3f} {r['ours_hvps']:>5} {r['ours_relerr']:>9.1e} "
              f"{r['lobpcg_s']:>9.3f} {r['lobpcg_hvps']:>5} {r['lobpcg_iters']:>5} {r['lobpcg_relerr']:>9.1e}")
    print(f"  steady calls: time {lob['time_over_lobpcg']:.3f} x LOBPCG's, HVPs {lob['hvps_over_lobpcg']:.3f} x; worst "
          f"relative errors: ours {lob['ours_worst_relerr']:.1e}, LOBPCG {lob['lobpcg_worst_relerr']:.1e}")
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak memory (max RSS) {peak_mb:.0f} MB")
    result = {
        "p1_sam_step_over_two_grads": max(r["ratio"] for r in p1_rows) if p1_rows else None,
        "p1_tasks": {r["task"]: round(r["ratio"], 4) for r in p1_rows},
        "p1_cpu_time": max(r["ratio_cpu"] for r in p1_rows) if p1_rows else None,
        "p2_lanczos_time_over_power": r2["ratio"],
        "p2_lanczos_relerr": chosen["relerr"],
        "p2_lanczos_tol": chosen["tol"],
        "p2_power_relerr": r2["power_relerr"],
        "p3_tracking_overhead": r3["overhead"],
        "p3_tracking_overhead_warm_cache": r3w["overhead"],
        "p3_tracking_overhead_steady": r3["overhead_steady"],
        "hvp_floor_s": floor, "hvp_floor_before_after_s": [floor_before, floor_after],
        "measure_over_hvp_floor": along["ratio"], "measure_over_hvp_floor_single": along["ratio_single"],
        "measure_over_hvp_floor_run": over_floor_run,
        "p3_hvps_per_measurement_median": r3["hvps_median"],
        "p3_other_tasks": {r["task"]: {"overhead": round(r["overhead"], 4), "measure_every": r["measure_every"],
                                       "steps": r["steps"]} for r in others},
        "time_over_lobpcg": lob["time_over_lobpcg"], "hvps_over_lobpcg": lob["hvps_over_lobpcg"],
        "ours_worst_relerr_vs_lobpcg_run": lob["ours_worst_relerr"], "lobpcg_worst_relerr": lob["lobpcg_worst_relerr"],
        "peak_rss_mb": round(peak_mb, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
