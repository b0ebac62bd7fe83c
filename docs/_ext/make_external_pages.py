"""Regenerates ``external_pages.json``: where optax and flax document each name.

optax and flax build their API pages with Sphinx from ``.rst`` files that name
every documented object; reading those files (from clones of the two
repositories) gives each object's page without downloading an intersphinx
inventory, which the docs build cannot do offline. Run it when a release moves
pages::

  python docs/_ext/make_external_pages.py OPTAX_CLONE FLAX_CLONE
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_CURRENT = re.compile(r"^\.\. (?:py:)?currentmodule:: (\S+)", re.M)
_AUTO = re.compile(r"^\.\. auto(?:class|function|data|module)?:: (\S+)", re.M)


def _rst_files(root):
  for folder, _, files in os.walk(root):
    for name in sorted(files):
      if name.endswith(".rst"):
        yield os.path.join(folder, name)


def _documented(path):
  """(full name) for each object an .rst file documents, in order."""
  text = open(path, encoding="utf-8").read()
  names, module = [], None
  for line in text.splitlines():
    current = _CURRENT.match(line)
    if current:
      module = current.group(1)
      continue
    auto = _AUTO.match(line)
    if auto:
      name = auto.group(1)
      names.append(name if "." in name or module is None else f"{module}.{name}")
    elif module and re.match(r"^    [A-Za-z_][\w.]*$", line) and "autosummary" in text:
      names.append(f"{module}.{line.strip()}")
  return names


def optax_names(clone):
  """optax uses one autosummary page per object: api/generated/<name>.html."""
  names = set()
  for path in _rst_files(os.path.join(clone, "docs", "api")):
    names.update(_documented(path))
  return sorted(n for n in names if n.startswith("optax"))


def flax_pages(clone):
  """flax.nnx documents objects on topic pages: api_reference/flax.nnx/<page>.html."""
  root = os.path.join(clone, "docs_nnx", "api_reference")
  pages = {}
  for path in _rst_files(os.path.join(root, "flax.nnx")):
    page = os.path.relpath(path, root)[:-len(".rst")] + ".html"
    for name in _documented(path):
      if name.startswith("flax.nnx"):
        pages.setdefault(name, page)
  return dict(sorted(pages.items()))


def main(argv):
  optax_clone, flax_clone = argv
  data = {"optax": optax_names(optax_clone), "flax": flax_pages(flax_clone)}
  with open(os.path.join(HERE, "external_pages.json"), "w", encoding="utf-8") as f:
    json.dump(data, f, indent=0, sort_keys=True)
    f.write("\n")


if __name__ == "__main__":
  main(sys.argv[1:])
