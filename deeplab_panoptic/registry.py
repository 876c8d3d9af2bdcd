"""Imports every module of the package, so that gin files can name every configurable.

gin learns the name of a ``@gin.configurable`` when the module that defines it is
imported. Rather than a hand-kept list (which a new part can be missing from),
this module walks the ``deeplab_panoptic`` package and imports each of its
modules: a part is registered as soon as its file exists. Only the entry points
are skipped (``SKIPPED``): they hold no configurable and importing them is the
job of the command line (``main`` itself imports this module).
``tests/test_registry.py`` checks that every configurable in the source is
known to gin after ``import deeplab_panoptic.registry``.
"""

import importlib
import pkgutil
from typing import Iterator, List

import deeplab_panoptic

# Packages / modules not imported (with everything under them): entry points.
SKIPPED = ("deeplab_panoptic.main", "deeplab_panoptic.tools")


def _skipped(name: str) -> bool:
  return any(name == s or name.startswith(s + ".") for s in SKIPPED)


def module_names() -> List[str]:
  """Every module under ``deeplab_panoptic`` but ``SKIPPED``, sorted (subpackages are
  imported to list their modules)."""
  return sorted(_walk(deeplab_panoptic.__path__, "deeplab_panoptic."))


def _walk(path, prefix: str) -> Iterator[str]:
  for info in pkgutil.iter_modules(path, prefix):
    if _skipped(info.name):
      continue
    yield info.name
    if info.ispkg:
      yield from _walk(importlib.import_module(info.name).__path__, info.name + ".")


def import_all() -> List[str]:
  """Imports every module of ``module_names()``; returns their names."""
  names = module_names()
  for name in names:
    importlib.import_module(name)
  return names


MODULES = import_all()
