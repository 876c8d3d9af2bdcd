"""From a decoded record to fixed-size training or evaluation targets.

Everything here is in-graph TensorFlow with static output shapes, written for
``tf.data`` maps (one example at a time; batching is the reader's job).

Training: random scale -> random horizontal flip -> pad bottom/right to at least
the crop size -> random crop. Flipping before padding keeps the valid image in
the top-left corner of every crop, so ``RESIZED_HEIGHT`` / ``RESIZED_WIDTH``
describe it as ``[0, resized_height) x [0, resized_width)``.

Evaluation: shrink (keeping the aspect ratio) only if the image is larger than
the crop, then pad bottom/right to the crop size.

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

# Raw (0..255) image value used for padding: 0 after normalisation.
IMAGE_PAD_VALUE = 127.5


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """Maps raw pixel values [0, 255] to [-1, 1].

  Args:
    image: [H, W, 3] uint8 or float.

  Returns:
    float32 [H, W, 3], ``x / 127.5 - 1``.
  """
  return tf.cast(image, tf.float32) / 127.5 - 1.0


def resize(image: tf.Tensor, label: tf.Tensor, size: tf.Tensor
           ) -> Tuple[tf.Tensor, tf.Tensor]:
  """Resizes an image bilinearly and its label with nearest neighbour.

  Args:
    image: float32 [H, W, 3].
    label: int32 [H, W, 1].
    size: int32 [2], the new (height, width).

  Returns:
    float32 [h, w, 3] and int32 [h, w, 1]. Same size is the identity.
  """
  image = tf.image.resize(image, size, method=tf.image.ResizeMethod.BILINEAR)
  label = tf.image.resize(label, size, method=tf.image.ResizeMethod.NEAREST_NEIGHBOR)
  return image, label


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
  if min_scale == max_scale:
    factor = tf.constant(min_scale, tf.float32)
  elif scale_step > 0:
    num_steps = int(round((max_scale - min_scale) / scale_step))
    k = tf.random.stateless_uniform([], seed, minval=0, maxval=num_steps + 1,
                                    dtype=tf.int32)
    factor = min_scale + scale_step * tf.cast(k, tf.float32)
  else:
    factor = tf.random.stateless_uniform([], seed, minval=min_scale, maxval=max_scale)
  size = tf.cast(tf.shape(image)[:2], tf.float32) * factor
  size = tf.maximum(tf.cast(tf.round(size), tf.int32), 1)
  return resize(image, label, size)


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
    return resize(image, label, size)

  return tf.cond(factor < 1.0, shrink, lambda: (image, label))


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
  for key in (common.GT_SEMANTIC, common.GT_SEMANTIC_WEIGHT, common.GT_MASK_ID):
    targets[key] = tf.ensure_shape(targets[key], [height, width])
  for key in (common.GT_CLASSES, common.GT_IS_THING):
    targets[key] = tf.ensure_shape(targets[key], [max_num_masks])
  outputs.update(targets)
  return outputs


def preprocess_train(decoded: Dict[str, tf.Tensor], seed: tf.Tensor, *,
                     crop_size: Tuple[int, int], label_divisor: int, ignore_label: int,
                     is_thing: Sequence[bool], max_num_masks: int, min_scale: float,
                     max_scale: float, scale_step: float, flip_probability: float
                     ) -> Dict[str, tf.Tensor]:
  """Augments one decoded record and builds its training targets.

  Args:
    decoded: the output of ``tfrecord.decode_record``.
    seed: int [2] stateless seed; the same seed gives the same augmentation.
    crop_size: (height, width) of the output.
    label_divisor, ignore_label, is_thing: the dataset description.
    max_num_masks: K.
    min_scale, max_scale, scale_step: random scale (see ``random_scale``).
    flip_probability: horizontal flip probability.

  Returns:
    A dict with common.IMAGE float32 [H, W, 3], IMAGE_NAME, ORIGINAL_HEIGHT/WIDTH,
    RESIZED_HEIGHT/WIDTH (int32 scalars), GT_PANOPTIC int32 [H, W] and the
    targets of ``panoptic_to_targets``; H, W = crop_size.
  """
  height, width = crop_size
  void = ignore_label * label_divisor
  scale_seed, flip_seed, crop_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3))
  image = tf.cast(decoded[common.IMAGE], tf.float32)
  label = decoded[common.GT_PANOPTIC][..., None]
  image, label = random_scale(image, label, scale_seed, min_scale, max_scale, scale_step)
  image, label = random_flip(image, label, flip_seed, flip_probability)
  scaled = tf.shape(image)[:2]
  resized_size = tf.minimum(scaled, tf.constant([height, width]))
  image, label = pad_to_size(image, label, height, width, void)
  image, label = random_crop(image, label, crop_seed, height, width)
  return _finish(image, label, decoded, resized_size, label_divisor, ignore_label,
                 is_thing, max_num_masks, crop_size)


def preprocess_eval(decoded: Dict[str, tf.Tensor], *, crop_size: Tuple[int, int],
                    max_original_size: Tuple[int, int], label_divisor: int,
                    ignore_label: int, is_thing: Sequence[bool], max_num_masks: int
                    ) -> Dict[str, tf.Tensor]:
  """Resizes (only if too large) and pads one decoded record for evaluation.

  Args:
    decoded: the output of ``tfrecord.decode_record``.
    crop_size: (height, width) of the model input.
    max_original_size: (Hmax, Wmax) of GT_PANOPTIC_ORIGINAL; a larger image is
      an error naming it.
    label_divisor, ignore_label, is_thing: the dataset description.
    max_num_masks: K.

  Returns:
    Like ``preprocess_train`` plus common.GT_PANOPTIC_ORIGINAL int32
    [Hmax, Wmax]: the label at the original resolution, padded with void.
  """
  height, width = crop_size
  max_height, max_width = max_original_size
  void = ignore_label * label_divisor
  name = decoded[common.IMAGE_NAME]
  original = decoded[common.GT_PANOPTIC]
  orig_shape = tf.shape(original)
  check = tf.debugging.Assert(
      tf.logical_and(orig_shape[0] <= max_height, orig_shape[1] <= max_width),
      ["Image", name, "is", orig_shape[0], "x", orig_shape[1],
       "which exceeds the largest original size", max_height, "x", max_width,
       "for gt_panoptic_original: raise build_dataset.max_original_size."])
  with tf.control_dependencies([check]):
    original = tf.pad(original, [[0, max_height - orig_shape[0]],
                                 [0, max_width - orig_shape[1]]], constant_values=void)
  original = tf.ensure_shape(original, [max_height, max_width])
  image = tf.cast(decoded[common.IMAGE], tf.float32)
  label = decoded[common.GT_PANOPTIC][..., None]
  image, label = resize_to_fit(image, label, height, width)
  resized_size = tf.shape(image)[:2]
  image, label = pad_to_size(image, label, height, width, void)
  outputs = _finish(image, label, decoded, resized_size, label_divisor, ignore_label,
                    is_thing, max_num_masks, crop_size)
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
      common.GT_CLASSES: tf.fill([max_num_masks], -1),
      common.GT_IS_THING: tf.zeros([max_num_masks], tf.bool),
  }
  if max_original_size is not None:
    example[common.GT_PANOPTIC_ORIGINAL] = tf.fill(list(max_original_size), void)
  return example
