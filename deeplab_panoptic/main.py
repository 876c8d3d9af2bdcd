"""Command-line entry: ``python main.py --gin_file=RECIPE --mode=MODE --model_dir=DIR``.

``--gin_file`` takes a recipe name (``quickstart/kmax_deeplab_shapes``,
``coco/kmax_r50_1281_150k``; ``--list_recipes`` prints them all), a path under
``experiments/`` or ``configs/``, or the path of any gin file. Modes: train,
eval, train_and_eval, continuous_eval, export, summary.

Every start-up check runs before TensorFlow is imported (``deeplab_panoptic.cli``):
the gin files exist and parse, each binding names a known configurable and
parameter, typed record fields get values of their type, the model directory is
writable and the dataset files the mode reads exist. A user mistake ends the run
with one line, ``error: <what and where>``, and exit status 2.
"""

import glob
import os
import sys
from typing import List, Optional, Sequence, Tuple


def _has_accelerator_device_node() -> bool:
  """Whether this machine shows a GPU (or TPU) device node to processes."""
  return bool(glob.glob("/dev/nvidia[0-9]*") or os.path.exists("/dev/dxg")
              or glob.glob("/dev/accel[0-9]*"))


def quiet_tensorflow_start_up() -> None:
  """Hides TensorFlow's C++ start-up chatter, before TensorFlow is imported.

  On every machine INFO and WARNING lines (oneDNN notes, CPU feature notes) go.
  Where no GPU device node exists, TensorFlow's CUDA probe also prints an ERROR
  line (``failed call to cuInit``) that only says there is no GPU: there the
  C++ ERROR level is hidden too. Where a GPU exists its errors stay visible.
  A value the user set (``TF_CPP_MIN_LOG_LEVEL=0`` shows everything) is kept.
  """
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL",
                        "2" if _has_accelerator_device_node() else "3")


quiet_tensorflow_start_up()

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
from absl import flags
from absl import logging

from deeplab_panoptic.cli import preflight
from deeplab_panoptic.cli import profile_steps
from deeplab_panoptic.cli import recipes
from deeplab_panoptic.cli.errors import UsageError
# pylint: enable=g-import-not-at-top,wrong-import-position

MODES = ("train", "eval", "train_and_eval", "continuous_eval", "export", "summary")
# --strategy values, as build_strategy.distribution_strategy takes them.
STRATEGIES = {"off": "off", "one_device": "one_device", "mirrored": "mirrored",
              "multi_worker": "multi_worker_mirrored",
              "multi_worker_mirrored": "multi_worker_mirrored", "tpu": "tpu"}

FLAGS = flags.FLAGS
flags.DEFINE_multi_string(
    "gin_file", [],
    "A recipe name (quickstart/kmax_deeplab_shapes, coco/kmax_r50_1281_150k), a path "
    "under experiments/ or configs/, or any gin file; applied in order")
flags.DEFINE_multi_string(
    "gin_param", [],
    "A gin binding applied after the files, e.g. 'ExperimentConfig.train_steps=20'")
flags.DEFINE_enum("mode", "train_and_eval", MODES,
                  "What to run: train, eval (the latest checkpoint), train_and_eval, "
                  "continuous_eval (each new checkpoint), export (a SavedModel) or "
                  "summary (parameters and GMACs; needs no model_dir).")
flags.DEFINE_string("model_dir", None,
                    "Checkpoints, summaries, results and exports go here (created if "
                    "missing; required by every mode but summary).")
flags.DEFINE_enum("strategy", None, list(STRATEGIES),
                  "Distribution strategy (build_strategy.distribution_strategy); "
                  "multi_worker reads TF_CONFIG. Default: the gin files' choice "
                  "(off: the default strategy).")
flags.DEFINE_integer("num_gpus", None,
                     "GPUs for --strategy=mirrored or one_device (build_strategy.num_gpus); "
                     "default: every visible GPU (the CPU when there is none); 0: the CPU. "
                     "Each run prints the strategy, its replicas and devices.",
                     lower_bound=0)
flags.DEFINE_string("tpu", None, "TPU name or address; selects TPUStrategy.")
flags.DEFINE_string("profile_steps", None,
                    "Write a TensorBoard profile of training steps a..b (1-based), e.g. "
                    "--profile_steps=100,110, under <model_dir>/train (train and "
                    "train_and_eval; sets ExperimentConfig.profile_steps).")
flags.DEFINE_boolean("list_recipes", False, "Print every recipe name and exit.")

