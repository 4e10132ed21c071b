"""The accelerator check: paper-size MNIST and tiny_shakespeare timed on one GPU, in one command.

    python benchmarks/gpu_check.py --data-dir /path/to/data          # the GPU check, < 5 minutes
    python benchmarks/gpu_check.py --tiny --data-dir /path/to/data   # tiny sizes on CPU, seconds (CI)

Runs from a copy of the repository (``src/`` is put on the path; no install needed) with whatever
JAX is installed, offline: the data files must be in ``--data-dir`` (``mnist/``,
``tinyshakespeare/``; default ``$SAMEDGE_DATA_DIR``). Progress goes to stderr; stdout gets ONE
JSON line:

- ``device``, ``devices``, ``jax``, ``jaxlib``, ``cuda`` (the backend's platform version and the
  CUDA library versions JAX reports; ``null`` off CUDA), ``tiny``;
- MNIST, the paper preset (3 x 1000 ReLU MLP, all 60,000 images, full batch), SAM lr 0.1 rho 0.1:
  ``mnist_sam_step_ms`` (median over 10-step compiled chunks of the training loop,
  ``samedge.train.trajectory``), ``mnist_chunk_compile_s``, ``mnist_hvp_ms`` (one exact
  Hessian-vector product on the full batch), ``mnist_measure_s`` (the run's measurement, paper
  settings, ascent point included; median of the calls after the first) with
  ``mnist_measure_hvps`` and ``mnist_measure_compile_s``;
- precision: ``mnist_lanczos`` holds |lambda_1| (with its HVPs, residual and seconds) by the same
  Lanczos run (same start, tolerance 1e-5) with the matrix products at JAX's default precision
  (TF32 on recent NVIDIA GPUs) and at full float32 (``jax.default_matmul_precision("highest")``);
  ``highest_vs_default_rel`` is their relative difference, ``mnist_lanczos_default_s`` and
  ``mnist_lanczos_highest_s`` their times (the run's measurement is scoped to "highest" by
  :mod:`samedge.measure`; the training steps keep the default);
- ``run_steps`` steps of the MNIST paper preset, measured every ``measure_every`` (100): the rows
  (``run_rows``: step, loss, lambda_max, edge, ratio) and the last one's ``run_ratio`` =
  lambda_max / SAM-edge, ``run_lambda_max``, ``run_edge``;
- tiny_shakespeare, the paper preset (6 layers, d = 128, 8 heads, sequence 64, batch 128):
  ``shakespeare_sam_step_ms`` and ``shakespeare_measure_s`` (``null`` with ``--tiny``, or when the
  time budget ran out: then the projection leaves shakespeare's measurements out);
- cifar10-resnet's paper preset (ResNet-18, 11.2M parameters, BatchNorm, SAM with momentum, weight
  decay, cosine, crop and flip) on the 10,000-image copy: ``resnet_sam_step_ms``, ``resnet_measure_s``
  (the step's minibatch and the 5,000-image measurement set in chunks of 250; ``null`` with
  ``--tiny`` or past the time budget), ``resnet_epoch_s`` (391 steps + one measurement: an epoch of
  the full set) and ``resnet_paper_hours`` (200 epochs); ``resnet_error`` if it failed;
- ``scale``: large models (issue 28; :func:`scale.point`, a bounded basis of 16 rows): the 4-layer
  tanh MLP on 64 MNIST images at 10^7 and 10^8 parameters (``--tiny``: 10^5), one measurement each
  from a random start then warm, with HVPs, restarts, residual, seconds per HVP and a bare HVP's, and
  the device's peak memory so far (``peak_memory_mb`` after the point); skipped past the time budget;
- ``peak_memory_mb``: the largest ``peak_bytes_in_use`` of the devices' ``memory_stats()``, or,
  where a device has none (CPU), the process's peak RSS (``peak_memory_source`` says which);
- ``projected_hours``: each paper grid (``PRESETS["paper"]``: step sizes x rho values, one seed)
  as points x (steps x step time + measurements x measurement time), one device, runs one after
  another; ``projection`` holds the factors;
- ``total_s``: this check's wall time.

``--tiny`` (CI): MNIST 512 images and a 3 x 64 MLP, a 1-layer d = 16 Transformer, 40 steps
measured every 20, no measurement at the ascent point and none of shakespeare's (their CPU
compiles would be most of the run); the same code paths otherwise. ``--devices N`` splits each
batch over N devices (:mod:`samedge.sharding`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

TINY_MNIST = dict(n_train=512, n_test=256, width=64, depth=3)
TINY_SHAKESPEARE = dict(seq_len=8, batch_size=16, d_model=16, n_layers=1, n_heads=2, key_size=8, mlp_ratio=1,
                        eval_windows=64)
# --tiny also leaves out the measurement at SAM's ascent point (the paper preset's default): it
# doubles the measurement's compile, which is most of a CPU smoke run.
TINY_RUN = dict(measure_sam_point=False)
LR, RHO = 0.1, 0.1
CHUNK = 10  # steps per compiled chunk when timing
BUDGET_S = 200  # skip shakespeare's measurement (a long compile) when the check has taken this long already


def log(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", default=os.environ.get("SAMEDGE_DATA_DIR"),
                   help="folder holding mnist/ and tinyshakespeare/ (default $SAMEDGE_DATA_DIR)")
    p.add_argument("--tiny", action="store_true", help="tiny sizes on CPU: a smoke test of this script (seconds)")
    p.add_argument("--run-steps", type=int, default=None, help="MNIST paper-preset steps to run (default 300; tiny 40)")
    p.add_argument("--devices", type=int, default=1,
                   help="split each batch over this many devices (samedge.sharding; default 1)")
    args = p.parse_args(argv)
    if not args.data_dir:
        p.error("--data-dir is required (or set $SAMEDGE_DATA_DIR): this check never downloads")
    if args.run_steps is None:
        args.run_steps = 40 if args.tiny else 300
    return args


def main(argv=None) -> int:
    args = parse(argv)
    os.environ["SAMEDGE_OFFLINE"] = "1"  # never download
    if args.tiny:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
    started = time.perf_counter()

    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree

    from samedge import config, curvature, optimizers, sharding, tasks, train

    devices = sharding.devices_for(args.devices)
    device = devices[0]
    log(f"jax {jax.__version__} on {len(devices)} x {device.platform} ({device.device_kind})")
    result = {"device": f"{device.platform}:{device.device_kind}", "devices": len(devices),
              "jax": jax.__version__, "jaxlib": _jaxlib_version(), "cuda": _cuda_versions(), "tiny": args.tiny}

    def build(name):
        cfg = config.resolve(name, "paper", task_overrides=(TINY_MNIST if name == "mnist" else TINY_SHAKESPEARE)
                             if args.tiny else None, optimizer="sam", lr=LR, rho=RHO, **(TINY_RUN if args.tiny else {}))
        task = tasks.build_task(name, tasks.make_task_config(name, cfg.task_config), data_dir=args.data_dir,
                                seed=cfg.seed)
        if len(devices) > 1:
            task = sharding.shard_task(task, devices)
        return cfg, task

    opt = optimizers.build("sam", LR, rho=RHO)

    # MNIST: steps in compiled chunks (the training loop itself), measured every measure_every.
    cfg, task = build("mnist")
    log(f"mnist {task.info}")
    every = 20 if args.tiny else cfg.measure_every
    _, init_measure, measure_fn = train._make_measure(cfg, task, opt)
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    opt_state = opt.init(params)
    mstate = init_measure(params)
    points = list(range(0, args.run_steps + 1, CHUNK))
    chunk_s, measure_s, rows = [], [], []
    last = None  # (params, opt_state, state before the last measurement, step)
    tick = time.perf_counter()
    for seg in train.trajectory(task, opt, params, opt_state, points):
        now = time.perf_counter()
        if len(seg.losses):
            chunk_s.append(now - tick)
        if seg.step % every == 0 or seg.step == points[-1]:
            before = mstate
            t0 = time.perf_counter()
            row, mstate = measure_fn(seg.params, task.data, jnp.asarray(seg.step), mstate, seg.opt_state)
            row = jax.device_get(row)
            measure_s.append(time.perf_counter() - t0)
            rows.append({"step": seg.step, "hvps": int(row["hvps"]) + int(row.get("hvps_sam", 0))}
                        | {k: float(row[k]) for k in ("loss", "lambda_max", "edge", "ratio")})
            log(f"  step {seg.step}: {rows[-1]}  ({measure_s[-1]:.2f} s)")
            if seg.step == points[-1]:  # keep the end point (copies: the chunk donates its inputs)
                last = (jax.tree.map(jnp.copy, seg.params), jax.tree.map(jnp.copy, seg.opt_state), before, seg.step)
        tick = time.perf_counter()
    compile_chunk = chunk_s[0]
    step_s = statistics.median(chunk_s[1:] or chunk_s) / CHUNK
    steady = measure_s[1:] or measure_s
    result |= {"mnist_sam_step_ms": 1e3 * step_s, "mnist_chunk_compile_s": compile_chunk,
               "mnist_measure_s": statistics.median(steady), "mnist_measure_compile_s": measure_s[0],
               "mnist_measure_hvps": [r["hvps"] for r in rows],
               "run_steps": rows[-1]["step"], "run_rows": rows, "run_ratio": rows[-1]["ratio"],
               "run_lambda_max": rows[-1]["lambda_max"], "run_edge": rows[-1]["edge"]}

    # One HVP on the full batch, at the end point.
    params, opt_state, before, step = last

    @jax.jit
    def hvp(params, data, v):
        batch = task.measure_batch_fn(data, jnp.asarray(step))
        return curvature.flat_hvp(lambda p: task.loss_fn(p, batch), params)[0](v)

    v = jax.random.normal(jax.random.PRNGKey(1), ravel_pytree(params)[0].shape)
    jax.block_until_ready(hvp(params, task.data, v))
    result["mnist_hvp_ms"] = 1e3 * _median_time(lambda: hvp(params, task.data, v), 5)

    # Precision: the top eigenvalue by the same Lanczos (same start, tolerance 1e-5) with the
    # matrix products at the default precision (TF32 on recent NVIDIA GPUs) and at "highest"
    # (full float32). The run's measurement itself is scoped to "highest" by samedge.measure.
    v0 = before.vectors.sum(0)
    try:
        lanczos = {name: _time_lanczos(task, params, step, v0, cfg, precision)
                   for name, precision in (("default", None), ("highest", "highest"))}
        result["mnist_lanczos"] = lanczos
        result["mnist_lanczos_default_s"] = lanczos["default"]["s"]
        result["mnist_lanczos_highest_s"] = lanczos["highest"]["s"]
        result["highest_vs_default_rel"] = (abs(lanczos["highest"]["lambda"] - lanczos["default"]["lambda"])
                                            / abs(lanczos["highest"]["lambda"]))
    except Exception as exc:  # report it and go on: the rest of the check still counts
        result["highest_vs_default_rel"] = None
        result["precision_error"] = f"{type(exc).__name__}: {exc}"[:500]
        log(f"precision check failed: {result['precision_error']}")
    mnist_cfg = cfg
    del task, params, opt_state, before, last

    # tiny_shakespeare, paper preset: SAM steps in compiled chunks, then one measurement if time allows.
    cfg, task = build("shakespeare")
    log(f"shakespeare {task.info['n_params']} parameters")
    params = task.init_params(jax.random.PRNGKey(cfg.seed))
    opt_state = opt.init(params)
    chunk = train.make_chunk(task, opt, CHUNK)
    times = []
    for i in range(4 if not args.tiny else 2):
        t0 = time.perf_counter()
        params, opt_state, losses = chunk(params, opt_state, task.data, jnp.asarray(i * CHUNK))
        jax.block_until_ready(losses)
        times.append(time.perf_counter() - t0)
    result["shakespeare_chunk_compile_s"] = times[0]
    result["shakespeare_sam_step_ms"] = 1e3 * statistics.median(times[1:]) / CHUNK
    result["shakespeare_measure_s"] = None
    if args.tiny:
        log("--tiny: shakespeare's measurement skipped (its CPU compile alone takes ~15 s; same code as MNIST's)")
    elif time.perf_counter() - started < BUDGET_S:
        try:
            compile_s, result["shakespeare_measure_s"], _ = _time_measurement(cfg, task, opt, params, opt_state,
                                                                              len(times) * CHUNK)
            result["shakespeare_measure_compile_s"] = compile_s
        except Exception as exc:
            result["shakespeare_measure_error"] = f"{type(exc).__name__}: {exc}"[:500]
            log(f"shakespeare's measurement failed: {result['shakespeare_measure_error']}")
    else:
        log("time budget spent: shakespeare's measurement skipped")

    del task, params, opt_state
    result |= _resnet(args, devices, started)

    result["scale"] = _scale_points(args, devices, started)
    result |= _memory(devices)
    result |= _projection(tasks, {"mnist": (result["mnist_sam_step_ms"] / 1e3, result["mnist_measure_s"]),
                                  "shakespeare": (result["shakespeare_sam_step_ms"] / 1e3,
                                                  result["shakespeare_measure_s"])})
    result["run_config"] = {"mnist": dict(mnist_cfg.task_config), "shakespeare": dict(cfg.task_config),
                            "lr": LR, "rho": RHO, "measure_every": every}
    result["total_s"] = time.perf_counter() - started
    print(json.dumps(result))
    return 0


RESNET_TINY = dict(n_train=256, n_test=64, width=2, measure_set=128)
RESNET_EPOCH_STEPS = 391  # 50,000 images in minibatches of 128
RESNET_BUDGET_S = 330  # skip the ResNet's measurement (a long compile) when the check has taken this long


def _resnet(args, devices, started) -> dict:
    """cifar10-resnet's paper preset (ResNet-18 width 64, SAM with momentum, weight decay, cosine, crop and
    flip, BatchNorm's running statistics in the carry) on the 10,000-image copy (n_train 10,000; a step
    costs the same on any size of set): steps in compiled chunks of CHUNK, then one measurement (the
    step's minibatch and the 5,000-image measurement set in chunks of 250) when time allows.
    ``resnet_epoch_s`` = 391 steps + one measurement (the preset's epoch of 50,000 images, measured once);
    ``resnet_paper_hours`` = 200 of them. ``--tiny``: width 2 on 256 images, no measurement."""
    import jax
    import jax.numpy as jnp

    from samedge import config, optimizers, sharding, tasks, train

    out = {"resnet_sam_step_ms": None, "resnet_measure_s": None, "resnet_epoch_s": None}
    try:
        cfg = config.resolve("cifar10-resnet", "paper",
                             task_overrides=RESNET_TINY if args.tiny else dict(n_train=10_000, n_test=2000))
        task = tasks.build_task("cifar10-resnet", tasks.make_task_config("cifar10-resnet", cfg.task_config),
                                data_dir=args.data_dir, seed=cfg.seed)
        from samedge import chunking

        task = chunking.chunk_task(task, cfg.chunk_size)
        if len(devices) > 1:
            task = sharding.shard_task(task, devices)
        opt = train.build_optimizer(cfg)
        log(f"cifar10-resnet paper preset: {task.info['n_params']} parameters, {task.info['n_train']} images")
        params = task.init_params(jax.random.PRNGKey(cfg.seed))
        state = task.init_state(jax.random.PRNGKey(cfg.seed))
        opt_state = opt.init(params)
        chunk = train.make_chunk(task, opt, CHUNK, seed=cfg.seed)
        times = []
        for i in range(4 if not args.tiny else 2):
            t0 = time.perf_counter()
            params, opt_state, state, losses = chunk(params, opt_state, state, task.data, jnp.asarray(i * CHUNK))
            jax.block_until_ready(losses)
            times.append(time.perf_counter() - t0)
        step_s = statistics.median(times[1:]) / CHUNK
        out |= {"resnet_chunk_compile_s": times[0], "resnet_sam_step_ms": 1e3 * step_s,
                "resnet_loss": float(losses[-1]), "resnet_n_params": task.info["n_params"]}
        if args.tiny:
            log("--tiny: the ResNet's measurement skipped (same code as the MNIST run's)")
        elif time.perf_counter() - started < RESNET_BUDGET_S:
            _, init_measure, measure_fn = train._make_measure(cfg, task, opt)
            mstate, at = init_measure(params), jnp.asarray(len(times) * CHUNK)
            t0 = time.perf_counter()
            row, mstate = measure_fn(params, task.data, at, mstate, opt_state, state)
            row = jax.device_get(row)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            row = jax.device_get(measure_fn(params, task.data, at, mstate, opt_state, state)[0])
            out |= {"resnet_measure_compile_s": first, "resnet_measure_s": time.perf_counter() - t0,
                    "resnet_row": {k: float(row[k]) for k in ("lambda_max", "lambda_max_full", "edge", "ratio",
                                                              "ratio_full", "hvps", "hvps_full") if k in row}}
        else:
            log("time budget spent: the ResNet's measurement skipped")
        out["resnet_epoch_s"] = RESNET_EPOCH_STEPS * step_s + (out["resnet_measure_s"] or 0.0)
        out["resnet_paper_hours"] = 200 * out["resnet_epoch_s"] / 3600
        out["resnet_note"] = ("n_train 10,000 (the offline copy); an epoch = 391 steps of 128 + one measurement"
                              + ("" if out["resnet_measure_s"] is not None else " (not measured: left out)"))
    except Exception as exc:  # report it and go on: the rest of the check still counts
        out["resnet_error"] = f"{type(exc).__name__}: {exc}"[:500]
        log(f"the ResNet check failed: {out['resnet_error']}")
    log(f"  {out}")
    return out


SCALE_SIZES = (10**7, 10**8)  # parameters of the scale points on an accelerator
SCALE_BUDGET_S = 420  # no new scale point once the check has taken this long


def _scale_points(args, devices, started) -> list:
    """``benchmarks/scale.py``'s points in this process (the MLP on 64 images, max_basis 16), each with
    the device's peak memory after it; a point that fails is recorded with its error."""
    import scale

    out = []
    for size in ((10**5,) if args.tiny else SCALE_SIZES):
        if time.perf_counter() - started > SCALE_BUDGET_S:
            log(f"time budget spent: scale point {size:.0e} skipped")
            break
        log(f"scale point: MLP of {size:.0e} parameters, basis 16")
        try:
            point = scale.point("mlp", size, 16, 64, args.data_dir)
            point["peak_memory_mb"] = _memory(devices)["peak_memory_mb"]
        except Exception as exc:  # e.g. out of device memory: say so, keep the other figures
            point = {"n": size, "error": f"{type(exc).__name__}: {exc}"[:500]}
        log(f"  {point}")
        out.append(point)
    return out


def _time_lanczos(task, params, step, v0, cfg, precision) -> dict:
    """|lambda_1| by Lanczos (tolerance 1e-5) with matrix products at ``precision`` (None: JAX's default)."""
    import contextlib

    import jax
    import jax.numpy as jnp

    from samedge import curvature

    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
        @jax.jit
        def top(params, data, v0):
            batch = task.measure_batch_fn(data, jnp.asarray(step))
            matvec, _ = curvature.flat_hvp(lambda p: task.loss_fn(p, batch), params)
            eig = curvature.lanczos(matvec, v0, k=1, max_iters=cfg.lanczos_max_iters, tol=1e-5, min_iters=8)
            return jnp.abs(eig.values[0]), eig.num_matvecs, eig.residuals[0]

        t0 = time.perf_counter()
        jax.block_until_ready(top(params, task.data, v0))
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        value, hvps, resid = jax.device_get(top(params, task.data, v0))
        return {"lambda": float(value), "hvps": int(hvps), "resid": float(resid), "s": time.perf_counter() - t0,
                "compile_s": compile_s}


def _time_measurement(cfg, task, opt, params, opt_state, step, state=None):
    """The run's measurement at ``step``, twice: ``(first call's seconds, second call's, row)``."""
    import jax
    import jax.numpy as jnp

    from samedge import train

    _, init_measure, measure_fn = train._make_measure(cfg, task, opt)
    state = init_measure(params) if state is None else state
    step = jnp.asarray(step)
    t0 = time.perf_counter()
    row = jax.device_get(measure_fn(params, task.data, step, state, opt_state)[0])
    first = time.perf_counter() - t0
    return first, _median_time(lambda: measure_fn(params, task.data, step, state, opt_state)[0], 1), row



def _median_time(fn, repeats: int) -> float:
    import jax

    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _jaxlib_version():
    try:
        import jaxlib

        return jaxlib.__version__
    except Exception:
        return None


def _cuda_versions():
    """The backend's platform version and the CUDA libraries' versions, or None off CUDA."""
    import jax

    out = {}
    try:
        import jax.extend

        backend = jax.extend.backend.get_backend()
        if backend.platform not in ("gpu", "cuda", "rocm"):
            return None
        out["platform_version"] = backend.platform_version
    except Exception as exc:
        out["platform_version"] = f"unknown ({type(exc).__name__})"
    try:
        from jax._src.lib import cuda_versions
    except Exception:
        cuda_versions = None
    if cuda_versions is not None:
        for name in sorted(dir(cuda_versions)):
            if name.endswith("_version") and callable(getattr(cuda_versions, name)):
                try:
                    out[name] = getattr(cuda_versions, name)()
                except Exception:
                    pass
    return out


def _memory(devices) -> dict:
    peaks = []
    for d in devices:
        try:
            stats = d.memory_stats()
        except Exception:
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(stats["peak_bytes_in_use"])
    if peaks:
        return {"peak_memory_mb": max(peaks) / 2**20, "peak_memory_source": "device peak_bytes_in_use",
                "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"peak_memory_mb": rss, "peak_memory_source": "process peak RSS", "peak_rss_mb": rss}


def _projection(tasks, timings) -> dict:
    """Each paper grid, one device, one run after another: points x (steps x step + measurements x measurement)."""
    hours, factors = {}, {}
    for name, (step_s, measure_s) in timings.items():
        preset = tasks.get_preset(name, "paper")
        points = len(preset.grid_lr) * math.prod(len(v) for v in preset.grid.values())
        measurements = len(range(0, preset.steps, preset.measure_every)) + 1
        per_run = preset.steps * step_s + (measurements * measure_s if measure_s is not None else 0.0)
        hours[f"{name}_paper_grid"] = points * per_run / 3600
        factors[name] = {"points": points, "steps": preset.steps, "measurements": measurements,
                         "step_s": step_s, "measure_s": measure_s, "per_run_s": per_run,
                         "measurements_included": measure_s is not None}
    return {"projected_hours": hours, "projection": factors}


if __name__ == "__main__":
    sys.exit(main())
