"""Gin files and bindings read into statements, with nothing registered or built.

gin's own parser (``gin.config_parser``) reads the text; this module follows the
``include`` lines the way gin does (from the working directory, then every
search root of ``recipes``) and records each binding with where it was made,
so that a check can name the file and line of a bad value.
"""

import re
import tokenize
from typing import Any, List, NamedTuple

from gin import config_parser

from deeplab_panoptic.cli import recipes
from deeplab_panoptic.cli.errors import UsageError

_MAX_INCLUDE_DEPTH = 32  # deeper means an include cycle


class Reference(NamedTuple):
  """``@name`` (``evaluate`` False) or ``@name()`` in a bound value."""
  name: str
  evaluate: bool


class Macro(NamedTuple):
  """``%name`` in a bound value."""
  name: str


class Binding(NamedTuple):
  """``scope/selector.param = value``; ``param`` is '' for a macro definition."""
  scope: str
  selector: str
  param: str
  value: Any
  where: str  # "configs/datasets/coco.gin:13" or "--gin_param='...'"

  @property
  def text(self) -> str:
    scoped = f"{self.scope}/{self.selector}" if self.scope else self.selector
    return f"{scoped}.{self.param}" if self.param else scoped


class Statements(NamedTuple):
  """Every binding in the order gin applies them, and whether any ``import`` ran."""
  bindings: List[Binding]
  imports: List[str]


class _Delegate(config_parser.ParserDelegate):

  def configurable_reference(self, scoped_configurable_name, evaluate):
    return Reference(scoped_configurable_name, evaluate)

  def macro(self, macro_name):
    return Macro(macro_name)


def _parse(text, where: str, out: Statements, depth: int) -> None:
  """Appends the statements of one file or binding to ``out``."""
  try:
    statements = list(config_parser.ConfigParser(text, _Delegate()))
  except (SyntaxError, ValueError, tokenize.TokenError) as e:
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    message = re.sub(r"\s*\(line \d+\)$", "", message)  # said in `where` instead
    if isinstance(e, tokenize.TokenError):
      message = "unexpected end of input (an unclosed bracket or string?)"
    line = getattr(e, "lineno", None)
    if line and not where.startswith("--"):
      where = f"{where}:{line}"
    raise UsageError(f"bad gin configuration: {where}: cannot parse: {message}") from e
  for statement in statements:
    location = getattr(statement, "location", None)
    line_where = (f"{where}:{location.line_num}"
                  if location is not None and not where.startswith("--") else where)
    if isinstance(statement, config_parser.BindingStatement):
      out.bindings.append(Binding(statement.scope, statement.selector, statement.arg_name,
                                  statement.value, line_where))
    elif isinstance(statement, config_parser.IncludeStatement):
      read_file(statement.filename, out, depth + 1, included_from=line_where)
    elif isinstance(statement, config_parser.ImportStatement):
      out.imports.append(statement.module)


def read_file(name: str, out: Statements, depth: int = 0, included_from: str = "") -> None:
  """Appends the statements of gin file ``name`` (and of its includes) to ``out``.

  Raises:
    UsageError: the file (or an include) is missing, unreadable or does not parse.
  """
  if depth > _MAX_INCLUDE_DEPTH:
    raise UsageError(f"bad gin configuration: {included_from}: includes nest deeper "
                     f"than {_MAX_INCLUDE_DEPTH} (an include cycle?)")
  if included_from:
    path = recipes.find_include(name)
    if path is None:
      raise UsageError(f"bad gin configuration: {included_from}: included file not "
                       f"found: {name}")
  else:
    path = recipes.resolve(name)
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except (OSError, UnicodeDecodeError) as e:
    raise UsageError(f"gin file {path} cannot be read: {e}") from e
  _parse(text, recipes.short_path(path), out, depth)


def read(gin_files: List[str], gin_params: List[str]) -> Statements:
  """The statements of ``gin_files`` then ``gin_params``, in gin's order.

  Raises:
    UsageError: naming the file and line, or the ``--gin_param``, at fault.
  """
  out = Statements([], [])
  for name in gin_files:
    read_file(name, out)
  for param in gin_params:
    _parse(param, f"--gin_param={param!r}", out, 0)
  return out
