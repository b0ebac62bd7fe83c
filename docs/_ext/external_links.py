"""Cross-references the build resolves itself, offline, in place of intersphinx.

intersphinx downloads each project's ``objects.inv`` at build time; the docs
build (CI included) has no network. Sphinx asks ``missing-reference`` handlers
about every reference its own domains cannot resolve, and this one answers:

* optstab names at any path they are reachable by (``optstab.diagnosis.trial.
  TrialConfig`` in an annotation, ``TrialConfig`` in a docstring) link to the
  object's one documented path (``optstab.TrialConfig``, see ``optstab_api``);
  a name that exists in optstab but is not public (a private type alias)
  stays plain text.
* Python, NumPy, JAX, optax, flax, chex and matplotlib objects are imported to
  check they exist, mapped from private paths (``jax._src.mesh.Mesh``) to
  their public name (``jax.sharding.Mesh``), and linked to the page their
  project documents them on. Each project names its pages after the object
  (NumPy, JAX, optax), or the module (Python), or a topic page listed in
  ``external_pages.json`` (flax; optax's names, because optax documents
  ``optax.inject_hyperparams`` as ``optax.schedules.inject_hyperparams``).
  Private objects without a public name stay plain text.

Anything else is left to Sphinx, so a misspelt reference still fails a ``-W``
build.
"""

from __future__ import annotations

import builtins
import functools
import importlib
import inspect
import json
import os
import sys
from typing import Any, Optional

from docutils import nodes

import optstab_api

HERE = os.path.dirname(os.path.abspath(__file__))
_MISSING = object()

# Where each project's public names live, most specific first.
PUBLIC_MODULES = {
    "numpy": ("numpy", "numpy.typing", "numpy.random"),
    "jax": ("jax", "jax.sharding", "jax.typing", "jax.numpy", "jax.random", "jax.lax", "jax.tree"),
    "chex": ("chex",),
    "matplotlib": ("matplotlib.figure", "matplotlib.axes"),
}
OPTAX_URL = "https://optax.readthedocs.io/en/latest/api/generated/{name}.html"
FLAX_URL = "https://flax.readthedocs.io/en/latest/api_reference/{page}#{name}"
PYTHON_URL = "https://docs.python.org/3/library/{page}.html#{name}"


@functools.cache
def _external_pages() -> dict[str, Any]:
  with open(os.path.join(HERE, "external_pages.json"), encoding="utf-8") as f:
    return json.load(f)


def _import_path(path: str) -> Any:
  """The object at a dotted path (modules imported as needed), or _MISSING."""
  parts = path.split(".")
  if len(parts) == 1 and hasattr(builtins, path):
    return getattr(builtins, path)  # int, str, None: Python's own pages
  for split in range(len(parts), 0, -1):
    try:
      value = importlib.import_module(".".join(parts[:split]))
    except Exception:  # pylint: disable=broad-except  (any failure: not a module)
      continue
    for attr in parts[split:]:
      value = getattr(value, attr, _MISSING)
      if value is _MISSING:
        return _MISSING
    return value
  return _MISSING


def _same(a: Any, b: Any) -> bool:
  try:
    return a is b or (inspect.isclass(a) and a == b)
  except Exception:  # pylint: disable=broad-except
    return False


def _public_name(path: str, value: Any, candidates) -> Optional[str]:
  """``path`` if it is public, else the first candidate name bound to ``value``."""
  if not any(part.startswith("_") for part in path.split(".")):
    return path
  last = path.rsplit(".", 1)[-1]
  for name in candidates(last):
    if _same(_import_path(name), value):
      return name
  return None


def _in_modules(package: str):
  return lambda last: [f"{m}.{last}" for m in PUBLIC_MODULES[package]]


def _documented(names):
  return lambda last: [n for n in names if n.rsplit(".", 1)[-1] == last]


def _numpy_url(name: str, value: Any) -> str:
  if name.startswith("numpy.typing."):
    return f"https://numpy.org/doc/stable/reference/typing.html#{name}"
  if name.startswith("numpy.random."):
    return f"https://numpy.org/doc/stable/reference/random/generator.html#{name}"
  if inspect.isclass(value) and issubclass(value, importlib.import_module("numpy").generic):
    return f"https://numpy.org/doc/stable/reference/arrays.scalars.html#{name}"
  return f"https://numpy.org/doc/stable/reference/generated/{name}.html"


