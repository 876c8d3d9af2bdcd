"""Code rules checked on the source tree itself.

1. No function in ``deeplab_panoptic/`` has more than ``MAX_CODE_LINES`` code
   lines. A code line is a non-blank line of the function's source (its ``def``
   line to its last line) that holds something other than a comment; lines of
   docstrings are not code. A nested function or class counts toward the
   function that contains it (it is not measured on its own).
2. The package stands on its own: nothing in the package, its docs, its recipes
   or its tools refers to notes kept outside the repository; sources are cited
   by paper (arXiv id, section, table) or public repository and path
   (``docs/references.md``).
"""

import ast
import io
import os
import tokenize

import pytest

from tests.conftest import REPO_ROOT

MAX_CODE_LINES = 80
PACKAGE_DIR = os.path.join(REPO_ROOT, "deeplab_panoptic")

# Built from pieces so that this file does not itself contain the strings.
FORBIDDEN = ("papers" + "/", "RECI" + "PES", "REFERENCE" + "_FACTS", ".." + "/shared")
# What must stand on its own: the package, docs, recipes, building blocks,
# benchmarks, TPU scripts and the top-level files. tests/ is left out: its
# fixtures may name optional data beside a checkout.
SCANNED = ("deeplab_panoptic", "docs", "experiments", "configs", "benchmarks", "tpu",
           "README.md", "main.py", "setup.py", "setup.cfg")
_NOT_TOKENS = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
               tokenize.DEDENT, tokenize.ENCODING, tokenize.ENDMARKER)
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _package_files():
  paths = []
  for root, dirs, files in os.walk(PACKAGE_DIR):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__")
    paths += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
  return paths


def _code_lines(source):
  """The 1-based numbers of the lines that hold a token other than a comment."""
  lines = set()
  for token in tokenize.generate_tokens(io.StringIO(source).readline):
    if token.type not in _NOT_TOKENS:
      lines.update(range(token.start[0], token.end[0] + 1))
  text = source.splitlines()
  return {n for n in lines if n <= len(text) and text[n - 1].strip()}


def _docstring_lines(tree):
  """Line numbers of every module, class and function docstring in ``tree``."""
  lines = set()
  for node in ast.walk(tree):
    if isinstance(node, (ast.Module,) + _DEFS) and node.body:
      first = node.body[0]
      if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
          and isinstance(first.value.value, str)):
        lines.update(range(first.lineno, first.end_lineno + 1))
  return lines


def _outermost_functions(tree):
  """Functions and methods not nested inside another function, with their class."""
  found = []

  def visit(node, qualifier):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        found.append((qualifier + child.name, child))  # its nested defs count here
      elif isinstance(child, ast.ClassDef):
        visit(child, qualifier + child.name + ".")
      else:
        visit(child, qualifier)

  visit(tree, "")
  return found


def function_code_lines(source):
  """``[(qualified name, code lines)]`` for the outermost functions of ``source``."""
  tree = ast.parse(source)
  code = _code_lines(source) - _docstring_lines(tree)
  return [(name, len({n for n in code if node.lineno <= n <= node.end_lineno}))
          for name, node in _outermost_functions(tree)]


def test_code_line_count_follows_the_rule():
  source = '''
@decorator
def outer(a):
  """Docstring,

  several lines.
  """
  # a comment line

  b = a + 1  # a trailing comment keeps the line
  text = """a string
# that looks like a comment
"""
  def inner():
    """Inner docstring."""
    return b
  class Local:
    """Local docstring."""
    x = 1
  return inner, Local, text


class Thing:
  """Class docstring."""

  def method(self):
    return (1,
            2)
'''
  # outer: def, b, text (3 lines), def inner, return b, class Local, x, return.
  assert function_code_lines(source) == [("outer", 10), ("Thing.method", 3)]


def test_no_function_has_more_than_80_code_lines():
  offenders = []
  for path in _package_files():
    with open(path, encoding="utf-8") as f:
      source = f.read()
    relpath = os.path.relpath(path, REPO_ROOT)
    offenders += [f"{relpath}:{name}:{count}"
                  for name, count in function_code_lines(source)
                  if count > MAX_CODE_LINES]
  assert not offenders, (
      f"functions over {MAX_CODE_LINES} code lines (non-blank, non-comment, "
      "docstrings excluded, nested functions counted in their parent); split "
      "them into parts with one job each:\n  " + "\n  ".join(offenders))


def _scanned_files(entry):
  path = os.path.join(REPO_ROOT, entry)
  if os.path.isfile(path):
    yield path
  for root, dirs, files in os.walk(path):
    dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
    for name in sorted(files):
      yield os.path.join(root, name)


def test_scan_reaches_nested_files():
  scanned = set(_scanned_files("deeplab_panoptic"))
  assert set(_package_files()) <= scanned
  assert os.path.join(REPO_ROOT, "docs", "models", "max_deeplab.md") in set(
      _scanned_files("docs"))
  assert len([p for p in _scanned_files("experiments") if p.endswith(".gin")]) >= 40


def test_forbidden_strings_are_built_from_pieces():
  with open(os.path.abspath(__file__), encoding="utf-8") as f:
    own = f.read()
  assert not [s for s in FORBIDDEN if s in own]


@pytest.mark.parametrize("entry", SCANNED)
def test_nothing_refers_to_notes_outside_the_repository(entry):
  hits = []
  for path in _scanned_files(entry):
    with open(path, "rb") as f:
      data = f.read()
    if b"\0" in data:  # binary
      continue
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
      hits += [f"{os.path.relpath(path, REPO_ROOT)}:{number}: {line.strip()}"
               for s in FORBIDDEN if s in line][:1]
  assert not hits, (
      "cite the paper (title, arXiv id, section / table) or public code "
      "(repository and path; docs/references.md) instead of notes outside the "
      "repository:\n  " + "\n  ".join(hits))
