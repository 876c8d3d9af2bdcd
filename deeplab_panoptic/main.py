"""Command-line entry: ``python main.py --gin_file=F --mode=M --model_dir=D``.

Modes: train, eval, train_and_eval, continuous_eval, export, summary.
Any error in the flags, the gin files or the model directory ends the run with one
line that says what is wrong and a non-zero exit status.
"""

import os
import sys
from typing import List, Sequence

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) hides the
# training progress on CPU machines; users can still set the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, e.g. 'ExperimentConfig.train_steps=10'.")
flags.DEFINE_string("mode", "train_and_eval",
                    "train, eval, train_and_eval, continuous_eval, export or summary.")
flags.DEFINE_string("model_dir", None, "Checkpoints, summaries, results and exports go here.")
flags.DEFINE_string("tpu", None, "TPU name or address; selects TPUStrategy.")

_MODES = ("train", "eval", "train_and_eval", "continuous_eval", "export", "summary")


class UsageError(Exception):
  """A problem with the command line, the gin files or the model directory."""


def _repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_gin(gin_files: Sequence[str], gin_params: Sequence[str]) -> None:
  """Parses gin files and bindings, turning gin's errors into one clear message."""
  import gin  # pylint: disable=g-import-not-at-top
  from deeplab_panoptic import registry  # pylint: disable=g-import-not-at-top,unused-import
  for path in gin_files:
    if not os.path.isfile(path):
      raise UsageError(f"gin file not found: {path}")
  # Includes are resolved from the working directory, then from the repository root.
  gin.add_config_file_search_path(_repo_root())
  try:
    gin.parse_config_files_and_bindings(list(gin_files), list(gin_params),
                                        finalize_config=True)
  except (ValueError, KeyError, IOError, SyntaxError, TypeError) as e:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise UsageError(f"bad gin configuration: {first}") from e


def check_model_dir(model_dir: str) -> None:
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


def run_main(argv: List[str]) -> int:
  """Runs one mode; returns the exit status."""
  del argv
  try:
    if FLAGS.mode not in _MODES:
      raise UsageError(f"unknown --mode={FLAGS.mode!r}; choose one of {', '.join(_MODES)}.")
    if not FLAGS.gin_file:
      raise UsageError("at least one --gin_file is required.")
    parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    if FLAGS.mode != "summary":
      check_model_dir(FLAGS.model_dir)
    import gin  # pylint: disable=g-import-not-at-top
    from deeplab_panoptic.data.convert import ConversionError  # pylint: disable=g-import-not-at-top
    from deeplab_panoptic.training import experiment  # pylint: disable=g-import-not-at-top
    if FLAGS.tpu:
      gin.bind_parameter("build_strategy.tpu", FLAGS.tpu)
    try:
      exp = experiment.Experiment(FLAGS.model_dir or "", FLAGS.mode)
      result = exp.run()
    except ConversionError as e:
      raise UsageError(f"data: {e}") from e
    except (ValueError, TypeError) as e:
      # Only a missing gin binding is a configuration error; anything else is a
      # real failure whose traceback the user needs.
      if "Required bindings" in str(e) or "not provided in config" in str(e):
        raise UsageError(f"bad gin configuration: {str(e).splitlines()[0]}") from e
      raise
    if FLAGS.mode == "summary":
      print(f"params: {result['params']}")
      print(f"train_params: {result['train_params']}")
      print(f"gmacs: {result['gmacs']:.3f}")
  except UsageError as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 2
  except (FileNotFoundError, FloatingPointError) as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


def _absl_main(argv):
  sys.exit(run_main(argv))


def run():
  """Console-script entry point (``deeplab-panoptic``)."""
  logging.set_verbosity(logging.WARNING)
  app.run(_absl_main)


if __name__ == "__main__":
  run()
