"""The start-up checks of ``main``, all before TensorFlow is imported.

``check_gin`` reads the gin files and bindings (``gin_statements``) and checks,
against the package's source (``source_index``), that every binding names a
known configurable and one of its parameters, that every ``@reference`` names a
configurable, every ``%macro`` is defined and every macro set is read by some
binding (``DATA_DIRR`` would be ignored), and that each value bound to a
typed record field (``ExperimentConfig.train_steps: int``, ...) fits the field's
annotation (``value_types``). ``check_model_dir`` and ``check_data`` check the
model directory and that the dataset files the mode reads exist. Each failure
is one ``UsageError`` line that names what and where.

gin's own parse still runs afterwards (``main.parse_gin``, once the package is
imported): these checks only make the common mistakes fail fast and clearly.
"""

import ast
import difflib
import glob
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from deeplab_panoptic.cli import gin_statements
from deeplab_panoptic.cli import source_index
from deeplab_panoptic.cli import value_types
from deeplab_panoptic.cli.errors import UsageError
from deeplab_panoptic.cli.gin_statements import Binding, Macro, Reference
from deeplab_panoptic.utils import data_paths

EXPERIMENT = "ExperimentConfig"
# The dataset splits each mode reads (export and summary read none).
SPLITS_READ = {"train": ("train",), "eval": ("eval",), "continuous_eval": ("eval",),
               "train_and_eval": ("train", "eval")}
_GIN_BUILTINS = ("gin.",)  # gin.macro, gin.REQUIRED, gin.singleton, ...


def _bad(where: str, message: str) -> UsageError:
  return UsageError(f"bad gin configuration: {where}: {message}")


def _unscoped(name: str) -> str:
  return name.rsplit("/", 1)[-1]


def _walk(value) -> Iterator[Any]:
  """Every leaf of a gin value (containers opened)."""
  if isinstance(value, (list, tuple)) and not isinstance(value, (Reference, Macro)):
    for item in value:
      yield from _walk(item)
  elif isinstance(value, dict):
    for key, item in value.items():
      yield from _walk(key)
      yield from _walk(item)
  else:
    yield value


