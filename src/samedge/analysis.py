"""Pure summaries of a run's measurements (used by the run store and the reports)."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


def second_half(rows: Sequence[Mapping]) -> list[Mapping]:
    """The measurements from the middle step of the run on (by step, so an irregular cadence is fair)."""
    if not rows:
        return []
    last = rows[-1]["step"]
    return [r for r in rows if r["step"] >= last / 2]


def _finite(values):
    out = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return out


def converged(row: Mapping) -> bool:
    """Whether a row's Lanczos met its tolerance (rows written before the guard count as converged)."""
    return row.get("converged") is None or bool(row["converged"])


def ratio_stats(rows: Sequence[Mapping], key: str = "ratio", band: float = 0.1) -> dict:
    """Median, 10th/90th percentiles and the share within ``1 +- band`` of ``key`` over the second half.

    Rows whose Lanczos did not converge are left out (``ratio_left_out`` says how many); the
    statistics come from ``ratio_count`` measurements.

    >>> rows = [{"step": s, "ratio": r, "converged": c} for s, r, c in [(0, 5, 1), (10, 1.0, 1), (20, 9.0, 0)]]
    >>> ratio_stats(rows)["ratio_median"], ratio_stats(rows)["ratio_left_out"]
    (1.0, 1)
    """
    half = second_half(rows)
    values = _finite(r.get(key) for r in half if converged(r))
    left_out = sum(1 for r in half if not converged(r) and r.get(key) is not None)
    if values.size == 0:
        return {"ratio_median": None, "ratio_p10": None, "ratio_p90": None, "ratio_within_10pct": None,
                "ratio_count": 0, "ratio_left_out": left_out}
    return {
        "ratio_median": float(np.median(values)),
        "ratio_p10": float(np.percentile(values, 10)),
        "ratio_p90": float(np.percentile(values, 90)),
        "ratio_within_10pct": float(np.mean(np.abs(values - 1.0) <= band)),
        "ratio_count": int(values.size),
        "ratio_left_out": left_out,
    }


def summarize(rows: Sequence[Mapping]) -> dict:
    """Final figures and edge statistics of a run from its metrics rows."""
    out: dict = {"measurements": len(rows)}
    if rows:
        last = rows[-1]
        out["final_step"] = int(last["step"])
        for key in ("loss", "acc", "grad_norm", "lambda_max", "edge", "gd_edge", "ratio", "precond_sharpness",
                    "step_radius"):
            if last.get(key) is not None:
                out[f"final_{key}"] = last[key]
        tests = [r for r in rows if r.get("test_loss") is not None]
        if tests:
            out["final_test_loss"] = tests[-1]["test_loss"]
            if tests[-1].get("test_acc") is not None:
                out["final_test_acc"] = tests[-1]["test_acc"]
        half = second_half(rows)
        lam_gd = _finite(r["lambda_max"] / r["gd_edge"] for r in half if r.get("gd_edge") and converged(r))
        out["lambda_over_gd_edge_median"] = float(np.median(lam_gd)) if lam_gd.size else None
        # the measurement's guard (samedge.measure): rows it could not vouch for
        out["rows_unconverged"] = sum(1 for r in rows if not converged(r))
        out["rows_uncertified"] = sum(1 for r in rows if r.get("certified") is not None and not r["certified"])
        out["crosschecks"] = sum(1 for r in rows if r.get("crosscheck_lambda") is not None
                                 and math.isfinite(r["crosscheck_lambda"]))
        counts = _finite(r.get("n_outliers") for r in half)
        if counts.size:  # tracked outliers (--track-fraction): how many eigenvalues sit near the edge
            out["outliers_median"] = float(np.median(counts))
            out["outliers_max"] = int(counts.max())
            out["outliers_final"] = int(rows[-1]["n_outliers"]) if rows[-1].get("n_outliers") is not None else None
    out |= ratio_stats(rows)
    return out
