"""From a decoded record to fixed-size training or evaluation targets.

Everything here is in-graph TensorFlow with static output shapes, written for
``tf.data`` maps (one example at a time; batching is the reader's job).

Training: resize (random scale, MaX / kMaX; or Panoptic SegFormer's random
shorter side with a cap on the longer side) -> random horizontal flip -> pad
bottom/right to at least the crop size -> random crop -> optional panoptic
copy-paste (kMaX / ReMaX) -> optional colour jitter. Flipping before padding
keeps the valid image in the top-left corner of every crop, so
``RESIZED_HEIGHT`` / ``RESIZED_WIDTH`` describe it as ``[0, resized_height) x
[0, resized_width)``; copy-paste only pastes inside that region.

Evaluation (``eval_resize``): ``fit_shrink_only`` shrinks (keeping the aspect
ratio) only if the image is larger than the crop; ``longer_side_to_crop``
always scales it so that it fits the crop with one side touching it (the longer
side, for a square crop), upscaling small images; ``short_side`` scales the
shorter side to a given length with the longer side capped (Panoptic
SegFormer). Then pad bottom/right to the crop size.

Padding: image value 127.5 before normalisation (0 after ``x / 127.5 - 1``),
label void (``ignore_label * label_divisor``). Images are resized bilinearly,
labels with nearest neighbour.

Ground-truth masks (``panoptic_to_targets``): one mask per present stuff class
(all its pixels merged, whatever their instance id) and one per thing instance
(instance > 0). Crowd (thing with instance 0) and void pixels belong to no mask.
If more than ``max_num_masks`` masks exist, the largest are kept (ties: the one
met first in raster order) and the pixels of the dropped ones get mask id -1
(they keep their semantic label). Kept masks fill the slots in increasing
panoptic id (``class * label_divisor + instance``; a stuff mask uses instance 0),
so the slot order depends only on the label; empty slots come last with class -1.
"""

from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.data import input_config as input_config_lib
from deeplab_panoptic.ops import resize as resize_ops

# Raw (0..255) image value used for padding: 0 after normalisation.
IMAGE_PAD_VALUE = 127.5

