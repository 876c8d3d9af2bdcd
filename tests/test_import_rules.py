"""Imports go down the layers: the package's import graph, read from the source (ast).

The rules (docs/architecture.md):
  * ``modeling/layers`` imports no other modeling package: from ``modeling`` only
    ``modeling.layers`` and the foundation modules ``modeling.base`` (the part
    contracts) and ``modeling.utils``, which import nothing of ``modeling``;
  * a part family (pixel encoders, pixel decoders, transformer decoders, heads)
    imports from ``modeling`` only its own family, ``layers`` and the foundation:
    what families share lives in ``layers`` or ``common``;
  * ``losses`` does not import ``modeling``;
  * ``export`` imports neither ``main`` nor ``training``;
  * ``data`` imports none of modeling, losses, postprocess, evaluation, training, export.

Every import counts, also those inside functions.
"""

import ast
import os
from typing import Iterator, List, NamedTuple, Optional

import pytest

PACKAGE = "deeplab_panoptic"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)

MODELING = f"{PACKAGE}.modeling"
FOUNDATION = (f"{MODELING}.base", f"{MODELING}.utils")
# Family -> the names under modeling/ that belong to it (a module or a package;
# a root module named "<family>_<...>.py" belongs to it as well).
FAMILIES = ("pixel_encoders", "pixel_decoders", "transformer_decoders", "heads")


class Import(NamedTuple):
  importer: str   # dotted module name
  imported: str   # dotted module name (a package's own module when a name is imported)
  where: str      # file:line
  text: str       # the import statement


def _module_name(path: str) -> str:
  relative = os.path.relpath(path, os.path.dirname(ROOT))[:-len(".py")]
  parts = relative.split(os.sep)
  if parts[-1] == "__init__":
    parts = parts[:-1]
  return ".".join(parts)


def _is_module(name: str) -> bool:
  path = os.path.join(os.path.dirname(ROOT), *name.split("."))
  return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> Optional[str]:
  if not node.level:
    return node.module
  base = importer.split(".")
  base = base if is_package else base[:-1]
  base = base[:len(base) - (node.level - 1)]
  return ".".join(base + ([node.module] if node.module else []))


def _imports_of(path: str) -> Iterator[Import]:
  importer = _module_name(path)
  with open(path, encoding="utf-8") as f:
    source = f.read()
  lines = source.splitlines()
  for node in ast.walk(ast.parse(source, path)):
    where = f"{os.path.relpath(path, os.path.dirname(ROOT))}:{node.lineno}" \
        if hasattr(node, "lineno") else path
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield Import(importer, alias.name, where, lines[node.lineno - 1].strip())
    elif isinstance(node, ast.ImportFrom):
      module = _resolve(node, importer, path.endswith("__init__.py"))
      if module is None:
        continue
      for alias in node.names:
        candidate = f"{module}.{alias.name}"
        imported = candidate if _is_module(candidate) else module
        yield Import(importer, imported, where, lines[node.lineno - 1].strip())


def package_imports() -> List[Import]:
  """Every import of a ``deeplab_panoptic`` module by a ``deeplab_panoptic`` module."""
  found = []
  for directory, _, files in os.walk(ROOT):
    for name in sorted(files):
      if name.endswith(".py"):
        found += [i for i in _imports_of(os.path.join(directory, name))
                  if i.imported == PACKAGE or i.imported.startswith(PACKAGE + ".")]
  return found


def _under(name: str, package: str) -> bool:
  return name == package or name.startswith(package + ".")


def family_of(name: str) -> Optional[str]:
  """The part family of a module (None outside the families)."""
  if not _under(name, MODELING) or name == MODELING:
    return None
  first = name[len(MODELING) + 1:].split(".")[0]
  for family in FAMILIES:
    if first == family or first.startswith(family + "_"):
      return family
  return None


def _layers_violation(i: Import) -> bool:
  if not _under(i.importer, f"{MODELING}.layers") or not _under(i.imported, MODELING):
    return False
  return not (_under(i.imported, f"{MODELING}.layers") or i.imported in FOUNDATION)


def _foundation_violation(i: Import) -> bool:
  return (i.importer in FOUNDATION and _under(i.imported, MODELING)
          and i.imported != MODELING)