def _jax_url(name: str, value: Any) -> str:
  module = name.rsplit(".", 1)[0]
  if module in ("jax.sharding", "jax.typing"):
    return f"https://docs.jax.dev/en/latest/{module}.html#{name}"
  if module == "jax.numpy" and inspect.isclass(value):  # dtypes: listed on the module page
    return "https://docs.jax.dev/en/latest/jax.numpy.html"
  return f"https://docs.jax.dev/en/latest/_autosummary/{name}.html"


def _python_url(path: str, value: Any) -> Optional[str]:
  top = path.split(".")[0]
  if top == "builtins" or (top == path and hasattr(builtins, path)):
    name = path.rsplit(".", 1)[-1]
    if inspect.isclass(value) and issubclass(value, BaseException):
      return PYTHON_URL.format(page="exceptions", name=name)
    if value is None or isinstance(value, bool) or value is Ellipsis or value is NotImplemented:
      return PYTHON_URL.format(page="constants", name=name)
    return PYTHON_URL.format(page="functions", name=name)
  if top not in sys.stdlib_module_names or any(p.startswith("_") for p in path.split(".")):
    return None
  parts = path.split(".")
  for split in range(len(parts) - 1, 0, -1):  # the module page: collections.abc, os, typing
    module = ".".join(parts[:split])
    if module in sys.modules or _import_path(module) is not _MISSING:
      if inspect.ismodule(_import_path(module)):
        return PYTHON_URL.format(page=module, name=path)
  return None


def external_url(path: str) -> Optional[str]:
  """The documentation URL of an outside object, or None (see the module docstring).

  Raises:
    LookupError: ``path`` is private and has no public name (link nothing).
  """
  value = _import_path(path)
  top = path.split(".")[0]
  if value is _MISSING and top in PUBLIC_MODULES:
    # A stringified annotation names the class by its __module__, which may not
    # be importable as written (jax.Array is "jax.jaxlib._jax.Array").
    value = next((v for v in map(_import_path, _in_modules(top)(path.rsplit(".", 1)[-1]))
                  if v is not _MISSING and _outside_path(v) == path), _MISSING)
  if value is _MISSING:
    return None
  if top == "optax":
    name = _public_name(path, value, _documented(_external_pages()["optax"]))
    if name not in _external_pages()["optax"]:
      name = next((n for n in _documented(_external_pages()["optax"])(path.rsplit(".", 1)[-1])
                   if _same(_import_path(n), value)), None)
    if name is None:
      raise LookupError(path)
    return OPTAX_URL.format(name=name)
  if top == "flax":
    pages = _external_pages()["flax"]
    name = next((n for n in ([path] if path in pages else []) + _documented(pages)(path.rsplit(".", 1)[-1])
                 if _same(_import_path(n), value)), None)
    if name is None:
      raise LookupError(path)
    return FLAX_URL.format(page=pages[name], name=name)
  if top in PUBLIC_MODULES:
    name = _public_name(path, value, _in_modules(top))
    if name is None:
      raise LookupError(path)
    if top == "numpy":
      return _numpy_url(name, value)
    if top == "jax":
      return _jax_url(name, value)
    if top == "chex":
      return f"https://chex.readthedocs.io/en/latest/api.html#{name}"
    return f"https://matplotlib.org/stable/api/_as_gen/{name}.html"
  url = _python_url(path, value)
  if url is None and top in sys.stdlib_module_names:
    raise LookupError(path)
  return url


