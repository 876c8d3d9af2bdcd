"""MaskFormer-style mask-wise merging: the inference of CMT-DeepLab (and kMaX).

CMT-DeepLab "adopt[s] a mask-wise merging scheme" at inference, the panoptic
inference of MaskFormer (Cheng et al., NeurIPS 2021; the same in Mask2Former).
Per image, with K = num_classes real classes and the void column K:

1. Class probabilities are a softmax over the K + 1 logits; a slot is *kept* when
   its argmax is a real class and that probability (its score) is strictly above
   ``object_mask_threshold`` (0.8).
2. Mask probabilities ``p[pixel, slot]`` at the target resolution: a softmax over
   all N slots of the bilinearly resized mask logits (MaX / CMT / kMaX train the
   masks this way) or an independent sigmoid per slot (MaskFormer, ReMaX).
3. Each pixel goes to the kept slot with the largest ``score * p``.
4. Per kept slot k: ``area`` = pixels assigned to k, ``original_area`` = pixels
   with ``p[:, k] >= mask_threshold`` (0.5), and its segment = the assigned pixels
   with ``p[:, k] >= mask_threshold``. The slot is dropped when ``area``,
   ``original_area`` or the segment is empty, or when
   ``area / original_area < overlap_threshold`` (0.8). Pixels outside every
   segment are void.
5. Thing slots get instance id ``slot + 1``; stuff slots instance 0, so stuff slots
   of one class merge into one segment (MaskFormer's ``stuff_memory_list``).
6. Optionally (off by default, not in MaskFormer), segments smaller than
   ``thing_area_threshold`` / ``stuff_area_threshold`` pixels become void; a stuff
   segment's area is that of all its class's surviving stuff slots.

MaskFormer's loop over kept slots is a handful of ``[B, H, W, N]`` reductions
here: static shapes, no data-dependent control flow, so it XLA-compiles
(``jit_compile=True``) and runs on TPU inside the evaluation step.

Step 4's clip to ``p >= mask_threshold`` is Mask2Former's (and every later
MaskFormer-family release); MaskFormer's released code has it commented out and
keeps every assigned pixel: ``clip_to_mask_threshold=False`` reproduces that.

Outputs have the keys and meaning of ``PixelwisePanopticPostprocessor``.
"""

from typing import Dict, Sequence, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess.panoptic import check_prediction_shapes
from deeplab_panoptic.postprocess.panoptic import resize_mask_logits
from deeplab_panoptic.postprocess.panoptic import segment_areas
from deeplab_panoptic.postprocess.panoptic import slot_areas
from deeplab_panoptic.postprocess.panoptic import MaskClassificationPostprocessor
from deeplab_panoptic.postprocess.panoptic import check_area_thresholds
from deeplab_panoptic.postprocess.panoptic import panoptic_outputs
from deeplab_panoptic.postprocess.panoptic import softmax_slot_classes

_MASK_ACTIVATIONS = ("softmax", "sigmoid")
_OWNER = "MaskFormerMergingPostprocessor"


