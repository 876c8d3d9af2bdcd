"""Does a gin value fit a field's annotation? Read from the annotation's source (ast).

Only what a gin literal can be is checked: ``int`` (not ``bool``), ``float`` (an
``int`` too), ``bool``, ``str``, ``None``, sequences (a list or a tuple, each
item checked; ``Tuple[int, int]`` also by length), dicts, ``Literal[...]``,
``Optional`` / ``Union`` / ``X | Y``, and ``Callable`` (a ``@reference``). Any
other annotation (a class such as ``keras.Model``), and any ``@name()`` call,
whose result is only known at run time, is accepted.
"""

import ast
from typing import Any, Callable, Dict

from deeplab_panoptic.cli.gin_statements import Reference

_SEQUENCES = ("Sequence", "List", "list", "Tuple", "tuple", "Iterable", "Collection",
              "MutableSequence")
_MAPPINGS = ("Dict", "dict", "Mapping", "MutableMapping")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


_SCALARS: Dict[str, Callable[[Any], bool]] = {
    "int": _is_int,
    "float": lambda v: _is_int(v) or isinstance(v, float),
    "bool": lambda v: isinstance(v, bool),
    "str": lambda v: isinstance(v, str),
    "bytes": lambda v: isinstance(v, bytes),
}


def _name(node: ast.expr) -> str:
  return ast.unparse(node).split(".")[-1]


def _items(node: ast.expr):
  return list(node.elts) if isinstance(node, ast.Tuple) else [node]


def _fits_subscript(base: str, args, value) -> bool:
  """``base[args]``: Optional, Union, sequences, mappings, Callable, Literal."""
  if base == "Optional":
    return value is None or fits(args[0], value)
  if base == "Union":
    return any(fits(arg, value) for arg in args)
  if base in _SEQUENCES:
    if not isinstance(value, (list, tuple)):
      return False
    if base in ("Tuple", "tuple") and not (len(args) == 2 and isinstance(args[1], ast.Constant)
                                           and args[1].value is Ellipsis):
      return len(args) == len(value) and all(fits(a, v) for a, v in zip(args, value))
    return all(fits(args[0], v) for v in value)
  if base in _MAPPINGS:
    return isinstance(value, dict)
  if base == "Callable":
    return isinstance(value, Reference)
  if base == "Literal":
    return any(isinstance(a, ast.Constant) and a.value == value and type(a.value) is type(value)
               for a in args)
  return True


def fits(annotation: ast.expr, value) -> bool:
  """Whether ``value`` (a parsed gin value, macros resolved) fits ``annotation``."""
  if isinstance(value, Reference) and value.evaluate:
    return True  # The call's result is known only when it runs.
  if isinstance(annotation, ast.Constant):
    if annotation.value is None:
      return value is None
    if isinstance(annotation.value, str):  # A string annotation: parse it.
      try:
        return fits(ast.parse(annotation.value, mode="eval").body, value)
      except SyntaxError:
        return True
    return True
  if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
    return fits(annotation.left, value) or fits(annotation.right, value)
  if isinstance(annotation, ast.Subscript):
    return _fits_subscript(_name(annotation.value), _items(annotation.slice), value)
  if isinstance(annotation, (ast.Name, ast.Attribute)):
    name = _name(annotation)
    if name in _SCALARS:
      return _SCALARS[name](value)
    if name in _SEQUENCES:
      return isinstance(value, (list, tuple))
    if name in _MAPPINGS:
      return isinstance(value, dict)
    if name == "Callable":
      return isinstance(value, Reference)
  return True  # A class (keras.Model, ...): only known at run time.


def describe(value) -> str:
  """How a value reads in a message: ``'ten' (a str)``, ``@Foo``, ``128 (an int)``."""
  if isinstance(value, Reference):
    return f"@{value.name}{'()' if value.evaluate else ''}"
  kind = type(value).__name__
  article = "an" if kind[0] in "aeiou" else "a"
  return f"{value!r} ({article} {kind})"
