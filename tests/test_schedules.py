"""Learning-rate schedules: the step sizes optax gives, and the edges a run reports along them.

Independent truths: the schedule's closed forms (cosine: eta (1 + cos(pi t / T)) / 2 after a linear
warmup) and GD's edge 2/eta_t.
"""

from __future__ import annotations

import csv
import json
import math

import jax.numpy as jnp
import pytest

import samedge
from samedge import config, run, schedules, tasks
from samedge.errors import ConfigError


def test_lr_schedule_closed_forms():
    s = schedules.make("cosine", 0.2, total_steps=40, warmup_steps=8)
    for t in range(40):
        want = 0.2 * t / 8 if t < 8 else 0.1 * (1 + math.cos(math.pi * (t - 8) / 32))
        assert float(s(t)) == pytest.approx(want, abs=1e-7)
    step = schedules.make("step", 1.0, total_steps=100)
    assert [float(step(t)) for t in (0, 49, 50, 74, 75, 99)] == pytest.approx([1, 1, 0.1, 0.1, 0.01, 0.01])
    assert schedules.make("constant", 0.3, total_steps=10) == 0.3  # nothing changes without warmup
    with pytest.raises(ConfigError, match="--schedule must be one of constant, cosine, step"):
        schedules.make("linear", 0.1, 10)
    with pytest.raises(ConfigError, match="--warmup-steps"):
        schedules.make("cosine", 0.1, 10, warmup_steps=10)


def _quadratic():
    return tasks.make_task("quad", lambda k: {"w": jnp.ones(3)},
                           lambda p, b: 0.5 * jnp.sum(b * p["w"] ** 2), jnp.array([3.0, 1.0, 0.5]))


def test_lr_schedule_cosine_edge_is_two_over_eta_t_step_by_step(tmp_path):
    """GD under a cosine schedule with warmup, measured at every step: the row at step t reports
    eta_t (optax's count: the step size of the update from w_t), gd_edge = edge = 2/eta_t, NaN (not
    infinite) at t = 0 where eta_0 = 0, ratio = lambda_max / edge; the summary's ratio rows are where eta_t is at
    least half its peak."""
    steps, warmup, eta = 24, 4, 0.4
    s = samedge.fit(_quadratic(), "gd", lr=eta, steps=steps, measure_every=1, schedule="cosine",
                    warmup_steps=warmup, out=tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    sched = schedules.make("cosine", eta, steps, warmup)
    assert [int(r["step"]) for r in rows] == list(range(steps + 1))
    for r in rows:
        t = int(r["step"])
        eta_t = float(sched(t))
        assert float(r["lr"]) == pytest.approx(eta_t, rel=1e-5, abs=1e-8)  # float32 inside the program
        if eta_t == 0:
            assert r["edge"] == r["gd_edge"] == r["ratio"] == "nan"  # not measured (as a cross-check not taken)
        else:
            assert float(r["edge"]) == pytest.approx(2 / eta_t, rel=1e-5)
            assert float(r["gd_edge"]) == pytest.approx(2 / eta_t, rel=1e-5)
            assert float(r["ratio"]) == pytest.approx(3.0 * eta_t / 2, rel=1e-4)
    assert "eta_t >= 0.5" in s["ratio_rows"]
    kept = [float(sched(t)) for t in range(steps + 1) if float(sched(t)) >= 0.5 * eta]
    assert s["ratio_count"] <= len(kept)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["run"]
    assert (saved["schedule"], saved["warmup_steps"]) == ("cosine", warmup)


def test_lr_schedule_names_the_folder_and_a_constant_run_keeps_its_name():
    cfg = config.resolve("mnist", "quick", optimizer="gd", lr=0.1, steps=100)
    assert run.run_name(cfg) == "mnist-gd-lr0.1-s0"
    cos = config.resolve("mnist", "quick", optimizer="gd", lr=0.1, steps=100, schedule="cosine", warmup_steps=10)
    assert run.run_name(cos) == "mnist-gd-lr0.1-cosine-w10-s0"
    with pytest.raises(ConfigError, match="--warmup-steps"):
        config.resolve("mnist", "quick", optimizer="gd", lr=0.1, steps=100, warmup_steps=100)