@gin.configurable
class MaskFormerMergingPostprocessor(MaskClassificationPostprocessor):
  """MaskFormer's mask-wise merging panoptic inference, static shapes.

  Call it with the model outputs and the target size::

      post = MaskFormerMergingPostprocessor(is_thing=info.is_thing,
                                            label_divisor=256, ignore_label=255)
      result = post(outputs, (641, 641))
      result[common.PANOPTIC]  # int32 [B, 641, 641]
  """

  def __init__(self,
               is_thing: Sequence[bool] = gin.REQUIRED,
               label_divisor: int = gin.REQUIRED,
               ignore_label: int = gin.REQUIRED,
               object_mask_threshold: float = 0.8,
               overlap_threshold: float = 0.8,
               mask_threshold: float = 0.5,
               mask_activation: str = "softmax",
               clip_to_mask_threshold: bool = True,
               thing_area_threshold: int = 0,
               stuff_area_threshold: int = 0,
               align_corners: bool = False):
    """Initialises the postprocessor.

    Args:
      is_thing: per train id (length ``num_classes``), whether the class is a thing.
      label_divisor: panoptic label = semantic * label_divisor + instance. Must
        exceed the number of mask slots, since thing instance ids are slot + 1.
      ignore_label: semantic label written at void pixels.
      object_mask_threshold: slots whose class probability (softmax over the
        ``num_classes + 1`` logits) is not strictly above this, or whose argmax is
        void, are dropped (MaskFormer: 0.8).
      overlap_threshold: a kept slot is dropped when the pixels it wins are fewer
        than this fraction of its binary mask (MaskFormer: 0.8).
      mask_threshold: mask probabilities ``>=`` this form a slot's binary mask
        (0.5).
      mask_activation: "softmax" (mask probabilities are a softmax over all N
        slots: MaX-, CMT-, kMaX-DeepLab) or "sigmoid" (independent per-slot
        probabilities: MaskFormer, ReMaX's sigmoid masks).
      clip_to_mask_threshold: a segment is the pixels its slot wins *and* where
        its probability is ``>= mask_threshold`` (Mask2Former), or all pixels it
        wins (False; MaskFormer's released code).
      thing_area_threshold: thing segments with fewer pixels (at the target
        resolution) become void; 0 disables the filter.
      stuff_area_threshold: stuff segments (all surviving pixels of a stuff class)
        with fewer pixels become void; 0 disables the filter.
      align_corners: resize the mask logits with align_corners=True (deeplab2,
        whose inputs are ``k * stride + 1`` pixels) instead of half-pixel centres.

    Raises:
      ValueError: on an inconsistent configuration.
    """
    if mask_activation not in _MASK_ACTIVATIONS:
      raise ValueError(f"{_OWNER}: mask_activation must be one of "
                       f"{_MASK_ACTIVATIONS}, got {mask_activation!r}.")
    super().__init__(is_thing, label_divisor, ignore_label)
    check_area_thresholds(_OWNER, thing_area_threshold, stuff_area_threshold)
    if not 0.0 < mask_threshold <= 1.0:
      raise ValueError(f"{_OWNER}: mask_threshold must be in (0, 1].")
    if not 0.0 <= object_mask_threshold < 1.0:
      raise ValueError(f"{_OWNER}: object_mask_threshold must be in [0, 1).")
    if overlap_threshold < 0.0:
      raise ValueError(f"{_OWNER}: overlap_threshold must be >= 0.")
    self._object_mask_threshold = float(object_mask_threshold)
    self._overlap_threshold = float(overlap_threshold)
    self._mask_threshold = float(mask_threshold)
    self._mask_activation = mask_activation
    self._clip = bool(clip_to_mask_threshold)
    self._thing_area_threshold = int(thing_area_threshold)
    self._stuff_area_threshold = int(stuff_area_threshold)
    self._align_corners = bool(align_corners)

  def _slot_predictions(self, class_logits: tf.Tensor
                        ) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Class, score, kept flag and thing flag of each slot.

    Args:
      class_logits: float [B, N, num_classes + 1].

    Returns:
      classes int32 [B, N] (argmax over the real classes), scores float32 [B, N]
      (their probability, in the softmax over all num_classes + 1), kept bool
      [B, N], slot_is_thing bool [B, N].
    """
    probs, classes, scores, slot_is_thing = softmax_slot_classes(class_logits,
                                                                 self._is_thing)
    # MaskFormer's argmax over all K + 1 is a real class unless void is strictly
    # larger (argmax takes the first of tied maxima and void is last).
    not_void = scores >= probs[..., self._num_classes]
    kept = tf.logical_and(not_void, scores > self._object_mask_threshold)
    return classes, scores, kept, slot_is_thing

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
      [B, N] (every slot's class probability); ``common.SEGMENT_AREAS`` int32
      [B, N] (pixels each slot holds in PANOPTIC).

    Raises:
      ValueError: on shapes that do not match the configuration.
    """
    class_logits = outputs[common.PRED_CLASS_LOGITS]
    mask_logits = tf.cast(outputs[common.PRED_MASK_LOGITS], tf.float32)
    height, width = int(target_size[0]), int(target_size[1])
    num_slots = check_prediction_shapes(_OWNER, class_logits, mask_logits,
                                        self._num_classes, self._label_divisor)

    classes, scores, kept, slot_is_thing = self._slot_predictions(class_logits)

    mask_logits = resize_mask_logits(mask_logits, (height, width),
                                     self._align_corners)            # [B, H, W, N]
    if self._mask_activation == "softmax":
      mask_probs = tf.nn.softmax(mask_logits, axis=-1)
    else:
      mask_probs = tf.sigmoid(mask_logits)
    kept_px = kept[:, tf.newaxis, tf.newaxis, :]                      # [B, 1, 1, N]
    # score * p >= 0 for kept slots, so -1 keeps dropped slots from winning.
    weighted = tf.where(kept_px, scores[:, tf.newaxis, tf.newaxis, :] * mask_probs,
                        -1.0)
    winner = tf.argmax(weighted, axis=-1, output_type=tf.int32)       # [B, H, W]
    any_kept = tf.reduce_any(kept, axis=-1)[:, tf.newaxis, tf.newaxis]
    # Slot index per pixel, num_slots for void (an image without kept slots).
    assigned = tf.where(any_kept, winner, num_slots)

    binary = mask_probs >= self._mask_threshold                       # [B, H, W, N]
    winner_prob = tf.gather(mask_probs, winner, batch_dims=3)         # [B, H, W]
    in_mask = winner_prob >= self._mask_threshold
    clipped = tf.where(in_mask, assigned, num_slots)

    areas = slot_areas(assigned, num_slots)                           # [B, N]
    original_areas = tf.reduce_sum(tf.cast(binary, tf.int32), axis=[1, 2])
    clipped_areas = slot_areas(clipped, num_slots)
    overlap = (tf.cast(areas, tf.float32) /
               tf.cast(tf.maximum(original_areas, 1), tf.float32))
    if self._clip:
      slot_map, pixel_areas = clipped, clipped_areas
    else:
      slot_map, pixel_areas = assigned, areas
    valid = tf.reduce_all(
        tf.stack([kept, areas > 0, original_areas > 0, pixel_areas > 0,
                  overlap >= self._overlap_threshold], axis=0), axis=0)
    pixel_areas = tf.where(valid, pixel_areas, 0)
    seg_areas = segment_areas(pixel_areas, classes, slot_is_thing, self._num_classes)
    area_threshold = tf.where(slot_is_thing, self._thing_area_threshold,
                              self._stuff_area_threshold)
    survives = tf.logical_and(valid, seg_areas >= area_threshold)

    return panoptic_outputs(slot_map, classes, scores, pixel_areas, slot_is_thing,
                            survives, self._label_divisor, self._ignore_label)
