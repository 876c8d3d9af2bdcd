"""Starting a run from another run's weights (fine-tuning, a pretrained backbone).

A checkpoint written by ``main.py`` holds the model under the root item ``model``,
and a ``MaskTransformer`` names its parts ``pixel_encoder``, ``pixel_decoder``,
``transformer_decoder``, ``predictor`` and ``semantic_head``. Reading only some of
them (e.g. the pixel encoder of a COCO run to start Cityscapes, whose class heads
differ) restores exactly those variables; the other parts keep their fresh
initialisation. Optimizer slots and the step are never read: the new run starts
at step 0 with its own schedule.

Model Garden checkpoints (e.g. its ImageNet-trained ResNet classifiers) hold the
backbone as the root item ``backbone`` (Model Garden's trainer saves
``model.checkpoint_items``); the ``"model_garden_backbone"`` layout reads it into
a pixel encoder that wraps a Model Garden backbone (``ResNetEncoder``).
"""

from typing import Sequence

import tensorflow as tf
import tf_keras as keras

ALL_PARTS = "all"
LAYOUTS = ("ours", "model_garden_backbone")


def resolve_checkpoint_path(path: str,
                            setting: str = "ExperimentConfig.init_checkpoint") -> str:
  """A checkpoint prefix from a prefix or a directory (its latest checkpoint).

  Raises:
    FileNotFoundError: naming ``setting``, when there is no checkpoint there.
  """
  if tf.io.gfile.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f"{setting}: no checkpoint in directory {path!r}.")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"{setting}: {path!r} is neither a directory nor a "
                            f"checkpoint prefix ({path}.index is missing).")
  return path


def initialize_from_checkpoint(model: keras.Model, path: str,
                               parts: Sequence[str] = (ALL_PARTS,),
                               layout: str = "ours") -> str:
  """Assigns ``model``'s ``parts`` (or the whole model) from checkpoint ``path``.

  Args:
    model: a built model (its variables exist), e.g. a ``MaskTransformer``.
    path: a checkpoint prefix or a directory (its latest checkpoint) written with
      ``tf.train.Checkpoint(model=...)``, as ``main.py`` writes them.
    parts: attribute names of ``model`` to read, or ``("all",)``. Ignored by the
      "model_garden_backbone" layout, which reads the pixel encoder only.
    layout: "ours" or "model_garden_backbone" (see the module docstring).

  Returns:
    The checkpoint prefix that was read.

  Raises:
    FileNotFoundError: no such checkpoint.
    ValueError: an unknown part, a part with variables the checkpoint lacks, or a
      variable whose shape differs from the checkpoint's.
  """
  if layout not in LAYOUTS:
    raise ValueError(f"ExperimentConfig.init_checkpoint_layout must be one of {LAYOUTS}, "
                     f"got {layout!r}.")
  prefix = resolve_checkpoint_path(path)
  if layout == "model_garden_backbone":
    return _read_model_garden_backbone(model, prefix)
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
  _read(tf.train.Checkpoint(model=target), prefix, ", ".join(parts),
        "ExperimentConfig.init_checkpoint_parts")
  return prefix


def _read_model_garden_backbone(model: keras.Model, prefix: str) -> str:
  encoder = getattr(model, "pixel_encoder", None)
  backbone = getattr(encoder, "model_garden_backbone", None)
  if backbone is None:
    raise ValueError("ExperimentConfig.init_checkpoint_layout='model_garden_backbone' "
                     f"needs a pixel encoder that wraps a Model Garden backbone "
                     f"(ResNetEncoder); this model's is {type(encoder).__name__}.")
  _read(tf.train.Checkpoint(backbone=backbone), prefix, "pixel_encoder",
        "ExperimentConfig.init_checkpoint_layout")
  return prefix


def _read(root: tf.train.Checkpoint, prefix: str, what: str, setting: str) -> None:
  """Reads ``root`` from ``prefix``; every variable under it must be there and fit."""
  try:
    status = root.read(prefix)
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f"Checkpoint {prefix} does not hold every variable of {what} "
                     f"({setting}): {str(e)[:500]}") from None
  except ValueError as e:
    raise ValueError(f"Checkpoint {prefix} does not fit {what} ({setting}): "
                     f"{str(e)[:500]}") from None
  status.expect_partial()
