"""The README's "Your own model" snippet runs as written and measures what it claims."""

import re

import pytest
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_own_model_snippet_runs_and_is_short(capsys):
    text = README.read_text()
    section = text[text.index("## Your own model"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(code.strip().splitlines()) <= 22
    exec(compile(code, "README.md", "exec"), {})
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines()]
    assert [int(ln[0]) for ln in lines] == [0, 100, 200, 300]
    for _, lam, edge, ratio in lines:
        assert float(lam) > 0 and float(ratio) == pytest.approx(float(lam) / float(edge), rel=1e-5)
    # what the comment in the snippet says: SAM's lambda_max rises from half its edge to the edge
    assert float(lines[0][3]) < 0.6 and 0.9 <= float(lines[-1][3]) <= 1.1


def test_own_probe_snippet_prints_what_its_comment_says(capsys):
    text = README.read_text()
    section = text[text.index("## Your own probe"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    curvature, lam = map(float, capsys.readouterr().out.split())
    assert curvature == pytest.approx(2.8, rel=1e-6) and lam == pytest.approx(3.0, rel=1e-4)