def _family_violation(i: Import) -> bool:
  family = family_of(i.importer)
  if family is None or not _under(i.imported, MODELING) or i.imported == MODELING:
    return False
  return not (family_of(i.imported) == family or _under(i.imported, f"{MODELING}.layers")
              or i.imported in FOUNDATION)


def _forbidden(importer_package: str, *forbidden: str):
  def check(i: Import) -> bool:
    return (_under(i.importer, f"{PACKAGE}.{importer_package}")
            and any(_under(i.imported, f"{PACKAGE}.{f}") for f in forbidden))
  return check


RULES = {
    "modeling/layers imports no other modeling package": _layers_violation,
    "modeling/base.py and modeling/utils.py import nothing of modeling": _foundation_violation,
    "a part family imports no other family (only its own, layers, base, utils)":
        _family_violation,
    "losses does not import modeling": _forbidden("losses", "modeling"),
    "export imports neither main nor training": _forbidden("export", "main", "training"),
    "data imports none of modeling, losses, postprocess, evaluation, training, export":
        _forbidden("data", "modeling", "losses", "postprocess", "evaluation", "training",
                   "export"),
}


@pytest.fixture(scope="module")
def imports() -> List[Import]:
  return package_imports()


@pytest.mark.parametrize("rule", sorted(RULES))
def test_import_rule(imports, rule):
  violations = [f"{i.where}: {i.text}  ({i.importer} -> {i.imported})"
                for i in imports if RULES[rule](i)]
  assert not violations, f"{rule}:\n  " + "\n  ".join(violations)


def test_the_graph_is_read():
  """The reader sees the imports the rules are about (guards against a vacuous pass)."""
  found = package_imports()
  edges = {(i.importer, i.imported) for i in found}
  assert (f"{MODELING}.meta_arch", f"{MODELING}.base") in edges
  assert (f"{MODELING}.pixel_decoders.max_deeplab", f"{MODELING}.layers.axial_attention") \
      in edges
  assert family_of(f"{MODELING}.pixel_encoders.resnet") == "pixel_encoders"
  assert family_of(f"{MODELING}.heads") == "heads"
  assert family_of(f"{MODELING}.layers.conv") is None
  # A relative import is resolved like an absolute one.
  node = ast.parse("from ..layers import conv").body[0]
  assert _resolve(node, f"{MODELING}.heads.semantic", False) == f"{MODELING}.layers"


@pytest.mark.parametrize("importer, imported, rule", [
    (f"{MODELING}.layers.cmt_layer", f"{MODELING}.pixel_encoders.axial_resnet",
     "modeling/layers imports no other modeling package"),
    (f"{MODELING}.transformer_decoders.kmax", f"{MODELING}.heads",
     "a part family imports no other family (only its own, layers, base, utils)"),
    (f"{MODELING}.base", f"{MODELING}.layers.conv",
     "modeling/base.py and modeling/utils.py import nothing of modeling"),
    (f"{PACKAGE}.losses.mask_losses", f"{MODELING}.heads", "losses does not import modeling"),
    (f"{PACKAGE}.export.saved_model", f"{PACKAGE}.training.experiment",
     "export imports neither main nor training"),
    (f"{PACKAGE}.export.saved_model", f"{PACKAGE}.main",
     "export imports neither main nor training"),
    (f"{PACKAGE}.data.reader", f"{PACKAGE}.postprocess.panoptic",
     "data imports none of modeling, losses, postprocess, evaluation, training, export"),
])
def test_each_rule_catches_its_violation(importer, imported, rule):
  bad = Import(importer, imported, "x.py:1", "import x")
  assert RULES[rule](bad)
  assert [name for name, check in RULES.items() if check(bad)] == [rule]


@pytest.mark.parametrize("importer, imported", [
    (f"{MODELING}.layers.cmt_layer", f"{MODELING}.layers.dual_path"),
    (f"{MODELING}.layers.mask_predictor", f"{MODELING}.base"),
    (f"{MODELING}.transformer_decoders.kmax", f"{MODELING}.layers.mask_predictor"),
    (f"{MODELING}.pixel_decoders.cmt_deeplab", f"{MODELING}.pixel_decoders.max_deeplab"),
    (f"{MODELING}.meta_arch", f"{MODELING}.heads"),
    (f"{PACKAGE}.losses.mask_losses", f"{PACKAGE}.common"),
])
def test_allowed_imports_pass(importer, imported):
  good = Import(importer, imported, "x.py:1", "import x")
  assert not any(check(good) for check in RULES.values())
