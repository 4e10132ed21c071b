"""Pure summaries of a run's measurements (used by the run store and the reports).

Every statistic is over the second half of the run (:func:`second_half`, by step) and leaves out
the rows whose Lanczos did not converge (:func:`converged`). Runs that measured batch sharpness
(``--batch-sharpness``; :mod:`samedge.batch_sharpness`) also get, from :func:`stochastic_stats`,
their medians against ``2/eta`` and the stationarity of the last two quarters of the run.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np


LR_FLOOR = 0.5  # under a schedule, the statistics use the rows where eta_t >= this fraction of its peak


def second_half(rows: Sequence[Mapping]) -> list[Mapping]:
    """The measurements from the middle step of the run on (by step, so an irregular cadence is fair).

    Under a learning-rate schedule (rows with an ``lr`` column, eta_t) an edge of 2/eta_t grows without
    bound as eta_t decays and means little where the step barely moves: the rows kept are the second
    half (by step) of those where eta_t is at least :data:`LR_FLOOR` of its peak.

    >>> rows = [{"step": s, "lr": lr} for s, lr in ((0, 0.0), (10, 1.0), (20, 0.9), (30, 0.6), (40, 0.2))]
    >>> [r["step"] for r in second_half(rows)]
    [20, 30]
    """
    if not rows:
        return []
    if any(r.get("lr") is not None for r in rows):
        etas = _finite(r.get("lr") for r in rows)
        peak = float(etas.max()) if etas.size else 0.0
        rows = [r for r in rows if r.get("lr") is not None and math.isfinite(r["lr"]) and r["lr"] >= LR_FLOOR * peak
                and r["lr"] > 0]
        if not rows:
            return []
        first, last = rows[0]["step"], rows[-1]["step"]
        return [r for r in rows if r["step"] >= (first + last) / 2]
    last = rows[-1]["step"]
    return [r for r in rows if r["step"] >= last / 2]


def _finite(values):
    out = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    return out


def converged(row: Mapping) -> bool:
    """Whether a row's Lanczos met its tolerance (rows written before the guard count as converged)."""
    return row.get("converged") is None or bool(row["converged"])


def _value(row: Mapping, key: str, per: str | None = None):
    """``row[key]`` (divided by ``row[per]`` when ``per`` is given), or None when either is missing,
    not finite or the divisor is zero."""
    v = row.get(key)
    if v is None or not math.isfinite(v):
        return None
    if per is None:
        return float(v)
    d = row.get(per)
    if d is None or not math.isfinite(d) or d == 0:
        return None
    return float(v) / float(d)


def _converged_values(rows: Sequence[Mapping], key: str, per: str | None = None) -> np.ndarray:
    """The finite :func:`_value` of ``key`` (over ``per``) in the converged rows."""
    return _finite(_value(r, key, per) for r in rows if converged(r))


def _median(rows: Sequence[Mapping], key: str, per: str | None = None):
    values = _converged_values(rows, key, per)
    return (float(np.median(values)) if values.size else None), int(values.size)


def half_median(rows: Sequence[Mapping], key: str, per: str | None = None) -> tuple[float | None, int]:
    """Median of ``x = row[key]`` (or ``x = row[key] / row[per]``) over the second half of the run.

    Args:
      rows: metrics rows in step order (each with ``step``).
      key: the column, e.g. ``"batch_sharpness"``.
      per: a column to divide by, e.g. ``"gd_edge"`` (2/eta), or None.

    Returns:
      ``(median, n)``: the median of the finite ``x`` of the converged rows with
      ``step >= T/2`` (``T`` the last step; :func:`second_half`), and how many there were;
      ``(None, 0)`` when there were none.

    >>> rows = [{"step": s, "q": q, "gd_edge": 2.0, "converged": c}
    ...         for s, q, c in [(0, 9.0, 1), (2, 1.0, 1), (3, float("nan"), 1), (4, 3.0, 1), (5, 7.0, 0)]]
    >>> half_median(rows, "q", per="gd_edge")  # steps 3..5: NaN and unconverged left out
    (1.5, 1)
    """
    return _median(second_half(rows), key, per)


