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