@functools.cache
def _optstab_aliases() -> tuple[dict[str, str], dict[str, str]]:
  """(every dotted path of a public optstab object -> its canonical path, basename -> canonical)."""
  aliases, by_basename, clashes = {}, {}, set()
  for obj in optstab_api.public_objects().values():
    paths = set(obj.paths)
    module, qualname = getattr(obj.value, "__module__", None), getattr(obj.value, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and module.startswith(optstab_api.ROOT_PACKAGE):
      paths.add(f"{module}.{qualname}")
    for path in paths:
      aliases[path] = obj.canonical
    base = obj.canonical.rsplit(".", 1)[-1]
    if base in by_basename and by_basename[base] != obj.canonical:
      clashes.add(base)
    by_basename[base] = obj.canonical
  return aliases, {k: v for k, v in by_basename.items() if k not in clashes}


def optstab_target(target: str) -> Optional[str]:
  """The canonical path of an optstab reference (or of its class's member)."""
  aliases, by_basename = _optstab_aliases()
  parts = target.split(".")
  for split in range(len(parts), 0, -1):
    head = ".".join(parts[:split])
    canonical = aliases.get(head) or (by_basename.get(head) if split == 1 else None)
    if canonical:
      return ".".join([canonical, *parts[split:]])
  return None


def _seen_from_optstab(target: str) -> Any:
  """What a relative name in an optstab docstring or annotation means, or _MISSING."""
  if target.startswith(optstab_api.ROOT_PACKAGE + "."):
    return _import_path(target)
  head, *rest = target.split(".")
  for module in optstab_api.public_modules():
    value = getattr(module, head, _MISSING)
    for attr in rest:
      value = getattr(value, attr, _MISSING) if value is not _MISSING else _MISSING
    if value is not _MISSING:
      return value
  return _MISSING


def _outside_path(value: Any) -> Optional[str]:
  """Where a class, function or module is defined (not a type alias: ``optax.
  ScalarOrSchedule`` is a ``typing.Union`` and must keep its own name)."""
  if inspect.ismodule(value):
    return value.__name__
  if not (inspect.isclass(value) or inspect.isroutine(value)):
    return None
  module, qualname = getattr(value, "__module__", None), getattr(value, "__qualname__", None)
  if isinstance(module, str) and isinstance(qualname, str):
    return f"{module}.{qualname}"
  return None


def _on_missing_reference(app, env, node, contnode):
  if node.get("refdomain") != "py":
    return None
  target = node["reftarget"]
  canonical = optstab_target(target)
  if canonical and canonical != target:
    domain = env.get_domain("py")
    for typ in (node["reftype"], "obj"):
      resolved = domain.resolve_xref(env, node.get("refdoc", ""), app.builder, typ, canonical, node, contnode)
      if resolved is not None:
        return resolved
  seen = _MISSING if canonical else _seen_from_optstab(target)
  # Only a relative name (``np.ndarray`` in a docstring) is rewritten to its home.
  outside = _outside_path(seen) if seen is not _MISSING and _import_path(target) is _MISSING else None
  if outside and not outside.startswith(optstab_api.ROOT_PACKAGE):
    target = outside  # ``np.ndarray`` in a docstring is numpy.ndarray
  try:
    url = external_url(target)
  except LookupError:
    return contnode  # a private outside object: shown, not linked
  if url:
    reference = nodes.reference("", "", internal=False, refuri=url, reftitle=target)
    reference += contnode
    return reference
  if seen is not _MISSING:
    return contnode  # exists in optstab, deliberately not public (e.g. a type alias)
  return None


def _napoleon_without_inline_types(app) -> None:
  """optstab's property and constant docstrings are prose, not napoleon's "type: text".

  napoleon reads the first line of an attribute's docstring as ``type:
  description``, which turns "Channels of the three groups: ``(16 k, 32 k,
  64 k)``" into a type named "Channels of the three groups". optstab's types
  come from annotations, so napoleon's listener is replaced by one that parses
  attribute docstrings like any other (Args, Returns, ... sections still work).
  """
  from sphinx.ext import napoleon  # pylint: disable=import-outside-toplevel

  listeners = app.events.listeners["autodoc-process-docstring"]
  for listener in list(listeners):
    if listener.handler is napoleon._process_docstring:  # pylint: disable=protected-access
      app.disconnect(listener.id)

  def process(app, what, name, obj, options, lines):
    if what in ("attribute", "data", "property"):
      what = "object"
    napoleon._process_docstring(app, what, name, obj, options, lines)  # pylint: disable=protected-access

  app.connect("autodoc-process-docstring", process)


def _type_docstrings_are_not_data_docstrings(app, what, name, obj, options, lines):
  """A constant without a docstring of its own would show ``dict``'s or ``str``'s."""
  if what in ("data", "attribute") and lines and inspect.getdoc(type(obj)) == "\n".join(lines).strip():
    lines[:] = []


def setup(app):
  app.setup_extension("sphinx.ext.napoleon")
  _napoleon_without_inline_types(app)
  app.connect("autodoc-process-docstring", _type_docstrings_are_not_data_docstrings, priority=400)
  app.connect("missing-reference", _on_missing_reference)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
