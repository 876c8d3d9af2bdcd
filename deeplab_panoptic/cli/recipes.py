"""Gin files by path or by recipe name, from a source checkout or an installed package.

The recipes (``experiments/**.gin``) and the building blocks they include
(``configs/**.gin``) live at the top of a source checkout. A built wheel ships
them as package data under ``deeplab_panoptic/gin_files/`` (``setup.py`` copies
them there), so that an installed package runs the same recipes from any
folder. A *search root* is a folder that holds both ``experiments/`` and
``configs/``: the package data of an installed package, and the checkout an
editable install (or ``python main.py``) runs from.

``--gin_file`` takes a path (``experiments/coco/kmax_r50_1281_150k.gin``), a path
under a search root, or a recipe name: the path under ``experiments/`` without
``.gin`` (``coco/kmax_r50_1281_150k``, ``quickstart/kmax_deeplab_shapes``).
``include 'configs/...'`` lines inside the recipes resolve through the same
roots (``add_search_paths``).
"""

import difflib
import importlib.util
import os
from typing import List, Optional

from deeplab_panoptic.cli.errors import UsageError

PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where a built wheel keeps experiments/ and configs/ (see setup.py).
PACKAGE_DATA_DIR = os.path.join(PACKAGE_DIR, "gin_files")
# The folder above the package: a source checkout when run from one.
CHECKOUT_DIR = os.path.dirname(PACKAGE_DIR)
RECIPE_DIR = "experiments"
BLOCK_DIR = "configs"
SUFFIX = ".gin"


def search_roots() -> List[str]:
  """Folders holding both ``experiments/`` and ``configs/``: package data first."""
  return [root for root in (PACKAGE_DATA_DIR, CHECKOUT_DIR)
          if os.path.isdir(os.path.join(root, RECIPE_DIR))
          and os.path.isdir(os.path.join(root, BLOCK_DIR))]


def recipe_names() -> List[str]:
  """Every recipe's name (``coco/kmax_r50_1281_150k``), sorted, without repeats."""
  names = set()
  for root in search_roots():
    top = os.path.join(root, RECIPE_DIR)
    for directory, _, files in os.walk(top):
      for name in files:
        if name.endswith(SUFFIX):
          relative = os.path.relpath(os.path.join(directory, name), top)
          names.add(relative[:-len(SUFFIX)].replace(os.sep, "/"))
  return sorted(names)


def _candidates(name: str) -> List[str]:
  return [name] if name.endswith(SUFFIX) else [name, name + SUFFIX]


def find_file(name: str) -> Optional[str]:
  """The file a ``--gin_file`` value names, or None.

  Args:
    name: a path, a path under a search root (``configs/datasets/coco.gin``) or
      a recipe name (``coco/kmax_r50_1281_150k``, with or without ``.gin``).

  Returns:
    ``name`` itself when it is a file from the working directory (or absolute),
    else the path under the first search root that has it.
  """
  for candidate in _candidates(name):
    if os.path.isfile(candidate):
      return candidate
  if os.path.isabs(name):
    return None
  for root in search_roots():
    for folder in ("", RECIPE_DIR):
      for candidate in _candidates(name):
        path = os.path.join(root, folder, candidate)
        if os.path.isfile(path):
          return path
  return None


def package_resource(name: str) -> Optional[str]:
  """gin's other include form, ``'some.package/file.gin'``: the file beside that
  package's ``__init__``; None when the package is not importable or has no file
  (a namespace package), or has no such file."""
  head, file_name = os.path.split(name)
  if not head or os.path.isabs(name):
    return None
  try:
    spec = importlib.util.find_spec(head.replace("/", "."))
  except (ImportError, ValueError):
    return None
  if spec is None or not spec.origin or not os.path.isfile(spec.origin):
    return None
  path = os.path.join(os.path.dirname(spec.origin), file_name)
  return path if os.path.isfile(path) else None


def find_include(name: str) -> Optional[str]:
  """The file of ``include 'name'``, looked up as gin does after ``add_search_paths``:
  from the working directory, then under each search root (each also as a package
  resource); or None."""
  if os.path.isabs(name):
    return name if os.path.isfile(name) else None
  for root in [""] + search_roots():
    path = os.path.join(root, name)
    if os.path.isfile(path):
      return path
    if not root and package_resource(name):
      return package_resource(name)
  return None


def resolve(name: str) -> str:
  """``find_file(name)``, or a UsageError that suggests the closest recipe name."""
  path = find_file(name)
  if path is not None:
    return path
  stem = name[:-len(SUFFIX)] if name.endswith(SUFFIX) else name
  stem = stem[len(RECIPE_DIR) + 1:] if stem.startswith(RECIPE_DIR + "/") else stem
  close = difflib.get_close_matches(stem, recipe_names(), n=1, cutoff=0.6)
  hint = (f"did you mean {close[0]}?" if close
          else "--list_recipes prints the recipe names")
  raise UsageError(f"gin file not found: {name} (neither a file nor a recipe name; "
                   f"{hint})")


def short_path(path: str) -> str:
  """``path`` relative to its search root (``configs/datasets/coco.gin``) when it
  lies under one, else as given: for messages."""
  absolute = os.path.abspath(path)
  for root in search_roots():
    if absolute.startswith(os.path.join(root, "")):
      return os.path.relpath(absolute, root).replace(os.sep, "/")
  return path


def _resource_exists(name: str) -> bool:
  return package_resource(name) is not None


def add_search_paths() -> None:
  """Lets gin's ``include`` lines find ``configs/...`` under every search root.

  gin tries each search path with each of its file readers in turn. Its package
  resource reader, asked for ``configs/models/x.gin`` when the working directory
  has no ``configs/``, imports ``configs.models`` as a Python package: it logs an
  ERROR line when there is none and raises TypeError for a namespace package (the
  checkout's ``configs/`` on ``sys.path``). Its existence check is replaced by
  ``package_resource``'s, which answers the same without either.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from gin import resource_reader  # pylint: disable=g-import-not-at-top
  readers = gin.config._FILE_READERS  # pylint: disable=protected-access
  for i, (reader, _) in enumerate(readers):
    if reader is resource_reader.system_path_reader:
      readers[i] = (reader, _resource_exists)
  prefixes = gin.config._LOCATION_PREFIXES  # pylint: disable=protected-access
  for root in search_roots():
    if root not in prefixes:
      gin.add_config_file_search_path(root)