def _suggestion(name: str, choices: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
  return f" (did you mean {close[0]}?)" if close else ""


class GinConfig:
  """The bindings of one command line, with gin's rule that the last one wins."""

  def __init__(self, statements: gin_statements.Statements):
    self.statements = statements
    self.macros: Dict[str, Binding] = {}
    self.values: Dict[Tuple[str, str, str], Binding] = {}

  def resolve(self, value, depth: int = 0):
    """``value`` with every ``%macro`` replaced by its (last) value."""
    if isinstance(value, Macro):
      binding = self.macros.get(value.name)
      return value if binding is None or depth > 64 else self.resolve(binding.value, depth + 1)
    if isinstance(value, (list, tuple)) and not isinstance(value, Reference):
      return type(value)(self.resolve(v, depth) for v in value)
    if isinstance(value, dict):
      return {self.resolve(k, depth): self.resolve(v, depth) for k, v in value.items()}
    return value

  def binding(self, selector: str, param: str) -> Optional[Binding]:
    """The unscoped binding in force for ``selector.param``, or None."""
    found = source_index.matching(selector)
    return self.values.get(("", found[0].selector, param)) if len(found) == 1 else None


def _configurable(selector: str, where: str, allow_unknown: bool):
  """The configurable a selector names; None for gin's own (or after an ``import``)."""
  name = _unscoped(selector)
  if name.startswith(_GIN_BUILTINS):
    return None
  found = source_index.matching(name)
  if len(found) > 1:
    raise _bad(where, f"{name} is ambiguous: " + ", ".join(c.selector for c in found))
  if not found:
    if allow_unknown:
      return None
    known = [c.name for c in source_index.configurables()]
    raise _bad(where, f"unknown configurable {name}{_suggestion(name.split('.')[-1], known)}")
  return found[0]


def _check_value_names(binding: Binding, allow_unknown: bool, used: List) -> None:
  """The ``@references`` of a value must name configurables; notes its ``%macros``."""
  for leaf in _walk(binding.value):
    if isinstance(leaf, Reference):
      _configurable(leaf.name, binding.where, allow_unknown)
    elif isinstance(leaf, Macro):
      used.append((leaf.name, binding.where))


def _check_names(config: GinConfig) -> None:
  """Selectors, parameters, references and macros; fills ``config``'s last-wins maps."""
  allow_unknown = bool(config.statements.imports)
  used: List[Tuple[str, str]] = []
  for binding in config.statements.bindings:
    _check_value_names(binding, allow_unknown, used)
    if not binding.param:
      config.macros[binding.text] = binding
      continue
    configurable = _configurable(binding.selector, binding.where, allow_unknown)
    if configurable is None:
      continue
    if configurable.params is not None and binding.param not in configurable.params:
      raise _bad(binding.where, f"{configurable.name} has no parameter {binding.param}"
                 f"{_suggestion(binding.param, sorted(configurable.params))}")
    config.values[(binding.scope, configurable.selector, binding.param)] = binding
  for name, where in used:
    if name not in config.macros and not name.startswith(_GIN_BUILTINS):
      raise _bad(where, f"macro %{name} is used but never defined"
                 f"{_suggestion(name, list(config.macros))}")
  _check_macros_read(config, {name for name, _ in used})


def _check_macros_read(config: GinConfig, used: set) -> None:
  """A macro that no binding reads would be silently ignored: refuse it."""
  for name, binding in config.macros.items():
    if name not in used:
      raise _bad(binding.where, f"macro {name} is set but no binding reads it "
                 f"(%{name}){_suggestion(name, sorted(used))}")


def _check_types(config: GinConfig) -> None:
  """Each value in force for a typed record field fits the field's annotation."""
  by_selector = {c.selector: c for c in source_index.configurables()}
  for (_, selector, param), binding in config.values.items():
    annotation = by_selector[selector].fields.get(param)
    if annotation is None:
      continue
    value = config.resolve(binding.value)
    if any(isinstance(leaf, Macro) for leaf in _walk(value)):
      continue  # An undefined macro is reported by name above.
    if not value_types.fits(annotation, value):
      raise _bad(binding.where, f"{by_selector[selector].name}.{param} takes "
                 f"{ast.unparse(annotation)}, got {value_types.describe(value)}")


def check_gin(gin_files: Sequence[str], gin_params: Sequence[str]) -> GinConfig:
  """Reads and checks the gin files and bindings; returns the bindings in force.

  Raises:
    UsageError: a file is missing or does not parse, a binding names no known
      configurable or parameter, a macro is not defined, or a typed field's value
      has the wrong type.
  """
  config = GinConfig(gin_statements.read(list(gin_files), list(gin_params)))
  _check_names(config)
  _check_types(config)
  return config


def check_model_dir(model_dir: Optional[str]) -> None:
  """Creates the model directory and checks that it is writable."""
  if not model_dir:
    raise UsageError("--model_dir is required.")
  if "://" in model_dir:
    return  # Cloud storage: permissions are checked by the first write.
  try:
    os.makedirs(model_dir, exist_ok=True)
    probe = os.path.join(model_dir, ".write_test")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise UsageError(f"model_dir {model_dir!r} is not writable: {e.strerror or e}") from e


def check_data(config: GinConfig, mode: str) -> None:
  """The TFRecords that ``mode`` reads exist (unless the recipe prepares them).

  Raises:
    UsageError: naming the file pattern, the binding that set it and the mode.
  """
  prepare = config.binding(EXPERIMENT, "prepare_data")
  if prepare is not None and config.resolve(prepare.value) is not None:
    return  # The recipe makes its data (the shapes quickstart).
  data_dir = config.binding(EXPERIMENT, "data_dir")
  data_dir = config.resolve(data_dir.value) if data_dir is not None else None
  for split in SPLITS_READ.get(mode, ()):
    binding = config.binding(EXPERIMENT, f"{split}_file_pattern")
    pattern = config.resolve(binding.value) if binding is not None else None
    if not isinstance(pattern, str):
      continue  # Unset: the experiment says so.
    pattern = data_paths.under_data_dir(pattern, data_dir if isinstance(data_dir, str) else None)
    if "://" in pattern:
      continue  # Cloud storage.
    if not any(glob.glob(p) for p in pattern.split(",")):
      raise UsageError(
          f"no dataset files match {EXPERIMENT}.{split}_file_pattern={pattern!r} "
          f"({binding.where}; relative to {os.getcwd()}), which --mode={mode} reads; "
          "convert the dataset first (docs/datasets.md), or set DATA_DIR or the "
          "pattern with --gin_param")
