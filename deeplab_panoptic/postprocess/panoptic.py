"""MaX-DeepLab panoptic inference: per-pixel argmax over mask slots.

Implements the pixel-wise merge of MaX-DeepLab (the paper's inference, deeplab2's
``model/post_processor/max_deeplab.py``) with static shapes, so it XLA-compiles
(``jit_compile=True``) and runs on TPU inside the evaluation step:

1. Class probabilities are a softmax over the ``num_classes + 1`` logits; the void
   column is dropped *without* renormalising. Each slot takes the argmax class and
   the max probability as its score.
2. Slots whose score is below ``class_threshold`` are disabled: their mask logits
   are pushed to a very small value, so they win no pixel and carry no softmax mass.
3. Mask logits are bilinearly resized to the target size; each pixel takes the
   argmax slot. The pixel is kept if its mask confidence exceeds
   ``pixel_confidence_threshold`` and its top slot (before disabling) is enabled.
4. Thing slots get instance id ``slot + 1``; stuff slots get instance 0, so stuff
   slots of one class merge into one segment.
5. Segments (panoptic ids) smaller than their thing / stuff area threshold become
   void. A thing segment is one slot; a stuff segment is every kept stuff pixel
   of its class.

Everything is computed at the target (model input) resolution.
"""

from typing import Dict, List, Sequence, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess import base

# Logit given to disabled slots. deeplab2 uses -99999: low enough that exp()
# underflows to 0 against any real logit, finite so softmax stays NaN-free even
# when every slot of an image is disabled.
_DISABLED_LOGIT = -99999.0

_MASK_ACTIVATIONS = ("softmax", "sigmoid")


def check_prediction_shapes(owner: str, class_logits: tf.Tensor, mask_logits: tf.Tensor,
                            num_classes: int, label_divisor: int) -> int:
  """Validates the model outputs a panoptic postprocessor reads; returns N.

  Args:
    owner: the postprocessor's name, for messages.
    class_logits: ``[B, N, num_classes + 1]``.
    mask_logits: ``[B, h, w, N]``.
    num_classes: classes without void.
    label_divisor: thing instance ids (slot + 1) must stay below it.
  """
  num_slots = mask_logits.shape[-1]
  if class_logits.shape[-1] != num_classes + 1:
    raise ValueError(
        f"{owner}: {common.PRED_CLASS_LOGITS} has {class_logits.shape[-1]} classes, "
        f"expected num_classes + 1 = {num_classes + 1}.")
  if num_slots is None or class_logits.shape[1] != num_slots:
    raise ValueError(
        f"{owner}: {common.PRED_CLASS_LOGITS} {class_logits.shape} and "
        f"{common.PRED_MASK_LOGITS} {mask_logits.shape} disagree on the (static) "
        "number of mask slots.")
  if num_slots >= label_divisor:
    raise ValueError(
        f"{owner}: {num_slots} mask slots need thing instance ids up to {num_slots}, "
        f"which must be < label_divisor ({label_divisor}).")
  return num_slots


def resize_mask_logits(mask_logits: tf.Tensor, size: Tuple[int, int],
                       align_corners: bool = False) -> tf.Tensor:
  """Bilinear resize of mask logits; a no-op at the target size already.

  Args:
    mask_logits: float ``[B, h, w, N]``.
    size: (H, W) python ints.
    align_corners: resize with align_corners=True (deeplab2, whose inputs are
      ``k * stride + 1`` pixels) instead of half-pixel centres (``tf.image.resize``).

  Returns:
    float ``[B, H, W, N]``.
  """
  if tuple(mask_logits.shape[1:3]) == tuple(size):
    return mask_logits
  if align_corners:
    return tf.compat.v1.image.resize(
        mask_logits, size, method=tf.compat.v1.image.ResizeMethod.BILINEAR,
        align_corners=True)
  return tf.image.resize(mask_logits, size, method=tf.image.ResizeMethod.BILINEAR)


def slot_areas(slot_map: tf.Tensor, num_slots: int) -> tf.Tensor:
  """Pixels per slot.

  Args:
    slot_map: int32 ``[B, H, W]``, slot index per pixel, ``num_slots`` for void.
    num_slots: N.

  Returns:
    int32 ``[B, N]``.
  """
  batch = tf.shape(slot_map)[0]
  flat = tf.reshape(slot_map, [batch, -1])
  # One segment id space for the whole batch keeps this a single XLA scatter.
  offsets = tf.range(batch)[:, tf.newaxis] * (num_slots + 1)
  counts = tf.math.unsorted_segment_sum(
      tf.ones_like(flat), flat + offsets, num_segments=batch * (num_slots + 1))
  return tf.reshape(counts, [batch, num_slots + 1])[:, :num_slots]


