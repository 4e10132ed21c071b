"""Run summaries: second-half statistics against values computed by hand."""

import pytest

from samedge import analysis


def test_second_half_is_by_step_and_statistics_match_by_hand():
    rows = [{"step": s, "ratio": r, "lambda_max": 1.0, "gd_edge": 2.0, "loss": 1.0 / (s + 1)}
            for s, r in zip((0, 10, 20, 30, 40), (5.0, 0.5, 0.9, 1.0, 1.3))]
    assert [r["step"] for r in analysis.second_half(rows)] == [20, 30, 40]
    s = analysis.summarize(rows)
    assert s["ratio_median"] == 1.0 and s["ratio_count"] == 3
    assert s["ratio_within_10pct"] == pytest.approx(2 / 3)
    assert s["lambda_over_gd_edge_median"] == 0.5 and s["final_step"] == 40


def test_rows_without_an_edge_give_no_ratio():
    rows = [{"step": s, "ratio": None, "lambda_max": 1.0, "loss": 1.0} for s in (0, 10)]
    s = analysis.summarize(rows)
    assert s["ratio_median"] is None and s["ratio_count"] == 0


NAN = float("nan")
BATCH_KEYS = ("batch_sharpness_over_gd_edge_median", "batch_sharpness_rom_over_gd_edge_median",
              "lambda_max_full_over_gd_edge_median", "sam_batch_ratio_median", "batch_sharpness_count",
              "batch_sharpness_q3_median", "batch_sharpness_q4_median", "batch_sharpness_quarters_reldiff")


def _stochastic_rows():
    """Steps 0..80 by 10 (T = 80, eta 0.1: 2/eta = 20). Second half: steps 40..80; third quarter
    (40, 60]: steps 50, 60; fourth (60, 80]: steps 70, 80. Step 60's batch sharpness was not taken
    (NaN) and step 70's Lanczos did not converge (its row is left out everywhere)."""
    steps = list(range(0, 90, 10))
    bs = [1.0, 2.0, 3.0, 4.0, 16.0, 18.0, NAN, 40.0, 20.0]
    ratio = [0.1, 0.2, 0.3, 0.4, 0.9, 1.05, 1.0, 9.0, 1.1]
    return [{"step": s, "loss": 1.0, "lambda_max": 3.0 + s / 10, "gd_edge": 20.0, "edge": 8.0, "ratio": r,
             "batch_sharpness": b, "batch_sharpness_rom": 1.1 * b, "lambda_max_full": NAN,
             "sam_batch_ratio": b / 25.0, "converged": 0.0 if s == 70 else 1.0}
            for s, b, r in zip(steps, bs, ratio)]


def test_batch_sharpness_medians_over_two_over_eta_match_numpy():
    import numpy as np

    s = analysis.summarize(_stochastic_rows())
    kept = np.array([16.0, 18.0, 20.0])  # steps 40, 50, 80: step 60 is NaN, step 70 unconverged
    assert s["batch_sharpness_over_gd_edge_median"] == pytest.approx(np.median(kept / 20.0))  # 0.9
    assert s["batch_sharpness_count"] == 3
    assert s["batch_sharpness_rom_over_gd_edge_median"] == pytest.approx(np.median(1.1 * kept / 20.0))
    assert s["sam_batch_ratio_median"] == pytest.approx(np.median(kept / 25.0))
    # lambda_max / (2/eta) over the converged second half: steps 40, 50, 60, 80 -> 7, 8, 9, 11
    assert s["lambda_over_gd_edge_median"] == pytest.approx(np.median(np.array([7.0, 8.0, 9.0, 11.0]) / 20.0))
    assert "lambda_max_full_over_gd_edge_median" not in s  # a column of NaN only: absent, not None


def test_quarter_medians_and_their_relative_difference_by_hand():
    s = analysis.summarize(_stochastic_rows())
    # ratio: q3 = steps 50, 60 -> median(1.05, 1.0) = 1.025; q4 = step 80 only (70 unconverged) -> 1.1
    assert s["ratio_q3_median"] == pytest.approx(1.025) and s["ratio_q4_median"] == pytest.approx(1.1)
    assert s["ratio_quarters_reldiff"] == pytest.approx(0.075 / 1.025)
    # batch sharpness / 20: q3 = step 50 only (60 is NaN) -> 0.9; q4 = step 80 -> 1.0
    assert s["batch_sharpness_q3_median"] == pytest.approx(0.9) and s["batch_sharpness_q4_median"] == pytest.approx(1.0)
    assert s["batch_sharpness_quarters_reldiff"] == pytest.approx(0.1 / 0.9)


def test_quarters_are_by_step_with_the_lower_bound_left_out():
    rows = [{"step": s} for s in (0, 3, 5, 6, 9, 12)]  # T = 12: (6, 9] and (9, 12]
    q3, q4 = analysis.quarters(rows)
    assert [r["step"] for r in q3] == [9] and [r["step"] for r in q4] == [12]
    assert analysis.quarters([]) == ([], []) and analysis.quarters([{"step": 0}]) == ([], [])


def test_runs_without_batch_sharpness_get_no_batch_keys():
    full = [{"step": s, "loss": 1.0, "lambda_max": 1.0, "gd_edge": 2.0, "ratio": 0.5} for s in range(0, 50, 10)]
    s = analysis.summarize(full)
    assert not set(BATCH_KEYS) & set(s)
    assert s["ratio_q3_median"] == 0.5 and s["ratio_quarters_reldiff"] == 0.0  # the ratio's own stationarity
    nan_cols = [r | {"batch_sharpness": NAN, "batch_sharpness_rom": NAN, "lambda_max_full": NAN,
                     "sam_batch_ratio": NAN} for r in full]  # columns written but never taken
    assert not set(BATCH_KEYS) & set(analysis.summarize(nan_cols))
    assert analysis.stochastic_stats([]) == {}
