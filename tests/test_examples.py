"""The examples run as a reader runs them and hold their promises.

- ``examples/own_loop.py`` (a plain JAX loop calling the measurement): SAM's lambda_max sits at its
  SAM-edge over the second half (median ratio within 10% of 1), and the measured lambda_max agrees
  with the dense Hessian's to 1e-4 at its three check points;
- ``examples/own_task.py`` (the same model through ``samedge.fit``): the same band on the run's
  ``summary.json``;
- the task factory from the command line: ``python -m samedge run examples.own_task:make_task``.

Each runs in a subprocess from the repository root, with the shared data folder passed explicitly
(the tests otherwise run with ``$SAMEDGE_DATA_DIR`` unset).
"""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env(data_dir) -> dict:
    return os.environ | {"JAX_PLATFORMS": "cpu", "SAMEDGE_DATA_DIR": str(data_dir), "SAMEDGE_OFFLINE": "1",
                         "SAMEDGE_JIT_CACHE": "off", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def _run(args, data_dir, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(data_dir), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (f"{' '.join(args)} exited {proc.returncode}:\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def _last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_own_loop_reaches_the_sam_edge_and_matches_the_dense_hessian(tmp_path, data_dir):
    result = _last_json(_run(["examples/own_loop.py", "--out", str(tmp_path)], data_dir).stdout)
    assert 0.9 <= result["ratio_median"] <= 1.1, result
    assert result["dense_relerr"] <= 1e-4, result
    assert len(result["dense_checks"]) == 3
    assert result["n_params"] >= 1000 and result["n_params"] > 64  # more than the measurement's max_hvps
    assert (tmp_path / "own_loop.png").stat().st_size > 0


@pytest.mark.slow
def test_own_task_through_fit_reaches_the_sam_edge(tmp_path, data_dir):
    out = tmp_path / "run"
    result = _last_json(_run(["examples/own_task.py", "--out", str(out)], data_dir).stdout)
    assert 0.9 <= result["ratio_median"] <= 1.1, result
    assert result["status"] == "completed" and Path(result["run"]) == out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ratio_median"] == result["ratio_median"]
    assert (out / "metrics.csv").is_file() and (out / "sharpness.png").is_file()


def test_own_task_factory_from_the_cli(tmp_path, data_dir):
    out = tmp_path / "cli"
    _run(["-m", "samedge", "run", "examples.own_task:make_task", "--steps", "20", "--measure-every", "10",
          "--set", "n_train=64", "--set", "width=8", "--out", str(out), "--no-progress"], data_dir)
    with open(out / "metrics.csv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f)] == [0, 10, 20]
    config = json.loads((out / "config.json").read_text())
    assert config["run"]["task_config"] == {"n_train": 64, "width": 8}
    assert config["task_info"]["n_train"] == 64


def test_own_probe_matches_the_dense_hessian_along_the_step(data_dir):
    """examples/own_probe.py: the curvature along SAM's update, u'Hu/u'u, from a probe of the user's
    own in a plain loop, against the dense float64 Hessian and the step the loop took."""
    result = _last_json(_run(["examples/own_probe.py"], data_dir).stdout)
    assert result["relerr"] <= 1e-6, result
    assert [c["step"] for c in result["dense_checks"]] == [0, 150, 300]
    assert 0 < result["last"]["step_curvature"] <= result["last"]["lambda_max"]
