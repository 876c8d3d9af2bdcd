"""Ground truth and predictions at the loss resolution, shared by every term.

Notation for shapes: B batch, H x W ground-truth size, h x w prediction size,
P = h * w pixels, K ground-truth mask slots, N predicted masks, C classes
(class logits have C + 1 entries, the last one is void / no object).
"""

from typing import Any, Mapping, NamedTuple, Tuple

import tensorflow as tf

from deeplab_panoptic.ops import resize as resize_lib

MASK_ACTIVATIONS = ("softmax", "sigmoid")
MASK_PRESENCES = ("loss_size", "input_size")


def require(mapping: Mapping[str, Any], key: str, where: str,
            owner: str = "Criterion") -> Any:
  """`mapping[key]`, or a KeyError naming what is missing and where."""
  if key not in mapping:
    raise KeyError(f"{owner}: {where} has no {key!r} (keys: {sorted(mapping)}).")
  return mapping[key]


def masked_mean(values: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
  """Per-image weighted sum divided by the number of non-zero weights.

  An image without any weighted element gives 0 (nothing to learn there);
  NaN values still propagate.

  Args:
    values: float [B, P].
    weights: float [B, P] >= 0.

  Returns:
    float [B].
  """
  count = tf.reduce_sum(tf.cast(weights > 0, values.dtype), axis=-1)
  return tf.reduce_sum(values * weights, axis=-1) / tf.maximum(count, 1.0)


class MaskTargets(NamedTuple):
  """Ground truth at the prediction resolution, flattened over pixels.

  Attributes:
    masks: float32 [B, P, K] one-hot ground-truth masks; all zero on void,
      crowd and padding pixels and for absent (empty or vanished) masks.
    present: bool [B, K], the mask slot holds a real mask with >= 1 pixel.
    classes: int32 [B, K] class of each mask, 0 where not present (always use
      together with `present`).
    is_thing: bool [B, K], present thing masks.
    valid_pixels: float32 [B, P], 1 on pixels where predictions are scored (not
      void); mask probabilities are zeroed elsewhere.
  """
  masks: tf.Tensor
  present: tf.Tensor
  classes: tf.Tensor
  is_thing: tf.Tensor
  valid_pixels: tf.Tensor


def prepare_mask_targets(gt_mask_id: tf.Tensor,
                         gt_classes: tf.Tensor,
                         gt_is_thing: tf.Tensor,
                         gt_semantic: tf.Tensor,
                         size: Tuple[int, int],
                         num_classes: int,
                         crowd_as_void: bool = False,
                         presence: str = "loss_size") -> MaskTargets:
  """Resizes the ground truth to the prediction size and one-hot encodes it.

  Args:
    gt_mask_id: int32 [B, H, W], index in [0, K) of each pixel's mask, -1 for
      void, crowd and padding.
    gt_classes: int32 [B, K] class of each mask, -1 for empty slots.
    gt_is_thing: bool [B, K].
    gt_semantic: int32 [B, H, W] train ids, outside [0, num_classes) at void.
    size: static prediction size (h, w).
    num_classes: C.
    crowd_as_void: if False (deeplab2), crowd pixels (a valid semantic class but
      no mask) still count as non-void, so predicted mask mass there lowers the
      Dice; if True, every pixel without a ground-truth mask is void.
    presence: "loss_size": a mask counts as present when it keeps a pixel at
      `size` (one that vanishes when resizing is dropped); "input_size": every
      slot with a class is present (the data pipeline gives a class only to
      slots with pixels at H x W), its mask at `size` possibly empty, for
      terms that read the full-size ground truth (point-sampled losses).

  Returns:
    A `MaskTargets`.
  """
  if presence not in MASK_PRESENCES:
    raise ValueError(f"mask presence must be one of {MASK_PRESENCES}, got "
                     f"{presence!r}.")
  num_masks = gt_classes.shape[-1]
  height, width = size
  mask_id = tf.reshape(resize_lib.resize_nearest(gt_mask_id, size),
                       [-1, height * width])
  # one_hot maps -1 (void / crowd / padding) to an all-zero row.
  masks = tf.one_hot(mask_id, num_masks, dtype=tf.float32)
  area = tf.reduce_sum(masks, axis=1)
  # A mask that vanishes when resizing counts as absent, like an empty slot.
  present = gt_classes >= 0
  if presence == "loss_size":
    present = tf.logical_and(present, area > 0)
  masks *= tf.cast(present, tf.float32)[:, tf.newaxis, :]
  has_mask = tf.reduce_sum(masks, axis=-1) > 0
  if crowd_as_void:
    valid = has_mask
  else:
    semantic = tf.reshape(resize_lib.resize_nearest(gt_semantic, size),
                          [-1, height * width])
    labelled = tf.logical_and(semantic >= 0, semantic < num_classes)
    valid = tf.logical_or(labelled, has_mask)
  classes = tf.where(present, gt_classes, tf.zeros_like(gt_classes))
  is_thing = tf.logical_and(tf.cast(gt_is_thing, tf.bool), present)
  return MaskTargets(masks=masks, present=present, classes=classes,
                     is_thing=is_thing, valid_pixels=tf.cast(valid, tf.float32))


def mask_probabilities(mask_logits: tf.Tensor,
                       activation: str = "softmax") -> tf.Tensor:
  """Mask probabilities from mask logits.

  Args:
    mask_logits: float [B, P, N].
    activation: "softmax" over the N slots (MaX-DeepLab, arXiv 2012.00759,
      eq. 15) or per-slot "sigmoid" (ReMaX, Panoptic SegFormer).

  Returns:
    float [B, P, N].
  """
  if activation == "softmax":
    return tf.nn.softmax(mask_logits, axis=-1)
  if activation == "sigmoid":
    return tf.math.sigmoid(mask_logits)
  raise ValueError(f"mask_activation must be one of {MASK_ACTIVATIONS}, got "
                   f"{activation!r}.")


def assignment_matrix(matched: tf.Tensor, present: tf.Tensor,
                      num_predictions: int) -> tf.Tensor:
  """One-hot assignment of present ground-truth masks to predictions.

  Args:
    matched: int32 [B, K] prediction index of each ground-truth slot, -1
      for none (gives a zero row).
    present: bool [B, K].
    num_predictions: N.

  Returns:
    float32 [B, K, N], 1 at (k, matched[k]) for present k, 0 elsewhere.
  """
  return (tf.one_hot(matched, num_predictions, dtype=tf.float32) *
          tf.cast(present, tf.float32)[:, :, tf.newaxis])
