"""Panoptic SegFormer inference: mask-wise merging (Li et al., CVPR 2022, Alg. 1).

1. Each slot's class is the argmax of the sigmoid class probabilities over the
   ``num_classes`` real classes (the void logit of the common contract is not
   read), its confidence ``s`` the max.
2. Soft masks are binarised at ``mask_threshold`` (0.5).
3. Slots are visited by descending ``s``; those with ``s < confidence_threshold``
   (0.3) are skipped; each slot keeps only the pixels of its binary mask that no
   earlier (higher-scoring) slot has claimed. Things and stuff are treated alike.
4. The class goes into SEMANTIC; thing slots get an instance id (slot + 1, unique
   per slot), stuff slots instance 0, so stuff slots of one class merge.

The sequential claim of Algorithm 1 equals "each pixel goes to the highest-scoring
enabled slot whose binary mask covers it", which is one argmax over the sorted
slots: static shapes and no loop, so it XLA-compiles. (The printed line
``m_i = m[i] & (SemMsk > 0)`` contradicts the text of section 3.6 of the paper,
arXiv 2109.03814, which removes "the overlaps with lower confidence score"; the
unclaimed-pixel reading is implemented.)

Outputs have the keys and meaning of ``PixelwisePanopticPostprocessor``.
"""

import math
from typing import Dict, Sequence, Tuple

import gin
import tensorflow as tf

from deeplab_panoptic import common
from deeplab_panoptic.postprocess.panoptic import MaskClassificationPostprocessor
from deeplab_panoptic.postprocess.panoptic import check_prediction_shapes
from deeplab_panoptic.postprocess.panoptic import resize_mask_logits
from deeplab_panoptic.postprocess.panoptic import slot_areas
from deeplab_panoptic.postprocess.panoptic import panoptic_outputs

_CLASS_ACTIVATIONS = ("sigmoid", "softmax")


@gin.configurable
class MaskWiseMergingPostprocessor(MaskClassificationPostprocessor):
  """Mask-wise merging, static shapes.

  Args:
    is_thing: per train id (length num_classes), whether the class is a thing.
    label_divisor: panoptic = semantic * label_divisor + instance; must exceed N.
    ignore_label: semantic label at void pixels.
    confidence_threshold: slots with a lower confidence are skipped (0.3).
    mask_threshold: soft masks (sigmoid of the mask logits) are binarised at this
      probability (0.5).
    class_activation: "sigmoid" (focal-loss classes, the paper) or "softmax" (over
      num_classes + 1, void column dropped without renormalising).
    min_area: slots keeping fewer pixels become void (0: off; not in Alg. 1).
  """

  def __init__(self,
               is_thing: Sequence[bool] = gin.REQUIRED,
               label_divisor: int = gin.REQUIRED,
               ignore_label: int = gin.REQUIRED,
               confidence_threshold: float = 0.3,
               mask_threshold: float = 0.5,
               class_activation: str = "sigmoid",
               min_area: int = 0):
    if class_activation not in _CLASS_ACTIVATIONS:
      raise ValueError(f"MaskWiseMergingPostprocessor.class_activation must be one of "
                       f"{_CLASS_ACTIVATIONS}, got {class_activation!r}.")
    if not 0.0 < mask_threshold < 1.0:
      raise ValueError("MaskWiseMergingPostprocessor.mask_threshold must be in (0, 1).")
    if min_area < 0:
      raise ValueError("MaskWiseMergingPostprocessor.min_area must be >= 0.")
    super().__init__(is_thing, label_divisor, ignore_label)
    self._confidence_threshold = float(confidence_threshold)
    # sigmoid(x) > t  <=>  x > log(t / (1 - t)): compare logits, no sigmoid needed.
    self._mask_logit_threshold = math.log(mask_threshold / (1.0 - mask_threshold))
    self._class_activation = class_activation
    self._min_area = int(min_area)

  @property
  def class_activation(self) -> str:
    return self._class_activation

  def __call__(self, outputs: Dict[str, tf.Tensor],
               target_size: Tuple[int, int]) -> Dict[str, tf.Tensor]:
    """Computes the panoptic prediction.

    Args:
      outputs: common.PRED_CLASS_LOGITS float [B, N, num_classes + 1] and
        common.PRED_MASK_LOGITS float [B, h, w, N].
      target_size: (H, W) python ints; mask logits are bilinearly resized to it.

    Returns:
      common.PANOPTIC, SEMANTIC, INSTANCE int32 [B, H, W]; SEGMENT_CLASSES int32
      [B, N] (-1 for slots without pixels); SEGMENT_SCORES float32 [B, N];
      SEGMENT_AREAS int32 [B, N].
    """
    class_logits = tf.cast(outputs[common.PRED_CLASS_LOGITS], tf.float32)
    mask_logits = tf.cast(outputs[common.PRED_MASK_LOGITS], tf.float32)
    height, width = int(target_size[0]), int(target_size[1])
    num_slots = check_prediction_shapes("MaskWiseMergingPostprocessor", class_logits,
                                        mask_logits, self._num_classes,
                                        self._label_divisor)

    if self._class_activation == "sigmoid":
      probs = tf.sigmoid(class_logits[..., :self._num_classes])
    else:
      probs = tf.nn.softmax(class_logits, axis=-1)[..., :self._num_classes]
    classes = tf.argmax(probs, axis=-1, output_type=tf.int32)          # [B, N]
    scores = tf.reduce_max(probs, axis=-1)                             # [B, N]
    enabled = scores >= self._confidence_threshold
    slot_is_thing = tf.gather(tf.constant(self._is_thing, tf.bool), classes)

    mask_logits = resize_mask_logits(mask_logits, (height, width))
    binary = tf.logical_and(mask_logits > self._mask_logit_threshold,
                            enabled[:, tf.newaxis, tf.newaxis, :])     # [B, H, W, N]
    # Visit order: descending score; stable so ties keep the slot order.
    order = tf.argsort(scores, axis=-1, direction="DESCENDING", stable=True)  # [B, N]
    sorted_binary = tf.gather(binary, order, axis=3, batch_dims=1)
    # The first sorted slot covering a pixel claims it.
    first = tf.argmax(tf.cast(sorted_binary, tf.int32), axis=-1, output_type=tf.int32)
    claimed = tf.reduce_any(sorted_binary, axis=-1)
    slot_map = tf.where(claimed, tf.gather(order, first, batch_dims=1), num_slots)

    areas = slot_areas(slot_map, num_slots)                           # [B, N]
    survives = tf.logical_and(enabled, areas > tf.maximum(self._min_area - 1, 0))
    return panoptic_outputs(slot_map, classes, scores, areas, slot_is_thing, survives,
                            self._label_divisor, self._ignore_label)