def quarters(rows: Sequence[Mapping]) -> tuple[list[Mapping], list[Mapping]]:
    """The rows of the third and fourth quarters of the run, by step.

    Args:
      rows: metrics rows in step order (each with ``step``).

    Returns:
      ``(q3, q4)``: the rows with ``T/2 < step <= 3T/4`` and those with ``3T/4 < step <= T``,
      ``T`` the last row's step (both empty when there are no rows or ``T <= 0``).

    >>> q3, q4 = quarters([{"step": s} for s in range(0, 50, 5)])  # T = 45: (22.5, 33.75], (33.75, 45]
    >>> [r["step"] for r in q3], [r["step"] for r in q4]
    ([25, 30], [35, 40, 45])
    """
    if not rows or rows[-1]["step"] <= 0:
        return [], []
    last = rows[-1]["step"]
    q3 = [r for r in rows if last / 2 < r["step"] <= 3 * last / 4]
    q4 = [r for r in rows if 3 * last / 4 < r["step"] <= last]
    return q3, q4


def quarter_medians(rows: Sequence[Mapping], key: str, per: str | None = None) -> tuple[float | None, float | None]:
    """Medians of ``row[key]`` (or ``row[key] / row[per]``) over the third and fourth quarters.

    A stationarity check: a quantity that has settled (at an edge) has about the same median over
    ``(T/2, 3T/4]`` as over ``(3T/4, T]`` (:func:`quarters`); one still rising or falling does not.
    Unconverged rows and non-finite values are left out, as in :func:`ratio_stats`.

    Args:
      rows: metrics rows in step order.
      key: the column; per: a column to divide by, or None.

    Returns:
      ``(q3, q4)``, each None when its quarter has no finite value.

    >>> rows = [{"step": s, "ratio": r} for s, r in zip(range(0, 90, 10), (9, 9, 9, 9, 9, 1.0, 1.5, 2.0, 3.0))]
    >>> quarter_medians(rows, "ratio")  # T = 80: steps 50, 60 and 70, 80
    (1.25, 2.5)
    """
    q3, q4 = quarters(rows)
    return _median(q3, key, per)[0], _median(q4, key, per)[0]


def reldiff(q3: float, q4: float) -> float | None:
    """The relative change between two quarters' medians.

    Args:
      q3, q4: the medians over the third and fourth quarters (:func:`quarter_medians`).

    Returns:
      ``|q4 - q3| / |q3|``, or None when ``q3 = 0``.

    >>> reldiff(2.0, 2.5), reldiff(2.0, 1.5), reldiff(0.0, 1.0)
    (0.25, 0.25, None)
    """
    return abs(q4 - q3) / abs(q3) if q3 != 0 else None


# (summary key, column, divisor): second-half medians of the batch-sharpness columns
STOCHASTIC_MEDIANS = (
    ("batch_sharpness_over_gd_edge_median", "batch_sharpness", "gd_edge"),
    ("batch_sharpness_rom_over_gd_edge_median", "batch_sharpness_rom", "gd_edge"),
    ("lambda_max_full_over_gd_edge_median", "lambda_max_full", "gd_edge"),
    ("sam_batch_ratio_median", "sam_batch_ratio", None),
)