# The resize modes (defined with the settings that choose them).
RANDOM_SCALE = input_config_lib.RANDOM_SCALE
RANDOM_SCALE_OF_CROP = input_config_lib.RANDOM_SCALE_OF_CROP
RANDOM_SHORT_SIDE = input_config_lib.RANDOM_SHORT_SIDE
TRAIN_RESIZE_MODES = input_config_lib.TRAIN_RESIZE_MODES
FIT_SHRINK_ONLY = input_config_lib.FIT_SHRINK_ONLY
LONGER_SIDE_TO_CROP = input_config_lib.LONGER_SIDE_TO_CROP
SHORT_SIDE = input_config_lib.SHORT_SIDE
EVAL_RESIZE_MODES = input_config_lib.EVAL_RESIZE_MODES
# Source tag of pasted pixels when renumbering instances after copy-paste:
# larger than any panoptic value the label PNG can hold (2**24 - 1).
_PASTE_SOURCE_OFFSET = 2 ** 24


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """Maps raw pixel values [0, 255] to [-1, 1].

  Args:
    image: [H, W, 3] uint8 or float.

  Returns:
    float32 [H, W, 3], ``x / 127.5 - 1``.
  """
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def random_scale(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                 min_scale: float, max_scale: float, scale_step: float
                 ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Resizes by a random factor.

  The factor is ``min_scale + scale_step * k`` with integer ``k`` uniform in
  ``[0, (max_scale - min_scale) / scale_step]``, or uniform in
  ``[min_scale, max_scale]`` when ``scale_step`` is 0.

  Args:
    image: float32 [H, W, 3].
    label: int32 [H, W, 1].
    seed: int [2] stateless seed.
    min_scale, max_scale, scale_step: the factor's range and step.

  Returns:
    float32 [h, w, 3] and int32 [h, w, 1], ``h = round(H * factor)`` (at least 1).
  """
  if min_scale == max_scale == 1.0:
    return image, label
  factor = _random_factor(seed, min_scale, max_scale, scale_step)
  size = tf.cast(tf.shape(image)[:2], tf.float32) * factor
  size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)
  return resize_ops.resize_image_and_label(image, label, size)


def _random_factor(seed: tf.Tensor, min_scale: float, max_scale: float,
                   scale_step: float) -> tf.Tensor:
  """float32 scalar: ``min_scale + scale_step * k`` or uniform (step 0)."""
  if min_scale == max_scale:
    return tf.constant(min_scale, tf.float32)
  if scale_step > 0:
    num_steps = int(round((max_scale - min_scale) / scale_step))
    k = tf.random.stateless_uniform([], seed, minval=0, maxval=num_steps + 1,
                                    dtype=tf.int32)
    return min_scale + scale_step * tf.cast(k, tf.float32)
  return tf.random.stateless_uniform([], seed, minval=min_scale, maxval=max_scale)


def random_scale_of_crop(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                         min_scale: float, max_scale: float, scale_step: float,
                         crop_size: Tuple[int, int]) -> Tuple[tf.Tensor, tf.Tensor]:
  """Large-scale jitter: a random factor of the size that fits the crop.

  The image is resized by ``factor * min(crop_h / H, crop_w / W)`` with the
  factor drawn as in :func:`random_scale`: at factor 1 it fits the crop with
  one side touching it. This is the scale jitter of Ghiasi et al. (arXiv
  2012.07177, Sec. 3) as detectron2's ``ResizeScale`` computes it (Mask2Former's
  COCO recipes: factor 0.1-2.0 of 1024 x 1024); padding and the random crop
  follow in :func:`augment_geometry`.

  Args:
    image: float32 [H, W, 3].
    label: int32 [H, W, 1].
    seed: int [2] stateless seed.
    min_scale, max_scale, scale_step: the factor's range and step.
    crop_size: (crop_h, crop_w).

  Returns:
    float32 [h, w, 3] and int32 [h, w, 1], ``h = round(H * scale)`` (at least 1).
  """
  factor = _random_factor(seed, min_scale, max_scale, scale_step)
  fshape = tf.cast(tf.shape(image)[:2], tf.float32)
  fit = tf.minimum(crop_size[0] / fshape[0], crop_size[1] / fshape[1])
  size = tf.maximum(tf.cast(tf.round(fshape * (factor * fit)), tf.int32), 1)
  return resize_ops.resize_image_and_label(image, label, size)


def random_flip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                probability: float) -> Tuple[tf.Tensor, tf.Tensor]:
  """Flips image and label left-right with the given probability.

  Args:
    image: [H, W, 3].
    label: [H, W, 1].
    seed: int [2] stateless seed.
    probability: flip probability.

  Returns:
    The (possibly) flipped image and label, same shapes.
  """
  if probability <= 0:
    return image, label
  flip = tf.random.stateless_uniform([], seed) < probability
  return tf.cond(flip,
                 lambda: (tf.reverse(image, [1]), tf.reverse(label, [1])),
                 lambda: (image, label))


def pad_to_size(image: tf.Tensor, label: tf.Tensor, height: int, width: int,
                label_pad_value: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Pads bottom/right to at least height x width (never crops).

  Args:
    image: float32 [H, W, 3], raw values (padded with IMAGE_PAD_VALUE).
    label: int32 [H, W, 1] (padded with ``label_pad_value``).
    height, width: the minimum size.

  Returns:
    float32 [max(H, height), max(W, width), 3] and the matching int32 label.
  """
  shape = tf.shape(image)
  pad_h = tf.maximum(height - shape[0], 0)
  pad_w = tf.maximum(width - shape[1], 0)
  paddings = [[0, pad_h], [0, pad_w], [0, 0]]
  image = tf.pad(image, paddings, constant_values=IMAGE_PAD_VALUE)
  label = tf.pad(label, paddings, constant_values=label_pad_value)
  return image, label


