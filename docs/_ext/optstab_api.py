"""The API reference, generated from optstab's public names at build time.

A module's public names are its ``__all__``; without one, a package's public
names are the non-underscore names it binds (its re-exports), and a plain
module's are the non-underscore names it defines. Every public object is
documented once, at its shortest public path (``optstab.diagnose``, not
``optstab.diagnosis.diagnose``); each other module that re-exports it lists it
with a link. The pages are written into ``api/_generated/`` when the build
starts, so a name added to a module (or a new subpackage such as
``optstab.transformer``) appears without touching the docs, and
``tests/test_docs.py`` checks every public name against the built site.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import types
from typing import Any

ROOT_PACKAGE = "optstab"
# Runnable example scripts, not API: documented by the guide that runs them.
EXCLUDED_MODULES = ("optstab.examples",)
GENERATED_DIR = os.path.join("api", "_generated")


def _is_private(module_name: str) -> bool:
  return any(part.startswith("_") for part in module_name.split("."))


def public_modules(root: str = ROOT_PACKAGE) -> list[types.ModuleType]:
  """Every public module of ``root``, parents before children, alphabetically."""
  package = importlib.import_module(root)
  modules = [package]
  for info in pkgutil.walk_packages(package.__path__, root + "."):
    if _is_private(info.name) or info.name.startswith(EXCLUDED_MODULES):
      continue
    modules.append(importlib.import_module(info.name))
  return sorted(modules, key=lambda m: m.__name__)


def public_names(module: types.ModuleType) -> list[str]:
  """The public names of ``module`` (see the module docstring for the rule)."""
  explicit = getattr(module, "__all__", None)
  if explicit is not None:
    return list(explicit)
  is_package = hasattr(module, "__path__")
  names = []
  for name, value in vars(module).items():
    if name.startswith("_") or isinstance(value, types.ModuleType):
      continue
    if name == "annotations" and value.__class__.__name__ == "_Feature":
      continue  # from __future__ import annotations
    if not is_package and getattr(value, "__module__", None) != module.__name__:
      continue  # an import, not a definition
    names.append(name)
  return sorted(names)


@dataclasses.dataclass(frozen=True)
class PublicObject:
  """One public object: where it is documented and every path it is public at."""

  canonical: str           # "optstab.diagnose"
  paths: tuple[str, ...]   # ("optstab.diagnose", "optstab.diagnosis.diagnose")
  value: Any


def public_objects(root: str = ROOT_PACKAGE) -> dict[str, PublicObject]:
  """Every public object of ``root`` keyed by its canonical (shortest) path.

  Two public names are the same object when they have the same last name and
  are the same Python object (``from x import y as y`` keeps both), so interned
  strings that happen to be equal under different names stay separate.
  """
  by_identity: dict[tuple[str, int], list[tuple[str, Any]]] = {}
  for module in public_modules(root):
    for name in public_names(module):
      value = getattr(module, name)
      by_identity.setdefault((name, id(value)), []).append((f"{module.__name__}.{name}", value))
  objects = {}
  for entries in by_identity.values():
    paths = tuple(path for path, _ in entries)
    canonical = min(paths, key=lambda p: (p.count("."), paths.index(p)))
    objects[canonical] = PublicObject(canonical, paths, entries[0][1])
  return objects


def _fields(cls: type) -> list[str]:
  """A dataclass's or NamedTuple's fields: its docstring's Attributes describe them."""
  if dataclasses.is_dataclass(cls):
    return [f.name for f in dataclasses.fields(cls)]
  return list(getattr(cls, "_fields", ()))


def _directive(path: str, value: Any) -> str:
  if inspect.isclass(value):
    fields = _fields(value)
    exclude = f"   :exclude-members: {', '.join(fields)}\n" if fields else ""
    return f".. autoclass:: {path}\n   :members:\n   :show-inheritance:\n{exclude}"
  if callable(value) and not isinstance(value, type) and inspect.isroutine(value):
    return f".. autofunction:: {path}\n"
  text = repr(value)
  option = "" if len(text) <= 70 else "   :no-value:\n"
  return f".. autodata:: {path}\n{option}"


def _heading(text: str, underline: str) -> str:
  return f"{text}\n{underline * len(text)}\n"


def _home(obj: PublicObject, page_module: str) -> str:
  """The optstab module ``obj`` belongs to, for grouping: the one defining it, or
  (for a re-exported outside object such as ``optax.clip_by_global_norm``) the
  most specific module that exports it; else the page's module."""
  home = getattr(obj.value, "__module__", None)
  if isinstance(home, str) and home.startswith(ROOT_PACKAGE) and not _is_private(home):
    return home
  exporters = [path.rpartition(".")[0] for path in obj.paths]
  return max(exporters, key=lambda m: m.count(".")) if exporters else page_module