def stochastic_stats(rows: Sequence[Mapping]) -> dict:
    """Batch-sharpness medians against ``2/eta`` and the stationarity of the last two quarters.

    With ``gd_edge = 2/eta``, over the second half (:func:`half_median`; unconverged rows left out):

    - ``batch_sharpness_over_gd_edge_median``: median of ``batch_sharpness / (2/eta)``, the mean
      over fresh minibatches of ``q_B = g_B' H_B g_B / ||g_B||^2`` (SGD's edge of stochastic
      stability sits at 1), with ``batch_sharpness_count`` the measurements behind it;
    - ``batch_sharpness_rom_over_gd_edge_median``: the ratio of means
      ``E[g_B' H_B g_B] / E[||g_B||^2]``, over ``2/eta``;
    - ``lambda_max_full_over_gd_edge_median``: the full batch's top Hessian eigenvalue over ``2/eta``;
    - ``sam_batch_ratio_median``: median of ``sam_batch_ratio = E_B[q_B / edge(||g_B||)]`` (written
      for optimizers with a known Euclidean edge: SAM's per-batch edge; ``eta q_B / 2`` for GD).

    Stationarity, by quarters of the run (:func:`quarter_medians`): ``ratio_q3_median`` and
    ``ratio_q4_median`` of ``ratio = lambda_max / edge`` with ``ratio_quarters_reldiff =
    |q4 - q3| / q3``; the same for ``batch_sharpness / (2/eta)`` (``batch_sharpness_q3_median``,
    ``batch_sharpness_q4_median``, ``batch_sharpness_quarters_reldiff``).

    A key is absent (not None) when its columns are absent or not finite where it looks; the
    batch-sharpness count is there whenever the run measured batch sharpness at all.

    Args:
      rows: metrics rows in step order.

    Returns:
      A dict of the keys above that the rows support.

    >>> rows = [{"step": s, "ratio": 1.0, "gd_edge": 10.0, "batch_sharpness": b}
    ...         for s, b in zip(range(0, 50, 10), (2.0, 4.0, 8.0, 9.0, 10.0))]
    >>> st = stochastic_stats(rows)  # second half: steps 20, 30, 40
    >>> st["batch_sharpness_over_gd_edge_median"], st["batch_sharpness_count"]
    (0.9, 3)
    >>> st["batch_sharpness_q3_median"], st["batch_sharpness_q4_median"], st["ratio_quarters_reldiff"]
    (0.9, 1.0, 0.0)
    >>> "sam_batch_ratio_median" in st, stochastic_stats([{"step": 0, "ratio": None}])
    (False, {})
    """
    out: dict = {}
    measured = any(_value(r, "batch_sharpness") is not None for r in rows)
    for name, key, per in STOCHASTIC_MEDIANS:
        median, n = half_median(rows, key, per)
        if median is not None:
            out[name] = median
        if key == "batch_sharpness" and measured:
            out["batch_sharpness_count"] = n
    for prefix, key, per in (("ratio", "ratio", None), ("batch_sharpness", "batch_sharpness", "gd_edge")):
        q3, q4 = quarter_medians(rows, key, per)
        if q3 is not None:
            out[f"{prefix}_q3_median"] = q3
        if q4 is not None:
            out[f"{prefix}_q4_median"] = q4
        diff = reldiff(q3, q4) if q3 is not None and q4 is not None else None
        if diff is not None:
            out[f"{prefix}_quarters_reldiff"] = diff
    return out


def ratio_stats(rows: Sequence[Mapping], key: str = "ratio", band: float = 0.1) -> dict:
    """Median, 10th/90th percentiles and the share within ``1 +- band`` of ``key`` over the second half.

    Rows whose Lanczos did not converge are left out (``ratio_left_out`` says how many); the
    statistics come from ``ratio_count`` measurements.

    >>> rows = [{"step": s, "ratio": r, "converged": c} for s, r, c in [(0, 5, 1), (10, 1.0, 1), (20, 9.0, 0)]]
    >>> ratio_stats(rows)["ratio_median"], ratio_stats(rows)["ratio_left_out"]
    (1.0, 1)
    """
    half = second_half(rows)
    values = _converged_values(half, key)
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
    """Final figures and edge statistics of a run from its metrics rows (what ``summary.json`` holds).

    The final values, the guard's counts, :func:`ratio_stats` and, where the rows carry them,
    :func:`stochastic_stats`; ``lambda_over_gd_edge_median`` is the second-half median of the
    (step's own batch) ``lambda_max / (2/eta)``.

    Args:
      rows: metrics rows in step order.

    Returns:
      The summary dict.

    >>> rows = [{"step": s, "loss": 1.0, "lambda_max": 2.0, "gd_edge": 4.0, "ratio": 1.0} for s in (0, 10, 20)]
    >>> s = summarize(rows)
    >>> s["final_step"], s["lambda_over_gd_edge_median"], s["ratio_median"], s["ratio_q4_median"]
    (20, 0.5, 1.0, 1.0)
    """
    out: dict = {"measurements": len(rows)}
    if rows:
        last = rows[-1]
        out["final_step"] = int(last["step"])
        for key in ("loss", "acc", "grad_norm", "lambda_max", "edge", "gd_edge", "ratio", "precond_sharpness",
                    "step_radius", "lambda_max_reg", "lr"):
            if last.get(key) is not None and not (key in ("edge", "gd_edge", "ratio") and not math.isfinite(last[key])):
                out[f"final_{key}"] = last[key]  # an edge at eta_t = 0 (the end of a schedule) is left out
        tests = [r for r in rows if r.get("test_loss") is not None]
        if tests:
            out["final_test_loss"] = tests[-1]["test_loss"]
            if tests[-1].get("test_acc") is not None:
                out["final_test_acc"] = tests[-1]["test_acc"]
        half = second_half(rows)
        out["lambda_over_gd_edge_median"] = half_median(rows, "lambda_max", per="gd_edge")[0]
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
    out |= stochastic_stats(rows)
    if rows and any(r.get("lr") is not None for r in rows):
        out["ratio_rows"] = f"under a schedule: the second half of the rows with eta_t >= {LR_FLOOR:g} x its peak"
    return out