def segment_areas(areas: tf.Tensor, classes: tf.Tensor, slot_is_thing: tf.Tensor,
                  num_classes: int) -> tf.Tensor:
  """Area of the panoptic segment each slot belongs to.

  A thing slot is its own segment; stuff slots of one class share the segment
  ``class * label_divisor``, so their areas add up.

  Args:
    areas: int32 ``[B, N]`` pixels of each slot (0 for slots without a segment).
    classes: int32 ``[B, N]`` in ``[0, num_classes)``.
    slot_is_thing: bool ``[B, N]``.
    num_classes: classes without void.

  Returns:
    int32 ``[B, N]``.
  """
  one_hot = tf.one_hot(classes, num_classes, dtype=tf.int32)        # [B, N, C]
  stuff_areas = tf.where(slot_is_thing, 0, areas)
  class_areas = tf.reduce_sum(one_hot * stuff_areas[..., tf.newaxis], axis=1)
  stuff_segment_areas = tf.gather(class_areas, classes, batch_dims=1)
  return tf.where(slot_is_thing, areas, stuff_segment_areas)


def softmax_slot_classes(class_logits: tf.Tensor, is_thing: Sequence[bool]
                         ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
  """Each slot's best real class under a softmax over the classes and void.

  Args:
    class_logits: float ``[B, N, num_classes + 1]`` (void last).
    is_thing: per train id (length num_classes).

  Returns:
    probs float32 ``[B, N, num_classes + 1]`` (void included); classes int32
    ``[B, N]`` (argmax over the real classes); scores float32 ``[B, N]`` (their
    probability, not renormalised without void); slot_is_thing bool ``[B, N]``.
  """
  probs = tf.nn.softmax(tf.cast(class_logits, tf.float32), axis=-1)
  real = probs[..., :len(is_thing)]
  classes = tf.argmax(real, axis=-1, output_type=tf.int32)
  scores = tf.reduce_max(real, axis=-1)
  slot_is_thing = tf.gather(tf.constant(list(is_thing), tf.bool), classes)
  return probs, classes, scores, slot_is_thing


def slot_map_to_panoptic(slot_map: tf.Tensor, classes: tf.Tensor,
                         slot_is_thing: tf.Tensor, survives: tf.Tensor,
                         label_divisor: int, ignore_label: int
                         ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """Panoptic, semantic and instance maps from a per-pixel slot index.

  Thing slots get instance id ``slot + 1``; stuff slots get instance 0, so stuff
  slots of one class merge into one segment. Pixels of void (``N``) or
  non-surviving slots get semantic ``ignore_label`` and instance 0.

  Args:
    slot_map: int32 ``[B, H, W]``, slot index per pixel, N for void.
    classes: int32 ``[B, N]`` class of each slot.
    slot_is_thing: bool ``[B, N]``.
    survives: bool ``[B, N]``, slots whose pixels are kept.
    label_divisor: panoptic = semantic * label_divisor + instance.
    ignore_label: semantic label of void pixels.

  Returns:
    panoptic, semantic, instance: int32 ``[B, H, W]``.
  """
  batch = tf.shape(classes)[0]
  num_slots = classes.shape[1]
  survives_ext = tf.concat([survives, tf.zeros([batch, 1], tf.bool)], axis=1)
  slot_map = tf.where(tf.gather(survives_ext, slot_map, batch_dims=1), slot_map,
                      num_slots)
  semantic_ext = tf.concat([classes, tf.fill([batch, 1], ignore_label)], axis=1)
  instance_ids = tf.where(slot_is_thing, tf.range(1, num_slots + 1), 0)
  instance_ext = tf.concat([instance_ids, tf.zeros([batch, 1], tf.int32)], axis=1)
  semantic = tf.gather(semantic_ext, slot_map, batch_dims=1)
  instance = tf.gather(instance_ext, slot_map, batch_dims=1)
  return semantic * label_divisor + instance, semantic, instance


def check_area_thresholds(owner: str, thing_area_threshold: int,
                          stuff_area_threshold: int) -> None:
  """Raises ValueError, naming ``owner``, for a negative area threshold."""
  if thing_area_threshold < 0 or stuff_area_threshold < 0:
    raise ValueError(f"{owner}: area thresholds must be >= 0.")


class MaskClassificationPostprocessor(base.Postprocessor):
  """Base of the panoptic inferences over (class, mask) slot predictions.

  Reads ``common.PRED_CLASS_LOGITS`` float ``[B, N, num_classes + 1]`` and
  ``common.PRED_MASK_LOGITS`` float ``[B, h, w, N]``; declares panoptic, semantic
  and instance results (every slot is a segment; a thing slot ``k`` is instance
  ``k + 1``).
  """

  results = frozenset({base.PANOPTIC, base.SEMANTIC, base.INSTANCE})
  required_outputs = (common.PRED_CLASS_LOGITS, common.PRED_MASK_LOGITS)

  def predicted_classes(self, outputs) -> int:
    return int(outputs[common.PRED_CLASS_LOGITS].shape[-1]) - 1

  # How this inference reads the logits, so that the semantic and instance
  # results of the same model (postprocess/mask_results.py) read them alike.
  @property
  def class_activation(self) -> str:
    """"softmax" (over the num_classes + 1 logits, void dropped) or "sigmoid"."""
    return "softmax"

  @property
  def mask_activation(self) -> str:
    """"softmax" (over the N slots) or "sigmoid" (per slot)."""
    return getattr(self, "_mask_activation", "sigmoid")

  @property
  def align_corners(self) -> bool:
    """Whether the mask logits are resized with align_corners=True."""
    return bool(getattr(self, "_align_corners", False))


def panoptic_outputs(slot_map: tf.Tensor, classes: tf.Tensor, scores: tf.Tensor,
                     areas: tf.Tensor, slot_is_thing: tf.Tensor, survives: tf.Tensor,
                     label_divisor: int, ignore_label: int) -> Dict[str, tf.Tensor]:
  """The postprocessors' common output dict from a per-pixel slot index.

  Args:
    slot_map: int32 ``[B, H, W]``, slot index per pixel, N for void.
    classes, scores, areas: ``[B, N]`` class, class confidence and pixel count
      of each slot.
    slot_is_thing, survives: bool ``[B, N]``.
    label_divisor, ignore_label: see ``slot_map_to_panoptic``.

  Returns:
    ``common.PANOPTIC`` / ``SEMANTIC`` / ``INSTANCE`` int32 ``[B, H, W]`` and
    ``SEGMENT_CLASSES`` (-1 for dropped slots), ``SEGMENT_SCORES``,
    ``SEGMENT_AREAS`` (0 for dropped slots) ``[B, N]``.
  """
  panoptic, semantic, instance = slot_map_to_panoptic(
      slot_map, classes, slot_is_thing, survives, label_divisor, ignore_label)
  return {
      common.PANOPTIC: panoptic,
      common.SEMANTIC: semantic,
      common.INSTANCE: instance,
      common.SEGMENT_CLASSES: tf.where(survives, classes, -1),
      common.SEGMENT_SCORES: scores,
      common.SEGMENT_AREAS: tf.where(survives, areas, 0),
  }


@gin.configurable
class PixelwisePanopticPostprocessor(MaskClassificationPostprocessor):
  """Per-pixel-argmax panoptic inference of MaX-DeepLab, static shapes.

  Call it with the model outputs and the target size::

      post = PixelwisePanopticPostprocessor(is_thing=info.is_thing,
                                            label_divisor=256, ignore_label=255)
      result = post(outputs, (641, 641))
      result[common.PANOPTIC]  # int32 [B, 641, 641]
  """

  def __init__(self,
               is_thing: Sequence[bool] = gin.REQUIRED,
               label_divisor: int = gin.REQUIRED,
               ignore_label: int = gin.REQUIRED,
               class_threshold: float = 0.7,
               pixel_confidence_threshold: float = 0.4,
               thing_area_threshold: int = 0,
               stuff_area_threshold: int = 0,
               mask_activation: str = "softmax",
               confidence_over_enabled_slots: bool = True,
               align_corners: bool = False):
    """Initialises the postprocessor.

    Args:
      is_thing: per train id (length ``num_classes``), whether the class is a thing.
      label_divisor: panoptic label = semantic * label_divisor + instance. Must
        exceed the number of mask slots, since thing instance ids are slot + 1.
      ignore_label: semantic label written at void pixels.
      class_threshold: slots whose class confidence is below this are dropped
        (MaX-DeepLab: 0.7).
      pixel_confidence_threshold: a pixel is kept only if its mask confidence is
        strictly above this (MaX-DeepLab: 0.4).
      thing_area_threshold: thing segments with fewer pixels (at the target
        resolution) become void; 0 disables the filter.
      stuff_area_threshold: stuff segments (all pixels of a stuff class) with
        fewer pixels become void; 0 disables the filter.
      mask_activation: "softmax" (mask probabilities are a softmax over the N
        slots, as MaX-DeepLab trains them) or "sigmoid" (independent per-slot
        probabilities; the pixel confidence is the sigmoid of the winning logit).
      confidence_over_enabled_slots: with "softmax", whether the pixel confidence
        is the softmax over the enabled slots only (deeplab2: disabled slots'
        logits are pushed to -99999 before the softmax) or over all N slots.
      align_corners: resize the mask logits with align_corners=True (deeplab2,
        whose inputs are ``k * stride + 1`` pixels) instead of half-pixel centres
        (``tf.image.resize``).

    Raises:
      ValueError: on an inconsistent configuration.
    """
    if mask_activation not in _MASK_ACTIVATIONS:
      raise ValueError(f"PixelwisePanopticPostprocessor: mask_activation must be "
                       f"one of {_MASK_ACTIVATIONS}, got {mask_activation!r}.")
    super().__init__(is_thing, label_divisor, ignore_label)
    check_area_thresholds("PixelwisePanopticPostprocessor", thing_area_threshold,
                          stuff_area_threshold)
    self._class_threshold = float(class_threshold)
    self._pixel_threshold = float(pixel_confidence_threshold)
    self._thing_area_threshold = int(thing_area_threshold)
    self._stuff_area_threshold = int(stuff_area_threshold)
    self._mask_activation = mask_activation
    self._confidence_over_enabled = bool(confidence_over_enabled_slots)
    self._align_corners = bool(align_corners)

  def _slot_predictions(self, class_logits: tf.Tensor
                        ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Class, score, enabled flag and thing flag of each slot.

    Args:
      class_logits: float [B, N, num_classes + 1].

    Returns:
      classes int32 [B, N], scores float32 [B, N], enabled bool [B, N],
      slot_is_thing bool [B, N].
    """
    # The void column is dropped without renormalising, so a slot that puts mass
    # on void gets a low score rather than a confident non-void class.
    _, classes, scores, slot_is_thing = softmax_slot_classes(class_logits, self._is_thing)
    enabled = scores >= self._class_threshold
    return classes, scores, enabled, slot_is_thing

  def __call__(self, outputs: Dict[str, tf.Tensor],
               target_size: Tuple[int, int]) -> Dict[str, tf.Tensor]:
    """Computes the panoptic prediction.

    Args:
      outputs: model outputs with ``common.PRED_CLASS_LOGITS`` float
        [B, N, num_classes + 1] and ``common.PRED_MASK_LOGITS`` float [B, h, w, N].
      target_size: (H, W) python ints, the resolution of the outputs (the model
        input size); mask logits are bilinearly resized to it.

    Returns:
      A dict with ``common.PANOPTIC``, ``common.SEMANTIC``, ``common.INSTANCE``
      int32 [B, H, W]; ``common.SEGMENT_CLASSES`` int32 [B, N] (the slot's class
      if it holds pixels in PANOPTIC, else -1); ``common.SEGMENT_SCORES`` float32
      [B, N] (every slot's class confidence); ``common.SEGMENT_AREAS`` int32
      [B, N] (pixels each slot holds in PANOPTIC).

    Raises:
      ValueError: on shapes that do not match the configuration.
    """
    class_logits = outputs[common.PRED_CLASS_LOGITS]
    mask_logits = tf.cast(outputs[common.PRED_MASK_LOGITS], tf.float32)
    height, width = int(target_size[0]), int(target_size[1])
    num_slots = check_prediction_shapes("PixelwisePanopticPostprocessor", class_logits,
                                        mask_logits, self._num_classes,
                                        self._label_divisor)

    classes, scores, enabled, slot_is_thing = self._slot_predictions(class_logits)

    mask_logits = resize_mask_logits(mask_logits, (height, width),
                                     self._align_corners)           # [B, H, W, N]
    enabled_px = enabled[:, tf.newaxis, tf.newaxis, :]              # [B, 1, 1, N]
    masked_logits = tf.where(enabled_px, mask_logits, _DISABLED_LOGIT)

    # The top slot before disabling: a pixel whose best slot is disabled is void
    # rather than handed to its second-best slot (deeplab2's "detected mask").
    top_slot = tf.argmax(mask_logits, axis=-1, output_type=tf.int32)  # [B, H, W]
    top_enabled = tf.gather(enabled, top_slot, batch_dims=1)
    if self._mask_activation == "softmax":
      conf_logits = masked_logits if self._confidence_over_enabled else mask_logits
      confidence = tf.reduce_max(tf.nn.softmax(conf_logits, axis=-1), axis=-1)
    else:
      confidence = tf.sigmoid(tf.reduce_max(mask_logits, axis=-1))
    kept = tf.logical_and(top_enabled, confidence > self._pixel_threshold)
    # Slot index per pixel, num_slots for void.
    slot_map = tf.where(kept, top_slot, num_slots)                   # [B, H, W]

    areas = slot_areas(slot_map, num_slots)                           # [B, N]
    seg_areas = segment_areas(areas, classes, slot_is_thing, self._num_classes)
    area_threshold = tf.where(slot_is_thing, self._thing_area_threshold,
                              self._stuff_area_threshold)
    survives = tf.logical_and(
        tf.logical_and(enabled, areas > 0), seg_areas >= area_threshold)

    # Pixels of removed slots become void.
    return panoptic_outputs(slot_map, classes, scores, areas, slot_is_thing, survives,
                            self._label_divisor, self._ignore_label)
