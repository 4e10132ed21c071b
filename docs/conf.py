"""Sphinx configuration of samedge's documentation site (``pip install -e ".[docs]"``).

Build it with ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors, as in CI). The
pages are MyST Markdown; the API reference is autodoc + napoleon on the package's Google-style
docstrings; the quickstart notebook is executed by myst-nb at build time; MathJax is served from the
built site itself (``sphinx-mathjax-offline``), so neither the build nor a reader needs the network.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's package, installed or not
os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the notebook's kernel inherits it: the same figures everywhere

project = "samedge"
author = "the samedge developers"
copyright = "2026, the samedge developers"
from samedge import __version__ as release  # noqa: E402

version = release

extensions = [
    "myst_nb",  # MyST Markdown pages and executed notebooks (it loads myst_parser itself)
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax 3 copied into _static: no CDN at view time
    "sphinxarg.ext",  # the CLI reference, generated from samedge.cli.build_parser
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}  # .rst first: autosummary's pages
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
root_doc = "index"

# -- MyST ---------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3  # README/RESULTS section links resolve inside the site
# The how-to pages include README sections (## and ###) under their own title.
suppress_warnings = ["myst.header"]

# -- notebooks: executed at every build, an error fails it --------------------------------------
nb_execution_mode = "force"
nb_execution_timeout = 300
nb_execution_raise_on_error = True
nb_execution_show_tb = True
nb_ipywidgets_js = {}  # no widget scripts from a CDN: the notebook has no widgets

# -- autodoc ------------------------------------------------------------------------------------
autosummary_generate = True
autodoc_default_options = {"members": True, "show-inheritance": False}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_class_signature = "separated"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_use_ivar = True  # a NamedTuple's Attributes as fields: autodoc documents its members once

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"samedge {release}"
html_theme_options = {
    "show_toc_level": 2,
    "use_download_button": True,
    "navigation_with_keys": False,
}
html_static_path = []
smartquotes = False  # "--lr" stays two hyphens in the CLI help and the README sections