def random_crop(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, height: int,
                width: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Crops a height x width window at a uniformly random offset.

  Args:
    image: [H, W, 3] with H >= height, W >= width.
    label: [H, W, 1].
    seed: int [2] stateless seed.

  Returns:
    [height, width, 3] and [height, width, 1], static shapes.
  """
  shape = tf.shape(image)
  offset = tf.random.stateless_uniform(
      [2], seed, minval=0, maxval=tf.int32.max, dtype=tf.int32) % tf.stack(
          [shape[0] - height + 1, shape[1] - width + 1])
  image = image[offset[0]:offset[0] + height, offset[1]:offset[1] + width]
  label = label[offset[0]:offset[0] + height, offset[1]:offset[1] + width]
  return tf.ensure_shape(image, [height, width, 3]), tf.ensure_shape(
      label, [height, width, 1])


def resize_to_fit(image: tf.Tensor, label: tf.Tensor, height: int, width: int
                  ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Shrinks (keeping the aspect ratio) only if larger than height x width.

  Args:
    image: float32 [H, W, 3].
    label: int32 [H, W, 1].

  Returns:
    The image and label, unchanged if they fit, else resized so that both sides
    fit and at least one touches the limit.
  """
  shape = tf.shape(image)[:2]
  fshape = tf.cast(shape, tf.float32)
  factor = tf.minimum(height / fshape[0], width / fshape[1])

  def shrink():
    size = tf.cast(tf.round(fshape * factor), tf.int32)
    size = tf.clip_by_value(size, 1, tf.constant([height, width]))
    return resize_ops.resize_image_and_label(image, label, size)

  return tf.cond(factor < 1.0, shrink, lambda: (image, label))


def eval_resize_size(shape: tf.Tensor, crop_size: Tuple[int, int], mode: str,
                     short_side: int = 800, max_long_side: int = 1333) -> tf.Tensor:
  """The (height, width) an evaluation image is resized to (before padding).

  Args:
    shape: int32 [2], the image's (height, width).
    crop_size: (H, W) of the model input.
    mode: ``fit_shrink_only`` (factor ``min(H / h, W / w)`` if below 1, else the
      image is kept), ``longer_side_to_crop`` (that factor, always) or
      ``short_side`` (factor ``min(short_side / min(h, w), max_long_side /
      max(h, w))``, then clipped to the crop).
    short_side, max_long_side: for ``short_side``.

  Returns:
    int32 [2], ``clip(round(shape * factor), 1, crop_size)`` (float32
    arithmetic; ``shape`` itself when the factor is 1 or, for
    ``fit_shrink_only``, above 1).
  """
  height, width = crop_size
  fshape = tf.cast(shape, tf.float32)
  if mode == SHORT_SIDE:
    factor = tf.minimum(short_side / tf.reduce_min(fshape),
                        max_long_side / tf.reduce_max(fshape))
    factor = tf.minimum(factor, tf.minimum(height / fshape[0], width / fshape[1]))
  elif mode in (FIT_SHRINK_ONLY, LONGER_SIDE_TO_CROP):
    factor = tf.minimum(height / fshape[0], width / fshape[1])
    if mode == FIT_SHRINK_ONLY:
      factor = tf.minimum(factor, 1.0)
  else:
    raise ValueError(f"eval_resize must be one of {EVAL_RESIZE_MODES}, got {mode!r}.")
  size = tf.cast(tf.round(fshape * factor), tf.int32)
  size = tf.clip_by_value(size, 1, tf.constant([height, width]))
  return tf.where(tf.equal(factor, 1.0), shape, size)


def resize_for_eval(image: tf.Tensor, label: tf.Tensor, crop_size: Tuple[int, int],
                    mode: str, short_side: int = 800, max_long_side: int = 1333
                    ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Resizes an evaluation image and label as ``eval_resize_size`` says.

  ``fit_shrink_only`` gives exactly ``resize_to_fit``.

  Args:
    image: float32 [H, W, 3].
    label: int32 [H, W, 1].
    crop_size, mode, short_side, max_long_side: see ``eval_resize_size``.

  Returns:
    float32 [h, w, 3] and int32 [h, w, 1].
  """
  if mode == FIT_SHRINK_ONLY:
    return resize_to_fit(image, label, *crop_size)
  shape = tf.shape(image)[:2]
  size = eval_resize_size(shape, crop_size, mode, short_side, max_long_side)
  return tf.cond(tf.reduce_all(tf.equal(size, shape)), lambda: (image, label),
                 lambda: resize_ops.resize_image_and_label(image, label, size))


def random_short_side(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                      min_short_side: int, max_short_side: int, short_side_step: int,
                      max_long_side: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """Panoptic SegFormer / DETR multi-scale resize.

  The shorter side becomes ``min_short_side + short_side_step * k`` (``k``
  uniform so that it stays <= ``max_short_side``), unless the longer side would
  then exceed ``max_long_side``, in which case the longer side becomes
  ``max_long_side``. The aspect ratio is kept.

  Args:
    image: float32 [H, W, 3].
    label: int32 [H, W, 1].
    seed: int [2] stateless seed.
    min_short_side, max_short_side, short_side_step: the shorter side's choices.
    max_long_side: cap on the longer side.

  Returns:
    float32 [h, w, 3] and int32 [h, w, 1].
  """
  num_steps = (max_short_side - min_short_side) // max(short_side_step, 1)
  k = tf.random.stateless_uniform([], seed, minval=0, maxval=num_steps + 1,
                                  dtype=tf.int32)
  short = tf.cast(min_short_side + short_side_step * k, tf.float32)
  fshape = tf.cast(tf.shape(image)[:2], tf.float32)
  factor = tf.minimum(short / tf.reduce_min(fshape), max_long_side / tf.reduce_max(fshape))
  size = tf.maximum(tf.cast(tf.round(fshape * factor), tf.int32), 1)
  return resize_ops.resize_image_and_label(image, label, size)


def color_jitter(image: tf.Tensor, valid: tf.Tensor, seed: tf.Tensor,
                 brightness: float = 0.0, contrast: float = 0.0,
                 saturation: float = 0.0, hue: float = 0.0) -> tf.Tensor:
  """Random brightness, contrast, saturation and hue, inside the valid region.

  Factors are uniform in ``[1 - x, 1 + x]`` (brightness scales the values,
  contrast and saturation move them away from / towards the mean grey level of
  the valid region and the pixel's grey level); hue is shifted by a uniform
  ``[-hue, hue]`` turn. Applied in that order, clipped to [0, 255] after each;
  padding keeps ``IMAGE_PAD_VALUE``. The label is untouched.

  Args:
    image: float32 [H, W, 3], raw values in [0, 255].
    valid: bool [H, W], the image's pixels (not padding).
    seed: int [2] stateless seed.
    brightness, contrast, saturation, hue: strengths (0 disables each).

  Returns:
    float32 [H, W, 3].
  """
  if brightness <= 0 and contrast <= 0 and saturation <= 0 and hue <= 0:
    return image
  draws = tf.random.stateless_uniform([4], seed, minval=-1.0, maxval=1.0)
  x = image
  if brightness > 0:
    x = tf.clip_by_value(x * (1.0 + brightness * draws[0]), 0.0, 255.0)
  if contrast > 0:
    weight = tf.cast(valid, tf.float32)[..., None]
    grey = tf.image.rgb_to_grayscale(x)
    mean = tf.reduce_sum(grey * weight) / tf.maximum(tf.reduce_sum(weight), 1.0)
    x = tf.clip_by_value((x - mean) * (1.0 + contrast * draws[1]) + mean, 0.0, 255.0)
  if saturation > 0:
    grey = tf.image.rgb_to_grayscale(x)
    x = tf.clip_by_value((x - grey) * (1.0 + saturation * draws[2]) + grey, 0.0, 255.0)
  if hue > 0:
    x = tf.image.adjust_hue(x / 255.0, hue * draws[3]) * 255.0
    x = tf.clip_by_value(x, 0.0, 255.0)
  return tf.where(valid[..., None], x, IMAGE_PAD_VALUE)


def renumber_things(label: tf.Tensor, from_paste: tf.Tensor, label_divisor: int,
                    is_thing: Sequence[bool], name: tf.Tensor = "") -> tf.Tensor:
  """Gives every thing instance of a pasted crop a distinct instance id.

  The original and the pasted image may use the same instance ids: thing
  segments (instance > 0) are renumbered 1, 2, ... over the whole crop in order
  of first appearance (raster order), keeping their class. Crowd, stuff and
  void are unchanged.

  Args:
    label: int32 [H, W], panoptic labels.
    from_paste: bool [H, W], the pixels that come from the pasted image.
    label_divisor: the label divisor.
    is_thing: per train id.
    name: image name, for the error message.

  Returns:
    int32 [H, W].
  """
  num_classes = len(is_thing)
  semantic = tf.math.floordiv(label, label_divisor)
  instance = tf.math.floormod(label, label_divisor)
  thing_table = tf.constant(list(is_thing) + [False], tf.bool)
  in_range = tf.logical_and(semantic >= 0, semantic < num_classes)
  pixel_is_thing = tf.gather(thing_table, tf.where(in_range, semantic, num_classes))
  is_instance = tf.logical_and(pixel_is_thing, instance > 0)
  key = tf.where(is_instance,
                 label + tf.where(from_paste, _PASTE_SOURCE_OFFSET, 0), -1)
  unique_keys, index = tf.unique(tf.reshape(key, [-1]), out_idx=tf.int32)
  rank = tf.cumsum(tf.cast(unique_keys >= 0, tf.int32))
  count = tf.reduce_max(tf.concat([rank, [0]], 0))
  check = tf.debugging.Assert(
      count < label_divisor,
      ["Copy-paste onto image", name, "makes", count, "thing instances, more than the "
       "label divisor", label_divisor, "allows."])
  with tf.control_dependencies([check]):
    new_instance = tf.reshape(tf.gather(rank, index), tf.shape(label))
  return tf.where(is_instance, semantic * label_divisor + new_instance, label)


def copy_paste(image: tf.Tensor, label: tf.Tensor, valid: tf.Tensor,
               paste_image: tf.Tensor, paste_label: tf.Tensor, seed: tf.Tensor, *,
               label_divisor: int, ignore_label: int, is_thing: Sequence[bool],
               stuff_probability: float, name: tf.Tensor = ""
               ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Panoptic copy-paste (kMaX-DeepLab / ReMaX): pastes another crop's segments.

  Every thing segment of the other crop (crowd included) and each of its stuff
  classes with probability ``stuff_probability`` are pasted on top, inside
  the valid region of this crop; its void and padding never are. Thing
  instances are then renumbered (``renumber_things``) so that no two segments
  share an id.

  Args:
    image: float32 [H, W, 3], raw values.
    label: int32 [H, W].
    valid: bool [H, W], the crop's valid region.
    paste_image: float32 [H, W, 3], the other crop.
    paste_label: int32 [H, W], its label (void on its padding).
    seed: int [2] stateless seed (which stuff classes are pasted).
    label_divisor, ignore_label, is_thing: the dataset description.
    stuff_probability: probability of pasting each stuff class.
    name: image name, for messages.

  Returns:
    float32 [H, W, 3] and int32 [H, W].
  """
  num_classes = len(is_thing)
  semantic = tf.math.floordiv(paste_label, label_divisor)
  in_range = tf.logical_and(semantic >= 0, semantic < num_classes)
  take_stuff = tf.random.stateless_uniform([num_classes], seed) < stuff_probability
  take_class = tf.logical_or(tf.constant(list(is_thing), tf.bool), take_stuff)
  take_class = tf.concat([take_class, [False]], 0)
  del ignore_label  # Void is any class outside [0, num_classes): never pasted.
  paste = tf.logical_and(
      valid, tf.gather(take_class, tf.where(in_range, semantic, num_classes)))
  image = tf.where(paste[..., None], paste_image, image)
  label = tf.where(paste, paste_label, label)
  return image, renumber_things(label, paste, label_divisor, is_thing, name)


def panoptic_to_targets(panoptic: tf.Tensor, label_divisor: int, ignore_label: int,
                        is_thing: Sequence[bool], max_num_masks: int,
                        name: tf.Tensor = "") -> Dict[str, tf.Tensor]:
  """Semantic targets and padded ground-truth masks from a panoptic label.

  Args:
    panoptic: int32 [H, W], ``class * label_divisor + instance``; void is
      ``ignore_label * label_divisor``.
    label_divisor: the label divisor.
    ignore_label: the void class.
    is_thing: per train id, whether the class is a thing (length num_classes).
    max_num_masks: K, the number of mask slots.
    name: image name for error messages.

  Returns:
    common.GT_SEMANTIC: int32 [H, W], ignore_label at void.
    common.GT_SEMANTIC_WEIGHT: float32 [H, W], 1 on labelled pixels (crowd
      included), 0 at void.
    common.GT_MASK_ID: int32 [H, W] in [-1, K).
    common.GT_CLASSES: int32 [K], -1 for empty slots.
    common.GT_IS_THING: bool [K].
    common.GT_CROWD: bool [H, W], crowd pixels (thing class, instance 0).
  """
  num_classes = len(is_thing)
  semantic = tf.math.floordiv(panoptic, label_divisor)
  instance = tf.math.floormod(panoptic, label_divisor)
  void = tf.equal(semantic, ignore_label)
  valid_class = tf.logical_or(
      void, tf.logical_and(semantic >= 0, semantic < num_classes))
  check = tf.debugging.Assert(
      tf.reduce_all(valid_class),
      ["Panoptic label of image", name, "holds classes outside [0,", num_classes,
       ") that are not the ignore label", ignore_label, ": min/max class",
       tf.reduce_min(semantic), tf.reduce_max(semantic)])
  with tf.control_dependencies([check]):
    class_index = tf.where(void, num_classes, semantic)
  thing_table = tf.constant(list(is_thing) + [False], tf.bool)
  pixel_is_thing = tf.gather(thing_table, class_index)
  # Crowd (thing, instance 0) and void belong to no mask; stuff instances merge.
  has_mask = tf.logical_and(tf.logical_not(void),
                            tf.logical_or(tf.logical_not(pixel_is_thing), instance > 0))
  key = tf.where(pixel_is_thing, panoptic, semantic * label_divisor)
  key = tf.where(has_mask, key, -1)

  flat_key = tf.reshape(key, [-1])
  unique_keys, unique_index = tf.unique(flat_key, out_idx=tf.int32)
  num_unique = tf.size(unique_keys)
  areas = tf.math.unsorted_segment_sum(tf.ones_like(flat_key), unique_index, num_unique)
  areas = tf.where(unique_keys >= 0, areas, 0)
  # Pad with K empty candidates so that top_k always has K entries.
  k = max_num_masks
  areas = tf.concat([areas, tf.zeros([k], tf.int32)], 0)
  unique_keys = tf.concat([unique_keys, -tf.ones([k], tf.int32)], 0)
  # top_k breaks ties by lower index (first met in raster order): deterministic.
  top_areas, top_index = tf.math.top_k(areas, k=k, sorted=True)
  valid = top_areas > 0
  top_keys = tf.gather(unique_keys, top_index)
  order = tf.argsort(tf.where(valid, top_keys, tf.int32.max), stable=True)
  slot_keys = tf.gather(top_keys, order)
  slot_valid = tf.gather(valid, order)
  slot_source = tf.gather(top_index, order)
  # unique entry -> slot (+1 so that 0 means "no slot" in the scatter).
  slot_of_unique = tf.scatter_nd(
      slot_source[:, None],
      tf.where(slot_valid, tf.range(1, k + 1, dtype=tf.int32), 0),
      tf.shape(unique_keys)) - 1
  mask_id = tf.reshape(tf.gather(slot_of_unique, unique_index), tf.shape(panoptic))
  classes = tf.where(slot_valid, tf.math.floordiv(slot_keys, label_divisor), -1)
  slot_is_thing = tf.logical_and(
      slot_valid, tf.gather(thing_table, tf.where(slot_valid, classes, num_classes)))
  return {
      common.GT_SEMANTIC: tf.where(void, ignore_label, semantic),
      common.GT_SEMANTIC_WEIGHT: tf.cast(tf.logical_not(void), tf.float32),
      common.GT_MASK_ID: mask_id,
      common.GT_CLASSES: classes,
      common.GT_IS_THING: slot_is_thing,
      common.GT_CROWD: tf.logical_and(pixel_is_thing, tf.equal(instance, 0)),
  }


def _finish(image: tf.Tensor, label: tf.Tensor, decoded: Dict[str, tf.Tensor],
            resized_size: tf.Tensor, label_divisor: int, ignore_label: int,
            is_thing: Sequence[bool], max_num_masks: int,
            crop_size: Tuple[int, int]) -> Dict[str, tf.Tensor]:
  """Normalises the image and computes the targets of a crop-size example."""
  height, width = crop_size
  panoptic = tf.ensure_shape(label[..., 0], [height, width])
  outputs = {
      common.IMAGE: tf.ensure_shape(normalize_image(image), [height, width, 3]),
      common.IMAGE_NAME: decoded[common.IMAGE_NAME],
      common.ORIGINAL_HEIGHT: decoded[common.ORIGINAL_HEIGHT],
      common.ORIGINAL_WIDTH: decoded[common.ORIGINAL_WIDTH],
      common.RESIZED_HEIGHT: resized_size[0],
      common.RESIZED_WIDTH: resized_size[1],
      common.GT_PANOPTIC: panoptic,
  }
  targets = panoptic_to_targets(panoptic, label_divisor, ignore_label, is_thing,
                                max_num_masks, decoded[common.IMAGE_NAME])
  for key in (common.GT_SEMANTIC, common.GT_SEMANTIC_WEIGHT, common.GT_MASK_ID,
              common.GT_CROWD):
    targets[key] = tf.ensure_shape(targets[key], [height, width])
  for key in (common.GT_CLASSES, common.GT_IS_THING):
    targets[key] = tf.ensure_shape(targets[key], [max_num_masks])
  outputs.update(targets)
  return outputs


def augment_geometry(decoded: Dict[str, tf.Tensor], seed: tf.Tensor, *,
                     crop_size: Tuple[int, int], label_divisor: int, ignore_label: int,
                     augmentation: input_config_lib.AugmentationConfig
                     ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Resize -> flip -> pad -> random crop of one decoded record.

  Args:
    decoded: the output of ``tfrecord.decode_record``.
    seed: int [2] stateless seed.
    crop_size: (height, width) of the output.
    label_divisor, ignore_label: the dataset's.
    augmentation: its ``train_resize`` (``random_scale``, see
      :func:`random_scale`, ``random_scale_of_crop``, see
      :func:`random_scale_of_crop`, or ``random_short_side``, see
      :func:`random_short_side`) with that mode's settings, and its
      ``flip_probability``.

  Returns:
    float32 [H, W, 3] raw image, int32 [H, W] label (void on padding) and
    int32 [2] valid size (top-left region); H, W = crop_size.
  """
  height, width = crop_size
  void = ignore_label * label_divisor
  aug = augmentation
  resize_seed, flip_seed, crop_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = tf.cast(decoded[common.IMAGE], tf.float32)
  label = decoded[common.GT_PANOPTIC][..., None]
  if aug.train_resize == RANDOM_SCALE:
    image, label = random_scale(image, label, resize_seed, aug.min_scale, aug.max_scale,
                                aug.scale_step)
  elif aug.train_resize == RANDOM_SCALE_OF_CROP:
    image, label = random_scale_of_crop(image, label, resize_seed, aug.min_scale,
                                        aug.max_scale, aug.scale_step, crop_size)
  elif aug.train_resize == RANDOM_SHORT_SIDE:
    image, label = random_short_side(image, label, resize_seed, aug.min_short_side,
                                     aug.max_short_side, aug.short_side_step,
                                     aug.max_long_side)
  else:
    raise ValueError(f"train_resize must be one of {TRAIN_RESIZE_MODES}, got "
                     f"{aug.train_resize!r}.")
  image, label = random_flip(image, label, flip_seed, aug.flip_probability)
  resized_size = tf.minimum(tf.shape(image)[:2], tf.constant([height, width]))
  image, label = pad_to_size(image, label, height, width, void)
  image, label = random_crop(image, label, crop_seed, height, width)
  return image, label[..., 0], resized_size


def _valid_region(resized_size: tf.Tensor, crop_size: Tuple[int, int]) -> tf.Tensor:
  """bool [H, W]: True on ``[0, resized_height) x [0, resized_width)``."""
  rows = tf.range(crop_size[0]) < resized_size[0]
  cols = tf.range(crop_size[1]) < resized_size[1]
  return tf.logical_and(rows[:, None], cols[None, :])


def preprocess_train(decoded: Dict[str, tf.Tensor], seed: tf.Tensor, *,
                     config: input_config_lib.InputConfig,
                     augmentation: input_config_lib.AugmentationConfig,
                     label_divisor: int, ignore_label: int, is_thing: Sequence[bool],
                     paste_from: Optional[Dict[str, tf.Tensor]] = None
                     ) -> Dict[str, tf.Tensor]:
  """Augments one decoded record and builds its training targets.

  The seed is split into fixed streams (geometry, colour, copy-paste, pasted
  geometry), so turning one augmentation on or off leaves the others' draws
  unchanged.

  Args:
    decoded: the output of ``tfrecord.decode_record``.
    seed: int [2] stateless seed; the same seed gives the same augmentation.
    config: the crop size and ``max_num_masks`` (K).
    augmentation: the geometry (see :func:`augment_geometry`), copy-paste
      settings and colour jitter (see :func:`color_jitter`).
    label_divisor, ignore_label, is_thing: the dataset description.
    paste_from: another decoded record to copy-paste from (kMaX / ReMaX), or
      None. It goes through the same geometry with the resize range of
      ``augmentation.for_pasted_image()``.

  Returns:
    A dict with common.IMAGE float32 [H, W, 3], IMAGE_NAME, ORIGINAL_HEIGHT/WIDTH,
    RESIZED_HEIGHT/WIDTH (int32 scalars), GT_PANOPTIC int32 [H, W] and the
    targets of ``panoptic_to_targets``; H, W = crop_size.
  """
  crop_size = config.crop_size
  geometry_seed, color_seed, paste_seed, paste_geometry_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 4))
  geometry = dict(crop_size=crop_size, label_divisor=label_divisor,
                  ignore_label=ignore_label)
  image, label, resized_size = augment_geometry(decoded, geometry_seed,
                                                augmentation=augmentation, **geometry)
  valid = _valid_region(resized_size, crop_size)
  if paste_from is not None:
    paste_image, paste_label, _ = augment_geometry(
        paste_from, paste_geometry_seed, augmentation=augmentation.for_pasted_image(),
        **geometry)
    image, label = copy_paste(
        image, label, valid, paste_image, paste_label, paste_seed,
        label_divisor=label_divisor, ignore_label=ignore_label, is_thing=is_thing,
        stuff_probability=augmentation.copy_paste_stuff_probability,
        name=decoded[common.IMAGE_NAME])
  image = color_jitter(image, valid, color_seed, augmentation.brightness,
                       augmentation.contrast, augmentation.saturation, augmentation.hue)
  return _finish(image, label[..., None], decoded, resized_size, label_divisor,
                 ignore_label, is_thing, config.max_num_masks, crop_size)


def preprocess_eval(decoded: Dict[str, tf.Tensor], *,
                    config: input_config_lib.InputConfig, label_divisor: int,
                    ignore_label: int, is_thing: Sequence[bool]) -> Dict[str, tf.Tensor]:
  """Resizes (``config.eval_resize``) and pads one decoded record for evaluation.

  Args:
    decoded: the output of ``tfrecord.decode_record``.
    config: the crop size, ``max_num_masks`` (K), ``max_original_size``
      (Hmax, Wmax) of GT_PANOPTIC_ORIGINAL (a larger image is an error naming
      it) and the evaluation resize (see ``eval_resize_size``).
    label_divisor, ignore_label, is_thing: the dataset description.

  Returns:
    Like ``preprocess_train`` plus common.GT_PANOPTIC_ORIGINAL int32
    [Hmax, Wmax]: the label at the original resolution, padded with void.
  """
  crop_size = config.crop_size
  height, width = crop_size
  max_height, max_width = config.max_original_size
  void = ignore_label * label_divisor
  name = decoded[common.IMAGE_NAME]
  original = decoded[common.GT_PANOPTIC]
  orig_shape = tf.shape(original)
  check = tf.debugging.Assert(
      tf.logical_and(orig_shape[0] <= max_height, orig_shape[1] <= max_width),
      ["Image", name, "is", orig_shape[0], "x", orig_shape[1],
       "which exceeds the largest original size", max_height, "x", max_width,
       "for gt_panoptic_original: raise InputConfig.max_original_size."])
  with tf.control_dependencies([check]):
    original = tf.pad(original, [[0, max_height - orig_shape[0]],
                                 [0, max_width - orig_shape[1]]], constant_values=void)
  original = tf.ensure_shape(original, [max_height, max_width])
  image = tf.cast(decoded[common.IMAGE], tf.float32)
  label = decoded[common.GT_PANOPTIC][..., None]
  image, label = resize_for_eval(image, label, crop_size, config.eval_resize,
                                 config.eval_short_side, config.eval_max_long_side)
  resized_size = tf.shape(image)[:2]
  image, label = pad_to_size(image, label, height, width, void)
  outputs = _finish(image, label, decoded, resized_size, label_divisor, ignore_label,
                    is_thing, config.max_num_masks, crop_size)
  outputs[common.GT_PANOPTIC_ORIGINAL] = original
  return outputs


def padding_example(*, crop_size: Tuple[int, int], max_num_masks: int,
                    label_divisor: int, ignore_label: int,
                    max_original_size: Optional[Tuple[int, int]] = None
                    ) -> Dict[str, tf.Tensor]:
  """An all-padding example, used to fill the last evaluation batch.

  It is recognisable by ``ORIGINAL_HEIGHT == ORIGINAL_WIDTH == 0`` and an empty
  ``IMAGE_NAME``; its image is 0 (padding), its label void and it has no masks,
  so losses and metrics that honour void ignore it.

  Returns:
    The same keys, shapes and dtypes as ``preprocess_eval`` (without
    GT_PANOPTIC_ORIGINAL when ``max_original_size`` is None).
  """
  height, width = crop_size
  void = ignore_label * label_divisor
  example = {
      common.IMAGE: tf.zeros([height, width, 3], tf.float32),
      common.IMAGE_NAME: tf.constant(""),
      common.ORIGINAL_HEIGHT: tf.constant(0, tf.int32),
      common.ORIGINAL_WIDTH: tf.constant(0, tf.int32),
      common.RESIZED_HEIGHT: tf.constant(0, tf.int32),
      common.RESIZED_WIDTH: tf.constant(0, tf.int32),
      common.GT_PANOPTIC: tf.fill([height, width], void),
      common.GT_SEMANTIC: tf.fill([height, width], ignore_label),
      common.GT_SEMANTIC_WEIGHT: tf.zeros([height, width], tf.float32),
      common.GT_MASK_ID: tf.fill([height, width], -1),
      common.GT_CROWD: tf.zeros([height, width], tf.bool),
      common.GT_CLASSES: tf.fill([max_num_masks], -1),
      common.GT_IS_THING: tf.zeros([max_num_masks], tf.bool),
  }
  if max_original_size is not None:
    example[common.GT_PANOPTIC_ORIGINAL] = tf.fill(list(max_original_size), void)
  return example