# Errors about an optional dependency name its extra: pip install 'deeplab_panoptic[x]'.
MISSING_EXTRA = "pip install 'deeplab_panoptic["
_HELP_ARGS = ("--help", "-help", "-h", "-?", "--helpshort", "-helpshort")


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str]) -> None:
  """Parses gin files (paths or recipe names) and bindings into gin's configuration.

  Imports the whole package (``registry``, which starts TensorFlow) so that gin
  knows every configurable; gin's errors become one ``UsageError`` line.
  """
  import gin  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import registry  # pylint: disable=g-import-not-at-top,unused-import
  paths = [recipes.resolve(name) for name in gin_files]
  recipes.add_search_paths()  # include 'configs/...' from a checkout or the package
  try:
    gin.parse_config_files_and_bindings(paths, list(gin_params), finalize_config=True)
  except (ValueError, KeyError, IOError, SyntaxError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UsageError(f"bad gin configuration: {first}") from e


def flag_bindings(mode: Optional[str] = None) -> List[str]:
  """The gin bindings that --strategy, --num_gpus, --tpu and --profile_steps stand for.

  Raises:
    UsageError: a malformed --profile_steps, or one given to a mode that does not train.
  """
  bindings = []
  profile = profile_steps.binding(FLAGS.profile_steps, mode)
  if profile is not None:
    bindings.append(profile)
  if FLAGS.strategy is not None:
    bindings.append(f"build_strategy.distribution_strategy={STRATEGIES[FLAGS.strategy]!r}")
  if FLAGS.num_gpus is not None:
    bindings.append(f"build_strategy.num_gpus={FLAGS.num_gpus}")
  if FLAGS.tpu:
    bindings.append(f"build_strategy.tpu={FLAGS.tpu!r}")
  return bindings


def start_up_checks(mode: str) -> Tuple[List[str], List[str]]:
  """Every check that needs no TensorFlow; returns (gin files, gin bindings).

  Raises:
    UsageError: the first problem found, in one line.
  """
  if not FLAGS.gin_file:
    raise UsageError("at least one --gin_file is required (a recipe name such as "
                     "quickstart/kmax_deeplab_shapes; --list_recipes prints them).")
  gin_params = list(FLAGS.gin_param) + flag_bindings(mode)
  config = preflight.check_gin(FLAGS.gin_file, gin_params)
  if mode != "summary":
    preflight.check_model_dir(FLAGS.model_dir)
  preflight.check_data(config, mode)
  return list(FLAGS.gin_file), gin_params


def _run_experiment(mode: str, gin_files: List[str], gin_params: List[str]) -> None:
  """Imports TensorFlow and the package, parses gin and runs ``mode``."""
  parse_gin(gin_files, gin_params)
  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic.data.convert import ConversionError
  from deeplab_panoptic.training import experiment
  # pylint: enable=g-import-not-at-top
  try:
    result = experiment.Experiment(FLAGS.model_dir or "", mode).run()
  except ConversionError as e:  # gin appends "In call to configurable ..." lines
    raise UsageError(f"data: {str(e).strip().splitlines()[0]}") from e
  except (ValueError, TypeError) as e:
    # Only a missing gin binding is a configuration error; anything else is a
    # real failure whose traceback the user needs.
    if "Required bindings" in str(e) or "not provided in config" in str(e):
      raise UsageError(f"bad gin configuration: {str(e).splitlines()[0]}") from e
    if MISSING_EXTRA in str(e):  # An optional dependency is not installed.
      raise UsageError(str(e).splitlines()[0]) from e
    raise
  if mode == "summary":
    print(f"params: {result['params']}")
    print(f"train_params: {result['train_params']}")
    print(f"gmacs: {result['gmacs']:.3f}")
    # Op types whose multiply-adds are missing from gmacs ("none" when complete).
    print(f"uncounted_ops: {result['uncounted_ops']}")


def run_main(argv: List[str]) -> int:
  """Runs one mode; returns the exit status."""
  try:
    if len(argv) > 1:
      raise UsageError(f"unexpected argument(s): {' '.join(argv[1:])} (flags take "
                       "--name=value)")
    if FLAGS.list_recipes:
      print("\n".join(recipes.recipe_names()))
      return 0
    gin_files, gin_params = start_up_checks(FLAGS.mode)
    _run_experiment(FLAGS.mode, gin_files, gin_params)
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except (FileNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


def help_text() -> str:
  """The ``--help`` text: this module's summary and every flag it defines."""
  module = FLAGS.find_module_defining_flag("gin_file")
  summary = (__doc__ or "").strip()
  return f"{summary}\n\nflags:\n{FLAGS.module_help(module)}\n\n" \
         "(--helpfull also lists the flags of absl and the libraries.)"


def parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with ``--help`` on stdout and exit status 0, and a bad
  flag as one ``error:`` line with exit status 2."""
  args = argv[1:]
  args = args[:args.index("--")] if "--" in args else args
  if any(arg in _HELP_ARGS for arg in args):
    try:
      print(help_text(), flush=True)
    except BrokenPipeError:  # ``--help | head``: the reader left; that is fine.
      os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(0)
  try:
    return FLAGS(argv)
  except flags.Error as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(2)


def _absl_main(argv):
  sys.exit(run_main(argv))


def run():
  """Console-script entry point (``deeplab-panoptic``)."""
  logging.set_verbosity(logging.WARNING)
  app.run(_absl_main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
