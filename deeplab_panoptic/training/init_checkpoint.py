"""Starting a run from another run's weights (fine-tuning, a pretrained backbone).

A checkpoint written by ``main.py`` holds the model under the root item ``model``,
and a ``MaskTransformer`` names its parts ``pixel_encoder``, ``pixel_decoder``,
``transformer_decoder``, ``predictor`` and ``semantic_head``. Reading only some of
them (e.g. the pixel encoder of a COCO run to start Cityscapes, whose class heads
differ) restores exactly those variables; the other parts keep their fresh
initialisation. Optimizer slots and the step are never read: the new run starts
at step 0 with its own schedule.
"""

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

ALL_PARTS = "all"


def resolve_checkpoint_path(path: str) -> str:
  """A checkpoint prefix from a prefix or a directory; FileNotFoundError if none."""
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f"ExperimentConfig.init_checkpoint: no checkpoint in "
                              f"directory {path!r}.")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"ExperimentConfig.init_checkpoint: {path!r} is neither a "
                            f"directory nor a checkpoint prefix ({path}.index is missing).")
  return path


def initialize_from_checkpoint(model: keras.Model, path: str,
                               parts: Sequence[str] = (ALL_PARTS,)) -> str:
  """Assigns ``model``'s ``parts`` (or the whole model) from checkpoint ``path``.

  Args:
    model: a built model (its variables exist), e.g. a ``MaskTransformer``.
    path: a checkpoint prefix or a directory (its latest checkpoint) written with
      ``tf.train.Checkpoint(model=...)``, as ``main.py`` writes them.
    parts: attribute names of ``model`` to read, or ``("all",)``.

  Returns:
    The checkpoint prefix that was read.

  Raises:
    FileNotFoundError: no such checkpoint.
    ValueError: an unknown part, a part with variables the checkpoint lacks, or a
      variable whose shape differs from the checkpoint's.
  """
  prefix = resolve_checkpoint_path(path)
  parts = tuple(parts)
  if not parts:
    raise ValueError("ExperimentConfig.init_checkpoint_parts is empty.")
  if ALL_PARTS in parts:
    if len(parts) > 1:
      raise ValueError(f"ExperimentConfig.init_checkpoint_parts: {ALL_PARTS!r} "
                       f"cannot be combined with other parts, got {parts}.")
    target = model
  else:
    missing = [p for p in parts if getattr(model, p, None) is None]
    if missing:
      raise ValueError(f"ExperimentConfig.init_checkpoint_parts: the model has no part "
                       f"{missing} (parts are attributes of {type(model).__name__}, "
                       "e.g. 'pixel_encoder').")
    target = tf.train.Checkpoint(**{p: getattr(model, p) for p in parts})
  try:
    status = tf.train.Checkpoint(model=target).read(prefix)
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f"Checkpoint {prefix} does not hold every variable of "
                     f"{', '.join(parts)} (ExperimentConfig.init_checkpoint_parts): "
                     f"{str(e)[:500]}") from None
  except ValueError as e:
    raise ValueError(f"Checkpoint {prefix} does not fit {', '.join(parts)} "
                     f"(ExperimentConfig.init_checkpoint_parts): {str(e)[:500]}") from None
  status.expect_partial()
  return prefix
