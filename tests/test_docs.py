"""The documentation site's sources agree with the code they draw from.

The build itself (``sphinx-build -W``, the notebook executed) runs in ``.ci/run``; these checks are the
cheap ones that name the broken link when a module, a README heading or the notebook changes.
"""

from __future__ import annotations

import json
import pkgutil
import re
from pathlib import Path

import pytest

import samedge

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def test_every_module_is_in_the_api_reference():
    # autosummary recurses into the subpackages listed; each top-level module must be listed itself.
    listed = set(re.findall(r"^   (\w+)$", (DOCS / "api" / "index.md").read_text(), flags=re.M))
    modules = {m.name for m in pkgutil.iter_modules(samedge.__path__) if m.name != "__main__"}
    assert modules - listed == set(), f"add these to docs/api/index.md: {sorted(modules - listed)}"
    assert listed - modules == set(), f"no such modules: {sorted(listed - modules)}"


def _includes():
    """Every ``{include}`` of the docs with its target file and start/end markers."""
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts or "generated" in page.parts:
            continue
        for block in re.findall(r"```\{include\} (\S+)\n(.*?)```", page.read_text(), flags=re.S):
            target, options = block
            markers = dict(re.findall(r'^:(start-after|end-before): "(.*)"$', options, flags=re.M))
            yield page, (page.parent / target).resolve(), markers


def test_included_sections_exist_once():
    found = list(_includes())
    assert len(found) >= 10
    for page, target, markers in found:
        assert target.is_file(), f"{page.relative_to(ROOT)} includes a missing {target}"
        text = target.read_text()
        for option, marker in markers.items():
            assert text.count(marker) == 1, (
                f"{page.relative_to(ROOT)}: {option} {marker!r} occurs {text.count(marker)} times in {target.name}")
        if len(markers) == 2:
            assert text.index(markers["start-after"]) < text.index(markers["end-before"])


def test_the_notebook_is_stored_clean_and_compiles():
    nb = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    assert nb["nbformat"] == 4
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert len(code) >= 5
    for cell in code:  # outputs are made by the docs build, never stored
        assert cell.get("outputs", []) == [] and cell.get("execution_count") is None
        compile("".join(cell["source"]), "<quickstart cell>", "exec")
    assert (DOCS / "quickstart.ipynb").resolve() == (ROOT / "examples" / "quickstart.ipynb").resolve()


@pytest.mark.parametrize("name", ["edges", "batch_sharpness"])
def test_concepts_draw_every_edge_from_the_docstrings(name):
    concepts = (DOCS / "concepts.md").read_text()
    module = __import__(f"samedge.{name}", fromlist=["_"])
    assert f"automodule:: samedge.{name}" in concepts
    if name == "edges":
        public = [f for f in module.__all__ if f.endswith("_edge") and f != "sam_edge_paper_form"]
        missing = [f for f in public if f"autofunction:: samedge.edges.{f}" not in concepts]
        assert missing == [], f"docs/concepts.md does not show {missing}"
