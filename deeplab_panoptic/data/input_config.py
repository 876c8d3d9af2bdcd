"""The input settings of an experiment: three typed, gin-configurable records.

* :class:`InputConfig`: what every example becomes, for training, evaluation
  and export alike: the crop (model input) size, the ground-truth mask slots,
  the evaluation resize and the largest original size. A recipe binds the crop
  size once, ``InputConfig.crop_size = (641, 641)``; ``ExperimentConfig.
  eval_input_size`` and ``PanopticExportModule`` default to it.
* :class:`AugmentationConfig`: the training augmentation (random scale or
  random shorter side, flip, copy-paste, colour jitter); evaluation never
  reads it.
* :class:`PipelineConfig`: the ``tf.data`` mechanics (shuffle, seed,
  determinism, parallelism, caching, padding of the last evaluation batch).

``reader.build_dataset`` builds each one it is not given from gin, inside its
``train`` / ``eval`` gin scope, so a recipe may scope a setting
(``train/PipelineConfig.shuffle_buffer = 512``) but needs not. Every record
checks its values when it is made and names the bad one.
"""

import dataclasses
from typing import Optional, Tuple

import gin
import tensorflow as tf

# Training resize modes.
RANDOM_SCALE = "random_scale"
RANDOM_SCALE_OF_CROP = "random_scale_of_crop"
RANDOM_SHORT_SIDE = "random_short_side"
TRAIN_RESIZE_MODES = (RANDOM_SCALE, RANDOM_SCALE_OF_CROP, RANDOM_SHORT_SIDE)
# Evaluation resize modes.
FIT_SHRINK_ONLY = "fit_shrink_only"
LONGER_SIDE_TO_CROP = "longer_side_to_crop"
SHORT_SIDE = "short_side"
EVAL_RESIZE_MODES = (FIT_SHRINK_ONLY, LONGER_SIDE_TO_CROP, SHORT_SIDE)
# Colour jitter strengths lie in [0, this].
_MAX_JITTER = {"brightness": 1.0, "contrast": 1.0, "saturation": 1.0, "hue": 0.5}


def _size(name: str, value) -> Tuple[int, int]:
  """A (height, width) of positive ints, or a ValueError naming ``name``."""
  try:
    size = tuple(int(x) for x in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be (height, width), got {value!r}.") from e
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"{name} must be (height, width) of positive ints, got {value!r}.")
  return size