def _module_page(module: types.ModuleType, objects: dict[str, PublicObject],
                 indexed: set[str]) -> str:
  """The rst page of one module: its docstring, its own objects, its re-exports.

  A package's objects are grouped under the docstring of the module that
  defines each (``optstab.clipping``'s rule, positions and failure mode head
  the clipping functions). ``described`` holds the modules whose docstring a
  page indexes (is the link target of); each module is indexed once.
  """
  name = module.__name__
  own = sorted((o for o in objects.values() if o.canonical.rpartition(".")[0] == name),
               key=lambda o: o.canonical)
  elsewhere = sorted(o.canonical for o in objects.values()
                     if f"{name}.{o.canonical.rpartition('.')[2]}" in o.paths
                     and o.canonical.rpartition(".")[0] != name)
  parts = [_heading(f"``{name}``", "="), _automodule(name, indexed, own_page=True)]
  if elsewhere:
    links = ", ".join(f":py:obj:`{path}`" for path in elsewhere)
    parts.append(f"Also public here, documented at the path shown: {links}.\n")
  groups: dict[str, list[PublicObject]] = {}
  for obj in own:
    groups.setdefault(_home(obj, name), []).append(obj)
  # Groups in the order the package imports them (optstab: optimizers, warmup, clipping, telemetry, diagnosis).
  order = list(vars(module))
  first = {h: min(order.index(o.canonical.rpartition(".")[2]) for o in members) for h, members in groups.items()}
  for home in sorted(groups, key=lambda h: (h != name, first[h])):
    if home != name:
      parts.append(_heading(f"``{home}``", "-"))
      parts.append(_automodule(home, indexed))
      parts.append(f".. py:currentmodule:: {name}\n")
    parts.append(_summary(groups[home]))
    parts.extend(_directive(o.canonical, o.value) for o in groups[home])
  return "\n".join(parts)


def _summary(objects: list[PublicObject]) -> str:
  return (".. autosummary::\n   :nosignatures:\n\n"
          + "".join(f"   {o.canonical.rpartition('.')[2]}\n" for o in objects))


def _automodule(name: str, indexed: set[str], own_page: bool = False) -> str:
  no_index = "" if own_page or name not in indexed else "   :no-index:\n"
  indexed.add(name)
  return f".. automodule:: {name}\n   :no-members:\n{no_index}"


def write_api_pages(srcdir: str, root: str = ROOT_PACKAGE) -> list[str]:
  """Writes the API pages into ``srcdir/api/_generated``; returns their module names.

  A module gets a page when it holds an object's canonical path, or when no
  other page carries its docstring (so every public module is a link target).
  """
  objects = public_objects(root)
  modules = public_modules(root)
  homes = {_home(o, o.canonical.rpartition(".")[0]) for o in objects.values()}
  page_modules = [m for m in modules
                  if any(o.canonical.rpartition(".")[0] == m.__name__ for o in objects.values())
                  or m.__name__ not in homes]
  out_dir = os.path.join(srcdir, GENERATED_DIR)
  os.makedirs(out_dir, exist_ok=True)
  # A module with a page of its own is the link target there; the others at
  # the first group they head.
  indexed = {m.__name__ for m in page_modules}
  pages = {m.__name__: _module_page(m, objects, indexed) for m in page_modules}
  for name, page in pages.items():
    path = os.path.join(out_dir, name + ".rst")
    # Rewrite only on change, so an incremental build does not reread every page.
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else None
    if old != page:
      with open(path, "w", encoding="utf-8") as f:
        f.write(page)
  for stale in set(os.listdir(out_dir)) - {name + ".rst" for name in pages}:
    os.remove(os.path.join(out_dir, stale))
  return list(pages)


def _show_default_factories(app, what, name, obj, options, signature, return_annotation):
  """A dataclass field's ``default_factory`` shows as ``dict()``, not ``<factory>``.

  ``<factory>`` is not Python, so Sphinx would fall back to splitting the
  signature on commas and break ``Mapping[str, float]`` in two.
  """
  if what != "class" or not signature or not dataclasses.is_dataclass(obj):
    return None
  for field in dataclasses.fields(obj):
    if field.default_factory is not dataclasses.MISSING:
      factory = getattr(field.default_factory, "__qualname__", "factory")
      signature = signature.replace("<factory>", f"{factory}()", 1)
  return signature, return_annotation


def _on_builder_inited(app) -> None:
  write_api_pages(app.srcdir)


def setup(app):
  app.connect("builder-inited", _on_builder_inited)
  app.connect("autodoc-process-signature", _show_default_factories)
  return {"parallel_read_safe": True, "parallel_write_safe": True}
