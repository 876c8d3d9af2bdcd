"""Every ``@gin.configurable`` of the package, read from its source without importing it.

gin learns a configurable when its module is imported, and importing the
package's modules starts TensorFlow (seconds). The start-up checks need only
the names, the parameters and, for the typed records (``@dataclasses.dataclass``
configurables such as ``ExperimentConfig``), the field annotations: all of them
are in the source. ``tests/test_main_errors.py`` checks this index against gin's
registry after the real import, so the two cannot drift apart.
"""

import ast
import functools
import os
from typing import Dict, FrozenSet, Iterator, List, NamedTuple, Optional, Tuple

from deeplab_panoptic.cli import recipes


class Configurable(NamedTuple):
  """One configurable as the source declares it.

  Attributes:
    selector: gin's full name, ``<module>.<name>``.
    where: ``file:line`` of its definition, for messages.
    params: the parameters gin may bind; None when any name is accepted (a
      ``**kwargs`` signature, or one inherited from outside the package).
    fields: a dataclass record's field annotations (name -> annotation ast); empty
      for other configurables.
  """
  selector: str
  where: str
  params: Optional[FrozenSet[str]]
  fields: Dict[str, ast.expr]

  @property
  def name(self) -> str:
    return self.selector.rsplit(".", 1)[-1]


def _gin_decorator(node: ast.expr) -> Optional[ast.expr]:
  """``node`` when it is ``@gin.configurable`` / ``@gin.register``, with or without a call."""
  target = node.func if isinstance(node, ast.Call) else node
  if (isinstance(target, ast.Attribute) and target.attr in ("configurable", "register")
      and isinstance(target.value, ast.Name) and target.value.id == "gin"):
    return node
  return None


def _keyword(call: ast.expr, name: str):
  if isinstance(call, ast.Call):
    for keyword in call.keywords:
      if keyword.arg == name:
        return ast.literal_eval(keyword.value)
  return None


def _is_dataclass(node: ast.ClassDef) -> bool:
  for decorator in node.decorator_list:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if ast.unparse(target) in ("dataclasses.dataclass", "dataclass"):
      return True
  return False


def _signature(function: ast.FunctionDef, drop_self: bool) -> Optional[FrozenSet[str]]:
  """Keyword-bindable parameter names; None when ``**kwargs`` accepts any."""
  if function.args.kwarg is not None:
    return None
  args = function.args.posonlyargs + function.args.args + function.args.kwonlyargs
  names = [a.arg for a in args]
  return frozenset(names[1:] if drop_self and names else names)


def _dataclass_fields(node: ast.ClassDef) -> Dict[str, ast.expr]:
  fields = {}
  for statement in node.body:
    if (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)
        and "ClassVar" not in ast.unparse(statement.annotation)):
      fields[statement.target.id] = statement.annotation
  return fields


class _Classes:
  """Every class of the package by simple name, to follow ``__init__`` up the bases."""

  def __init__(self, trees: List[Tuple[str, ast.Module]]):
    self._by_name: Dict[str, List[Tuple[str, ast.ClassDef]]] = {}
    for module, tree in trees:
      for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef):
          self._by_name.setdefault(node.name, []).append((module, node))

  def find(self, base: ast.expr, module: str) -> Optional[ast.ClassDef]:
    found = self._by_name.get(ast.unparse(base).split(".")[-1], [])
    same_module = [node for m, node in found if m == module]
    if same_module or len(found) == 1:
      return (same_module or [found[0][1]])[0]
    return None

  def params_and_fields(self, node: ast.ClassDef, module: str, depth: int = 0):
    """(params, dataclass fields) of a class, following its bases in the package."""
    fields = {}
    if _is_dataclass(node):
      for base in node.bases:
        parent = self.find(base, module)
        if parent is not None and depth < 10:
          fields.update(self.params_and_fields(parent, module, depth + 1)[1])
      fields.update(_dataclass_fields(node))
      return frozenset(fields), fields
    for statement in node.body:
      if isinstance(statement, ast.FunctionDef) and statement.name == "__init__":
        return _signature(statement, drop_self=True), fields
    if not node.bases:
      return frozenset(), fields
    parents = [self.find(base, module) for base in node.bases
               if ast.unparse(base) not in ("object", "abc.ABC", "ABC")]
    if not parents:
      return frozenset(), fields
    if len(parents) == 1 and parents[0] is not None and depth < 10:
      return self.params_and_fields(parents[0], module, depth + 1)[0], fields
    return None, fields  # An __init__ from outside the package: anything goes.


def _module_trees() -> Iterator[Tuple[str, str, ast.Module]]:
  """(module name, file path relative to the checkout, tree) of every package file."""
  top = os.path.dirname(recipes.PACKAGE_DIR)
  for directory, dirs, files in os.walk(recipes.PACKAGE_DIR):
    dirs[:] = sorted(d for d in dirs if not d.startswith((".", "__")) and d != "gin_files")
    for file_name in sorted(files):
      if not file_name.endswith(".py"):
        continue
      path = os.path.join(directory, file_name)
      parts = os.path.relpath(path, top)[:-len(".py")].split(os.sep)
      module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
      with open(path, encoding="utf-8") as f:
        yield module, os.path.relpath(path, top), ast.parse(f.read(), path)


def _restrict(params: Optional[FrozenSet[str]], decorator: ast.expr):
  """Applies gin's ``allowlist`` / ``denylist`` of the decorator."""
  allow, deny = _keyword(decorator, "allowlist"), _keyword(decorator, "denylist")
  if allow is not None:
    return frozenset(allow)
  if deny is not None and params is not None:
    return params - frozenset(deny)
  return params


@functools.lru_cache(maxsize=1)
def configurables() -> Tuple[Configurable, ...]:
  """Every configurable of the package (read once per process)."""
  trees = list(_module_trees())
  classes = _Classes([(module, tree) for module, _, tree in trees])
  found = []
  for module, path, tree in trees:
    for node in ast.walk(tree):
      if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
        continue
      for decorator in node.decorator_list:
        if _gin_decorator(decorator) is None:
          continue
        name = node.name
        if (isinstance(decorator, ast.Call) and decorator.args
            and isinstance(decorator.args[0], ast.Constant)):
          name = decorator.args[0].value
        name = _keyword(decorator, "name") or name
        if isinstance(node, ast.ClassDef):
          params, fields = classes.params_and_fields(node, module)
        else:
          params, fields = _signature(node, drop_self=False), {}
        selector = f"{_keyword(decorator, 'module') or module}.{name}"
        found.append(Configurable(selector, f"{path}:{node.lineno}",
                                  _restrict(params, decorator), fields))
  return tuple(found)


def matching(selector: str) -> List[Configurable]:
  """The configurables a gin selector names (gin's rule: the full name or a suffix
  of it at a dot)."""
  return [c for c in configurables()
          if c.selector == selector or c.selector.endswith("." + selector)]