@gin.configurable
@dataclasses.dataclass(frozen=True)
class InputConfig:
  """What every example becomes (training, evaluation, export).

  Attributes:
    crop_size: (H, W) of every model input: training crops, padded evaluation
      images, the exported model's input. Required.
    max_num_masks: K, ground-truth mask slots per image.
    max_original_size: (Hmax, Wmax) of evaluation's ``GT_PANOPTIC_ORIGINAL``;
      default ``crop_size``. A larger image stops evaluation with an error
      naming it.
    eval_resize: evaluation resize before padding: ``fit_shrink_only`` (only
      images larger than the crop are shrunk), ``longer_side_to_crop`` (always
      scaled to fit the crop, one side touching it) or ``short_side`` (shorter
      side ``eval_short_side``, longer side <= ``eval_max_long_side``, within
      the crop); see ``preprocessing.eval_resize_size``.
    eval_short_side, eval_max_long_side: for ``eval_resize='short_side'``.
  """
  crop_size: Optional[Tuple[int, int]] = None
  max_num_masks: int = 128
  max_original_size: Optional[Tuple[int, int]] = None
  eval_resize: str = FIT_SHRINK_ONLY
  eval_short_side: int = 800
  eval_max_long_side: int = 1333

  def __post_init__(self):
    if self.crop_size is None:
      raise ValueError("InputConfig.crop_size is not set: bind it once in the recipe, "
                       "e.g. InputConfig.crop_size = (641, 641).")
    crop_size = _size("InputConfig.crop_size", self.crop_size)
    object.__setattr__(self, "crop_size", crop_size)
    object.__setattr__(self, "max_original_size", _size(
        "InputConfig.max_original_size", self.max_original_size or crop_size))
    if self.max_num_masks < 1:
      raise ValueError(f"InputConfig.max_num_masks must be >= 1, got {self.max_num_masks}.")
    if self.eval_resize not in EVAL_RESIZE_MODES:
      raise ValueError(f"InputConfig: eval_resize must be one of {EVAL_RESIZE_MODES}, "
                       f"got {self.eval_resize!r}.")
    if self.eval_short_side < 1 or self.eval_max_long_side < 1:
      raise ValueError(f"InputConfig: eval_short_side ({self.eval_short_side}) and "
                       f"eval_max_long_side ({self.eval_max_long_side}) must be >= 1.")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class AugmentationConfig:
  """The training augmentation, in the order it is applied.

  Attributes:
    train_resize: ``random_scale`` (MaX / kMaX: factor ``min_scale +
      k * scale_step`` up to ``max_scale``, uniform if ``scale_step`` is 0),
      ``random_scale_of_crop`` (large-scale jitter, Mask2Former's COCO
      recipes: the same factor times the scale at which the image fits the
      crop) or ``random_short_side`` (Panoptic SegFormer: shorter side
      ``min_short_side .. max_short_side`` by ``short_side_step``, longer side
      <= ``max_long_side``); each is then flipped, padded to the crop size and
      randomly cropped (a static shape).
    min_scale, max_scale, scale_step: for ``random_scale`` and
      ``random_scale_of_crop``.
    min_short_side, max_short_side, short_side_step, max_long_side: for
      ``random_short_side``.
    flip_probability: horizontal-flip probability.
    copy_paste: panoptic copy-paste (kMaX / ReMaX) from a second, independently
      shuffled stream of the same records.
    copy_paste_scale_multiplier: the pasted image's resize range is the main
      one times this (kMaX: 0.5), see :meth:`for_pasted_image`.
    copy_paste_stuff_probability: probability of pasting each stuff class of
      the other image (all its things are pasted).
    brightness, contrast, saturation, hue: colour jitter strengths (0: off),
      see ``preprocessing.color_jitter``.
  """
  train_resize: str = RANDOM_SCALE
  # random_scale
  min_scale: float = 0.5
  max_scale: float = 2.0
  scale_step: float = 0.1
  # random_short_side
  min_short_side: int = 480
  max_short_side: int = 800
  short_side_step: int = 32
  max_long_side: int = 1333
  flip_probability: float = 0.5
  copy_paste: bool = False
  copy_paste_scale_multiplier: float = 0.5
  copy_paste_stuff_probability: float = 0.5
  brightness: float = 0.0
  contrast: float = 0.0
  saturation: float = 0.0
  hue: float = 0.0

  def __post_init__(self):
    if self.train_resize not in TRAIN_RESIZE_MODES:
      raise ValueError(f"AugmentationConfig: train_resize must be one of "
                       f"{TRAIN_RESIZE_MODES}, got {self.train_resize!r}.")
    if not 0 < self.min_scale <= self.max_scale:
      raise ValueError(f"AugmentationConfig: need 0 < min_scale <= max_scale, got "
                       f"{self.min_scale}, {self.max_scale}.")
    if not 0 < self.min_short_side <= self.max_short_side or self.max_long_side < 1:
      raise ValueError(f"AugmentationConfig: need 0 < min_short_side <= max_short_side "
                       f"and max_long_side >= 1, got {self.min_short_side}, "
                       f"{self.max_short_side}, {self.max_long_side}.")
    for name, limit in _MAX_JITTER.items():
      if not 0 <= getattr(self, name) <= limit:
        raise ValueError(f"AugmentationConfig: {name} must lie in [0, {limit:g}], got "
                         f"{getattr(self, name)}.")

  def for_pasted_image(self) -> "AugmentationConfig":
    """The resize range of the copy-paste source: this one times the multiplier."""
    m = self.copy_paste_scale_multiplier
    return dataclasses.replace(
        self, min_scale=self.min_scale * m, max_scale=self.max_scale * m,
        scale_step=self.scale_step * m,
        min_short_side=max(1, int(round(self.min_short_side * m))),
        max_short_side=max(1, int(round(self.max_short_side * m))),
        short_side_step=max(1, int(round(self.short_side_step * m))),
        max_long_side=max(1, int(round(self.max_long_side * m))))


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """How the ``tf.data`` pipeline reads, shuffles and batches.

  Attributes:
    shuffle_buffer: training shuffle buffer (serialized records).
    seed: makes the pipeline reproducible (file order, shuffle, augmentation).
    deterministic: True: reproducible order and augmentation (seed 0 unless
      ``seed`` is set); False: allow reordering even with a seed (faster);
      None: deterministic when ``seed`` is set or when evaluating.
    repeat: repeat forever; default: when training.
    pad_last_batch: evaluation: pad the last batch with padding examples
      (static batch size) instead of making it smaller.
    cache: keep the serialized records in memory after the first pass (small
      datasets).
    cycle_length: training files read in parallel.
    num_parallel_calls: parallelism of the decode/augment map.
    prefetch_batches: batches to prefetch.
    verify_records: read every record once before building (names a damaged
      file; costs a full pass over the data).
  """
  shuffle_buffer: int = 1000
  seed: Optional[int] = None
  deterministic: Optional[bool] = None
  repeat: Optional[bool] = None
  pad_last_batch: bool = True
  cache: bool = False
  cycle_length: int = 4
  num_parallel_calls: int = tf.data.AUTOTUNE
  prefetch_batches: int = tf.data.AUTOTUNE
  verify_records: bool = False
