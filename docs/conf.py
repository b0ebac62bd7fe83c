"""Sphinx configuration of optstab's documentation site.

Build it (warnings are errors, as CI builds it through ``tests/test_docs.py``)::

  pip install -e ".[docs]"
  sphinx-build -W --keep-going -b html docs docs/_build/html

The build needs no network: cross-links to Python, NumPy, JAX, optax, flax and
chex are made by ``_ext/external_links.py`` from the object's import path, not
from downloaded intersphinx inventories. The API pages (``_ext/optstab_api.py``)
are generated when the build starts. The figure gallery (``gallery.md`` and
``gallery/``) is committed: ``python docs/make_gallery.py`` regenerates it from
the demos' ``quick`` presets, so the build trains nothing.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "_ext"))

import optstab  # noqa: E402  (after the path setup above)

project = "optstab"
author = "The optstab authors"
copyright = "The optstab authors"  # noqa: A001  (Sphinx's name)
release = optstab.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "optstab_api",
    "external_links",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
# gallery/*/measured.md: the measured tables, included by guide/figures.md.
exclude_patterns = ["_build", "**/.ipynb_checkpoints", "gallery/*/measured.md"]

# Every cross-reference must resolve: to optstab's own API, or (external_links)
# to the page of a Python, NumPy, JAX, optax, flax or chex object.
nitpicky = True

# Google-style docstrings (optstab's), LaTeX in ``.. math::`` and :math:.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
# optstab's Args and Attributes often describe several names in one entry
# ("metric, mode, reduce: how lr* is chosen"); napoleon's :param: fields would
# read the first names as a type. The list style keeps them together.
napoleon_use_param = False
napoleon_custom_sections = [("Attributes", "params_style")]
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
autodoc_preserve_defaults = True
# Signatures show these aliases by name, not expanded into ten-member unions.
# Only aliases never wrapped in Optional / a union: Sphinx 9 prints a wrapped
# one as "TypeAliasForwardRef('...')".
autodoc_type_aliases = {name: name for name in (
    "optax.ScalarOrSchedule", "optax.Params", "jax.typing.ArrayLike")}
autosummary_generate = False  # the pages are written by optstab_api

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"optstab {release}"
# No source-repository links: the package has no public address yet, and the API pages are
# generated at build time (docs/api/_generated is not in the repository).
html_theme_options = {}

# MathJax renders the equations in the reader's browser, from a CDN by default
# (MathJax 4). To read the site offline, point this at a local MathJax 2, e.g.
# Debian's libjs-mathjax: OPTSTAB_DOCS_MATHJAX2_PATH=
# "file:///usr/share/javascript/mathjax/MathJax.js?config=TeX-AMS_CHTML".
if os.environ.get("OPTSTAB_DOCS_MATHJAX2_PATH"):
  mathjax_path = os.environ["OPTSTAB_DOCS_MATHJAX2_PATH"]
  mathjax4_config = None
  mathjax3_config = None
  # MyST marks the page body tex2jax_ignore and each formula "math".
  mathjax2_config = {"tex2jax": {"inlineMath": [["\\(", "\\)"]], "displayMath": [["\\[", "\\]"]],
                                 "processClass": "math|tex2jax_process"}}
