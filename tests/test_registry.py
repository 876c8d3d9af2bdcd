"""Every gin configurable of the package is known to gin after ``import registry``.

The configurables are found in the source (ast: ``@gin.configurable`` /
``@gin.register`` decorators and ``gin.external_configurable`` calls), not
through the registry, so a part whose module the registry does not import fails
here by name.
"""

import ast
import os
import sys
from typing import List, NamedTuple, Optional

import gin
import pytest

from deeplab_panoptic import registry

PACKAGE = "deeplab_panoptic"
ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), PACKAGE)


class Configurable(NamedTuple):
  module: str     # the python module that defines it
  selector: str   # gin's full name: "<module>.<name>"
  where: str      # file:line


def _module_name(path: str) -> str:
  parts = os.path.relpath(path, os.path.dirname(ROOT))[:-len(".py")].split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _gin_call(node: ast.AST, names) -> Optional[ast.AST]:
  """``node`` if it is ``gin.<name>`` or ``gin.<name>(...)`` for a name in ``names``."""
  target = node.func if isinstance(node, ast.Call) else node
  if (isinstance(target, ast.Attribute) and target.attr in names
      and isinstance(target.value, ast.Name) and target.value.id == "gin"):
    return node
  return None


def _keyword(call: ast.AST, name: str) -> Optional[str]:
  if not isinstance(call, ast.Call):
    return None
  for keyword in call.keywords:
    if keyword.arg == name and isinstance(keyword.value, ast.Constant):
      return keyword.value.value
  return None


def _selector(call: ast.AST, default_name: str, default_module: str) -> str:
  name = default_name
  if isinstance(call, ast.Call) and call.args and isinstance(call.args[0], ast.Constant):
    name = call.args[0].value
  name = _keyword(call, "name") or name
  return f"{_keyword(call, 'module') or default_module}.{name}"


def source_configurables() -> List[Configurable]:
  """Every configurable declared in the package's source."""
  found = []
  for directory, _, files in os.walk(ROOT):
    for file_name in sorted(files):
      if not file_name.endswith(".py"):
        continue
      path = os.path.join(directory, file_name)
      module = _module_name(path)
      where = os.path.relpath(path, os.path.dirname(ROOT))
      with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
      for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
          for decorator in node.decorator_list:
            call = _gin_call(decorator, ("configurable", "register"))
            if call is not None:
              found.append(Configurable(module, _selector(call, node.name, module),
                                        f"{where}:{node.lineno}"))
        elif isinstance(node, ast.Call) and _gin_call(node, ("external_configurable",)):
          # An external configurable's module is that of the object registered,
          # unknown to the source: it is checked by its short name.
          name = _keyword(node, "name") or (node.args[1].value if len(node.args) > 1
                                            else ast.unparse(node.args[0]).split(".")[-1])
          found.append(Configurable(module, name, f"{where}:{node.lineno}"))
  return found


def test_the_source_scan_finds_the_parts():
  selectors = {c.selector for c in source_configurables()}
  assert "deeplab_panoptic.modeling.meta_arch.MaskTransformer" in selectors
  assert "deeplab_panoptic.modeling.layers.conv.batch_norm" in selectors
  assert len(selectors) > 40


@pytest.mark.parametrize("configurable", source_configurables(), ids=lambda c: c.selector)
def test_every_configurable_is_registered(configurable):
  assert configurable.module in sys.modules, (
      f"{configurable.where}: {configurable.module} is not imported by "
      "deeplab_panoptic.registry")
  known = gin.config._REGISTRY.matching_selectors(configurable.selector)  # pylint: disable=protected-access
  assert known, f"{configurable.where}: gin does not know {configurable.selector}"


def test_every_module_is_discovered():
  """A new module is registered by existing: the registry lists every module file."""
  expected = set()
  for directory, _, files in os.walk(ROOT):
    for file_name in files:
      if file_name.endswith(".py"):
        expected.add(_module_name(os.path.join(directory, file_name)))
  expected = {m for m in expected if m != PACKAGE and not registry._skipped(m)}  # pylint: disable=protected-access
  assert set(registry.MODULES) == expected
  assert "deeplab_panoptic.tools.import_deeplab2" not in registry.MODULES


def test_short_names_are_unambiguous():
  """Recipes name configurables by their short name: two of one name would make
  every recipe that uses it ambiguous."""
  short = {}
  for configurable in source_configurables():
    short.setdefault(configurable.selector.rsplit(".", 1)[-1], set()).add(
        configurable.selector)
  clashes = {name: sorted(s) for name, s in short.items() if len(s) > 1}
  assert not clashes
